"""Console entry points (`conveyor`, `tensorflow_model_server`): a reader that stops reading
(`conveyor serve --help | head`) ends the command quietly instead of with a traceback."""
import os
import sys
from typing import Callable


def run_command(main: Callable[[], int]) -> int:
    """Runs a command and returns its exit status.

    Args:
      main: the command; returns an exit status or raises SystemExit (argparse does).
    Returns:
      main()'s status; 1 when stdout's reader went away (Python's recipe for SIGPIPE,
      https://docs.python.org/3/library/signal.html#note-on-sigpipe: stdout is pointed at
      /dev/null so the interpreter's last flush does not fail again).
    Raises:
      SystemExit: as main() raised it.
    """
    try:
        try:
            return main()
        finally:
            sys.stdout.flush()  # a reader that left fails here, not at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
