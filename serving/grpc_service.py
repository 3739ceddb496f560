"""TF Serving's gRPC API (PredictionService, ModelService) on the standard stubs, served by
grpc.aio on its own event-loop thread.

Why grpc.aio and not the thread-pool `grpc.server`: on this project's 2-core benchmark the
bare transport answered 3,915 unary calls/s with grpc.aio against 2,899 with a 16-thread
pool (bench/results/serving.md), and a predict call only waits for the batcher, so it needs no
thread of its own. Work that blocks (model runs without batching, Classify/Regress, metadata,
model status, config reloads) and the tensor conversion of large requests run on a thread
pool of --grpc_max_threads, so the event loop never waits on TensorFlow.
"""
import asyncio
import concurrent.futures
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.metrics import Metrics
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.health import HealthService, add_health_service
from serving.predictor import Predictor
from serving.traffic import ARM_METADATA, REQUEST_ID_METADATA, UNIT_METADATA, new_request_id

log = logging.getLogger("conveyor.serving.grpc")

# Requests larger than this convert their tensors on the thread pool, not on the event loop
# (a 50,000-image request takes seconds to convert; a one-image request takes microseconds).
_INLINE_CONVERSION_BYTES = 256 * 1024


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, metrics: Metrics, pool: ThreadPoolExecutor):
        self.predictor = predictor
        self.metrics = metrics
        self.pool = pool

    async def _offload(self, size: int, fn: Callable[[], Any]) -> Any:
        if size <= _INLINE_CONVERSION_BYTES:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        """TF Serving's Predict. Conveyor extensions: an unversioned request may be routed by
        the A/B split (metadata `x-conveyor-unit` makes its arm sticky); the answering version
        is in the response's model_spec as in TF Serving, the arm and (feedback on) the
        request id in the initial metadata (`x-conveyor-arm`, `x-conveyor-request-id`)."""
        size = request.ByteSize()
        try:
            with self.metrics.track("predict", "grpc") as outcome:
                unit = next((v for k, v in (context.invocation_metadata() or ())
                             if k == UNIT_METADATA), None)
                servable, arm = self.predictor.route(request.model_spec, unit)
                outcome.model_name, outcome.version, outcome.arm = servable.name, str(servable.version), arm
                request_id = new_request_id() if self.predictor.on_prediction is not None else ""
                signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
                inputs = await self._offload(size, lambda: _inputs(request))
                outputs = await self.predictor.predict_async(
                    servable, signature_name, inputs, self.pool, request.output_filter,
                    request_id=request_id, arm=arm)
        except ServingError as e:
            await context.abort(e.code, e.message)
        metadata = ([(ARM_METADATA, arm)] if arm else []) + \
            ([(REQUEST_ID_METADATA, request_id)] if request_id else [])
        if metadata:
            await context.send_initial_metadata(tuple(metadata))
        return await self._offload(size, lambda: _response(servable, signature_name, outputs))

    async def Classify(self, request: classification_pb2.ClassificationRequest, context):
        return await self._examples_api("classify", self.predictor.classify, request, context)

    async def Regress(self, request: regression_pb2.RegressionRequest, context):
        return await self._examples_api("regress", self.predictor.regress, request, context)

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        return await self._examples_api("multi_inference", self.predictor.multi_inference,
                                        request, context)

    async def _examples_api(self, api: str, run, request, context):
        try:
            with self.metrics.track(api, "grpc") as outcome:
                servable, response = await asyncio.get_running_loop().run_in_executor(
                    self.pool, run, request)
                outcome.model_name, outcome.version = servable.name, str(servable.version)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return response

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            _, response = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.predictor.metadata, request)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return response


