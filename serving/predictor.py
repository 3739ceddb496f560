"""Protocol-neutral request handling shared by the REST and gRPC front ends.

Both front ends translate their wire format into these calls, so model resolution,
signature checks, batching and error codes are identical over REST and gRPC.
"""
import asyncio
import concurrent.futures
import dataclasses
import re
import time
from concurrent.futures import Executor
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2,
                                     model_pb2, regression_pb2)

from serving import contract, images, inference
from serving.batching import Batcher
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.model_manager import ModelManager
from serving.servables import Servable
from serving.traffic import TrafficSplit

SIGNATURE_DEF_FIELD = "signature_def"


@dataclasses.dataclass
class PredictionEvent:
    """One successful Predict that was given a request id (feedback on).

    Fields:
      request_id: the id returned to the client (serving.traffic.new_request_id).
      model, version: the servable that answered; path: its version directory.
      signature: the signature run (default filled in).
      arm: "stable" / "canary" when the traffic split chose the version, else "".
      inputs: {input alias: numpy array} as fed; outputs: {output alias: numpy array}.
      time: Unix time of the answer, seconds.
    """
    request_id: str
    model: str
    version: int
    path: str
    signature: str
    arm: str
    inputs: Dict[str, Any]
    outputs: Dict[str, Any]
    time: float


# on_prediction(event) after each successful Predict with a request id; cheap, never raises.
PredictionHook = Callable[[PredictionEvent], None]


