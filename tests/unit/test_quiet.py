"""conveyor/quiet.py: third-party start-up output of the read commands and `conveyor serve`
goes to HOME/logs, what a person must see stays on the terminal."""
import os
import subprocess
import sys

SCRIPT = """
import logging, os, sys, warnings
from conveyor.quiet import third_party_output
home = sys.argv[1]
with third_party_output(home, "lineage"):
    os.write(2, b"E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc Unable to register cuDNN factory\\n")
    warnings.warn("Python 3.10 is past its end of life", FutureWarning)
    logging.getLogger("tensorflow").warning("tf_record_iterator is deprecated")
    logging.getLogger("conveyor.own").handle(logging.LogRecord(
        "conveyor.own", logging.WARNING, os.path.join(os.getcwd(), "conveyor", "report.py"), 1,
        "evaluation of run 3 has no metrics", (), None))
    print("version 2")
print("conveyor lineage: no such model", file=sys.stderr)
"""


def _run(home):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(home)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()), cwd=os.getcwd())


def test_noise_goes_to_the_home_log_own_lines_to_the_terminal(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = _run(home)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "version 2\n"
    assert result.stderr == ("  warning: evaluation of run 3 has no metrics\n"
                             "conveyor lineage: no such model\n")
    log = (home / "logs" / "lineage.log").read_text()
    for noise in ("Unable to register cuDNN", "FutureWarning", "tf_record_iterator is deprecated"):
        assert noise in log
    assert log.startswith("=== ")


def test_without_a_home_nothing_is_created_and_the_noise_is_dropped(tmp_path):
    result = _run(tmp_path / "nonexistent")
    assert result.returncode == 0, result.stderr
    assert "cuDNN" not in result.stderr and "FutureWarning" not in result.stderr
    assert not (tmp_path / "nonexistent").exists()
