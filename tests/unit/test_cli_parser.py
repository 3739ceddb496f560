"""The `conveyor` command line builds its parsers (every subcommand's module imports) and
answers --help without running anything."""
import pytest

from conveyor import cli


@pytest.mark.parametrize("command", ["run", "runs", "lineage", "diff", "report", "drift", "download", "compile"])
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
