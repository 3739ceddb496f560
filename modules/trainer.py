"""Trainer's run_fn for both kinds: train on the raw examples through the Transform graph,
then export a SavedModel whose signatures take what clients have (image bytes / raw text).

The Trainer reads the *raw* examples (Transform does not materialise transformed copies):
they go through the same TFT graph that serving uses (once, into memory, when the split
fits `trainer_cache_mb`), so there is one code path for train and serve, and the class
names travel from ExampleGen's artifact (label_names.json next to the splits) into the model.
"""
import json
import math
import os
import time
from typing import Dict, List, Optional, Tuple

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


def _count_records(file_pattern: str) -> int:
    files = tf.io.gfile.glob(file_pattern)
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))


def _example_bytes(tf_transform_output: tft.TFTransformOutput, feature: str) -> int:
    """Bytes one transformed (feature, label) pair takes in memory."""
    spec = tf_transform_output.transformed_feature_spec()
    size = 0
    for name in (feature, F.LABEL):
        elements = 1
        for dim in getattr(spec[name], "shape", []) or []:
            elements *= int(dim)
        size += elements * spec[name].dtype.size
    return size


def _dataset(file_pattern: str, data_accessor, tf_transform_output, batch_size: int, feature: str,
             shuffle: bool, cache_limit_bytes: int) -> Tuple[tf.data.Dataset, int]:
    """Endless batches of (transformed feature, label) from the raw examples of a split, and
    the split's example count.

    When the split's transformed (feature, label) pairs fit in `cache_limit_bytes`, every
    raw example goes through the Transform graph once and the epochs replay that in-memory
    copy (otherwise every epoch decodes the same images / tokenizes the same texts again);
    larger splits are transformed batch by batch as they are read.
    """
    tft_layer = tf_transform_output.transform_features_layer()

    # The layer calls an already traced graph; autograph-converting the Keras code around it
    # would only cost seconds per dataset.
    @tf.autograph.experimental.do_not_convert
    def transform(raw_features):
        transformed = tft_layer(raw_features)
        return transformed[feature], transformed[F.LABEL]

    schema = tf_transform_output.raw_metadata.schema
    count = _count_records(file_pattern)
    cached = count * _example_bytes(tf_transform_output, feature) <= cache_limit_bytes
    if not cached:
        absl.logging.info("%s: %d examples exceed the %d MB cache; transforming every batch",
                          file_pattern, count, cache_limit_bytes >> 20)
        raw = data_accessor.tf_dataset_factory(
            [file_pattern], TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle, num_epochs=None),
            schema)
        return raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE), count
    raw = data_accessor.tf_dataset_factory(
        [file_pattern], TensorFlowDatasetOptions(batch_size=256, shuffle=False, num_epochs=1), schema)
    pairs = raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
    if shuffle:
        pairs = pairs.shuffle(min(count, 10000), reshuffle_each_iteration=True)
    return pairs.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE), count


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
        # No Python control flow depends on tensors here: autograph would only slow the trace.
        raw = tf.function(self.serve_raw, autograph=False).get_concrete_function(
            tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT[kind]))
        examples = tf.function(self.serve_examples, autograph=False).get_concrete_function(
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


def warm_start(model: keras.Model, base_model: Optional[str], config: dict, num_classes: int,
               tf_transform_output: tft.TFTransformOutput) -> str:
    """Copies the base model's Keras weights into `model`; returns '' if it did, else why not.

    The exported SavedModel's variables are a checkpoint of ServingModule, whose `model` is the
    Keras model, so a Checkpoint(model=...) restores it layer by layer; another model type,
    input size or class count fails the restore. It goes into a fresh copy first, so a failed
    restore leaves `model` untouched and the optimizer settings stay this run's. Transform
    vocabularies (text) must be identical too: old weights on re-numbered tokens are noise.
    """
    if not base_model:
        return "no blessed model yet"
    assets = os.path.join(tf_transform_output.transform_savedmodel_dir, "assets")
    for name in tf.io.gfile.listdir(assets) if tf.io.gfile.isdir(assets) else []:
        base_asset = os.path.join(base_model, "assets", name)
        if not tf.io.gfile.exists(base_asset) or \
                _read_bytes(base_asset) != _read_bytes(os.path.join(assets, name)):
            return f"this run's Transform vocabulary '{name}' differs from the base model's"
    copy = models.build(config, num_classes)
    try:
        status = tf.train.Checkpoint(model=copy).read(os.path.join(base_model, "variables", "variables"))
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        return f"the base model's architecture differs ({str(e).strip().splitlines()[0]})"
    model.set_weights(copy.get_weights())
    return ""


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def save_training_schema(fn_args: FnArgs, label_names: List[str], kind: str) -> str:
    """Writes the raw-data schema this model trained with, tightened from the training split's
    TFDV statistics, into the export (assets.extra/conveyor_schema.pbtxt): the next run's gate
    validates new data against it (components/example_validator.py).

    The statistics of the few profile features are computed in memory with TFDV's own
    generators (a Beam pipeline would add seconds of start-up for a handful of numbers).
    Only those features are decoded, a chunk of records at a time, so the memory this takes
    does not grow with the image bytes / texts of the split.
    """
    import pyarrow as pa
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.coders import example_coder

    from components.example_validator import BASELINE_SCHEMA_FILE, tighten_schema
    schema = tfdv.load_schema_text(fn_args.schema_path)
    profile_schema = schema_pb2.Schema(
        feature=[f for f in schema.feature if f.name in F.PROFILE_FEATURES[kind]])
    decoder = example_coder.ExamplesToRecordBatchDecoder(profile_schema.SerializeToString())
    files = tf.io.gfile.glob(fn_args.train_files[0])
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(10000)
    table = pa.Table.from_batches([decoder.DecodeBatch(list(chunk)) for chunk in records.as_numpy_iterator()])
    batch = table.combine_chunks().to_batches()[0]
    statistics = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())
    path = os.path.join(fn_args.serving_model_dir, BASELINE_SCHEMA_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    tfdv.write_schema_text(tighten_schema(schema, statistics.datasets[0], label_names), path)
    return path


class ThroughputLogger(keras.callbacks.Callback):
    """Logs each epoch's training throughput (examples/s), which TensorBoard then plots.

    Measured but not explained: before this callback existed, fit() of the MNIST CNN
    (bench/pipeline.py, 2 cores) spent about 17 s outside its epochs in 3 of 6 runs; with it,
    in none of 8. Keras's asynchronous callback dispatch is off for the TensorFlow backend
    (backend.IS_THREAD_SAFE is False), so that is not the cause.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self._started = 0.0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        rate = self._batches * self.batch_size / seconds if seconds > 0 else 0.0
        if logs is not None:
            logs["examples_per_second"] = rate
        absl.logging.info("Epoch %d: %d steps in %.1f s, %.0f training examples/s",
                          epoch + 1, self._batches, seconds, rate)


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    label_names = read_label_names(fn_args.train_files[0])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    feature = models.input_feature(config)
    batch = config["batch_size"]
    cache_limit = int(config["trainer_cache_mb"]) << 20
    train, _ = _dataset(fn_args.train_files[0], fn_args.data_accessor, tf_transform_output, batch, feature,
                        True, cache_limit)
    evaluation, eval_count = _dataset(fn_args.eval_files[0], fn_args.data_accessor, tf_transform_output,
                                      batch, feature, False, cache_limit)
    # Validating more than one pass over the eval split would only repeat the same examples.
    validation_steps = max(1, min(fn_args.eval_steps, math.ceil(eval_count / batch)))

    model = models.build(config, len(label_names))
    model.summary(print_fn=absl.logging.info)
    if config.get("warm_start"):
        why_not = warm_start(model, fn_args.base_model, config, len(label_names), tf_transform_output)
        if why_not:
            absl.logging.warning("Warm start: training from scratch: %s", why_not)
        else:
            absl.logging.info("Warm start: initialised from the base model %s", fn_args.base_model)

    epochs = max(1, min(config["epochs"], fn_args.train_steps))
    model.fit(
        train, epochs=epochs, steps_per_epoch=max(1, fn_args.train_steps // epochs),
        validation_data=evaluation, validation_steps=validation_steps, verbose=2,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["early_stopping_patience"],
                                          restore_best_weights=True),
            ThroughputLogger(batch),  # before TensorBoard, which then records its figure
            keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
        ])
    export(model, tf_transform_output, label_names, config, fn_args.serving_model_dir)
    save_training_schema(fn_args, label_names, config["kind"])
    # TF Serving (and Conveyor's server) replay these before a version takes traffic.
    write_warmup_requests(fn_args.serving_model_dir,
                          [{F.SERVING_INPUT[config["kind"]]: [value]}
                           for value in warmup_inputs(fn_args.eval_files, config["kind"])],
                          model_name=config["name"])
