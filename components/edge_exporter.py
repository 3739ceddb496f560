"""Edge exports of a pushed model: TFLite (float16, dynamic-range, full int8) and TF.js, each
evaluated on the eval split and shipped with golden vectors, under HOME/edge/<name>/<version>/.

Why a component after the Pusher (not inside it): the conversion needs the Transform graph and
the examples, which TFX's Pusher spec does not take, and its outcome (accuracy of each export,
which ones passed the gate) is a record of its own. EdgeExporter consumes the Pusher's
PushedModel, so it runs only after the SavedModel is published and exports exactly that
version (same number); its output artifact (type EdgeExports) carries the per-export metrics
as MLMD custom properties and is linked to the PushedModel by its input event, which is how
`conveyor lineage` finds it.

Why the exports take the *transformed* input: TFLite builtins cannot decode PNG/JPEG or run
TFT's string ops (regex normalisation, vocabulary lookup), so every export is the Keras model
alone behind one signature `serving_edge` (EDGE_SIGNATURE):
  * image: `pixels` float32 [N, size, size, channels] in [0, 1] (the Transform's output,
    as the SavedModel's `serving_pixels`);
  * text, multihot: `multi_hot` float32 [N, vocab_size + oov_buckets] of 0/1;
  * text, embedding / conv1d: `tokens` int32 [N, max_tokens] vocabulary ids (TF.js has no
    int64; the ids are < 2^31), cast to the model's int64 inside;
and returns `probabilities` float32 [N, classes] (a one-unit sigmoid head is expanded to two
columns, as in modules/export.py). The client reproduces the Transform from the contract
written beside the exports (contract.json, vocabulary.txt, labels.txt); the golden/ vectors
let it check that it does.

Conversion: `tf.lite.TFLiteConverter.from_saved_model` on a SavedModel of that signature
(`from_keras_model` aborts the process with the installed Keras 3), the post-training modes of
the TFLite guide (https://www.tensorflow.org/lite/performance/post_training_quantization):
float16 (`supported_types=[tf.float16]`), dynamic range (`Optimize.DEFAULT` alone) and full
integer (`Optimize.DEFAULT` + a representative dataset of REPRESENTATIVE_EXAMPLES transformed
training examples + `TFLITE_BUILTINS_INT8` ops; inputs and outputs stay float32 / int32 so
every TFLite export has the same client contract). TF.js: `tensorflowjs_converter` of the
isolated converter virtualenv (scripts/setup_edge.sh: tensorflowjs 4.17.0 downgrades
packaging, pytest and google-cloud-bigquery and pulls jax/flax/TF-DF, so it never enters
.venv), run under Node with @tensorflow/tfjs' pure-JS CPU backend (js/tfjs_predict.cjs).
Models exported: pipelines/config.EDGE_MODELS (the config refuses the others). tfidf's idf
weights live only in the Transform graph; bilstm's LSTM converts to builtins only with
`LSTM(unroll=True)`, else it needs TF Select (Flex) ops the app must link.
"""
import base64
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.errors import ComponentError
from components.pusher import TMP_PREFIX, remove_stale_temp_dirs
from modules import features as F
from modules import models
from modules.preprocessing import VOCABULARY_NAME
from modules.settings import ModuleSettings
from modules.splits import read_split_examples, split_pattern
from serving import contract

EXPORTS = ("tflite_float16", "tflite_dynamic", "tflite_int8", "tfjs")
EDGE_SIGNATURE = "serving_edge"
OUTPUT = contract.PROBABILITIES
REPRESENTATIVE_EXAMPLES = 100  # the TFLite guide's ~100 samples for full-integer calibration
GOLDEN_EXAMPLES = 5
GOLDEN_ATOL = 1e-5  # an export reproduces its own golden outputs (deterministic CPU kernels)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where setup_edge.sh puts the TF.js tools; the environment variables override them.
TFJS_CONVERTER = os.environ.get("CONVEYOR_TFJS_CONVERTER") or os.path.join(
    REPO, ".tools", "tfjs-venv", "bin", "tensorflowjs_converter")
