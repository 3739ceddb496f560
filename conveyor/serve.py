"""`conveyor serve`: the standalone TF Serving-compatible server (serving/server.py) plus
Conveyor's request logging for `conveyor drift`.

The server itself knows nothing of Conveyor's config or features: this wrapper parses the
Conveyor-only flags (--config, --request_log_rate, --request_log_dir), builds the
RequestLogger and hands the server its `log` method as the on_predict hook. Every other
flag goes to serving.server unchanged.
"""
import argparse
import os
import sys
from typing import List, Optional

from conveyor.quiet import third_party_output
from pipelines.config import DEFAULT_HOME

CONVEYOR_FLAGS_HELP = """
Conveyor extensions (request logging for `conveyor drift`):
  --request_log_rate R  share of requests logged as tf.Examples, 0..1 (default: request_log_rate
                        of --config, else 0 = off)
  --request_log_dir DIR where request logs go (default HOME/request_logs with --home)
  --config FILE         Conveyor config file (YAML/JSON) to read request_log_rate from
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor serve", add_help=False, allow_abbrev=False)
    p.add_argument("--request_log_rate", type=float, default=None)
    p.add_argument("--request_log_dir")
    p.add_argument("--config")
    return p


def _home(argv: List[str]) -> Optional[str]:
    """The server's --home, read without consuming it (the server parses it too)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--home")
    return p.parse_known_args(argv)[0].home


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the server until SIGINT/SIGTERM; returns the exit status (2: bad command line).

    TensorFlow's import-time output (C++ start-up lines, FutureWarnings of Google client
    libraries) goes to HOME/logs/serve.log (dropped without an existing HOME, see
    conveyor/quiet.py); everything the server logs once it runs reaches the terminal.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with third_party_output(os.path.abspath(_home(argv) or DEFAULT_HOME), "serve"):
        from conveyor import request_log  # both import TensorFlow
        from serving import server
    if "-h" in argv or "--help" in argv:
        server.build_parser().print_help()
        print(CONVEYOR_FLAGS_HELP)
        return 0
    ours, rest = _parser().parse_known_args(argv)
    try:
        rate = request_log.configured_rate(ours.request_log_rate, ours.config)
        logger = request_log.from_args(rate, ours.request_log_dir, _home(rest))
    except ValueError as e:
        print(f"conveyor serve: error: {e}", file=sys.stderr)
        return 2
    try:
        return server.main(rest, on_predict=logger.log if logger else None)
    finally:
        if logger:
            logger.close()  # writes what is still queued
