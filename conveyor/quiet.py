"""Third-party start-up noise of the commands that read results (runs, lineage, diff,
report, drift) and of `conveyor serve`, kept off the terminal.

Importing TensorFlow writes cuDNN/cuFFT/cuBLAS "E external/local_xla ... Unable to register"
lines to file descriptor 2 before Python's logging exists, Google client libraries warn
about the Python and grpcio versions (FutureWarning), and TFMA's readers log TF's
tf_record_iterator deprecation. None of it is about the user's runs. As `conveyor run`
does (pipelines/local_runner.py), fd 2 points at a log for the duration; what a person
must see still reaches the terminal: the command's own output (stdout is untouched), its
error lines (printed after the block), and warnings logged by Conveyor's own code.
"""
import contextlib
import logging
import os
import sys
import tempfile
import time
from typing import Iterator, Optional, TextIO

from pipelines.beam import PROJECT_ROOT
from pipelines.local_runner import OwnWarningsHandler, stderr_to_log

OWN_CODE = tuple(os.path.join(PROJECT_ROOT, folder) + os.sep
                 for folder in ("conveyor", "components", "modules", "pipelines", "data", "serving"))


def log_path(home: str, command: str) -> Optional[str]:
    """HOME/logs/<command>.log when HOME exists (logs/ is created inside it), else None:
    a command never creates a HOME."""
    if not os.path.isdir(home):
        return None
    logs = os.path.join(home, "logs")
    os.makedirs(logs, exist_ok=True)
    return os.path.join(logs, f"{command}.log")


@contextlib.contextmanager
def third_party_output(home: str, command: str) -> Iterator[TextIO]:
    """Sends fd 2 (third-party output) to HOME/logs/<command>.log until the block ends.

    The output is collected in a temporary file and appended to that log, under a line with
    the time and the command line, only when there is some (an existing HOME then gets
    logs/; without a HOME the output is dropped). WARNING+ records logged from Conveyor's
    own folders (OWN_CODE) are copied to the terminal; other records go to the log.

    Args:
      home: the Conveyor HOME (absolute).
      command: the subcommand, e.g. "lineage" (names the log file).
    Yields:
      a text stream on the terminal's stderr.
    """
    fd, scratch = tempfile.mkstemp(prefix=f"conveyor-{command}-", suffix=".log")
    os.close(fd)
    root = logging.getLogger()
    previous = list(root.handlers)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with stderr_to_log(scratch) as terminal:
            to_log = logging.StreamHandler(sys.stderr)  # sys.stderr writes to fd 2: the log
            to_log.setLevel(logging.WARNING)
            to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.handlers = previous + [to_log, OwnWarningsHandler(terminal, OWN_CODE)]
            try:
                yield terminal
            finally:
                root.handlers = previous
        if os.path.getsize(scratch):
            target = log_path(home, command)
            if target:
                with open(scratch, "rb") as src, open(target, "ab") as dst:
                    dst.write(f"=== {started} conveyor {' '.join(sys.argv[1:])}\n".encode())
                    dst.write(src.read())
    finally:
        os.remove(scratch)
