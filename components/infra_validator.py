"""InfraValidator that runs the candidate model in Conveyor's own server: no Docker, no Kubernetes.

Why this exists (project issue #4): TFX's InfraValidator can only launch TF Serving
through local Docker or a Kubernetes cluster, and neither exists where Conveyor runs.
Conveyor already ships a TF Serving-compatible server (serving/server.py) with the same
REST API, the same version layout and the same warmup replay, so this component checks
the thing that matters before a push: *the exported model loads and answers in a real
server process*.

The executor
  1. copies the candidate's serving model into a temporary base path as version 1;
  2. starts Conveyor's server for it on a free loopback port (REST only, gRPC disabled):
     by default in the executor's own process (`server="in_process"`: serving.server's
     ModelServer, which loads the model and replays its warmup before it answers); with
     `server="subprocess"`, as `python -m serving.server` in a fresh process, which also
     proves the model loads in a process that imported nothing but TensorFlow and the
     server, at the price of that process's TensorFlow import (about 8 s here);
  3. waits until GET /v1/models/<name> reports version 1 AVAILABLE, which the server only
     does after replaying assets.extra/tf_serving_warmup_requests;
  4. sends `num_requests` real REST :predict requests over HTTP (one instance each) to
     `serving_default`, built from the eval split's raw examples (`image_raw` -> images as
     {"b64": ...}, `text` -> text as plain strings);
  5. blesses the model only if every request answered HTTP 200 with the contract's outputs
     (probabilities, class_ids, class_names) and the p99 latency is within `p99_budget_ms`.

The InfraBlessing is written the way TFX's InfraValidator writes it (INFRA_BLESSED /
INFRA_NOT_BLESSED file plus the `blessed` int custom property), so TFX's Pusher honours it
through its `infra_blessing` input. It also records p50/p99 latency, request and failure
counts, and a `reason` when not blessed. A model the server cannot load is a verdict (not
blessed, with the server's error and log tail), not an exception. The server is always
stopped (in process: shut down; subprocess: SIGTERM, then SIGKILL) before the executor returns.
"""
import base64
import ctypes
import glob
import json
import logging as pylogging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from modules import features
from serving import contract

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
BLESSING_KEY = "blessing"
NUM_REQUESTS_KEY = "num_requests"
P99_BUDGET_MS_KEY = "p99_budget_ms"
MODEL_NAME_KEY = "model_name"
SERVER_KEY = "server"  # a key of SERVERS

# Same artifact contract as tfx.components.infra_validator.executor (_mark_blessed /
# _mark_not_blessed); tfx.components.util.model_utils.is_infra_validated reads BLESSED_KEY.
BLESSED_KEY = "blessed"
BLESSED_FILENAME = "INFRA_BLESSED"
NOT_BLESSED_FILENAME = "INFRA_NOT_BLESSED"
SERVER_LOG_FILENAME = "server.log"

DEFAULT_MODEL_NAME = "infra-validation-model"
SERVER_LOGGER = "conveyor.serving"  # parent of every serving/ module's logger
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training feature -> serving_default input of the served-model contract.
RAW_FEATURES = {features.RAW_INPUT[kind]: contract.SERVING_INPUT[kind] for kind in features.RAW_INPUT}
EXPECTED_OUTPUTS = contract.OUTPUTS
VERSION = 1
PORT_ATTEMPTS = 3
LOG_TAIL_CHARS = 2000
# Start-up lines every TensorFlow process prints; they would crowd the real error out of `reason`.
LOG_NOISE = ("Unable to register cu", "FutureWarning", "warnings.warn(", "oneDNN custom operations",
             "cpu_feature_guard", "rebuild TensorFlow with the appropriate compiler flags")


class InfraValidatorSpec(types.ComponentSpec):
    """ConveyorInfraValidator's inputs, output and parameters."""

    PARAMETERS = {
        NUM_REQUESTS_KEY: ExecutionParameter(type=int),
        P99_BUDGET_MS_KEY: ExecutionParameter(type=float),
        MODEL_NAME_KEY: ExecutionParameter(type=str),
        SERVER_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
    }


