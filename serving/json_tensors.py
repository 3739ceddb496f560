"""TF Serving's REST JSON <-> tensor mapping (api_rest.md), written out in Python.

TF Serving does this in C++ (util/json_tensor.cc), so there is no library to reuse.
Rules implemented:
  * request `instances` (row format) or `inputs` (columnar), never both;
  * one-input signatures may omit the input name; `{"b64": "..."}` is binary DT_STRING;
  * row responses: `predictions` is a list of values for one output, a list of
    {name: value} objects for several; columnar: `outputs` is the value or {name: value};
  * output tensors whose name ends in `_bytes` are returned as `{"b64": ...}`;
  * :classify / :regress take `examples` (+ optional `context`) as tf.Example features and
    answer `{"results": ...}`.
"""
import base64
import binascii
import json
from typing import Any, Dict, List, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving.errors import ServingError

ROW, COLUMNAR = "row", "columnar"


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _leaf(value: Any, dtype: tf.dtypes.DType, name: str) -> Any:
    if dtype == tf.string:
        if _is_b64(value):
            if not isinstance(value["b64"], str):
                raise _bad(f"'b64' value of '{name}' must be a string")
            return b64decode(value["b64"], name)
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate escape such as "\ud800"
                raise _bad(f"JSON string {_short(value)} for input '{name}' is not valid UTF-8: "
                           f"{e.reason}") from e
        raise _bad(f"JSON value: {_short(value)} not formatted correctly for base64 data "
                   f"or string for input '{name}'")
    if dtype == tf.bool:
        if isinstance(value, bool):
            return value
        raise _bad(f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: bool")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"JSON Value: {_short(value)} is not of expected type: {dtype.name} "
                   f"for input '{name}'")
    if dtype.is_integer and not isinstance(value, int):
        raise _bad(f"JSON Value: {_short(value)} is not of expected type: {dtype.name} "
                   f"for input '{name}'")
    return value


_WHITESPACE = str.maketrans("", "", " \t\n\v\f\r")


def b64decode(text: str, name: str) -> bytes:
    """Decodes base64 as abseil's Base64Unescape (TF Serving's JsonDecodeBase64Object) does:
    ASCII whitespace anywhere is skipped (`base64 FILE` wraps lines at 76 columns) and the
    trailing `=` padding may be left out. Anything else not in the standard alphabet fails.

    Raises:
      ServingError(INVALID_ARGUMENT): "Unable to base64 decode value of '<name>': <why>".
    """
    data = text.translate(_WHITESPACE)
    stripped = data.rstrip("=")
    padding = len(data) - len(stripped)
    if padding > 2 or len(stripped) % 4 == 1 or (padding and (len(stripped) + padding) % 4):
        raise _bad(f"Unable to base64 decode value of '{name}': bad length or padding")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"Unable to base64 decode value of '{name}': {e}") from e


def _short(value: Any) -> str:
    """A JSON value echoed into an error message as compact JSON, as TF Serving's
    JsonValueToString (util/json_tensor.cc) prints it — never a Python repr — cut at 60
    characters."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed JSON value: null, bool, number, string, array or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _names(names: Any) -> str:
    """Input names joined by commas, as json_tensor.cc prints them with absl::StrJoin."""
    return ",".join(sorted(names))


def _shape_and_leaves(value: Any, dtype: tf.dtypes.DType, name: str,
                      leaves: List[Any], depth: int = 0) -> Tuple[int, ...]:
    if depth > 64:
        raise _bad(f"Input '{name}' is nested too deeply")
    if isinstance(value, list):
        shapes = {_shape_and_leaves(v, dtype, name, leaves, depth + 1) for v in value}
        if len(shapes) > 1:
            raise _bad(f"Input '{name}' is ragged: all lists at the same depth must have "
                       "the same length")
        inner = shapes.pop() if shapes else ()
        return (len(value),) + inner
    leaves.append(_leaf(value, dtype, name))
    return ()


def to_array(value: Any, dtype: tf.dtypes.DType, name: str) -> np.ndarray:
    """Nested JSON lists/values -> ndarray of `dtype` (object array of bytes for strings)."""
    leaves: List[Any] = []
    shape = _shape_and_leaves(value, dtype, name, leaves)
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
    else:
        try:
            array = np.array(leaves, dtype=dtype.as_numpy_dtype)
        except (OverflowError, ValueError) as e:
            raise _bad(f"Input '{name}': {e}") from e
    return array.reshape(shape)


def parse_predict_request(body: Any, signature_inputs: Dict[str, meta_graph_pb2.TensorInfo]
                          ) -> Tuple[Dict[str, np.ndarray], str]:
    """Request JSON object -> ({input name: array}, ROW|COLUMNAR)."""
    if "instances" in body and "inputs" in body:
        raise _bad("Not both 'instances' and 'inputs' can be specified in the request.")
    if "instances" not in body and "inputs" not in body:
        raise _bad("Missing 'inputs' or 'instances' key")
    dtypes = {k: tf.dtypes.as_dtype(info.dtype) for k, info in signature_inputs.items()}
    if "instances" in body:
        return _parse_rows(body["instances"], dtypes), ROW
    return _parse_columns(body["inputs"], dtypes), COLUMNAR


def _parse_rows(instances: Any, dtypes: Dict[str, tf.dtypes.DType]) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise _bad("Expecting 'instances' to be an list/array")
    if not instances:
        raise _bad("No values in 'instances' list")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(dtypes) != 1:
            raise _bad(f"Expecting object in 'instances' (signature has {len(dtypes)} inputs: "
                       f"{_names(dtypes)})")
        (name, dtype), = dtypes.items()
        return {name: to_array(instances, dtype, name)}
    columns: Dict[str, list] = {}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise _bad(f"Expecting object but got {_short(instance)} at 'instances'[{i}]: "
                       "all instances must be objects when one is")
        if set(instance) != set(dtypes):
            raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object: "
                       f"{_short(instance)} keys must be equal to: {_names(dtypes)}")
        for key, value in instance.items():
            columns.setdefault(key, []).append(value)
    return {k: to_array(v, dtypes[k], k) for k, v in columns.items()}


def _parse_columns(inputs: Any, dtypes: Dict[str, tf.dtypes.DType]) -> Dict[str, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        unknown = sorted(set(inputs) - set(dtypes))
        if unknown:
            raise _bad(f"'inputs' has keys {_names(unknown)} that are not inputs of the signature "
                       f"({_names(dtypes)})")
        return {k: to_array(v, dtypes[k], k) for k, v in inputs.items()}
    if len(dtypes) != 1:
        raise _bad(f"Expecting 'inputs' to be an object with keys {_names(dtypes)}")
    (name, dtype), = dtypes.items()
    return {name: to_array(inputs, dtype, name)}


def _jsonable(array: np.ndarray, name: str) -> Any:
    values = array.tolist()
    if array.dtype != object:
        return values
    as_b64 = name.endswith("_bytes")

    def convert(v: Any) -> Any:
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, bytes):
            if as_b64:
                return {"b64": base64.b64encode(v).decode("ascii")}
            return v.decode("utf-8", errors="replace")
        return v

    return convert(values)


def format_predict_response(outputs: Dict[str, np.ndarray], fmt: str) -> Dict[str, Any]:
    """Outputs -> {"predictions": ...} (row) or {"outputs": ...} (columnar), TF Serving's shapes."""
    if fmt == COLUMNAR:
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return {"outputs": _jsonable(value, name)}
        return {"outputs": {k: _jsonable(v, k) for k, v in outputs.items()}}
    batch = None
    for name, value in outputs.items():
        if np.ndim(value) == 0:
            raise _bad(f"Tensor name: {name} has no shape information")
        if batch is None:
            batch = len(value)
        elif len(value) != batch:
            raise _bad(f"Tensor name: {name} has inconsistent batch size: {len(value)} "
                       f"expecting: {batch}")
    columns = {k: _jsonable(v, k) for k, v in outputs.items()}
    if len(columns) == 1:  # a single output: the list of its per-row values
        (values,) = columns.values()
        return {"predictions": values}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(batch or 0)]}


