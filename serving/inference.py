"""Classify, Regress and MultiInference on tf.Example inputs, with TF Serving 2.16's rules.

Sources: tensorflow_serving/servables/tensorflow/{classifier,regressor,multi_inference,util}.cc.
  * The signature is `model_spec.signature_name` (default serving_default). Its method_name is
    only checked with --enable_signature_method_name_check (off by default in 2.16); otherwise
    its shape decides: one input `inputs`; classify: one or two outputs among `classes`
    (DT_STRING [batch, num_classes]) and `scores` (DT_FLOAT [batch, num_classes]); regress:
    one output `outputs` (DT_FLOAT [batch] or [batch, 1]).
  * The input is the serialized Examples as a [N] string tensor; with an ExampleListWithContext
    each example is the serialized context followed by the serialized example (protobuf
    concatenation = merge, the example's features winning).
  * MultiInference runs the tasks' signatures in one pass; every task names the same model,
    each signature at most once, method classify or regress.
"""
from typing import List

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, input_pb2,
                                     regression_pb2)

from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError
from serving.servables import Servable

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS = "inputs"        # kClassifyInputs / kRegressInputs
CLASSES = "classes"      # kClassifyOutputClasses
SCORES = "scores"        # kClassifyOutputScores
OUTPUTS = "outputs"      # kRegressOutputs


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _debug(signature: meta_graph_pb2.SignatureDef) -> str:
    """SignatureDef.DebugString() on one line (errors are one line)."""
    return text_format.MessageToString(signature, as_one_line=True)


def _find(servable: Servable, signature_name: str) -> meta_graph_pb2.SignatureDef:
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
        raise _bad(f"No signature was found with the name: {name}")
    return servable.signature_defs[name]


def check_classification(signature: meta_graph_pb2.SignatureDef, method_name_check: bool) -> List[str]:
    """PreProcessClassification: the output aliases to fetch, or INVALID_ARGUMENT."""
    if method_name_check and signature.method_name != CLASSIFY_METHOD:
        raise _bad(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                   f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise _bad("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise _bad(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if INPUTS not in signature.inputs:
        raise _bad(f"No classification inputs found in SignatureDef: {_debug(signature)}")
    fetch = [k for k in (CLASSES, SCORES) if k in signature.outputs]
    if not fetch:
        raise _bad(f'Expected classification signature outputs to contain at least one of '
                   f'"{CLASSES}" or "{SCORES}". Signature was: {_debug(signature)}')
    return fetch


def check_regression(signature: meta_graph_pb2.SignatureDef, method_name_check: bool) -> List[str]:
    """PreProcessRegression: the output alias to fetch, or INVALID_ARGUMENT."""
    if method_name_check and signature.method_name != REGRESS_METHOD:
        raise _bad(f"Expected regression signature method_name to be {REGRESS_METHOD}. "
                   f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise _bad("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise _bad("Expected one output Tensor.")
    if INPUTS not in signature.inputs:
        raise _bad(f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if OUTPUTS not in signature.outputs:
        raise _bad(f"No regression outputs found in SignatureDef: {_debug(signature)}")
    return [OUTPUTS]


def classification_signature(servable: Servable, signature_name: str,
                             method_name_check: bool = False) -> meta_graph_pb2.SignatureDef:
    """GetClassificationSignatureDef: the named signature if it can classify."""
    signature = _find(servable, signature_name)
    check_classification(signature, method_name_check)
    return signature


def regression_signature(servable: Servable, signature_name: str,
                         method_name_check: bool = False) -> meta_graph_pb2.SignatureDef:
    """GetRegressionSignatureDef: the named signature if it can regress."""
    signature = _find(servable, signature_name)
    check_regression(signature, method_name_check)
    return signature


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    """util.cc InputToSerializedExampleTensor: [N] object array of serialized tf.Examples.

    Raises:
      ServingError(INVALID_ARGUMENT): "Input is empty." when there is no example.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        values = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context.SerializeToString()
        values = [context + e.SerializeToString()
                  for e in model_input.example_list_with_context.examples]
    else:
        values = []
    if not values:
        raise _bad("Input is empty.")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _classification_result(outputs, num_examples: int) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for tensor, want, kind in ((classes, np.object_, "DT_STRING"), (scores, np.float32, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise _bad(f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
        if tensor.dtype != want and not (want is np.object_ and tensor.dtype.kind in "SO"):
            raise _bad(f"Expected {'classes' if want is np.object_ else 'scores'} Tensor of {kind}. "
                       f"Got: {tensor.dtype}")
        if tensor.shape[0] != num_examples:
            raise _bad(f"Expected {'classes' if want is np.object_ else 'scores'} output batch size of "
                       f"{num_examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _bad(f"Tensors class and score should match in dim_size(1). Got "
                   f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        entry = result.classifications.add()
        for c in range(num_classes):
            cls = entry.classes.add()
            if classes is not None:
                label = classes[i, c]
                cls.label = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[i, c])
    return result


def _regression_result(outputs, num_examples: int) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult."""
    tensor = outputs[OUTPUTS]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise _bad(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                   f"but got {list(tensor.shape)}")
    if tensor.shape[0] != num_examples:
        raise _bad(f"Input batch size did not match output batch size: {num_examples} vs. "
                   f"{tensor.shape[0]}")
    if tensor.dtype != np.float32:
        raise _bad(f"Expected output Tensor of DT_FLOAT.  Got: {tensor.dtype}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1):
        result.regressions.add().value = float(value)
    return result


def classify(servable: Servable, signature: meta_graph_pb2.SignatureDef,
             model_input: input_pb2.Input) -> classification_pb2.ClassificationResult:
    """Runs a classify-shaped signature on the examples; one Classifications per example."""
    fetch = check_classification(signature, False)
    examples = serialized_examples(model_input)
    outputs = servable.run_examples(signature, INPUTS, examples, fetch)
    return _classification_result(outputs, len(examples))


def regress(servable: Servable, signature: meta_graph_pb2.SignatureDef,
            model_input: input_pb2.Input) -> regression_pb2.RegressionResult:
    """Runs a regress-shaped signature on the examples; one Regression per example."""
    fetch = check_regression(signature, False)
    examples = serialized_examples(model_input)
    outputs = servable.run_examples(signature, INPUTS, examples, fetch)
    return _regression_result(outputs, len(examples))


def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest
                    ) -> inference_pb2.MultiInferenceResponse:
    """TensorFlowMultiInferenceRunner::Infer (the examples are serialized once per task)."""
    model_name = ""
    seen = set()
    plans = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise _bad("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise _bad("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise _bad(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in servable.signature_defs:
            raise _bad(f"Requested signature not found in model graph: {name}")
        signature = servable.signature_defs[name]
        if task.method_name == CLASSIFY_METHOD:
            fetch = check_classification(signature, False)
        elif task.method_name == REGRESS_METHOD:
            fetch = check_regression(signature, False)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
        plans.append((task, name, signature, fetch))
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, signature, fetch in plans:
        outputs = servable.run_examples(signature, INPUTS, examples, fetch)
        result = response.results.add()
        result.model_spec.name = task.model_spec.name
        result.model_spec.signature_name = name
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(outputs, len(examples)))
        else:
            result.regression_result.CopyFrom(_regression_result(outputs, len(examples)))
    return response