class _NotServable(Exception):
    """The server could not load or serve the model: a 'not blessed' verdict."""


class _PortTaken(_NotServable):
    """Another process bound the free port first; worth another try on a new port."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server if the executor dies without reaching `finally`."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def percentile(values: List[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the smallest value with >= q% at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def read_raw_instances(examples_uri: str, limit: int, split: str = "eval") -> Tuple[str, List[Any]]:
    """(serving input name, up to `limit` REST instances) from Split-<split>'s raw features."""
    import tensorflow as tf

    pattern = os.path.join(examples_uri, f"Split-{split}", "*.gz")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"{pattern}: no eval examples to build infra validation requests from")
    feature_name, instances = None, []
    for path in paths:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            if feature_name is None:
                feature_name = next((f for f in RAW_FEATURES if f in features), None)
                if feature_name is None:
                    raise ValueError(f"{path}: examples have none of the raw features "
                                     f"{sorted(RAW_FEATURES)} (got {sorted(features)})")
            values = features[feature_name].bytes_list.value if feature_name in features else []
            if not values:
                continue
            value = values[0]
            if feature_name == "image_raw":
                instances.append({"b64": base64.b64encode(value).decode("ascii")})
            else:
                try:
                    instances.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    instances.append({"b64": base64.b64encode(value).decode("ascii")})
            if len(instances) >= limit:
                return RAW_FEATURES[feature_name], instances
    if not instances:
        raise ValueError(f"{pattern}: no example has a non-empty {feature_name!r} feature")
    return RAW_FEATURES[feature_name], instances


class _Server:
    """Conveyor's server for one model on a free loopback REST port (no gRPC); subclasses
    decide where it runs. The checks go over HTTP either way."""

    def __init__(self, model_name: str, base_path: str, log_path: str):
        self.model_name = model_name
        self.base_path = base_path
        self.log_path = log_path
        self.url = ""

    def server_args(self, port: int) -> List[str]:
        return ["--model_name", self.model_name, "--model_base_path", self.base_path,
                "--host", "127.0.0.1", "--rest_api_port", str(port), "--port", "0",
                "--file_system_poll_wait_seconds", "30"]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def check_running(self) -> None:
        """Raises _NotServable if the server has gone away."""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the server log without TensorFlow's start-up chatter."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines()
                 if line.strip() and not any(noise in line for noise in LOG_NOISE)]
        return "\n".join(lines)[-chars:]

    def _get_status(self) -> Optional[dict]:
        path = f"/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            e.close()
            return None
        except (urllib.error.URLError, ConnectionError, socket.timeout, ValueError):
            return None

    def wait_available(self, timeout_s: float) -> None:
        """Returns once VERSION is AVAILABLE; raises _NotServable if it never will be."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            status = self._get_status()
            for entry in (status or {}).get("model_version_status", []):
                if int(entry.get("version", -1)) != VERSION:
                    continue
                state = entry.get("state")
                if state == "AVAILABLE":
                    return
                if state == "END":
                    error = entry.get("status", {}).get("error_message", "")
                    raise _NotServable(f"server failed to load the model: {error}; "
                                       f"log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise _NotServable(f"model not AVAILABLE after {timeout_s:.0f}s; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def predict(self, instances: List[Any], timeout_s: float) -> Tuple[Optional[str], float]:
        """(error or None, latency ms) for one REST :predict to serving_default."""
        body = json.dumps({"signature_name": "serving_default", "instances": instances}).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}:predict",
            data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            e.close()
            return f"HTTP {e.code}: {raw.decode('utf-8', errors='replace')[:300]}", \
                (time.perf_counter() - start) * 1000.0
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
            return f"request failed: {e}", (time.perf_counter() - start) * 1000.0
        latency_ms = (time.perf_counter() - start) * 1000.0
        if status != 200:
            return f"HTTP {status}", latency_ms
        return _check_predictions(raw, len(instances)), latency_ms



class _SubprocessServer(_Server):
    """`python -m serving.server` in a fresh process."""

    proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        pythonpath = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="2")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.server"] + self.server_args(port),
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            if "Address already in use" in self.log_tail():
                raise _PortTaken(f"port of {self.url} was taken: {self.log_tail()}")
            raise _NotServable(f"server exited with code {code} before the model was "
                               f"available; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logging.warning("Infra validation server pid %d ignored SIGTERM; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait()


class _InProcessServer(_Server):
    """serving.server's ModelServer inside this process; its log goes to `log_path`."""

    server = None
    _handler: Optional[pylogging.Handler] = None
    _saved_level = pylogging.NOTSET

    def start(self) -> None:
        from serving.errors import ServingError
        from serving.model_config import ModelConfigError
        from serving.server import ModelServer, ServerOptions

        port = _free_port()
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
            self.server = ModelServer(ServerOptions(
                model_name=self.model_name, model_base_path=self.base_path, host="127.0.0.1",
                rest_api_port=port, port=0, file_system_poll_wait_seconds=30))
        except OSError as e:
            if "Address already in use" in str(e):
                raise _PortTaken(f"port of {self.url} was taken: {e}") from e
            raise _NotServable(f"server could not start: {e}") from e
        except (ModelConfigError, ServingError) as e:
            raise _NotServable(f"server failed to load the model: {e}") from e
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


