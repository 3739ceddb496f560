"""One loaded model version: a SavedModel run through a TF Session, or a TFLite model.

TF Serving loads every SavedModel, TF1 graph exports and TF2 `tf.saved_model.save` exports
alike, as a SavedModelBundle (a MetaGraphDef plus a Session) and runs a signature by feeding
its input tensors by name and fetching its output tensors
(tensorflow_serving/servables/tensorflow/predict_util.cc RunPredict). `SavedModelServable` does
the same with tf.compat.v1's loader and a session callable, so:

  * the tensor is fed as sent: a [3] tensor for a [-1, 1] placeholder reaches the graph, and
    what the graph cannot take is reported by TF (feeding rules of TF Serving, not of
    Python's Session.run, which checks shapes client-side);
  * closing the session frees the version's memory (`tf.saved_model.load` keeps functions
    registered in the eager context, so memory grew with every reload).

`TfLiteServable` serves `<version>/model.tflite` (`--prefer_tflite_model`) with the TFLite
interpreter, with the signature TF Serving builds for it (tflite_session.cc: TFLite files
without SignatureDef metadata get one `serving_default` predict signature whose keys are the
interpreter's tensor names without their `:N` suffix).
"""
import logging
import os
import queue
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError

log = logging.getLogger("conveyor.serving")

SAVED_MODEL_TAG = "serve"
TFLITE_FILE = "model.tflite"   # TF Serving's kTfLiteModelFilename
PREDICT_METHOD = "tensorflow/serving/predict"


def grpc_code(tf_code: int) -> grpc.StatusCode:
    """TF error codes are the canonical codes; grpc.StatusCode values are (int, name) pairs."""
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN


class Servable:
    """A loaded version: its SignatureDefs and a way to run them. Thread safe.

    Attributes:
      name, version, path: the model, the version number and the directory it came from.
      signature_defs: {signature key: SignatureDef}, as TF Serving's metadata reports them.
    """

    name: str
    version: int
    path: str
    signature_defs: Dict[str, meta_graph_pb2.SignatureDef]

    def signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef for `signature_name` ('' = serving_default).

        Raises:
          ServingError(FAILED_PRECONDITION): no such signature (TF Serving's Predict message).
        """
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def run(self, signature_name: str, inputs: Dict[str, np.ndarray],
            output_filter: Iterable[str] = (), timeout_ms: int = 0) -> Dict[str, np.ndarray]:
        """Runs a signature on {input alias: array}; returns {output alias: array}.

        Inputs must be exactly the signature's inputs (TF Serving's predict_util message
        otherwise); each is converted to the signature's dtype and fed as it is shaped.
        `output_filter` limits the outputs fetched (all when empty); `timeout_ms` > 0 bounds the
        run (DEADLINE_EXCEEDED), as TF Serving's RunOptions.timeout_in_ms.
        Raises:
          ServingError: INVALID_ARGUMENT for wrong names or values, else the code TF reports.
        """
        signature = self.signature(signature_name)
        _check_input_names(signature, inputs)
        fetch = list(output_filter) or sorted(signature.outputs)
        arrays = {}
        for key, value in inputs.items():
            dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            arrays[key] = _as_array(key, value, dtype)
        return self._run(signature, arrays, fetch, timeout_ms)

    def _run(self, signature, arrays: Dict[str, np.ndarray], fetch: List[str],
             timeout_ms: int = 0) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def run_examples(self, signature: meta_graph_pb2.SignatureDef, input_key: str,
                     serialized: np.ndarray, fetch: List[str]) -> Dict[str, np.ndarray]:
        """Feeds serialized tf.Examples ([N] bytes) to `input_key`, fetches `fetch` aliases."""
        return self._run(signature, {input_key: serialized}, fetch)

    def close(self) -> None:
        """Frees the version's resources; requests still holding it must have finished."""


def _check_input_names(signature, inputs) -> None:
    expected = set(signature.inputs)
    sent = set(inputs)
    if sent != expected:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_set(sent)}) != len({_set(expected)}). "
            f"Sent extra: {_set(sent - expected)}. "
            f"Missing but required: {_set(expected - sent)}.")


def _set(names) -> str:
    """`names` as predict_util.cc VerifyRequestInputsSize prints a std::set: "{a,b}"."""
    return "{" + ",".join(sorted(names)) + "}"


def _as_array(key: str, value, dtype: tf.dtypes.DType) -> np.ndarray:
    """`value` as an array of `dtype`. A tensor of another dtype (gRPC TensorProtos keep
    theirs) is refused as TF's Session::Run refuses it."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        if dtype == tf.string or value.dtype != dtype.as_numpy_dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expects arg[{key}] to be {dtype.name} but "
                               f"{tf.dtypes.as_dtype(value.dtype).name} is provided")
        return value
    if dtype == tf.string:
        return np.asarray(value, dtype=object)
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Input '{key}' is not a valid {dtype.name} tensor: {e}") from e


def read_signature_defs(path: str, tags: Sequence[str] = (SAVED_MODEL_TAG,)
                        ) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the MetaGraphDef tagged `tags` (default 'serve') in saved_model.pb.

    Read from the file rather than from the loaded graph so metadata (tensor names, shapes,
    method_name) is what TF Serving reports for the same directory.
    Raises:
      ServingError(NOT_FOUND): no saved_model.pb or no 'serve' MetaGraphDef (TF's messages).
    """
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb):
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Could not find SavedModel .pb at supplied export directory path: {path}")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"SavedModel at {path} has no MetaGraphDef with tags {sorted(tags)}")


