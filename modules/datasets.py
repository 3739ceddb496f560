"""The Trainer's input: raw examples of a split through the Transform graph, as
(transformed feature, label) batches, cached in memory when they fit.

Under a tf.distribute strategy each worker builds its own input pipeline
(Strategy.distribute_datasets_from_function) and reads its shard of the split; tf.data's
auto-sharding is switched off because the sharding here is explicit:
  * Examples are sharded one by one (example i goes to worker i mod workers) on the raw
    records, before the Transform graph and the cache, so every worker transforms and keeps
    in memory only its share, and the shards are disjoint and complete. Auto-sharding by
    FILE would need at least as many files as workers (ExampleGen writes few) and by DATA
    would shard after the cache and shuffle, where the workers' orders differ.
  * A split too large for the cache that has at least as many files as workers is sharded
    by file instead (no worker reads another's records).

Model selection (EarlyStopping with restore_best_weights) watches a validation slice carved
out of the *train* split by a salted hash of each example's raw input (text or image bytes):
the eval split, on which the Evaluator blesses, is never seen in training, so its accuracy
is a held-out figure. The salt makes the slice independent of ExampleGen's own hash split.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import absl.logging
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions

from modules import features as F


def examples_artifact_dir(file_pattern: str) -> str:
    """'<examples uri>/Split-train/*' -> '<examples uri>' (where ExampleGen wrote label_names.json)."""
    return os.path.dirname(os.path.dirname(file_pattern))


def read_label_names(file_pattern: str) -> List[str]:
    """The class names ExampleGen stored beside the split that `file_pattern` globs."""
    path = os.path.join(examples_artifact_dir(file_pattern), F.LABEL_NAMES_FILE)
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def count_records(file_pattern: str) -> int:
    """Number of records in the GZIP TFRecord files matching `file_pattern`."""
    files = tf.io.gfile.glob(file_pattern)
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))


# Parts of a split that dataset() yields: every example, or the fit / validation slices.
ALL, FIT, VALIDATION = "all", "fit", "validation"
_VALIDATION_SALT = "conveyor-validation-slice:"


def _raw_value(value) -> tf.Tensor:
    """One parsed raw feature value (dense [1] or sparse) -> a scalar string."""
    values = value.values if isinstance(value, tf.SparseTensor) else tf.reshape(value, [-1])
    return tf.strings.reduce_join(values)


def in_validation_slice(raw_value: tf.Tensor, validation_percent: int) -> tf.Tensor:
    """bool scalar: whether the example whose raw input is `raw_value` (a scalar string: text
    or encoded image) belongs to the validation slice of its split, which holds about
    validation_percent % of the examples (a stable fingerprint of the salted value, so the
    same example is in the same slice in every run and process)."""
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([_VALIDATION_SALT, raw_value]), 100)
    return bucket < validation_percent


def _raw_key(spec: Dict) -> str:
    """The raw input feature (text or image bytes) among a raw feature spec's keys."""
    return next(key for key in F.RAW_INPUT.values() if key in spec)


def _part_filter(part: str, raw_key: str, validation_percent: int):
    """A tf.data predicate on one parsed raw example: does it belong to `part`?"""
    want = part == VALIDATION

    def keep(features):
        return tf.equal(in_validation_slice(_raw_value(features[raw_key]), validation_percent), want)
    return keep