def _inputs(request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
    inputs = {}
    for key, proto in request.inputs.items():
        try:
            inputs[key] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Input '{key}' is not a valid TensorProto: {e}") from e
    return inputs


def _response(servable, signature_name: str, outputs: Dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, predictor: Predictor, pool: ThreadPoolExecutor):
        self.manager = predictor.manager
        self.pool = pool

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        spec = request.model_spec
        try:
            if not spec.name:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            version = spec.version.value if spec.HasField("version") else None
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self.manager.model_status, spec.name, version, spec.version_label or None)
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        """Replaces the served models, like TF Serving: success only once every model of the new
        config has an available version, else UNKNOWN "N model(s) did not become available";
        the response carries the status."""
        response = model_management_pb2.ReloadConfigResponse()
        if request.config.WhichOneof("config") != "model_config_list":
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = "ReloadConfigRequest must carry a model_config_list"
            return response
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.pool, lambda: self.manager.apply_config(
                    list(request.config.model_config_list.config), require_available=True))
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
        return response


def parse_channel_arguments(text: str) -> List[Tuple[str, Any]]:
    """--grpc_channel_arguments "k=v,k2=v2" -> [(k, int or str)] (server.cc parseGrpcChannelArgs:
    a value that parses as an int32 is passed as an int, anything else as a string).

    Raises:
      ValueError: an entry without '='.
    """
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: '{item}' is not key=value")
        try:
            number = int(value)
            arguments.append((key, number if -(2 ** 31) <= number < 2 ** 31 else value))
        except ValueError:
            arguments.append((key, value))
    return arguments


class GrpcServer:
    """The gRPC front end: grpc.aio on its own event-loop thread, bound on construction.

    Args:
      addresses: "host:port" or "unix:PATH" each.
      predictor, metrics: shared with the REST front end.
      max_message_bytes: receive/send limit.
      workers: threads for blocking work (--grpc_max_threads).
      channel_arguments: extra grpc server options (--grpc_channel_arguments).
      health: add grpc.health.v1.Health (--enable_grpc_healthcheck_service).
    Raises:
      OSError: an address cannot be bound.
    Thread safety: `start`, `begin_stop` and `wait_stopped` are called from one controlling
    thread.
    """

    def __init__(self, addresses: List[str], predictor: Predictor, metrics: Metrics,
                 max_message_bytes: int, workers: int = 16,
                 channel_arguments: Sequence[Tuple[str, Any]] = (), health: bool = False):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc")
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._stopping: Optional[concurrent.futures.Future] = None
        self._health: Optional[HealthService] = None
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)] + list(channel_arguments)
        try:
            self._server = self._loop.run_until_complete(
                self._setup(addresses, predictor, metrics, options, health))
        except BaseException:
            self._pool.shutdown(wait=False)
            self._loop.close()
            raise

    async def _setup(self, addresses, predictor, metrics, options, health) -> grpc.aio.Server:
        server = grpc.aio.server(options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(predictor, metrics, self._pool), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(predictor, self._pool), server)
        if health:
            self._health = add_health_service(server)
        for address in addresses:
            try:
                bound = server.add_insecure_port(address)
            except RuntimeError as e:  # newer grpcio raises instead of returning 0
                raise OSError(f"Could not bind gRPC server to {address}: {e}") from e
            if bound == 0:
                raise OSError(f"Could not bind gRPC server to {address}")
        return server

    def start(self) -> None:
        """Starts answering calls on a daemon thread; returns at once."""
        self._loop.run_until_complete(self._server.start())
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._thread.start()

    def begin_stop(self, grace_seconds: float) -> None:
        """Refuses new calls at once and gives calls in flight up to `grace_seconds` (then
        cancels them); returns at once (see `wait_stopped`)."""
        if self._thread is None:
            self._loop.run_until_complete(self._server.stop(None))
            return
        self._stopping = asyncio.run_coroutine_threadsafe(self._stop(grace_seconds), self._loop)

    async def _stop(self, grace_seconds: float) -> None:
        if self._health is not None:
            self._health.shut_down()
        await self._server.stop(grace_seconds)

    def wait_stopped(self, timeout_seconds: float = 60) -> None:
        """Waits for `begin_stop` to finish, then ends the event-loop thread and the pool."""
        if self._stopping is not None:
            self._stopping.result(timeout=timeout_seconds)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False)
        self._loop.close()
