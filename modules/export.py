"""The exported SavedModel: the Transform graph + the Keras model + the class names, with the
signatures of the served-model contract (serving/contract.py), so clients send what they have
(image bytes / raw text) and TFMA sends serialized tf.Examples."""
import contextlib
import dataclasses
import json
import os
from typing import Dict, List

import tf_keras as keras
import tensorflow as tf
import tensorflow_transform as tft

from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model

from modules import features as F
from modules import models
from modules.settings import MODEL_SETTINGS_FILE, NO_WEIGHTS, ModuleSettings, read_model_settings
from modules.splits import read_split_examples
from serving import contract

_PIXEL_RANGE_ERROR = (f"serving input {contract.PIXELS_INPUT}: expected float pixels in [0, 1] "
                      "(divide 8-bit values by 255)")


class ServingModule(tf.Module):
    """What gets exported: the Transform graph + the Keras model + the class names."""

    def __init__(self, model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                 label_names: List[str], kind: str, feature: str):
        super().__init__()
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.label_names = tf.constant(label_names)
        self._feature = feature
        self._raw_input = F.RAW_INPUT[kind]
        # Only the raw feature: examples without label or profile features (serving
        # requests, other producers) must parse; Transform needs nothing else.
        self._example_spec = {self._raw_input: tf_transform_output.raw_feature_spec()[self._raw_input]}

    def _predict(self, raw_features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw_features)
        return self._classify(transformed[self._feature])

    def _classify(self, model_input: tf.Tensor) -> Dict[str, tf.Tensor]:
        probabilities = self.model(model_input, training=False)
        if probabilities.shape[-1] == 1:  # sigmoid head: P(class 1) -> [P(0), P(1)]
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=1)
        class_ids = tf.argmax(probabilities, axis=1)
        return {contract.PROBABILITIES: probabilities, contract.CLASS_IDS: class_ids,
                contract.CLASS_NAMES: tf.gather(self.label_names, class_ids)}

    def serve_raw(self, values: tf.Tensor) -> Dict[str, tf.Tensor]:
        """serving_default: string [N] image bytes or texts -> the contract's outputs."""
        return self._predict({self._raw_input: tf.reshape(values, [-1, 1])})

    def serve_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        """serving_examples: serialized tf.Examples [N] -> the contract's outputs."""
        return self._predict(tf.io.parse_example(examples, self._example_spec))

    def serve_pixels(self, pixels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """serving_pixels: float32 [N, size, size, channels] in [0, 1] -> the contract's outputs.

        These are the Transform's image output (modules/preprocessing.decode_images), so the
        model sees exactly what serving_default computes from the encoded image. Values outside
        [0, 1] (e.g. 0..255 pixels not divided by 255) fail with InvalidArgumentError, which the
        server answers with 400, rather than a silently wrong class.
        """
        return self._classify(checked_pixels(pixels, self._pixel_shape))

    def signatures(self, settings: ModuleSettings):
        """{signature name: concrete function} of the served-model contract (serving/contract.py)."""
        kind = settings.kind
        # No Python control flow depends on tensors here: autograph would only slow the trace.
        raw = tf.function(self.serve_raw, autograph=False).get_concrete_function(
            tf.TensorSpec([None], tf.string, name=contract.SERVING_INPUT[kind]))
        examples = tf.function(self.serve_examples, autograph=False).get_concrete_function(
            tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT))
        signatures = {contract.DEFAULT_SIGNATURE: raw, contract.EXAMPLES_SIGNATURE: examples}
        if kind == "image":
            size = settings.image_size
            self._pixel_shape = (size, size, settings.channels)
            signatures[contract.PIXELS_SIGNATURE] = tf.function(
                self.serve_pixels, autograph=False).get_concrete_function(
                tf.TensorSpec([None, size, size, settings.channels], tf.float32,
                              name=contract.PIXELS_INPUT))
        return signatures