def count_part(file_pattern: str, tf_transform_output, part: str, validation_percent: int) -> int:
    """Number of examples of a split (GZIP TFRecords of raw tf.Examples) in `part` (ALL, FIT
    or VALIDATION of validation_percent %)."""
    if part == ALL:
        return count_records(file_pattern)
    raw_key = _raw_key(tf_transform_output.raw_feature_spec())
    spec = {raw_key: tf_transform_output.raw_feature_spec()[raw_key]}
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(file_pattern), compression_type="GZIP")
    parsed = records.map(lambda record: tf.io.parse_single_example(record, spec))
    return int(parsed.filter(_part_filter(part, raw_key, validation_percent)).reduce(
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


def dataset(file_pattern: str, data_accessor, tf_transform_output, batch_size: int, feature: str,
            shuffle: bool, cache_limit_bytes: int,
            input_context: Optional[tf.distribute.InputContext] = None, part: str = ALL,
            validation_percent: int = 0) -> Tuple[tf.data.Dataset, int]:
    """Endless batches of (transformed feature, label) from the raw examples of a split (or of
    its fit or validation slice), and the example count of that part of the whole split.

    When this worker's share of the split, as transformed (feature, label) pairs, fits in
    `cache_limit_bytes`, every raw example goes through the Transform graph once and the
    epochs replay that in-memory copy (otherwise every epoch decodes the same images /
    tokenizes the same texts again); larger splits are transformed batch by batch as read.

    Args:
      file_pattern: glob of the split's GZIP TFRecord files.
      data_accessor: TFX's FnArgs.data_accessor.
      tf_transform_output: the Transform graph.
      batch_size: examples per batch yielded here: the global batch in one process, the
        per-replica batch under a strategy (input_context.get_per_replica_batch_size).
      feature: the transformed feature the model reads.
      shuffle: shuffle (training) or keep the file order (evaluation).
      cache_limit_bytes: cache this worker's transformed pairs when they fit.
      input_context: from Strategy.distribute_datasets_from_function; this pipeline reads
        shard input_pipeline_id of num_input_pipelines. None = the whole split.
      part: ALL examples, or only those of the FIT or VALIDATION slice (in_validation_slice).
      validation_percent: the validation slice's share in percent, for FIT / VALIDATION.
    Returns:
      (dataset of (feature [batch_size, ...], label int64 [batch_size]) batches, the number
      of examples of `part` in the whole split).
    Raises:
      ValueError: part is not ALL, FIT or VALIDATION.
    """
    if part not in (ALL, FIT, VALIDATION):
        raise ValueError(f"part: expected one of {ALL}, {FIT}, {VALIDATION}, got {part!r}")
    shards, index = (input_context.num_input_pipelines, input_context.input_pipeline_id) \
        if input_context else (1, 0)
    tft_layer = tf_transform_output.transform_features_layer()

    # The layer calls an already traced graph; autograph-converting the Keras code around it
    # would only cost seconds per dataset.
    @tf.autograph.experimental.do_not_convert
    def transform(raw_features):
        transformed = tft_layer(raw_features)
        return transformed[feature], transformed[F.LABEL]

    schema = tf_transform_output.raw_metadata.schema
    count = count_part(file_pattern, tf_transform_output, part, validation_percent)
    keep = _part_filter(part, _raw_key(tf_transform_output.raw_feature_spec()), validation_percent)

    def select(raw: tf.data.Dataset, batch: int) -> tf.data.Dataset:
        """Raw batches -> raw batches of `part` only (unchanged for ALL)."""
        return raw if part == ALL else raw.unbatch().filter(keep).batch(batch)
    share = -(-count // shards)  # this worker's examples (the first shards get one more)
    cached = share * _example_bytes(tf_transform_output, feature) <= cache_limit_bytes
    if not cached:
        absl.logging.info("%s: %d examples exceed the %d MB cache; transforming every batch",
                          file_pattern, share, cache_limit_bytes >> 20)
        files = sorted(tf.io.gfile.glob(file_pattern))
        if shards > 1 and len(files) >= shards:
            raw = select(data_accessor.tf_dataset_factory(
                files[index::shards],
                TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle, num_epochs=None), schema),
                batch_size)
        else:
            raw = select(data_accessor.tf_dataset_factory(
                [file_pattern], TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle and shards == 1,
                                                         num_epochs=None), schema), batch_size)
            if shards > 1:  # one stream in file order, dealt out example by example
                raw = raw.unbatch().shard(shards, index)
                raw = (raw.shuffle(10000) if shuffle else raw).batch(batch_size)
        return _unsharded(raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)), count
    raw = select(data_accessor.tf_dataset_factory(
        [file_pattern], TensorFlowDatasetOptions(batch_size=256, shuffle=False, num_epochs=1), schema), 256)
    if shards > 1:  # deal the raw examples out before transforming them
        raw = raw.unbatch().shard(shards, index).batch(256)
    pairs = raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
    if shuffle:
        pairs = pairs.shuffle(min(share, 10000), reshuffle_each_iteration=True)
    return _unsharded(pairs.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE)), count


def _unsharded(data: tf.data.Dataset) -> tf.data.Dataset:
    """`data` with tf.data's auto-sharding off: dataset() shards explicitly (module docstring)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.with_options(options)