SERVERS = {"in_process": _InProcessServer, "subprocess": _SubprocessServer}
SERVER_MODES = tuple(SERVERS)


def _check_predictions(raw: bytes, expected_rows: int) -> Optional[str]:
    """None if `raw` is a row-format answer with the Trainer's outputs, else what is wrong."""
    try:
        predictions = json.loads(raw)["predictions"]
    except (ValueError, KeyError, TypeError):
        return f"response is not a predictions object: {raw[:200]!r}"
    if not isinstance(predictions, list) or len(predictions) != expected_rows:
        return f"expected {expected_rows} prediction rows, got {str(predictions)[:200]}"
    for row in predictions:
        missing = [k for k in EXPECTED_OUTPUTS if not isinstance(row, dict) or k not in row]
        if missing:
            return f"prediction lacks outputs {missing}: {str(row)[:200]}"
        probabilities = row["probabilities"]
        if (not isinstance(probabilities, list) or not probabilities
                or not all(isinstance(p, (int, float)) and math.isfinite(p) for p in probabilities)):
            return f"'probabilities' is not a list of finite numbers: {str(probabilities)[:200]}"
    return None


class Executor(base_executor.BaseExecutor):
    """Loads the candidate into Conveyor's server, sends real requests, writes the InfraBlessing."""

    # Class attributes so tests (or a subclass) can tighten them.
    load_timeout_s = 300.0
    request_timeout_s = 30.0

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        num_requests = int(exec_properties.get(NUM_REQUESTS_KEY) or 0)
        budget_ms = float(exec_properties.get(P99_BUDGET_MS_KEY))
        model_name = exec_properties.get(MODEL_NAME_KEY) or DEFAULT_MODEL_NAME
        mode = exec_properties.get(SERVER_KEY) or "in_process"
        if num_requests < 1:
            raise ValueError(f"{NUM_REQUESTS_KEY} must be at least 1, got {num_requests}")
        if mode not in SERVERS:
            raise ValueError(f"{SERVER_KEY} must be one of {SERVER_MODES}, got {mode!r}")

        input_name, instances = read_raw_instances(examples.uri, num_requests)
        model_path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        blessing.set_string_custom_property(MODEL_NAME_KEY, model_name)
        blessing.set_float_custom_property(P99_BUDGET_MS_KEY, budget_ms)

        workdir = tempfile.mkdtemp(prefix="conveyor-infra-validation-")
        server = SERVERS[mode](model_name, os.path.join(workdir, "models", model_name),
                               os.path.join(workdir, SERVER_LOG_FILENAME))
        latencies: List[float] = []
        failures: List[str] = []
        try:
            io_utils.copy_dir(model_path, os.path.join(server.base_path, str(VERSION)))
            logging.info("Infra validation: serving %s as %s version %d, %s (log: %s)",
                         model_path, model_name, VERSION, mode.replace("_", " "), server.log_path)
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    server.start()
                    server.wait_available(self.load_timeout_s)
                    break
                except _PortTaken:
                    server.stop()
                    if attempt == PORT_ATTEMPTS:
                        raise
                    logging.info("Infra validation: %s was taken; retrying on another port",
                                 server.url)
            logging.info("Infra validation: model AVAILABLE; sending %d %r requests",
                         num_requests, input_name)
            for i in range(num_requests):
                error, latency_ms = server.predict([instances[i % len(instances)]],
                                                   self.request_timeout_s)
                latencies.append(latency_ms)
                if error:
                    failures.append(f"request {i}: {error}")
            reason = _verdict(latencies, failures, budget_ms)
        except _NotServable as e:
            reason = str(e)
        finally:
            server.stop()
            self._keep_server_log(server.log_path, blessing.uri)
            shutil.rmtree(workdir, ignore_errors=True)

        blessing.set_int_custom_property("num_requests", len(latencies))
        blessing.set_int_custom_property("num_failures", len(failures))
        if latencies:
            blessing.set_float_custom_property("p50_latency_ms", percentile(latencies, 50))
            blessing.set_float_custom_property("p99_latency_ms", percentile(latencies, 99))
        if reason is None:
            _mark_blessed(blessing)
            logging.info("Infra validation passed: %d requests, p50 %.1f ms, p99 %.1f ms "
                         "(budget %.1f ms)", len(latencies), percentile(latencies, 50),
                         percentile(latencies, 99), budget_ms)
        else:
            _mark_not_blessed(blessing, reason)

    @staticmethod
    def _keep_server_log(log_path: str, blessing_uri: str) -> None:
        if os.path.exists(log_path):
            try:
                io_utils.copy_file(log_path, os.path.join(blessing_uri, SERVER_LOG_FILENAME), True)
            except Exception as e:  # the log is a convenience; never fail the verdict over it
                logging.warning("Could not keep the infra validation server log: %s", e)