TFJS_NODE_DIR = os.environ.get("CONVEYOR_TFJS_NODE_DIR") or os.path.join(REPO, "js")

MODEL_KEY, PUSHED_MODEL_KEY, TRANSFORM_GRAPH_KEY, EXAMPLES_KEY = (
    "model", "pushed_model", "transform_graph", "examples")
EDGE_EXPORTS_KEY = "edge_exports"
EXPORTS_KEY, MAX_DROP_KEY, BASE_DIR_KEY, SETTINGS_KEY = (
    "exports", "max_accuracy_drop", "base_directory", "module_settings")
EVAL_EXAMPLES_KEY, LATENCY_EXAMPLES_KEY = "eval_examples", "latency_examples"


class EdgeExportError(ComponentError, RuntimeError):
    """An export could not be converted or run; the message names the export and the cause."""


class EdgeExports(Artifact):
    """The edge exports of one pushed version. Custom properties: `pushed_version`,
    `destination`, `reference_accuracy`, `eval_examples`, `exports` (JSON list of
    ExportResult dicts) and per export `<export>_accuracy`, `_accuracy_delta`, `_size_bytes`,
    `_latency_ms`, `_pushed` (0/1) and `_reason` (why not pushed, "" when pushed)."""
    TYPE_NAME = "conveyor.EdgeExports"


@dataclasses.dataclass
class ExportResult:
    """One export's evaluation.

    Fields:
      name: one of EXPORTS.
      accuracy: top-1 accuracy on the evaluated eval examples (0..1); None if it failed.
      accuracy_delta: accuracy - the SavedModel's accuracy on the same examples.
      size_bytes: bytes of the export's model files (model.tflite, or model.json + shards).
      latency_ms: mean wall time of one batch-1 prediction (TFLite: tf.lite.Interpreter with
        1 thread; TF.js: Node, pure-JS CPU backend), after one untimed call.
      pushed: whether it was published.
      reason: why not ("" when pushed).
      detail: conversion notes (e.g. int8 ops used).
    """
    name: str
    accuracy: Optional[float] = None
    accuracy_delta: Optional[float] = None
    size_bytes: Optional[int] = None
    latency_ms: Optional[float] = None
    pushed: bool = False
    reason: str = ""
    detail: str = ""


# the model on transformed inputs --------------------------------------------------------

def edge_input(settings: ModuleSettings) -> Tuple[str, Any, List[Optional[int]]]:
    """The edge signature's input: (name, numpy dtype, shape with None batch)."""
    feature = models.input_feature(settings)
    if feature == F.IMAGE:
        return contract.PIXELS_INPUT, np.float32, [None, settings.image_size, settings.image_size, settings.channels]
    if feature == F.MULTI_HOT:
        return F.MULTI_HOT, np.float32, [None, settings.vocab_ids - 1]
    return F.TOKENS, np.int32, [None, settings.max_tokens]


def write_edge_saved_model(loaded, settings: ModuleSettings, out_dir: str) -> None:
    """Saves the Keras model of a Conveyor SavedModel behind EDGE_SIGNATURE (module docstring).

    Args:
      loaded: tf.saved_model.load() of a SavedModel written by modules/export.py (its `model`
        attribute is the trained Keras model).
      settings: the Trainer's ModuleSettings (which input, which sizes).
      out_dir: a new folder for the SavedModel.
    """
    import tensorflow as tf

    keras_model = loaded.model
    name, dtype, shape = edge_input(settings)

    class Edge(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)], autograph=False)
        def serve(self, x):
            if x.dtype == tf.int32:
                x = tf.cast(x, tf.int64)
            probabilities = self.model(x)
            if probabilities.shape[-1] == 1:  # sigmoid head, as modules/export.py
                probabilities = tf.concat([1.0 - probabilities, probabilities], axis=1)
            return {OUTPUT: probabilities}

    edge = Edge()
    tf.saved_model.save(edge, out_dir, signatures={EDGE_SIGNATURE: edge.serve.get_concrete_function()})


# conversion ----------------------------------------------------------------------------

