"""Trainer's run_fn for both kinds: train on the raw examples through the Transform graph,
then export a SavedModel whose signatures take what clients have (image bytes / raw text).

The Trainer reads the *raw* examples (Transform does not materialise transformed copies):
each batch goes through the same TFT graph that serving uses, so there is one code path
for train and serve, and the class names travel from ExampleGen's artifact
(label_names.json next to the splits) into the model.
"""
import json
import os
from typing import Dict, List

import absl.logging
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions

from modules import features as F
from modules import models
from serving.warmup import write_warmup_requests

EXAMPLES_SIGNATURE = "serving_examples"


def examples_artifact_dir(file_pattern: str) -> str:
    """'<examples uri>/Split-train/*' -> '<examples uri>' (where ExampleGen wrote label_names.json)."""
    return os.path.dirname(os.path.dirname(file_pattern))


def read_label_names(file_pattern: str) -> List[str]:
    path = os.path.join(examples_artifact_dir(file_pattern), "label_names.json")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _dataset(file_patterns, data_accessor, tf_transform_output, batch_size: int, feature: str,
             shuffle: bool) -> tf.data.Dataset:
    raw = data_accessor.tf_dataset_factory(
        file_patterns, TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle, num_epochs=None),
        tf_transform_output.raw_metadata.schema)
    tft_layer = tf_transform_output.transform_features_layer()

    def transform(raw_features):
        transformed = tft_layer(raw_features)
        return transformed[feature], transformed[F.LABEL]

    return raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
        self._example_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                              if k not in (F.LABEL, F.LABEL_NAME)}

    def _predict(self, raw_features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw_features)
        probabilities = self.model(transformed[self._feature], training=False)
        if probabilities.shape[-1] == 1:  # sigmoid head: P(class 1) -> [P(0), P(1)]
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=1)
        class_ids = tf.argmax(probabilities, axis=1)
        return {"probabilities": probabilities, "class_ids": class_ids,
                "class_names": tf.gather(self.label_names, class_ids)}

    def serve_raw(self, values: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self._predict({self._raw_input: tf.reshape(values, [-1, 1])})

    def serve_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self._predict(tf.io.parse_example(examples, self._example_spec))

    def signatures(self, kind: str):
        raw = tf.function(self.serve_raw).get_concrete_function(
            tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT[kind]))
        examples = tf.function(self.serve_examples).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="examples"))
        return {"serving_default": raw, EXAMPLES_SIGNATURE: examples}


def export(model, tf_transform_output, label_names, config, path: str) -> None:
    kind = config["kind"]
    module = ServingModule(model, tf_transform_output, label_names, kind, models.input_feature(config))
    tf.saved_model.save(module, path, signatures=module.signatures(kind))


def warmup_inputs(file_patterns, kind: str, count: int = 5) -> List[bytes]:
    """A few raw eval inputs (image bytes / texts) for TF Serving's warmup file."""
    raw_key = F.RAW_INPUT[kind]
    files = tf.io.gfile.glob(file_patterns[0])
    values = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count):
        example = tf.train.Example.FromString(record.numpy())
        values.append(example.features.feature[raw_key].bytes_list.value[0])
    return values


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    label_names = read_label_names(fn_args.train_files[0])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    feature = models.input_feature(config)
    batch = config["batch_size"]
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch, feature, True)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch, feature, False)

    model = models.build(config, len(label_names))
    model.summary(print_fn=absl.logging.info)

    epochs = max(1, min(config["epochs"], fn_args.train_steps))
    model.fit(
        train, epochs=epochs, steps_per_epoch=max(1, fn_args.train_steps // epochs),
        validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=2,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["early_stopping_patience"],
                                          restore_best_weights=True),
            keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
        ])
    export(model, tf_transform_output, label_names, config, fn_args.serving_model_dir)
    # TF Serving (and Conveyor's server) replay these before a version takes traffic.
    write_warmup_requests(fn_args.serving_model_dir,
                          [{F.SERVING_INPUT[config["kind"]]: [value]}
                           for value in warmup_inputs(fn_args.eval_files, config["kind"])],
                          model_name=config["name"])
