"""Runs the pipeline with TFX's LocalDagRunner under the HOME lock and reports progress.

TFX logs a lot; the full log goes to HOME/logs/, the console gets one line per component
start/finish (with duration). What happens after the run (the summary table and report of
`conveyor run`) is the caller's `on_finish`: this layer does not read MLMD back.
"""
import contextlib
import fcntl
import logging
import os
import re
import sys
import time
from typing import Callable, Optional, TypeVar

from absl import logging as absl_logging

from components.errors import ComponentError
from pipelines.config import Config

_NODE_EVENT = re.compile(r"^Component (\S+) is (running|finished)\.$")


class ConveyorError(RuntimeError):
    """A run that could not start or stopped; the message is for the user, not a traceback."""


class ProgressHandler(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished.' lines into progress lines."""

    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.stream = stream
        self.started = {}

    def emit(self, record):
        match = _NODE_EVENT.match(record.getMessage())
        if not match:
            return
        node, event = match.groups()
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        if event == "running":
            self.started[node] = now
            self.stream.write(f"[{stamp}] {node:<28} started\n")
        else:
            took = now - self.started.get(node, now)
            self.stream.write(f"[{stamp}] {node:<28} finished in {took:6.1f}s\n")
        self.stream.flush()


@contextlib.contextmanager
def home_lock(home: str):
    """One run per HOME at a time: two runs would race on MLMD and on serving versions."""
    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, ".run.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConveyorError(f"{home} is in use by another conveyor run ({holder}); "
                                "wait for it to finish or use another --home") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


@contextlib.contextmanager
def _logging_to(log_path: str, stream):
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    progress = ProgressHandler(stream)
    absl_logging.set_verbosity(absl_logging.INFO)
    previous_handlers, previous_level = list(root.handlers), root.level
    root.handlers = [file_handler, progress]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = previous_handlers
        root.setLevel(previous_level)
        file_handler.close()


def _user_error(error: BaseException) -> Optional[BaseException]:
    """The first error in the chain that was raised for the user (ingest, validation, config)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ComponentError, ConveyorError)):
            return error
        error = error.__cause__ or error.__context__
    return None


T = TypeVar("T")


def run(config: Config, stream=sys.stdout,
        on_finish: Optional[Callable[[Config, float], T]] = None) -> Optional[T]:
    """Runs the pipeline once on the LocalDagRunner.

    Args:
      config: the validated Config; `config.data` must be set.
      stream: where progress lines go.
      on_finish: called as on_finish(config, started unix time) after the DAG ran or failed,
        still under the HOME lock (e.g. to read the run back from MLMD).
    Returns:
      what on_finish returned (None without one).
    Raises:
      ConveyorError: HOME is in use, or the run failed; the message names the user error
        (file, row, anomaly) when there is one, else the exception and the log file.
    """
    home = config.home_dir
    log_dir = os.path.join(home, "logs")
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    with home_lock(home):
        # Imported under the lock so a second run on a busy HOME is refused at once,
        # not after seconds of importing TFX.
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner
        from pipelines.pipeline import create_pipeline

        stream.write(f"Conveyor: running '{config.name}' ({config.kind}, model {config.model}) "
                     f"on {config.data}\n  HOME {home}\n  log  {log_path}\n")
        started = time.time()
        failure = None
        with _logging_to(log_path, stream):
            try:
                LocalDagRunner().run(create_pipeline(config))
            except Exception as e:  # the summary below says which component failed
                failure = e
        result = on_finish(config, started) if on_finish else None
    if failure is not None:
        reason = _user_error(failure)
        message = str(reason) if reason else f"{type(failure).__name__}: {failure} (details in {log_path})"
        raise ConveyorError(message)
    return result
