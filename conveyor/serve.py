"""`conveyor serve`: the standalone TF Serving-compatible server (serving/server.py) plus
Conveyor's request logging for `conveyor drift` and ground-truth feedback.

The server itself knows nothing of Conveyor's config or features: this wrapper parses the
Conveyor-only flags (--config, --request_log_rate, --request_log_dir, --feedback,
--feedback_dir, --feedback_token_env), builds the RequestLogger and the FeedbackLog and hands
the server their hooks (on_predict; on_prediction and the feedback POST route). A config's
`serving.ab_split` becomes the server's `--ab_split MODEL:canary=P` unless the command line
gives --ab_split. Every other flag goes to serving.server unchanged.
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
  --config FILE         Conveyor config file (YAML/JSON) to read request_log_rate, feedback and
                        ab_split (of the config's model name) from
Ground-truth feedback (`conveyor monitor`, `conveyor export-feedback`):
  --feedback            give every prediction a request id (header X-Conveyor-Request-Id) and log
                        it; labels come back on POST /v1/conveyor/models/NAME/feedback
  --feedback_dir DIR    where predictions and labels go (default HOME/feedback with --home)
  --feedback_token_env VAR  POSTed labels need 'Authorization: Bearer $VAR'
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor serve", add_help=False, allow_abbrev=False)
    p.add_argument("--request_log_rate", type=float, default=None)
    p.add_argument("--request_log_dir")
    p.add_argument("--config")
    p.add_argument("--feedback", action="store_true", default=None)
    p.add_argument("--feedback_dir")
    p.add_argument("--feedback_token_env")
    return p


def _serving_config(config_path: Optional[str]):
    """The `serving` settings of a Conveyor config file and its model name, or (None, None).
    Raises ConfigError (a ValueError) for a bad file."""
    if not config_path:
        return None, None
    import yaml

    from pipelines.config import ConfigError, load_config
    try:
        with open(config_path, encoding="utf-8") as f:
            kind = (yaml.safe_load(f) or {}).get("kind", "image")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ConfigError(f"--config {config_path}: cannot read it ({e})") from e
    config = load_config(kind, config_path)
    return config.serving, config.name


def feedback_log(enabled: bool, directory: Optional[str], token_env: Optional[str], home: Optional[str]):
    """The server's FeedbackLog for --feedback/--feedback_dir/--feedback_token_env, or None when off.

    Raises:
      ValueError: no directory (neither --feedback_dir nor --home), or a token variable that
        is unset or empty.
    """
    if not enabled:
        return None
    from conveyor.feedback import FEEDBACK_DIR, FeedbackLog
    if not directory:
        if not home:
            raise ValueError("--feedback needs --feedback_dir (or --home)")
        directory = os.path.join(home, FEEDBACK_DIR)
    token = ""
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            raise ValueError(f"--feedback_token_env {token_env}: the environment variable is unset or empty")
    return FeedbackLog(directory, token=token)


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
        serving_config, name = _serving_config(ours.config)
        if serving_config is not None and serving_config.ab_split is not None and \
                not any(a.split("=", 1)[0] == "--ab_split" for a in rest):
            rest += ["--ab_split", f"{name}:canary={serving_config.ab_split}"]
        enabled = ours.feedback if ours.feedback is not None else bool(serving_config and serving_config.feedback)
        feedback = feedback_log(enabled, ours.feedback_dir, ours.feedback_token_env, _home(rest))
        logger = request_log.from_args(rate, ours.request_log_dir, _home(rest))
    except ValueError as e:
        print(f"conveyor serve: error: {e}", file=sys.stderr)
        return 2
    from conveyor.feedback import FEEDBACK_ROUTE
    try:
        return server.main(rest, on_predict=logger.log if logger else None,
                           on_prediction=feedback.record if feedback else None,
                           post_routes={FEEDBACK_ROUTE: feedback.route} if feedback else None)
    finally:
        if logger:
            logger.close()  # writes what is still queued
        if feedback:
            feedback.close()
