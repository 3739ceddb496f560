"""The infra validator's executor: serve the candidate, send real requests, write the verdict.

The blessing marks are TFX's (tfx/components/infra_validator/executor.py `_mark_blessed` /
`_mark_not_blessed`), so TFX's Pusher and tfx.components.util.model_utils.is_infra_validated
read Conveyor's InfraBlessing as their own.
"""
import math
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components.errors import InfraInputError, ModelNotServable, ServerPortTaken
from components.infra_validator.requests import read_raw_instances
from components.infra_validator.runners import SERVED_VERSION, SERVER_MODES, SERVERS, ServerRunner
from serving import contract
from serving.client import PredictClient, PredictError

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
BLESSING_KEY = "blessing"
NUM_REQUESTS_KEY = "num_requests"
P99_BUDGET_MS_KEY = "p99_budget_ms"
MODEL_NAME_KEY = "model_name"
SERVER_KEY = "server"  # one of runners.SERVER_MODES
# Only part of TFX's cache key (see ConveyorInfraValidator's `remeasure`); the executor ignores it.
REMEASURE_KEY = "remeasure"

# Same artifact contract as tfx.components.infra_validator.executor (_mark_blessed /
# _mark_not_blessed); tfx.components.util.model_utils.is_infra_validated reads BLESSED_KEY.
BLESSED_KEY = "blessed"
BLESSED_FILENAME = "INFRA_BLESSED"
NOT_BLESSED_FILENAME = "INFRA_NOT_BLESSED"
SERVER_LOG_FILENAME = "server.log"

DEFAULT_MODEL_NAME = "infra-validation-model"
DEFAULT_SERVER = "in_process"
PORT_ATTEMPTS = 3
ERROR_CHARS = 300  # of a failed request's error kept in the reason


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of `values` at or below it.

    Args:
      values: any numbers, e.g. latencies in ms; need not be sorted.
      q: the percentile, 0..100 (q <= 100/len(values) gives the minimum).
    Returns:
      One of `values` (same unit), or NaN when `values` is empty.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def verdict(latencies_ms: Sequence[float], failures: Sequence[str], budget_ms: float) -> Optional[str]:
    """Whether the requests bless the model.

    Args:
      latencies_ms: one latency per request sent, in ms.
      failures: one message per failed request (empty when all succeeded).
      budget_ms: the p99 latency budget, in ms.
    Returns:
      None when blessed: no failure and p99 (`percentile`) <= budget_ms. Otherwise the reason:
      the failure count with the first three failures, or the p99 against the budget (also
      when there are no latencies, whose p99 is NaN).
    """
    if failures:
        shown = "; ".join(failures[:3])
        return f"{len(failures)} of {len(latencies_ms)} requests failed: {shown}"
    p99 = percentile(latencies_ms, 99)
    if not p99 <= budget_ms:
        return f"p99 latency {p99:.3f} ms exceeds the budget of {budget_ms:g} ms"
    return None


def check_predictions(predictions: Any, expected_rows: int) -> Optional[str]:
    """Whether a :predict answer (its row-format `predictions`) meets the served-model contract.

    Args:
      predictions: the response's "predictions" value, as PredictClient.predict returns it.
      expected_rows: the number of instances sent.
    Returns:
      None if it is a list of `expected_rows` objects, each with every contract.OUTPUTS key and
      "probabilities" a non-empty list of finite numbers; otherwise what is wrong.
    """
    if not isinstance(predictions, list) or len(predictions) != expected_rows:
        return f"expected {expected_rows} prediction rows, got {str(predictions)[:200]}"
    for row in predictions:
        missing = [k for k in contract.OUTPUTS if not isinstance(row, dict) or k not in row]
        if missing:
            return f"prediction lacks outputs {missing}: {str(row)[:200]}"
        probabilities = row[contract.PROBABILITIES]
        if (not isinstance(probabilities, list) or not probabilities
                or not all(isinstance(p, (int, float)) and math.isfinite(p) for p in probabilities)):
            return f"'probabilities' is not a list of finite numbers: {str(probabilities)[:200]}"
    return None


def timed_predict(client: PredictClient, model_name: str, instances: List[Any]) -> Tuple[Optional[str], float]:
    """One REST :predict to serving_default, checked against the contract.

    Args:
      client: a client of the server, whose `timeout` bounds the request.
      model_name: the served model's name.
      instances: the row-format instances to send.
    Returns:
      (None, or what went wrong: HTTP status and error, unreachable server, timeout, or a
      `check_predictions` message; the latency in ms from sending to the parsed answer).
    """
    start = time.perf_counter()
    try:
        predictions = client.predict(model_name, instances, signature_name=contract.DEFAULT_SIGNATURE)
        error = None
    except PredictError as e:
        predictions, error = None, str(e)[:ERROR_CHARS]
    except OSError as e:  # a timeout or reset while reading the answer
        predictions, error = None, f"request failed: {e}"
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or JSON without "predictions"
        predictions, error = None, f"response is not a predictions object: {e!r}"[:ERROR_CHARS]
    latency_ms = (time.perf_counter() - start) * 1000.0
    return error or check_predictions(predictions, len(instances)), latency_ms


