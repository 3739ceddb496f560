"""Protocol-neutral request handling shared by the REST and gRPC front ends.

Both front ends translate their wire format into these calls, so model resolution,
signature checks, batching and error codes are identical over REST and gRPC.
"""
import re
from typing import Dict, Iterable, Optional, Tuple

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.batching import Batcher
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.model_manager import ModelManager, Servable

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"


class Predictor:
    """Resolves a ModelSpec to a loaded Servable and runs signatures on numpy inputs.

    Args:
      manager: the ModelManager holding the loaded versions.
      batcher: merges concurrent requests when given (--enable_batching).
      on_predict: called as on_predict(model, version, inputs) after each successful predict;
        it must be cheap and must not raise (serving.server.PredictHook).
    Thread safe: the front ends call it from many threads.
    """

    def __init__(self, manager: ModelManager, batcher: Optional[Batcher] = None, on_predict=None):
        self.manager = manager
        self.batcher = batcher
        self.on_predict = on_predict

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        version = spec.version.value if spec.HasField("version") else None
        return self.manager.get_servable(spec.name, version, spec.version_label or None)

    def predict(self, servable: Servable, signature_name: str, inputs: Dict[str, np.ndarray],
                output_filter: Iterable[str] = ()) -> Dict[str, np.ndarray]:
        """Runs a predict signature; `output_filter` keeps only the named outputs (gRPC)."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = servable.signature(signature_name)
        wanted = list(output_filter)
        for alias in wanted:
            if alias not in signature.outputs:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} Outputs "
                                   f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        _check_shapes(signature, inputs)
        try:
            if self.batcher is not None:
                key = (servable.name, servable.version, signature_name)
                outputs = self.batcher.run(key, lambda x: servable.run(signature_name, x), inputs)
            else:
                outputs = servable.run(signature_name, inputs)
        except ServingError as e:
            raise ServingError(e.code, _one_line(e)) from e
        if self.on_predict is not None:
            self.on_predict(servable.name, servable.version, inputs)
        if wanted:
            outputs = {k: v for k, v in outputs.items() if k in wanted}
        return outputs

    @staticmethod
    def check_method(servable: Servable, signature_name: str, api: str) -> None:
        """Classify/Regress need classify/regress signatures, as in TF Serving.

        Conveyor's models only export predict signatures, so this always ends in
        TF Serving's INVALID_ARGUMENT; running real classify/regress signatures is not
        implemented (UNIMPLEMENTED) because no Conveyor model has one.
        """
        name = signature_name or DEFAULT_SIGNATURE
        if name not in servable.signature_defs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"No signature was found with the name: {name}")
        expected = CLASSIFY_METHOD if api == "classify" else REGRESS_METHOD
        method = servable.signature_defs[name].method_name
        if method != expected:
            kind = "classification" if api == "classify" else "regression"
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected {kind} signature method_name to be {expected}. "
                               f"Was: {method}")
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conveyor's model server does not run {api} signatures; "
                           "use :predict or TF Serving")

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                 ) -> Tuple[Servable, get_model_metadata_pb2.GetModelMetadataResponse]:
        if not request.metadata_field:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {field} is not supported")
        servable = self.servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return servable, response


def _check_shapes(signature, inputs: Dict[str, np.ndarray]) -> None:
    """Rejects inputs whose shape the signature does not accept (-1 matches any size).

    TF Serving leaves this to the graph, whose error names an internal op ("input must be a
    vector, got shape: [1,1]"); checking up front gives the same INVALID_ARGUMENT with a
    message that names the input.
    """
    for key, value in inputs.items():
        info = signature.inputs.get(key)
        if info is None or info.tensor_shape.unknown_rank:
            continue  # unknown names are reported by Servable.run
        expected = [d.size for d in info.tensor_shape.dim]
        shape = list(np.shape(value))
        if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape)):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Input '{key}' has shape {shape}; the signature expects "
                               f"{expected} (-1: any size)")


_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node |Node: |<stack traces unavailable>|\s+File \")")


def _one_line(error: ServingError) -> str:
    """TF's multi-line graph error -> its message plus the failing node, on one line.

    "Graph execution error:\n\nDetected at node X ...\nInvalid PNG data, size 68\n\t [[{{node X}}]]"
    becomes "Invalid PNG data, size 68 (node X)". When the TF message quotes raw input bytes,
    TF's own conversion to str fails (UnicodeDecodeError); its `object` still holds the text.
    """
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError) and isinstance(cause.object, bytes):
        text = cause.object.decode("utf-8", errors="replace")
    else:
        text = error.message
    node = re.search(r"Detected at node '?([^\s']+)", text)
    text = re.sub(r"\[\[\{\{.*?\}\}\]\]|\[Op:[^\]]*\]", "", text)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not _TF_NOISE.match(line)]
    message = "; ".join(lines) or error.message.strip()
    if node and node.group(1) not in message:
        message += f" (node {node.group(1)})"
    return " ".join(message.split())