def convert_tflite(edge_dir: str, mode: str, representative: Optional[np.ndarray]) -> Tuple[bytes, str]:
    """A TFLite flatbuffer of the edge SavedModel in one post-training mode.

    Args:
      edge_dir: SavedModel from write_edge_saved_model.
      mode: "tflite_float16", "tflite_dynamic" or "tflite_int8".
      representative: transformed training inputs [K, ...], the int8 calibration data (only
        read for tflite_int8).
    Returns:
      (model bytes, a note on the ops used).
    Raises:
      EdgeExportError: the converter refused the model.
    """
    import tensorflow as tf

    def converter(ops=None):
        c = tf.lite.TFLiteConverter.from_saved_model(edge_dir, signature_keys=[EDGE_SIGNATURE])
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "tflite_float16":
            c.target_spec.supported_types = [tf.float16]
        elif mode == "tflite_int8":
            c.representative_dataset = lambda: ([row[None, ...]] for row in representative)
            c.target_spec.supported_ops = ops
        return c

    try:
        if mode != "tflite_int8":
            return converter().convert(), ""
        try:
            return converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert(), "integer-only ops"
        except Exception as e:  # noqa: BLE001 - an op without an int8 kernel: keep float fallbacks
            logging.warning("tflite_int8: integer-only conversion failed (%s); allowing float ops",
                            str(e).splitlines()[0])
            return (converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]).convert(),
                    "int8 ops with float fallbacks")
    except Exception as e:  # noqa: BLE001 - the converter raises several unrelated types
        raise EdgeExportError(f"{mode}: TFLite conversion failed: {str(e).splitlines()[0]}") from None