def _feature(name: str, value: Any, feature: Dict[str, list], kind: List[str]) -> None:
    """json_tensor.cc AddValueToFeature: one JSON value into a tf.train.Feature's list."""
    def want(k: str) -> None:
        if kind[0] not in ("", k):
            raise _bad(f"Unexpected element type in feature: {name} expecting type: {kind[0]}")
        kind[0] = k

    if isinstance(value, bool):
        want("int64")
        feature.setdefault("int64", []).append(int(value))
    elif _is_b64(value) and isinstance(value["b64"], str):
        want("bytes")
        feature.setdefault("bytes", []).append(b64decode(value["b64"], name))
    elif isinstance(value, str):
        want("bytes")
        try:
            feature.setdefault("bytes", []).append(value.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise _bad(f"Feature: {name} has a string that is not valid UTF-8: {e.reason}") from e
    elif isinstance(value, float):
        want("float")
        feature.setdefault("float", []).append(value)
    elif isinstance(value, int):
        want("int64")
        if not -(2 ** 63) <= value < 2 ** 63:
            raise _bad(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.setdefault("int64", []).append(value)
    else:
        raise _bad(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")


def _example(value: Any) -> tf.train.Example:
    """json_tensor.cc MakeExampleFromJsonObject: {feature: value or [values]} -> tf.Example."""
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {_short(value)}")
    example = tf.train.Example()
    for name, content in value.items():
        values: Dict[str, list] = {}
        kind = [""]
        for item in (content if isinstance(content, list) else [content]):
            _feature(name, item, values, kind)
        feature = example.features.feature[name]
        if kind[0] == "bytes":
            feature.bytes_list.value.extend(values["bytes"])
        elif kind[0] == "float":
            feature.float_list.value.extend(values["float"])
        elif kind[0] == "int64":
            feature.int64_list.value.extend(values["int64"])
    return example


def parse_examples_request(body: Dict[str, Any], model_input: input_pb2.Input) -> None:
    """:classify / :regress JSON ({"examples": [...], "context": {...}}) -> Input proto.

    Rules of json_tensor.cc FillClassifyRegressRequestFromJson: optional `context` (one
    example merged into each), required non-empty `examples` list of objects; a feature's
    values are a value or a list of one kind: JSON integers and booleans are int64, other
    numbers float, strings and {"b64": ...} bytes.
    """
    if "context" in body:
        model_input.example_list_with_context.context.CopyFrom(_example(body["context"]))
    if "examples" not in body:
        raise _bad(f"JSON Value: {_short(body)} When method is classify, key 'examples' is "
                   "expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise _bad(f"JSON Value: {_short(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad(f"JSON Value: {_short(body)} 'examples' value is an empty array")
    target = (model_input.example_list_with_context.examples if "context" in body
              else model_input.example_list.examples)
    for value in examples:
        target.add().CopyFrom(_example(value))


def format_classification(result: classification_pb2.ClassificationResult) -> Dict[str, Any]:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise _bad("Cannot convert empty ClassificationResults to JSON")
    return {"results": [[[c.label, c.score] for c in entry.classes]
                        for entry in result.classifications]}


def format_regression(result: regression_pb2.RegressionResult) -> Dict[str, Any]:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise _bad("Cannot convert empty RegressionResults to JSON")
    return {"results": [r.value for r in result.regressions]}
