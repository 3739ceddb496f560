"""Runs the pipeline with TFX's LocalDagRunner under the HOME lock and reports progress.

Before anything heavy is imported, the pre-flight check (pipelines/preflight.py) compares
this run's inputs with the last run's; when nothing changed it records a no-op rerun in
MLMD and runs nothing.

TFX logs a lot; the full log goes to HOME/logs/, the console gets one line per component
start/finish (with duration) and the warnings Conveyor's own code logs (about the user's
data and model). Third-party output written straight to the stderr file descriptor (TF's
C++ start-up lines, FutureWarnings of Google client libraries) is redirected to the same
log file at the descriptor level for the duration of the run. What happens after the run
(the summary table and report of `conveyor run`) is the caller's `on_finish`: this layer
does not read MLMD back.
"""
import contextlib
import fcntl
import logging
import os
import re
import sys
import time
import traceback
from typing import Callable, Optional, Sequence, Tuple, TypeVar

from absl import logging as absl_logging

from components.errors import ComponentError
from pipelines import metadata_connection, preflight
from pipelines.beam import PROJECT_ROOT
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
    """One run per HOME at a time: two runs would race on MLMD and on serving versions.

    An flock on HOME/.run.lock: with MLMD on MySQL the runners of one pipeline share HOME on
    a shared disk (the pipeline root and serving folder live there), and the lock file keeps
    them to one run at a time (Linux NFS maps flock to NFS byte-range locks).

    Raises:
      ConveyorError: another process holds the lock (its pid is named).
    """
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


# Warnings logged from these folders are about the user's data or model: they reach the terminal.
_OWN_CODE = tuple(os.path.join(PROJECT_ROOT, folder) + os.sep
                  for folder in ("components", "modules", "pipelines", "data"))


class OwnWarningsHandler(logging.Handler):
    """Copies WARNING+ records logged by Conveyor's own code (components/, modules/, ...) to
    the terminal; third-party warnings stay in the log file only.

    Args:
      stream: the terminal.
      own_code: folder prefixes (absolute, ending in os.sep) whose records are copied
        (default: components/, modules/, pipelines/, data/ of this project).
    """

    def __init__(self, stream, own_code: Optional[Tuple[str, ...]] = None):
        super().__init__(logging.WARNING)
        self.stream = stream
        self.own_code = own_code or _OWN_CODE

    def emit(self, record):
        if not record.pathname.startswith(self.own_code):
            return
        self.stream.write(f"  warning: {record.getMessage()}\n")
        self.stream.flush()


