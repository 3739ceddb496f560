"""The `conveyor` command line builds its parsers (every subcommand's module imports) and
answers --help without running anything."""
import pytest

from conveyor import cli


@pytest.mark.parametrize("command", ["run", "runs", "lineage", "diff", "report", "drift", "download", "compile",
                                     "export-backbone"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: conveyor" in capsys.readouterr().out


def test_unknown_subcommand_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code == 2


def closed_pipe_run(args):
    """Runs `python -m <args>` with stdout a pipe whose reader has already gone (`| head`
    that exited): returns (exit status, stderr)."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=repo, env=env)
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr.decode("utf-8", errors="replace")


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    status, stderr = closed_pipe_run(["conveyor.cli", "--help"])
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert status == 1


@pytest.mark.parametrize("flags, says", [(["--port", "99999"], "--port 99999: expected a TCP port 1..65535"),
                                         (["--port", "0"], "--port 0"),
                                         (["--serving-url", "localhost:8501"], "expected http(s)://host[:port]"),
                                         (["--serving-url", "ftp://h:1"], "expected http(s)://host[:port]"),
                                         (["--serving-url", "http://h:70000"], "bad port")])
def test_ui_refuses_bad_port_and_serving_url(flags, says, capsys, tmp_path):
    assert cli.main(["ui", "--home", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
