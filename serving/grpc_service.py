"""TF Serving's gRPC API: PredictionService and ModelService on the standard stubs."""
import logging
from concurrent import futures
from typing import Any, List, Sequence, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.metrics import Metrics
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.health import add_health_service
from serving.predictor import Predictor
from serving.traffic import ARM_METADATA, REQUEST_ID_METADATA, UNIT_METADATA, new_request_id

log = logging.getLogger("conveyor.serving.grpc")


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, metrics: Metrics):
        self.predictor = predictor
        self.metrics = metrics

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        """TF Serving's Predict. Conveyor extensions: an unversioned request may be routed by
        the A/B split (metadata `x-conveyor-unit` makes its arm sticky); the answering version
        is in the response's model_spec as in TF Serving, the arm and (feedback on) the
        request id in the initial metadata (`x-conveyor-arm`, `x-conveyor-request-id`)."""
        try:
            with self.metrics.track("predict", "grpc") as outcome:
                unit = next((v for k, v in (context.invocation_metadata() or ())
                             if k == UNIT_METADATA), None)
                servable, arm = self.predictor.route(request.model_spec, unit)
                outcome.model_name, outcome.version, outcome.arm = servable.name, str(servable.version), arm
                request_id = new_request_id() if self.predictor.on_prediction is not None else ""
                signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
                inputs = {}
                for key, proto in request.inputs.items():
                    try:
                        inputs[key] = tf.make_ndarray(proto)
                    except (TypeError, ValueError) as e:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"Input '{key}' is not a valid TensorProto: {e}") from e
                outputs = self.predictor.predict(servable, signature_name, inputs,
                                                 request.output_filter, request_id=request_id,
                                                 arm=arm)
        except ServingError as e:
            _abort(context, e)
        metadata = ([(ARM_METADATA, arm)] if arm else []) + \
            ([(REQUEST_ID_METADATA, request_id)] if request_id else [])
        if metadata:
            context.send_initial_metadata(tuple(metadata))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        return self._examples_api("classify", self.predictor.classify, request, context)

    def Regress(self, request: regression_pb2.RegressionRequest, context):
        return self._examples_api("regress", self.predictor.regress, request, context)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        return self._examples_api("multi_inference", self.predictor.multi_inference, request, context)

    def _examples_api(self, api: str, run, request, context):
        try:
            with self.metrics.track(api, "grpc") as outcome:
                servable, response = run(request)
                outcome.model_name, outcome.version = servable.name, str(servable.version)
        except ServingError as e:
            _abort(context, e)
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            _, response = self.predictor.metadata(request)
        except ServingError as e:
            _abort(context, e)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, predictor: Predictor):
        self.manager = predictor.manager

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        spec = request.model_spec
        try:
            if not spec.name:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            version = spec.version.value if spec.HasField("version") else None
            return self.manager.model_status(spec.name, version, spec.version_label or None)
        except ServingError as e:
            _abort(context, e)

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        """Replaces the served models, like TF Serving: success only once every model of the new
        config has an available version, else UNKNOWN "N model(s) did not become available";
        the response carries the status."""
        response = model_management_pb2.ReloadConfigResponse()
        if request.config.WhichOneof("config") != "model_config_list":
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = "ReloadConfigRequest must carry a model_config_list"
            return response
        try:
            self.manager.apply_config(list(request.config.model_config_list.config),
                                      require_available=True)
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


def make_grpc_server(addresses: List[str], predictor: Predictor, metrics: Metrics,
                     max_message_bytes: int, workers: int = 16,
                     channel_arguments: Sequence[Tuple[str, Any]] = (),
                     health: bool = False) -> grpc.Server:
    """The gRPC server (not started) on every address ("host:port" or "unix:PATH").

    Args:
      predictor, metrics: shared with the REST front end.
      max_message_bytes: receive/send limit.
      workers: threads answering requests (--grpc_max_threads).
      channel_arguments: extra grpc server options (--grpc_channel_arguments).
      health: add grpc.health.v1.Health (--enable_grpc_healthcheck_service).
    Raises:
      OSError: an address cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)] + list(channel_arguments))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor), server)
    if health:
        add_health_service(server)
    for address in addresses:
        if server.add_insecure_port(address) == 0:
            raise OSError(f"Could not bind gRPC server to {address}")
    return server