def convert_tfjs(edge_dir: str, out_dir: str, converter: str = TFJS_CONVERTER) -> None:
    """tensorflowjs_converter of the edge SavedModel into a TF.js graph model (model.json + shards).

    Raises:
      EdgeExportError: the converter is not installed (make setup) or failed.
    """
    if not os.path.exists(converter):
        raise EdgeExportError(f"tfjs: converter {converter} not found; `make setup` installs it "
                              "(scripts/setup_edge.sh)")
    result = subprocess.run(
        [converter, "--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
         f"--signature_name={EDGE_SIGNATURE}", "--saved_model_tags=serve", edge_dir, out_dir],
        capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeExportError(f"tfjs: tensorflowjs_converter failed: {tail}")


# running the exports -------------------------------------------------------------------

def predict_tflite(model: bytes, inputs: np.ndarray, latency_examples: int = 0,
                   batch: int = 256) -> Tuple[np.ndarray, Optional[float]]:
    """Runs a TFLite model with tf.lite.Interpreter (1 thread).

    Args:
      model: the flatbuffer bytes.
      inputs: [N, ...] in the edge input's dtype.
      latency_examples: how many examples to time one by one (batch 1); 0 = none.
      batch: rows per invoke for the predictions.
    Returns:
      (probabilities float32 [N, classes], mean batch-1 latency in ms or None).
    """
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=model, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]

    def run(x):
        interpreter.resize_tensor_input(index, list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    out = np.concatenate([run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    latency = None
    n = min(latency_examples, len(inputs))
    if n:
        interpreter.resize_tensor_input(index, [1, *inputs.shape[1:]])
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, inputs[:1])
        interpreter.invoke()  # untimed first call
        total = 0.0
        for i in range(n):
            start = time.perf_counter()
            interpreter.set_tensor(index, inputs[i:i + 1])
            interpreter.invoke()
            interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
            total += time.perf_counter() - start
        latency = total / n * 1000.0
    return out.astype(np.float32), latency


def predict_tfjs(model_dir: str, inputs: np.ndarray, latency_examples: int = 0,
                 node_dir: str = TFJS_NODE_DIR) -> Tuple[np.ndarray, Optional[float]]:
    """Runs a TF.js graph model under Node (js/tfjs_predict.cjs, pure-JS CPU backend).

    Args and Returns: as predict_tflite; `model_dir` holds model.json.
    Raises:
      EdgeExportError: Node or the npm packages are missing, or the model failed to run.
    """
    script = os.path.join(node_dir, "tfjs_predict.cjs")
    if not os.path.isdir(os.path.join(node_dir, "node_modules", "@tensorflow", "tfjs-core")):
        raise EdgeExportError(f"tfjs: {node_dir}/node_modules has no @tensorflow/tfjs-core; `make setup` "
                              "installs it (scripts/setup_edge.sh)")
    node = shutil.which("node")
    if node is None:
        raise EdgeExportError("tfjs: `node` is not on PATH (Node 18+ runs the TF.js evaluation)")
    dtype = "int32" if inputs.dtype == np.int32 else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: os.path.join(tmp, k) for k in ("inputs.bin", "outputs.bin", "request.json")}
        np.ascontiguousarray(inputs, dtype=dtype).tofile(paths["inputs.bin"])
        with open(paths["request.json"], "w", encoding="utf-8") as f:
            json.dump({"model_dir": os.path.abspath(model_dir), "inputs": paths["inputs.bin"], "dtype": dtype,
                       "shape": list(inputs.shape), "outputs": paths["outputs.bin"],
                       "latency_examples": int(latency_examples)}, f)
        result = subprocess.run([node, script, paths["request.json"]], capture_output=True, text=True,
                                timeout=1800, cwd=node_dir)
        if result.returncode != 0:
            raise EdgeExportError((result.stderr.strip().splitlines() or ["tfjs: node failed"])[-1])
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        out = np.fromfile(paths["outputs.bin"], dtype=np.float32).reshape(answer["output_shape"])
    return out, answer["latency_ms_mean"]


def predict_export(name: str, export_dir: str, inputs: np.ndarray,
                   latency_examples: int = 0) -> Tuple[np.ndarray, Optional[float]]:
    """Probabilities (and batch-1 latency) of a published export folder (model.tflite or model.json)."""
    if name == "tfjs":
        return predict_tfjs(export_dir, inputs, latency_examples)
    with open(os.path.join(export_dir, "model.tflite"), "rb") as f:
        return predict_tflite(f.read(), inputs, latency_examples)


# data ----------------------------------------------------------------------------------

@dataclasses.dataclass
class EvalData:
    """Eval examples as every model sees them. Fields: serialized: raw tf.Examples [N];
    raw: the raw feature values (image bytes / UTF-8 text) [N]; inputs: the transformed edge
    input [N, ...] (edge_input dtype); labels: int64 [N]."""
    serialized: List[bytes]
    raw: List[bytes]
    inputs: np.ndarray
    labels: np.ndarray


def transformed_inputs(transform_graph_uri: str, serialized: Sequence[bytes], settings: ModuleSettings,
                       batch: int = 256) -> np.ndarray:
    """The real Transform graph on serialized tf.Examples -> the edge input [N, ...]."""
    import tensorflow as tf
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(transform_graph_uri)
    raw_name = F.RAW_INPUT[settings.kind]
    spec = {raw_name: tft_output.raw_feature_spec()[raw_name]}
    feature = models.input_feature(settings)
    _, dtype, _ = edge_input(settings)
    parts = []
    for i in range(0, len(serialized), batch):
        raw = tf.io.parse_example(tf.constant(list(serialized[i:i + batch])), spec)
        parts.append(tft_output.transform_raw_features(raw)[feature].numpy().astype(dtype))
    return np.concatenate(parts)


def read_data(examples_uri: str, split: str, transform_graph_uri: str, settings: ModuleSettings,
              limit: Optional[int]) -> EvalData:
    """The first `limit` examples (None = all) of a split, raw and transformed."""
    serialized, raw, labels = [], [], []
    raw_name = F.RAW_INPUT[settings.kind]
    for example in read_split_examples(split_pattern(examples_uri, split), limit):
        serialized.append(example.SerializeToString())
        raw.append(example.features.feature[raw_name].bytes_list.value[0])
        labels.append(example.features.feature[F.LABEL].int64_list.value[0])
    if not serialized:
        raise EdgeExportError(f"edge exports: split '{split}' of {examples_uri} has no examples")
    return EvalData(serialized, raw, transformed_inputs(transform_graph_uri, serialized, settings),
                    np.asarray(labels, np.int64))


def savedmodel_probabilities(loaded, serialized: Sequence[bytes], batch: int = 256) -> np.ndarray:
    """The `serving_examples` probabilities [N, classes] of a loaded Conveyor SavedModel (the reference)."""
    import tensorflow as tf

    fn = loaded.signatures[contract.EXAMPLES_SIGNATURE]
    return np.concatenate([fn(tf.constant(list(serialized[i:i + batch])))[OUTPUT].numpy()
                           for i in range(0, len(serialized), batch)])


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of probabilities [N, classes] against int labels [N]."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


# the contract and the goldens ------------------------------------------------------------

def write_contract(folder: str, settings: ModuleSettings, label_names: List[str], transform_graph_uri: str) -> None:
    """contract.json, labels.txt and (text) vocabulary.txt: what a client needs to build the input.

    contract.json: {"kind", "model", "signature", "input": {"name", "dtype", "shape"},
    "output": {"name", "dtype", "shape"}, "preprocessing": [steps as sentences], and for
    text "vocabulary_size" (lines of vocabulary.txt), "oov_buckets", "max_tokens"}.
    """
    name, dtype, shape = edge_input(settings)
    classes = len(label_names)
    if settings.kind == "image":
        steps = [
            "Decode the image to 8-bit pixels (PNG, JPEG, GIF first frame, BMP); drop alpha; "
            f"convert grey <-> RGB to {settings.channels} channel(s) (TF's rgb_to_grayscale weights "
            "0.2989, 0.5870, 0.1140, back to 8 bits).",
            f"Resize to {settings.image_size}x{settings.image_size} with bilinear interpolation "
            "(tf.image.resize, half-pixel centres, no antialias).",
            "Divide by 255: float32 in [0, 1], layout [N, height, width, channels] (NHWC)."]
        vocabulary_size = None
    else:
        vocab_src = os.path.join(transform_graph_uri, "transform_fn", "assets", VOCABULARY_NAME)
        shutil.copy(vocab_src, os.path.join(folder, "vocabulary.txt"))
        with open(vocab_src, "rb") as f:
            vocabulary_size = sum(1 for _ in f)
        steps = [
            "Lower-case (Unicode). Replace each match of the regular expression <br\\s*/?> (e.g. <br />) "
            "by a space. Delete U+FE00..U+FE0F and U+200D.",
            "Put spaces around each Han, Hiragana, Katakana and 'other symbol' (Unicode category So, "
            "e.g. emoji) character.",
            "Replace every character that is not in Unicode category L (letters), M (marks), N "
            "(numbers, e.g. ½) or So, nor an apostrophe, by a space (so $ + = < > | are separators); "
            "drop apostrophes at word edges (modules/preprocessing.py normalize_text).",
            f"Split on spaces; keep the first {settings.max_tokens} tokens.",
            "Token id = 1 + the token's 0-based line in vocabulary.txt; a token not in it gets "
            f"1 + {vocabulary_size} + (FarmHash Fingerprint64(token) mod {settings.oov_buckets}) "
            "(tf.strings.to_hash_bucket_fast); 0 is padding."]
        if name == F.MULTI_HOT:
            steps.append(f"multi_hot[i] = 1.0 if token id i + 1 occurs in the text, else 0.0 "
                         f"(width {shape[1]}; padding id 0 has no column).")
        else:
            steps.append(f"Pad the ids with 0 to {settings.max_tokens}; int32 [N, {settings.max_tokens}].")
    doc = {"kind": settings.kind, "model": settings.model, "signature": EDGE_SIGNATURE,
           "input": {"name": name, "dtype": np.dtype(dtype).name, "shape": shape},
           "output": {"name": OUTPUT, "dtype": "float32", "shape": [None, classes],
                      "meaning": "class probabilities; class id = argmax = line of labels.txt"},
           "preprocessing": steps}
    if vocabulary_size is not None:
        doc.update(vocabulary_size=vocabulary_size, oov_buckets=settings.oov_buckets,
                   max_tokens=settings.max_tokens)
    with open(os.path.join(folder, "contract.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(folder, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in label_names))


def write_golden(export_dir: str, kind: str, raw: Sequence[bytes], inputs: np.ndarray, expected: np.ndarray) -> None:
    """golden/golden.json: {"raw": texts or base64 images, "input": nested lists, "expected":
    probabilities [n, classes], "atol": GOLDEN_ATOL}."""
    golden = os.path.join(export_dir, "golden")
    os.makedirs(golden, exist_ok=True)
    raw_values = [r.decode("utf-8") if kind == "text" else base64.b64encode(r).decode("ascii") for r in raw]
    with open(os.path.join(golden, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"raw": raw_values, "raw_encoding": "utf-8 text" if kind == "text" else "base64 image bytes",
                   "input": inputs.tolist(), "input_dtype": inputs.dtype.name,
                   "expected": expected.tolist(), "atol": GOLDEN_ATOL}, f)


def read_golden(export_dir: str) -> Dict[str, Any]:
    """golden/golden.json of an export folder, with "input" and "expected" as numpy arrays."""
    with open(os.path.join(export_dir, "golden", "golden.json"), encoding="utf-8") as f:
        golden = json.load(f)
    golden["input"] = np.asarray(golden["input"], dtype=golden["input_dtype"])
    golden["expected"] = np.asarray(golden["expected"], dtype=np.float32)
    return golden


def folder_bytes(path: str) -> int:
    """Total size of the files under `path` (golden/ excluded)."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "golden"]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# the whole step ---------------------------------------------------------------------------

def build_exports(model_dir: str, transform_graph_uri: str, examples_uri: str, settings: ModuleSettings,
                  label_names: List[str], exports: Sequence[str], max_accuracy_drop: float, work_dir: str,
                  eval_examples: Optional[int] = None, latency_examples: int = 50
                  ) -> Tuple[float, int, List[ExportResult]]:
    """Converts, evaluates and gates every export into `work_dir` (the future version folder).

    Args:
      model_dir: the pushed SavedModel (modules/export.py layout).
      transform_graph_uri, examples_uri: the Trainer's Transform graph and the Examples.
      settings: the Trainer's ModuleSettings.
      label_names: class names in label order.
      exports: names from EXPORTS.
      max_accuracy_drop: an export whose accuracy is lower than the SavedModel's by more
        than this (0..1) is removed from work_dir and not pushed.
      work_dir: an empty folder; gets contract files and one folder per passing export.
      eval_examples: evaluate on the first N eval examples; None = all.
      latency_examples: batch-1 predictions timed per export.
    Returns:
      (the SavedModel's accuracy, examples evaluated, one ExportResult per export, in order).
    """
    import tensorflow as tf

    data = read_data(examples_uri, "eval", transform_graph_uri, settings, eval_examples)
    representative = read_data(examples_uri, "train", transform_graph_uri, settings, REPRESENTATIVE_EXAMPLES
                               ).inputs if "tflite_int8" in exports else None
    loaded = tf.saved_model.load(model_dir)
    reference = accuracy(savedmodel_probabilities(loaded, data.serialized), data.labels)
    edge_dir = os.path.join(os.path.dirname(work_dir.rstrip("/")), f"{TMP_PREFIX}edge-saved-model-{os.getpid()}")
    shutil.rmtree(edge_dir, ignore_errors=True)
    write_edge_saved_model(loaded, settings, edge_dir)
    write_contract(work_dir, settings, label_names, transform_graph_uri)
    golden = slice(0, GOLDEN_EXAMPLES)
    results = []
    try:
        for name in exports:
            result = ExportResult(name)
            results.append(result)
            out = os.path.join(work_dir, name)
            os.makedirs(out)
            try:
                if name == "tfjs":
                    convert_tfjs(edge_dir, out)
                else:
                    flatbuffer, result.detail = convert_tflite(edge_dir, name, representative)
                    with open(os.path.join(out, "model.tflite"), "wb") as f:
                        f.write(flatbuffer)
                probabilities, result.latency_ms = predict_export(name, out, data.inputs, latency_examples)
            except EdgeExportError as e:
                result.reason = str(e)
                shutil.rmtree(out)
                continue
            result.size_bytes = folder_bytes(out)
            result.accuracy = accuracy(probabilities, data.labels)
            result.accuracy_delta = result.accuracy - reference
            if -result.accuracy_delta > max_accuracy_drop:
                result.reason = (f"accuracy {result.accuracy:.4f} is {-result.accuracy_delta:.4f} below the "
                                 f"SavedModel's {reference:.4f} (edge_max_accuracy_drop {max_accuracy_drop})")
                shutil.rmtree(out)
                continue
            write_golden(out, settings.kind, data.raw[golden], data.inputs[golden], probabilities[golden])
            result.pushed = True
    finally:
        shutil.rmtree(edge_dir, ignore_errors=True)
    return reference, len(data.labels), results


def publish_edge(base: str, version: int, build: Callable[[str], Any]) -> Tuple[str, Any]:
    """Publishes <base>/<version> atomically (hidden temp folder, then rename), under a lock.

    Args:
      base: HOME/edge/<name>.
      version: the SavedModel's pushed version.
      build: called with the temp folder to fill; an exception removes the temp folder.
    Returns:
      (the version folder, build's return value; None when the folder already existed and
      build was not called).
    Raises:
      whatever build raises; OSError when the folder cannot be written or renamed.
    """
    os.makedirs(base, exist_ok=True)
    final = os.path.join(base, str(version))
    with open(os.path.join(base, ".push.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_temp_dirs(base)
        if os.path.exists(final):
            return final, None
        tmp = os.path.join(base, f"{TMP_PREFIX}{version}-{os.getpid()}")
        os.makedirs(tmp)
        try:
            outcome = build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, outcome


def record(artifact: Artifact, version: str, destination: str, reference: float, evaluated: int,
           results: Sequence[ExportResult]) -> None:
    """Writes the EdgeExports custom properties (see EdgeExports)."""
    artifact.set_string_custom_property("pushed_version", version)
    artifact.set_string_custom_property("destination", destination)
    artifact.set_float_custom_property("reference_accuracy", reference)
    artifact.set_int_custom_property("eval_examples", evaluated)
    artifact.set_string_custom_property("exports", json.dumps([dataclasses.asdict(r) for r in results]))
    for r in results:
        for key in ("accuracy", "accuracy_delta", "latency_ms"):
            if getattr(r, key) is not None:
                artifact.set_float_custom_property(f"{r.name}_{key}", getattr(r, key))
        if r.size_bytes is not None:
            artifact.set_int_custom_property(f"{r.name}_size_bytes", r.size_bytes)
        artifact.set_int_custom_property(f"{r.name}_pushed", int(r.pushed))
        artifact.set_string_custom_property(f"{r.name}_reason", r.reason)


class Executor(base_executor.BaseExecutor):
    """Exports, evaluates, gates and publishes the edge models of a pushed version."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        out = artifact_utils.get_single_instance(output_dict[EDGE_EXPORTS_KEY])
        pushed = artifact_utils.get_single_instance(input_dict[PUSHED_MODEL_KEY])
        # pushed 1: a new version; pushed 0 with a version: this model already serves as that
        # version (a rerun after edge_exports were added exports it then); no version: not pushed.
        version = pushed.get_string_custom_property("pushed_version")
        if not version:
            out.set_string_custom_property(
                "reason", f"the model was not pushed ({pushed.get_string_custom_property('reason') or 'no reason'})")
            return
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        transform_graph = artifact_utils.get_single_instance(input_dict[TRANSFORM_GRAPH_KEY])
        settings = ModuleSettings.from_custom_config(json.loads(exec_properties[SETTINGS_KEY]))
        label_names = _label_names(examples.uri)
        eval_limit = exec_properties.get(EVAL_EXAMPLES_KEY) or None
        final, outcome = publish_edge(
            exec_properties[BASE_DIR_KEY], int(version),
            lambda work: build_exports(
                os.path.join(model.uri, "Format-Serving"), transform_graph.uri, examples.uri, settings,
                label_names, json.loads(exec_properties[EXPORTS_KEY]), exec_properties[MAX_DROP_KEY], work,
                eval_limit, exec_properties.get(LATENCY_EXAMPLES_KEY) or 50))
        if outcome is None:
            out.set_string_custom_property("reason", f"edge exports of version {version} already exist at {final}")
            return
        reference, evaluated, results = outcome
        record(out, version, final, reference, evaluated, results)
        with open(os.path.join(out.uri, "edge_exports.json"), "w", encoding="utf-8") as f:
            json.dump({"version": version, "destination": final, "reference_accuracy": reference,
                       "eval_examples": evaluated, "exports": [dataclasses.asdict(r) for r in results]}, f, indent=1)
        for r in results:
            logging.info("edge export %s: %s", r.name, "pushed" if r.pushed else f"not pushed: {r.reason}")


def _label_names(examples_uri: str) -> List[str]:
    with open(os.path.join(examples_uri, F.LABEL_NAMES_FILE), encoding="utf-8") as f:
        return json.load(f)


class EdgeExporterSpec(types.ComponentSpec):
    """EdgeExporter's inputs, output and parameters."""
    PARAMETERS = {EXPORTS_KEY: ExecutionParameter(type=str), MAX_DROP_KEY: ExecutionParameter(type=float),
                  BASE_DIR_KEY: ExecutionParameter(type=str), SETTINGS_KEY: ExecutionParameter(type=str),
                  EVAL_EXAMPLES_KEY: ExecutionParameter(type=int, optional=True),
                  LATENCY_EXAMPLES_KEY: ExecutionParameter(type=int, optional=True)}
    INPUTS = {MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
              PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
              TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
              EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {EDGE_EXPORTS_KEY: ChannelParameter(type=EdgeExports)}


class EdgeExporter(base_component.BaseComponent):
    """Publishes TFLite / TF.js exports of the version the Pusher just pushed (module docstring)."""

    SPEC_CLASS = EdgeExporterSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, pushed_model: types.BaseChannel,
                 transform_graph: types.BaseChannel, examples: types.BaseChannel, exports: Sequence[str],
                 max_accuracy_drop: float, base_directory: str, settings: ModuleSettings,
                 eval_examples: int = 0, latency_examples: int = 50):
        """Declares the component; nothing runs until the pipeline does.

        Args:
          model: the Trainer's Model (the one the Pusher pushed).
          pushed_model: the Pusher's PushedModel; the exports take its `pushed_version` (a
            new version, or the version already serving this model); without one (not
            blessed) nothing is exported. A version whose edge folder exists is not redone.
          transform_graph: the Transform graph the model was trained with (builds the eval,
            calibration and golden inputs).
          examples: the Examples whose eval split is evaluated (train split: int8 calibration).
          exports: names from EXPORTS, in the order they run.
          max_accuracy_drop: accuracy drop (0..1) vs the SavedModel above which an export is
            not pushed.
          base_directory: HOME/edge/<name>; versions go to <base_directory>/<version>/.
          settings: the Trainer's ModuleSettings.
          eval_examples: evaluate on the first N eval examples; 0 = all.
          latency_examples: batch-1 predictions timed per export.
        Outputs:
          `outputs['edge_exports']`: EdgeExports with the per-export metrics, or only a
          `reason` when nothing was exported.
        Raises:
          ValueError: an unknown export name.
        """
        unknown = sorted(set(exports) - set(EXPORTS))
        if unknown:
            raise ValueError(f"edge exports {unknown} are unknown; expected some of {', '.join(EXPORTS)}")
        spec = EdgeExporterSpec(
            model=model, pushed_model=pushed_model, transform_graph=transform_graph, examples=examples,
            edge_exports=types.Channel(type=EdgeExports), exports=json.dumps(list(exports)),
            max_accuracy_drop=float(max_accuracy_drop), base_directory=base_directory,
            module_settings=json.dumps(settings.to_custom_config()), eval_examples=eval_examples,
            latency_examples=latency_examples)
        super().__init__(spec=spec)