class Predictor:
    """Resolves a ModelSpec to a loaded Servable and runs its signatures.

    Args:
      manager: the ModelManager holding the loaded versions.
      batcher: merges concurrent predict requests when given (--enable_batching).
      on_predict: called as on_predict(model, version, inputs) after each successful predict;
        it must be cheap and must not raise (serving.server.PredictHook).
      method_name_check: --enable_signature_method_name_check (TF Serving's default: off, so
        Classify/Regress accept any signature shaped like a classify/regress one).
      split: --ab_split's TrafficSplit for unversioned Predicts (None: TF Serving's rule).
      on_prediction: PredictionHook; when given, the front ends give every Predict a
        request id and it is called with the PredictionEvent after the outputs.
    Thread safe: the front ends call it from many threads.
    """

    def __init__(self, manager: ModelManager, batcher: Optional[Batcher] = None, on_predict=None,
                 method_name_check: bool = False, split: Optional[TrafficSplit] = None,
                 on_prediction: Optional[PredictionHook] = None):
        self.manager = manager
        self.batcher = batcher
        self.on_predict = on_predict
        self.method_name_check = method_name_check
        self.split = split
        self.on_prediction = on_prediction

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        version = spec.version.value if spec.HasField("version") else None
        return self.manager.get_servable(spec.name, version, spec.version_label or None)

    def route(self, spec: model_pb2.ModelSpec, unit: Optional[str] = None) -> Tuple[Servable, str]:
        """The servable of a Predict: `servable(spec)`, except that an unversioned request
        (no version, no label) of a model with a split share goes where the TrafficSplit
        sends it (serving/traffic.py).

        Args:
          spec: the request's ModelSpec.
          unit: the request's unit key (sticky arm), or None (random arm).
        Returns:
          (servable, arm): arm is "stable" / "canary" when the split chose, else "".
        Raises:
          ServingError: as `servable`.
        """
        if (self.split is not None and spec.name and not spec.HasField("version")
                and not spec.version_label):
            share = self.split.share(spec.name)
            if share is not None:
                return self.manager.route(spec.name, share, self.split.draw(spec.name, unit))
        return self.servable(spec), ""

    def predict(self, servable: Servable, signature_name: str, inputs: Dict[str, np.ndarray],
                output_filter: Iterable[str] = (), timeout_ms: int = 0, request_id: str = "",
                arm: str = "") -> Dict[str, np.ndarray]:
        """Runs a predict signature with TF Serving's feeding rules (the tensors as sent).

        Args:
          servable: from `servable()`.
          signature_name: '' = serving_default.
          inputs: {input alias: array}, exactly the signature's inputs.
          output_filter: output aliases to return (gRPC `output_filter`); all when empty.
          timeout_ms: > 0 bounds the run (REST: --rest_api_timeout_in_ms).
          request_id, arm: with a request id (and on_prediction set) the PredictionEvent is
            reported with them after the outputs.
        Returns:
          {output alias: array} as the graph computed them.
        Raises:
          ServingError: TF Serving's codes; when TF rejects an input whose shape the signature
            does not allow, the message starts by naming that input and both shapes;
            UNAVAILABLE when the batching queue is full. For the contract's encoded-image
            input (a string input named contract.SERVING_INPUT["image"]), INVALID_ARGUMENT
            "Input 'images' instance <i>: <why>" before the graph runs for a value that is no
            PNG/JPEG/GIF/BMP or has more than contract.MAX_IMAGE_PIXELS pixels
            (serving/images.py), and after a decoding failure for the first instance the
            graph refuses.
        """
        call = _PredictCall(self, servable, signature_name, inputs, output_filter, timeout_ms,
                            request_id, arm)
        if self.batcher is None:
            return call.finish(call.run)
        return call.finish(lambda: self._run_batched(call, inputs))

    def _run_batched(self, call: "_PredictCall", inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        queued = self.batcher.submit(call.key, call.run_inputs, inputs)
        try:
            return queued.result(timeout=call.timeout_ms / 1000 if call.timeout_ms > 0 else None)
        except concurrent.futures.TimeoutError:
            queued.cancel()  # dropped if still queued
            raise _deadline(call.timeout_ms) from None

    async def predict_async(self, servable: Servable, signature_name: str,
                            inputs: Dict[str, np.ndarray], executor: Executor,
                            output_filter: Iterable[str] = (), timeout_ms: int = 0,
                            request_id: str = "", arm: str = "") -> Dict[str, np.ndarray]:
        """`predict` for an asyncio front end: the model runs in the batcher, or on
        `executor` without batching; the event loop only waits. Same Args/Returns/Raises,
        plus `executor`: the threads that run unbatched model calls."""
        call = _PredictCall(self, servable, signature_name, inputs, output_filter, timeout_ms,
                            request_id, arm)
        try:
            if self.batcher is None:
                outputs = await asyncio.get_running_loop().run_in_executor(executor, call.run)
            else:
                queued = asyncio.wrap_future(self.batcher.submit(call.key, call.run_inputs, inputs))
                try:
                    outputs = await asyncio.wait_for(queued, timeout_ms / 1000 if timeout_ms > 0 else None)
                except asyncio.TimeoutError:  # cancels the request if it is still queued
                    raise _deadline(timeout_ms) from None
        except ServingError as e:
            raise call.error(e) from e
        return call.finish(lambda: outputs)

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> Tuple[Servable, classification_pb2.ClassificationResponse]:
        """TF Serving's Classify (servables/tensorflow/classifier.cc RunClassify)."""
        servable = self.servable(request.model_spec)
        signature = inference.classification_signature(
            servable, request.model_spec.signature_name, self.method_name_check)
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        response.result.CopyFrom(_one_line_errors(
            lambda: inference.classify(servable, signature, request.input)))
        return servable, response

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> Tuple[Servable, regression_pb2.RegressionResponse]:
        """TF Serving's Regress (servables/tensorflow/regressor.cc RunRegress)."""
        servable = self.servable(request.model_spec)
        signature = inference.regression_signature(
            servable, request.model_spec.signature_name, self.method_name_check)
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        response.result.CopyFrom(_one_line_errors(
            lambda: inference.regress(servable, signature, request.input)))
        return servable, response

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> Tuple[Servable, inference_pb2.MultiInferenceResponse]:
        """TF Serving's MultiInference (servables/tensorflow/multi_inference.cc); every task
        must name the same model, whose version the first task's ModelSpec selects."""
        if not request.tasks:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "MultiInferenceRequest must contain at least one task.")
        servable = self.servable(request.tasks[0].model_spec)
        response = _one_line_errors(lambda: inference.multi_inference(servable, request))
        for result in response.results:
            result.model_spec.version.value = servable.version
        return servable, response

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



def _deadline(timeout_ms: int) -> ServingError:
    """A batched run that did not finish within the request's timeout (REST:
    --rest_api_timeout_in_ms), as TF Serving reports a RunOptions.timeout_in_ms overrun."""
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"Timed out waiting for the model run ({timeout_ms} ms, "
                        "including the batching queue)")