@contextlib.contextmanager
def stderr_to_log(log_path: str):
    """Points file descriptor 2 at `log_path` (appending) until the block ends.

    What bypasses Python's logging lands there: TF's C++ start-up lines (cuDNN/cuFFT/cuBLAS
    factory registrations, written before absl logging is initialised), Python warnings
    (sys.stderr writes to fd 2), the stderr of subprocesses.

    Args:
      log_path: a file (created if missing) or os.devnull.
    Yields:
      a text stream on the original stderr, for what a person must see.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        for fd in (saved, log_fd):
            os.close(fd)
        terminal.close()


@contextlib.contextmanager
def output_to_log(log_path: str):
    """Sends third-party output to `log_path` (appending) until the block ends: fd 2 as in
    `stderr_to_log`, and sys.stdout (Keras' per-epoch lines, prints in libraries); callers
    keep their own reference to the terminal's stdout for progress.

    Yields:
      a text stream on the original stderr, for what a person must see.
    """
    sys.stdout.flush()
    stdout = sys.stdout
    with stderr_to_log(log_path) as terminal:
        log_out = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        try:
            sys.stdout = log_out
            yield terminal
        finally:
            sys.stdout = stdout
            log_out.close()


@contextlib.contextmanager
def _logging_to(log_path: str, stream, terminal, secrets: Sequence[str] = ()):
    """Python logging (TFX's, absl's) to the run log, progress lines to `stream`, own warnings
    to `terminal`; `secrets` (the MLMD password) are replaced by *** in every record."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    progress = ProgressHandler(stream)
    own_warnings = OwnWarningsHandler(terminal)
    redact = metadata_connection.RedactSecrets(list(secrets))
    for handler in (file_handler, progress, own_warnings):
        handler.addFilter(redact)
    absl_logging.set_verbosity(absl_logging.INFO)
    previous_handlers, previous_level = list(root.handlers), root.level
    root.handlers = [file_handler, progress, own_warnings]
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
        on_finish: Optional[Callable[[Config, float], T]] = None,
        on_unchanged: Optional[Callable[[Config, preflight.Unchanged], T]] = None,
        force: bool = False) -> Optional[T]:
    """Runs the pipeline once on the LocalDagRunner, unless nothing changed since the last run.

    Args:
      config: the validated Config; `config.data` must be set.
      stream: where progress lines go.
      on_finish: called as on_finish(config, started unix time) after the DAG ran or failed,
        still under the HOME lock (e.g. to read the run back from MLMD). When the DAG failed
        and on_finish raises too, the ConveyorError names both.
      on_unchanged: called as on_unchanged(config, Unchanged) instead, under the HOME lock,
        when the pre-flight check found nothing changed (see pipelines/preflight.py) and
        recorded a no-op rerun; without it a line is written to `stream`.
      force: run the DAG even when nothing changed.
    Returns:
      what on_finish / on_unchanged returned (None without one).
    Raises:
      ConveyorError: HOME is in use, or the run failed; the message names the user error
        (file, row, anomaly) when there is one, else the exception and the log file.
    """
    home = config.home_dir
    log_dir = os.path.join(home, "logs")
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    with home_lock(home):
        inputs = preflight.inputs_before_run(config)
        unchanged = None if force else preflight.check_unchanged(config, inputs)
        if unchanged is not None:
            if on_unchanged:
                return on_unchanged(config, unchanged)
            stream.write(f"Nothing changed since run {unchanged.repeats_run}; nothing was run.\n")
            return None
        stream.write(f"Conveyor: running '{config.name}' ({config.kind}, model {config.model}) "
                     f"on {config.data}\n  HOME {home}\n  MLMD {metadata_connection.describe(home, config.metadata)}\n"
                     f"  log  {log_path}\n")
        remeasure = preflight.infra_remeasure(config)
        if remeasure and remeasure.startswith(preflight.REMEASURE_AFTER_FAILURE):
            stream.write("  the last infra validation failed: measuring it again\n")
        stream.flush()
        failure = None
        with output_to_log(log_path) as terminal:
            # Imported under the lock so a second run on a busy HOME is refused at once,
            # and with stderr redirected: importing TF writes its C++ start-up lines to fd 2.
            from tfx.orchestration.local.local_dag_runner import LocalDagRunner
            from pipelines.pipeline import create_pipeline

            started = time.time()
            with _logging_to(log_path, stream, terminal, metadata_connection.secrets(config.metadata)):
                try:
                    LocalDagRunner().run(create_pipeline(config, infra_remeasure=remeasure))
                except Exception as e:  # the summary below says which component failed
                    failure = e
                    # The whole traceback goes to the run's log (fd 2 is the log here), which
                    # the error message points at.
                    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
                    sys.stderr.flush()
            if failure is None:
                preflight.record_run_inputs(config, inputs, int(started * 1000))
            else:
                reason = _user_error(failure)
                try:  # for the report; never in the way of the run's own error
                    preflight.record_failure(config, int(started * 1000),
                                             str(reason) if reason else f"{type(failure).__name__}: {failure}")
                except Exception as e:  # noqa: BLE001
                    print(f"could not record the failure in MLMD: {e}", file=sys.stderr)
            try:
                result = on_finish(config, started) if on_finish else None
            except Exception as e:  # noqa: BLE001
                # e.g. the MySQL store went away, which also failed the run: the run's own
                # error (and its log) is what the user needs, not only the summary's.
                if failure is None:
                    raise
                finish_error = e
            else:
                finish_error = None
    if failure is not None:
        reason = _user_error(failure)
        message = str(reason) if reason else f"{type(failure).__name__}: {failure} (details in {log_path})"
        if finish_error is not None:
            message += f"; the run's summary could not be read either: {finish_error}"
        raise ConveyorError(message)
    return result
