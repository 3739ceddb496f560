"""TF Serving's gRPC API: PredictionService and ModelService on the standard stubs."""
import logging
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.metrics import Metrics
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.predictor import Predictor

log = logging.getLogger("conveyor.serving.grpc")


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, metrics: Metrics):
        self.predictor = predictor
        self.metrics = metrics

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        try:
            with self.metrics.track("predict", "grpc") as outcome:
                servable = self.predictor.servable(request.model_spec)
                outcome.model_name, outcome.version = servable.name, str(servable.version)
                signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
                inputs = {}
                for key, proto in request.inputs.items():
                    try:
                        inputs[key] = tf.make_ndarray(proto)
                    except (TypeError, ValueError) as e:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"Input '{key}' is not a valid TensorProto: {e}") from e
                outputs = self.predictor.predict(servable, signature_name, inputs,
                                                 request.output_filter)
        except ServingError as e:
            _abort(context, e)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        return self._classify_or_regress("classify", request, context)

    def Regress(self, request: regression_pb2.RegressionRequest, context):
        return self._classify_or_regress("regress", request, context)

    def _classify_or_regress(self, api: str, request, context):
        try:
            with self.metrics.track(api, "grpc") as outcome:
                servable = self.predictor.servable(request.model_spec)
                outcome.model_name, outcome.version = servable.name, str(servable.version)
                self.predictor.check_method(servable, request.model_spec.signature_name, api)
        except ServingError as e:
            _abort(context, e)

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
        """Replaces the served models, like TF Serving; the response carries the status."""
        response = model_management_pb2.ReloadConfigResponse()
        if request.config.WhichOneof("config") != "model_config_list":
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = "ReloadConfigRequest must carry a model_config_list"
            return response
        try:
            self.manager.apply_config(list(request.config.model_config_list.config))
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
        return response


def make_grpc_server(host: str, port: int, predictor: Predictor, metrics: Metrics,
                     max_message_bytes: int, workers: int = 16) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"Could not bind gRPC server to {host}:{port}")
    return server