class _PredictCall:
    """One predict request between its checks and its outputs (shared by the sync and
    async paths of Predictor)."""

    def __init__(self, predictor: Predictor, servable: Servable, signature_name: str,
                 inputs: Dict[str, np.ndarray], output_filter: Iterable[str], timeout_ms: int,
                 request_id: str = "", arm: str = ""):
        self.predictor = predictor
        self.request_id = request_id
        self.arm = arm
        self.servable = servable
        self.name = signature_name or DEFAULT_SIGNATURE
        self.signature = servable.signature(self.name)
        self.wanted = list(output_filter)
        for alias in self.wanted:
            if alias not in self.signature.outputs:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} Outputs "
                                   f"expected to be in the set {{{','.join(sorted(self.signature.outputs))}}}.")
        self.inputs = inputs
        self.timeout_ms = timeout_ms
        self.key = (servable.name, servable.version, self.name, tuple(self.wanted))
        image_key = contract.SERVING_INPUT["image"]
        image_input = self.signature.inputs.get(image_key)
        self.image_key = image_key if (image_key in inputs and image_input is not None
                                       and image_input.dtype == types_pb2.DT_STRING) else None
        if self.image_key:
            images.check_image_input(image_key, inputs[image_key])

    def run(self) -> Dict[str, np.ndarray]:
        return self.run_inputs(self.inputs)

    def run_inputs(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.servable.run(self.name, inputs, self.wanted, self.timeout_ms)

    def error(self, e: ServingError) -> ServingError:
        """The error with the shape hint and TF's text on one line; for encoded images the
        first instance the graph refuses (`_image_error`)."""
        hint = _shape_hint(self.signature, self.inputs)
        if self.image_key and not hint and e.code == grpc.StatusCode.INVALID_ARGUMENT:
            return _image_error(self.servable, self.name, self.image_key, self.inputs, e, self.timeout_ms)
        return ServingError(e.code, hint + _one_line(e))

    def finish(self, produce):
        """produce() with errors rewritten by `error`; calls on_predict after outputs."""
        try:
            result = produce()
        except ServingError as e:
            raise self.error(e) from e
        if self.predictor.on_predict is not None:
            self.predictor.on_predict(self.servable.name, self.servable.version, self.inputs)
        if self.request_id and self.predictor.on_prediction is not None:
            self.predictor.on_prediction(PredictionEvent(
                self.request_id, self.servable.name, self.servable.version, self.servable.path,
                self.name, self.arm, self.inputs, result, time.time()))
        return result


def _fill_spec(spec: model_pb2.ModelSpec, servable: Servable, signature_name: str) -> None:
    """util.cc MakeModelSpec: name, signature name (default filled in) and version."""
    spec.name = servable.name
    spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = servable.version


def _image_error(servable: Servable, signature_name: str, key: str, inputs: Dict[str, np.ndarray],
                 error: ServingError, timeout_ms: int) -> ServingError:
    """The graph refused the image input: the error of the first instance it refuses, as
    "Input 'images' instance 3: Invalid PNG data ...; expected PNG, JPEG ...".

    A graph error does not say which value it came from, so the batch is bisected: runs of
    the first half until one instance is left (log2(N) + 1 extra runs over N + 1 images in
    all, on this error path only). When the input is not a vector, the signature has other
    inputs, or the fault does not come from one instance, the graph's message is kept.
    """
    values = inputs[key]
    found = None
    if len(inputs) == 1 and np.ndim(values) == 1 and len(values) >= 1:
        found = _first_failing_instance(servable, signature_name, key, values, error, timeout_ms)
    if found is None:
        return ServingError(error.code, _one_line(error))
    index, error = found
    message = _one_line(error, with_node=False)
    message = message.removeprefix(f"serving input {key}: ")  # a Conveyor graph's own words
    if contract.SERVED_IMAGE_FORMATS not in message:
        message = f"{message.rstrip('.')}; expected {contract.SERVED_IMAGE_FORMATS}"
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Input '{key}' {images.where(index)}: {message}")


def _first_failing_instance(servable: Servable, signature_name: str, key: str, values: np.ndarray,
                            error: ServingError, timeout_ms: int) -> Optional[Tuple[int, ServingError]]:
    """(index, its own error) of the first instance of `values` whose run fails with
    INVALID_ARGUMENT, given that running all of them failed with `error`; None if none does
    on its own."""
    low, high, failed = 0, len(values), (0, len(values))  # values[low:high] holds a failure
    while high - low > 1:
        middle = (low + high) // 2
        try:
            servable.run(signature_name, {key: values[low:middle]}, (), timeout_ms)
            low = middle
        except ServingError as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                return None
            high, failed, error = middle, (low, middle), e
    if failed != (low, high):
        try:
            servable.run(signature_name, {key: values[low:high]}, (), timeout_ms)
            return None
        except ServingError as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                return None
            error = e
    return low, error


def _one_line_errors(fn):
    try:
        return fn()
    except ServingError as e:
        raise ServingError(e.code, _one_line(e)) from e


def _shape_hint(signature, inputs: Dict[str, np.ndarray]) -> str:
    """"Input 'x' has shape [2, 1]; the signature expects [-1] (-1: any size): " for the
    first input whose shape the signature does not allow, else "".

    Only used once TF has rejected the request: TF Serving feeds tensors as sent, and the
    graph's own error names an internal op ("input must be a vector, got shape: [1,1]").
    """
    for key, value in sorted(inputs.items()):
        info = signature.inputs.get(key)
        if info is None or info.tensor_shape.unknown_rank:
            continue
        expected = [d.size for d in info.tensor_shape.dim]
        shape = list(np.shape(value))
        if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape)):
            return (f"Input '{key}' has shape {shape}; the signature expects {expected} "
                    "(-1: any size): ")
    return ""