def mark_blessed(blessing: types.Artifact) -> None:
    """Writes INFRA_BLESSED into the blessing's uri and sets `blessed` = 1."""
    io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILENAME), "")
    blessing.set_int_custom_property(BLESSED_KEY, 1)


def mark_not_blessed(blessing: types.Artifact, reason: str) -> None:
    """Writes INFRA_NOT_BLESSED into the blessing's uri, sets `blessed` = 0 and `reason`."""
    logging.warning("Model failed infra validation: %s", reason)
    io_utils.write_string_file(os.path.join(blessing.uri, NOT_BLESSED_FILENAME), "")
    blessing.set_int_custom_property(BLESSED_KEY, 0)
    blessing.set_string_custom_property("reason", reason)


class Executor(base_executor.BaseExecutor):
    """Loads the candidate into Conveyor's server, sends real requests, writes the InfraBlessing."""

    # Class attributes so tests (or a subclass) can tighten them.
    load_timeout_s = 300.0
    request_timeout_s = 30.0

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """Validates the model and writes the blessing (see the package docstring).

        Args:
          input_dict: MODEL_KEY (one Model, serving model under Format-Serving) and
            EXAMPLES_KEY (one Examples with an eval split of raw features).
          output_dict: BLESSING_KEY (one InfraBlessing): marked blessed or not, with custom
            properties num_requests, num_failures, p50_latency_ms and p99_latency_ms (ms,
            when any request was sent), model_name, p99_budget_ms and `reason` when not
            blessed; the server log is kept beside it as server.log.
          exec_properties: NUM_REQUESTS_KEY (>= 1), P99_BUDGET_MS_KEY (ms), MODEL_NAME_KEY,
            SERVER_KEY (one of SERVER_MODES, default "in_process").
        Raises:
          InfraInputError: a bad parameter, or an eval split without usable raw examples. A
            model that does not load or answer is a verdict, not an error.
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        num_requests = int(exec_properties.get(NUM_REQUESTS_KEY) or 0)
        budget_ms = float(exec_properties.get(P99_BUDGET_MS_KEY))
        model_name = exec_properties.get(MODEL_NAME_KEY) or DEFAULT_MODEL_NAME
        mode = exec_properties.get(SERVER_KEY) or DEFAULT_SERVER
        if num_requests < 1:
            raise InfraInputError(f"{NUM_REQUESTS_KEY} must be at least 1, got {num_requests}")
        if mode not in SERVERS:
            raise InfraInputError(f"{SERVER_KEY} must be one of {SERVER_MODES}, got {mode!r}")

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
            io_utils.copy_dir(model_path, os.path.join(server.base_path, str(SERVED_VERSION)))
            logging.info("Infra validation: serving %s as %s version %d, %s (log: %s)",
                         model_path, model_name, SERVED_VERSION, mode.replace("_", " "), server.log_path)
            self._start(server)
            logging.info("Infra validation: model AVAILABLE; sending %d %r requests",
                         num_requests, input_name)
            client = PredictClient(server.url, timeout=self.request_timeout_s)
            for i in range(num_requests):
                error, latency_ms = timed_predict(client, model_name, [instances[i % len(instances)]])
                latencies.append(latency_ms)
                if error:
                    failures.append(f"request {i}: {error}")
            reason = verdict(latencies, failures, budget_ms)
        except ModelNotServable as e:
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
            mark_blessed(blessing)
            logging.info("Infra validation passed: %d requests, p50 %.1f ms, p99 %.1f ms "
                         "(budget %.1f ms)", len(latencies), percentile(latencies, 50),
                         percentile(latencies, 99), budget_ms)
        else:
            mark_not_blessed(blessing, reason)

    def _start(self, server: ServerRunner) -> None:
        """Starts `server` and waits for the model, on a new port when one was taken."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                server.start()
                server.wait_available(self.load_timeout_s)
                return
            except ServerPortTaken:
                server.stop()
                if attempt == PORT_ATTEMPTS:
                    raise
                logging.info("Infra validation: %s was taken; retrying on another port", server.url)

    @staticmethod
    def _keep_server_log(log_path: str, blessing_uri: str) -> None:
        if os.path.exists(log_path):
            try:
                io_utils.copy_file(log_path, os.path.join(blessing_uri, SERVER_LOG_FILENAME), True)
            except Exception as e:  # the log is a convenience; never fail the verdict over it
                logging.warning("Could not keep the infra validation server log: %s", e)