def _verdict(latencies: List[float], failures: List[str], budget_ms: float) -> Optional[str]:
    """None when blessed, else the reason."""
    if failures:
        shown = "; ".join(failures[:3])
        return f"{len(failures)} of {len(latencies)} requests failed: {shown}"
    p99 = percentile(latencies, 99)
    if not p99 <= budget_ms:
        return f"p99 latency {p99:.3f} ms exceeds the budget of {budget_ms:g} ms"
    return None


def _mark_blessed(blessing: types.Artifact) -> None:
    io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILENAME), "")
    blessing.set_int_custom_property(BLESSED_KEY, 1)


def _mark_not_blessed(blessing: types.Artifact, reason: str) -> None:
    logging.warning("Model failed infra validation: %s", reason)
    io_utils.write_string_file(os.path.join(blessing.uri, NOT_BLESSED_FILENAME), "")
    blessing.set_int_custom_property(BLESSED_KEY, 0)
    blessing.set_string_custom_property("reason", reason)


class ConveyorInfraValidator(base_component.BaseComponent):
    """Infra-validates a trained model in Conveyor's TF Serving-compatible server.

    TFX's InfraValidator needs Docker or Kubernetes to launch TF Serving; Conveyor has
    neither, but ships serving/server.py with the same REST API and warmup replay. This
    component loads the candidate there (`server`: in this process, or a fresh subprocess),
    sends `num_requests` real :predict requests built
    from the eval split, and blesses it only if all succeed within `p99_budget_ms` (p99).
    Feed `outputs['blessing']` to the Pusher's `infra_blessing` input.
    """

    SPEC_CLASS = InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
                 num_requests: int = 50, p99_budget_ms: float = 500.0,
                 model_name: str = DEFAULT_MODEL_NAME, server: str = "in_process"):
        if server not in SERVER_MODES:
            raise ValueError(f"server must be one of {SERVER_MODES}, got {server!r}")
        if isinstance(p99_budget_ms, int):
            p99_budget_ms = float(p99_budget_ms)
        spec = InfraValidatorSpec(
            model=model, examples=examples,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            num_requests=num_requests, p99_budget_ms=p99_budget_ms, model_name=model_name,
            server=server)
        super().__init__(spec=spec)