def checked_pixels(pixels: tf.Tensor, shape) -> tf.Tensor:
    """`pixels` (float32 [N, height, width, channels]) unchanged, once it has that shape and
    its values are in [0, 1]; else an InvalidArgumentError the server answers with 400.

    TF Serving feeds tensors without the signature's shape check, so a wrong size must fail
    here with a message naming the expected shape, not with whatever the layers make of it.

    Args:
      pixels: the serving_pixels input, of any shape.
      shape: (height, width, channels) the model expects.
    Returns:
      `pixels`, with the checks as control dependencies.
    Raises (when run):
      InvalidArgumentError "serving input pixels: expected shape [N, h, w, c], got [...]" or
      "serving input pixels: expected float pixels in [0, 1] (divide 8-bit values by 255)".
    """
    # Rank first: comparing the shape's tail with `shape` would itself fail (with TF's
    # "Incompatible shapes") for a tensor of another rank. The tail padded to 3 entries
    # compares alike for every rank; the rank test rejects the rest.
    tail = tf.concat([tf.shape(pixels)[1:], tf.zeros([3], tf.int32)], axis=0)[:3]
    right_shape = tf.logical_and(tf.equal(tf.rank(pixels), 4),
                                 tf.reduce_all(tf.equal(tail, tf.constant(list(shape)))))
    shape_check = tf.debugging.Assert(right_shape, [
        f"serving input {contract.PIXELS_INPUT}: expected shape "
        f"[N, {shape[0]}, {shape[1]}, {shape[2]}], got", tf.shape(pixels)], summarize=8)
    # The range checks reduce over the signature's 4 axes and fail with TF's own "Invalid
    # reduction dimension" on another rank: they run only after the shape check, or which
    # error the client gets depends on op scheduling.
    with tf.control_dependencies([shape_check]):
        range_checks = [
            tf.debugging.assert_greater_equal(pixels, 0.0, message=_PIXEL_RANGE_ERROR),
            tf.debugging.assert_less_equal(pixels, 1.0, message=_PIXEL_RANGE_ERROR)]
    with tf.control_dependencies(range_checks):
        return tf.identity(pixels)


def export(model: keras.Model, tf_transform_output: tft.TFTransformOutput, label_names: List[str],
           settings: ModuleSettings, path: str) -> None:
    """Saves the SavedModel of the served-model contract to `path` (a new directory).

    Keras adds a trace of every layer's call beside the signatures, so that
    tf.saved_model.load gives back a callable Keras object (components/edge_exporter.py calls
    it). For the transfer model they are left out, as tf_keras' own
    model.save(save_traces=False) does: its backbone has 150-240 layers, the traces took
    about 40 s of a 50 s MobileNetV2 export on 2 busy cores, and nothing reads them (transfer
    models have no edge exports; export-backbone restores the variables into a rebuilt model).
    """
    kind = settings.kind
    module = ServingModule(model, tf_transform_output, label_names, kind, models.input_feature(settings))
    without_traces = settings.model == "transfer"
    with keras_saved_model.keras_option_scope(save_traces=False) if without_traces else contextlib.nullcontext():
        tf.saved_model.save(module, path, signatures=module.signatures(settings))


def write_model_settings(export_dir: str, settings: ModuleSettings, num_classes: int) -> str:
    """Writes MODEL_SETTINGS_FILE (modules/settings.py) into an export; returns its path."""
    path = os.path.join(export_dir, MODEL_SETTINGS_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"settings": settings.to_custom_config(), "num_classes": num_classes}, indent=1))
    return path


class NotATransferModel(ValueError):
    """The exported model has no backbone to export."""


def save_backbone_weights(export_dir: str, out_path: str) -> ModuleSettings:
    """Writes the backbone weights of an exported transfer model to a Keras weights file.

    The export's variables are a checkpoint of ServingModule, whose `model` is the Keras
    model: it is rebuilt from MODEL_SETTINGS_FILE (backbone without weights) and restored
    from there, then its backbone saves its weights. The file loads as backbone_weights of a
    transfer model with the same backbone (any image_size and class count).

    Args:
      export_dir: a SavedModel written by run_fn (a pushed version directory).
      out_path: the weights file to write, ending in .h5 (.weights.h5: the Keras v3 weights
        format; another .h5: the legacy HDF5 format of the keras.applications downloads).
    Returns:
      the model's ModuleSettings.
    Raises:
      FileNotFoundError: the export has no MODEL_SETTINGS_FILE.
      NotATransferModel: the model is not a transfer model.
      ValueError: the checkpoint does not match the rebuilt model.
    """
    settings, num_classes = read_model_settings(export_dir)
    if settings.model != "transfer":
        raise NotATransferModel(f"it is a {settings.model} model, not a transfer model")
    model = models.build(dataclasses.replace(settings, backbone_weights=NO_WEIGHTS), num_classes)
    status = tf.train.Checkpoint(model=model).read(os.path.join(export_dir, "variables", "variables"))
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"its variables do not match its recorded settings ({str(e).splitlines()[0]})") from None
    models.backbone(model).save_weights(out_path)
    return settings


def warmup_inputs(file_patterns: List[str], kind: str, count: int = 5) -> List[bytes]:
    """A few raw eval inputs for TF Serving's warmup file.

    Args:
      file_patterns: globs of a split's GZIP TFRecord files (the Trainer's `fn_args.eval_files`);
        only the first is read.
      kind: "image" or "text", which raw feature to take (modules.features.RAW_INPUT).
      count: at most this many inputs.
    Returns:
      Encoded image bytes or UTF-8 texts, one per example, from the first `count` examples.
    Raises:
      IndexError: an example has an empty raw feature.
    """
    raw_key = F.RAW_INPUT[kind]
    return [example.features.feature[raw_key].bytes_list.value[0]
            for example in read_split_examples(file_patterns[0], count)]
