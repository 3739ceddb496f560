"""Where the infra validator's server runs: in the executor's process or in a subprocess.

Both runners serve one model from a base path on a free loopback REST port (gRPC disabled),
configured by the same serving.server.ServerOptions, and are checked over HTTP through
serving.client.PredictClient. The subprocess imports `serving` from wherever this process
imports it (an installed package or a source tree), not from a hard-coded repository root.
"""
import ctypes
import logging as pylogging
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from absl import logging

import serving
from components.errors import ModelNotServable, ServerPortTaken
from serving.client import PredictClient, PredictError
from serving.errors import ServingError
from serving.model_config import ModelConfigError
from serving.net import free_port
from serving.server import ModelServer, ServerOptions

SERVED_VERSION = 1  # the candidate's version number in the server's base path
SERVER_LOGGER = "conveyor.serving"  # parent of every serving/ module's logger
STATUS_TIMEOUT_S = 5.0   # per GET /v1/models/<name> while waiting for AVAILABLE
STATUS_POLL_S = 0.2
STOP_TIMEOUT_S = 15.0    # SIGTERM grace before SIGKILL
LOG_TAIL_CHARS = 2000
# Start-up lines every TensorFlow process prints; they would crowd the real error out of `reason`.
LOG_NOISE = ("Unable to register cu", "FutureWarning", "warnings.warn(", "oneDNN custom operations",
             "cpu_feature_guard", "rebuild TensorFlow with the appropriate compiler flags")
# The directory `python -m serving.server` must import `serving` from.
SERVING_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(serving.__file__)))


class ServerRunner:
    """Conveyor's server for one model on a free loopback REST port; subclasses decide where
    it runs. Use: start(), wait_available(), send requests to `url`, and always stop().

    Args:
      model_name: the name the model is served under (the URL's /v1/models/<model_name>).
      base_path: the model's base path, holding version SERVED_VERSION.
      log_path: the file the server's log goes to (created by start()).
    """

    def __init__(self, model_name: str, base_path: str, log_path: str):
        self.model_name = model_name
        self.base_path = base_path
        self.log_path = log_path
        self.url = ""

    def options(self, port: int) -> ServerOptions:
        """The server's options: this model only, REST on 127.0.0.1:`port`, no gRPC."""
        return ServerOptions(model_name=self.model_name, model_base_path=self.base_path,
                             host="127.0.0.1", rest_api_port=port, port=0,
                             file_system_poll_wait_seconds=30)

    def start(self) -> None:
        """Starts the server on a new free port and sets `url`.

        Raises:
          ServerPortTaken: another process bound the port first (call stop(), then retry).
          ModelNotServable: the server could not start or load the model.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Stops the server if it runs; safe to call more than once."""
        raise NotImplementedError

    def check_running(self) -> None:
        """Raises ModelNotServable (or ServerPortTaken) if the server has gone away."""

    def wait_available(self, timeout_s: float) -> None:
        """Returns once SERVED_VERSION is AVAILABLE (after its warmup replay).

        Args:
          timeout_s: seconds to wait for it.
        Raises:
          ModelNotServable: the version reached END (failed to load), the server exited, or
            `timeout_s` passed; the message ends with the server's log tail.
        """
        client = PredictClient(self.url, timeout=STATUS_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            try:
                status = client.status(self.model_name)
            except (PredictError, OSError, ValueError):
                status = None  # not listening yet, or the model is not known yet
            for entry in (status or {}).get("model_version_status", []):
                if int(entry.get("version", -1)) != SERVED_VERSION:
                    continue
                state = entry.get("state")
                if state == "AVAILABLE":
                    return
                if state == "END":
                    error = entry.get("status", {}).get("error_message", "")
                    raise ModelNotServable(f"server failed to load the model: {error}; "
                                           f"log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ModelNotServable(f"model not AVAILABLE after {timeout_s:.0f}s; "
                                       f"log tail:\n{self.log_tail()}")
            time.sleep(STATUS_POLL_S)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last `chars` characters of the server log without TensorFlow's start-up
        chatter (LOG_NOISE); "" if there is no log yet."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines()
                 if line.strip() and not any(noise in line for noise in LOG_NOISE)]
        return "\n".join(lines)[-chars:]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server if the executor dies without reaching `finally`."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def server_flags(options: ServerOptions) -> List[str]:
    """The `python -m serving.server` flags of the options a ServerRunner sets."""
    return ["--model_name", options.model_name, "--model_base_path", options.model_base_path,
            "--host", options.host, "--rest_api_port", str(options.rest_api_port),
            "--port", str(options.port),
            "--file_system_poll_wait_seconds", str(options.file_system_poll_wait_seconds)]


class SubprocessServer(ServerRunner):
    """`python -m serving.server` in a fresh process, killed if this process dies."""

    proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        pythonpath = os.pathsep.join(p for p in (SERVING_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="2")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.server"] + server_flags(self.options(port)),
                cwd=SERVING_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            if "Address already in use" in self.log_tail():
                raise ServerPortTaken(f"port of {self.url} was taken: {self.log_tail()}")
            raise ModelNotServable(f"server exited with code {code} before the model was "
                                   f"available; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logging.warning("Infra validation server pid %d ignored SIGTERM; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait()


class InProcessServer(ServerRunner):
    """serving.server's ModelServer inside this process; its log goes to `log_path`."""

    server: Optional[ModelServer] = None
    _handler: Optional[pylogging.Handler] = None
    _saved_level = pylogging.NOTSET

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        logger = pylogging.getLogger(SERVER_LOGGER)
        if self._handler is None:
            self._handler = pylogging.FileHandler(self.log_path)
            self._handler.setFormatter(pylogging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self._saved_level = logger.level
            logger.addHandler(self._handler)
            logger.setLevel(pylogging.INFO)
        try:
            # Loads the model and replays its warmup requests before returning.
            self.server = ModelServer(self.options(port))
        except OSError as e:
            if "Address already in use" in str(e):
                raise ServerPortTaken(f"port of {self.url} was taken: {e}") from e
            raise ModelNotServable(f"server could not start: {e}") from e
        except (ModelConfigError, ServingError) as e:
            raise ModelNotServable(f"server failed to load the model: {e}") from e
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._handler is not None:
            logger = pylogging.getLogger(SERVER_LOGGER)
            logger.removeHandler(self._handler)
            logger.setLevel(self._saved_level)
            self._handler.close()
            self._handler = None


SERVERS = {"in_process": InProcessServer, "subprocess": SubprocessServer}
SERVER_MODES = tuple(SERVERS)
