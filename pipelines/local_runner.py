"""Runs the pipeline with TFX's LocalDagRunner and reports progress and a summary.

TFX logs a lot; the full log goes to HOME/logs/, the console gets one line per component
start/finish (with duration) and the summary table read back from MLMD at the end.
"""
import contextlib
import fcntl
import logging
import os
import re
import sys
import time
from typing import Optional

from absl import logging as absl_logging

from conveyor.config import Config
from conveyor import run_summary

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
    from components.example_validator import DataValidationError
    from components.labelled_example_gen import IngestError
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (IngestError, DataValidationError, ConveyorError)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_report(config: Config, stream) -> None:
    """The HTML report is a convenience: failing to write it must not change the run's outcome."""
    from conveyor.report import write_run_report
    try:
        stream.write(f"  report {write_run_report(config)}\n")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        stream.write(f"  report not written: {type(e).__name__}: {e}\n")


def run(config: Config, stream=sys.stdout) -> run_summary.RunSummary:
    """Runs the pipeline once; raises ConveyorError with a readable message when it fails."""
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
        summary = run_summary.summarize(config, started)
    stream.write(summary.table() + "\n")
    _write_report(config, stream)
    if failure is not None:
        reason = _user_error(failure)
        message = str(reason) if reason else f"{type(failure).__name__}: {failure} (details in {log_path})"
        raise ConveyorError(message)
    return summary