class SavedModelServable(Servable):
    """A SavedModel (TF1 or TF2) loaded into its own Graph and Session, as TF Serving does.

    Args:
      name, version, path: model name, version number, version directory.
      session_config: the ConfigProto of the session (--tensorflow_*_parallelism).
    Raises:
      ServingError / tf.errors.OpError / OSError: the directory is not a loadable SavedModel.
    """

    def __init__(self, name: str, version: int, path: str,
                 session_config: Optional[config_pb2.ConfigProto] = None,
                 tags: Sequence[str] = (SAVED_MODEL_TAG,)):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = read_signature_defs(path, tags)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        try:
            with self._graph.as_default():
                tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        except BaseException:
            self._session.close()
            raise
        self._callables: Dict[Tuple, object] = {}
        self._lock = threading.Lock()

    def _callable(self, signature, feeds: Tuple[str, ...], fetches: Tuple[str, ...], timeout_ms: int):
        key = (id(signature), feeds, fetches, timeout_ms)
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[k].name for k in feeds],
                    fetch=[signature.outputs[k].name for k in fetches])
                if timeout_ms > 0:
                    options.run_options.timeout_in_ms = timeout_ms
                # A callable feeds tensors without Session.run's client-side shape check,
                # like TF Serving's C++ Session::Run.
                fn = self._callables[key] = self._session._make_callable_from_options(options)
        return fn

    def _run(self, signature, arrays, fetch, timeout_ms=0):
        for alias in fetch:
            if signature.outputs[alias].WhichOneof("encoding") != "name":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Output '{alias}' is a composite tensor; only dense tensors are served")
        feeds = tuple(sorted(arrays))
        fn = self._callable(signature, feeds, tuple(fetch), timeout_ms)
        try:
            values = fn(*[arrays[k] for k in feeds])
        except tf.errors.OpError as e:
            raise ServingError(grpc_code(e.error_code), e.message) from e
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        return dict(zip(fetch, values))

    def close(self) -> None:
        with self._lock:
            self._callables.clear()
        self._session.close()


_TFLITE_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
                  np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
                  np.dtype(np.uint8): types_pb2.DT_UINT8, np.dtype(np.int8): types_pb2.DT_INT8,
                  np.dtype(np.int16): types_pb2.DT_INT16, np.dtype(np.bool_): types_pb2.DT_BOOL,
                  np.dtype(np.object_): types_pb2.DT_STRING, np.dtype(np.bytes_): types_pb2.DT_STRING}


def _legacy_name(tensor_name: str) -> str:
    return tensor_name.split(":", 1)[0]


class TfLiteServable(Servable):
    """`model.tflite` on a pool of `num_interpreters` TFLite interpreters.

    Each request takes an interpreter from the pool, resizes its inputs to the shapes sent
    (TfLiteSession::Run does the same), invokes it and returns it.
    Raises:
      ValueError / RuntimeError: the file is not a TFLite model.
    """

    def __init__(self, name: str, version: int, path: str, num_interpreters: int = 1):
        self.name, self.version, self.path = name, version, path
        with open(os.path.join(path, TFLITE_FILE), "rb") as f:
            self._model = f.read()
        self._pool: "queue.Queue[tf.lite.Interpreter]" = queue.Queue()
        for _ in range(max(1, num_interpreters)):
            interpreter = tf.lite.Interpreter(model_content=self._model)
            interpreter.allocate_tensors()
            self._pool.put(interpreter)
        probe = self._pool.queue[0]
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        self._inputs: Dict[str, int] = {}
        self._outputs: Dict[str, int] = {}
        for details, infos, indices in ((probe.get_input_details(), signature.inputs, self._inputs),
                                        (probe.get_output_details(), signature.outputs, self._outputs)):
            for d in details:
                key = _legacy_name(d["name"])
                info = infos[key]
                info.name = d["name"]
                info.dtype = _TFLITE_DTYPES.get(np.dtype(d["dtype"]), types_pb2.DT_INVALID)
                info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in d["shape"]]))
                indices[key] = d["index"]
        self.signature_defs = {DEFAULT_SIGNATURE: signature}

    def _run(self, signature, arrays, fetch, timeout_ms=0):
        interpreter = self._pool.get()
        try:
            for key, value in arrays.items():
                index = self._inputs[key]
                if list(interpreter.get_tensor(index).shape) != list(value.shape):
                    interpreter.resize_tensor_input(index, list(value.shape), strict=False)
                    interpreter.allocate_tensors()
            for key, value in arrays.items():
                interpreter.set_tensor(self._inputs[key], value)
            interpreter.invoke()
            return {alias: interpreter.get_tensor(self._outputs[alias]).copy() for alias in fetch}
        except (ValueError, RuntimeError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        finally:
            self._pool.put(interpreter)


def load_servable(name: str, version: int, path: str, prefer_tflite: bool = False,
                  num_tflite_interpreters: int = 1,
                  session_config: Optional[config_pb2.ConfigProto] = None,
                  tags: Sequence[str] = (SAVED_MODEL_TAG,)) -> Servable:
    """Loads one version directory the way TF Serving's SavedModelBundle source adapter does.

    With `prefer_tflite` and a `model.tflite` in the directory, the TFLite model is served;
    otherwise (and as TF Serving's fallback) the SavedModel.
    """
    if prefer_tflite and os.path.exists(os.path.join(path, TFLITE_FILE)):
        return TfLiteServable(name, version, path, num_tflite_interpreters)
    return SavedModelServable(name, version, path, session_config, tags)