_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node |Node: |<stack traces unavailable>|\s+File \")")
# Wrappers TF puts around a message from inside a function call: "{{function_node __inference_...}}"
# prefixes, "[[node/path]]" and "[[{{node X}}]]" trailers, "[Op:Name]" tags.
_TF_WRAPPERS = re.compile(r"\{\{function_node [^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]")
# tf.debugging.assert_* add "[Condition x <= y did not hold ...] [x (name:0) = ] [values]" after
# the message: only the message is kept.
_ASSERTION = re.compile(r"assertion failed: \[(.*?)\](?: \[Condition .*)?\s*$", re.DOTALL)


def _assertion_message(match: "re.Match") -> str:
    """The message of a failed tf.debugging.Assert; its data entries, printed by TF each in
    brackets after the message ("[msg, got] [1 8 8]"), stay in brackets: "msg, got [1 8 8]"."""
    text = match.group(1)
    return text.replace("] [", " [") + "]" if "] [" in text else text


def _one_line(error: ServingError, with_node: bool = True) -> str:
    """TF's multi-line graph error -> its message on one line, plus the failing node.

    "Graph execution error:\n\nDetected at node X ...\n{{function_node f}} Invalid PNG data,
    size 68\n\t [[{{node X}}]]" becomes "Invalid PNG data, size 68 (node X)"; a failed
    tf.debugging.Assert gives its message ("assertion failed: [msg]" -> "msg", without the
    node: the message is the model's own). `with_node` False leaves the node out. When the TF
    message quotes raw input bytes, TF's own conversion to str fails (UnicodeDecodeError); its
    `object` still holds the text.
    """
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError) and isinstance(cause.object, bytes):
        text = cause.object.decode("utf-8", errors="replace")
    else:
        text = error.message
    node = (re.search(r"Detected at node '?([^\s']+)", text)
            or re.search(r"\{\{node ([^}]+)\}\}", text))
    # tf.debugging.Assert prints each data entry in brackets: "[msg, got] [1 8 8]".
    text = _TF_WRAPPERS.sub("", text)
    asserted = _ASSERTION.search(text) is not None  # the model's own message: no node needed
    text = _ASSERTION.sub(_assertion_message, text)
    lines = [line.strip(" \t;") for line in text.splitlines() if not _TF_NOISE.match(line)]
    lines = [line for line in lines if line]
    message = "; ".join(lines) or error.message.strip()
    if with_node and node and not asserted and node.group(1) not in message:
        message += f" (node {node.group(1)})"
    return " ".join(message.split())
