"""The Trainer's input: raw examples of a split through the Transform graph, as
(transformed feature, label) batches, cached in memory when they fit."""
import json
import os
from typing import List, Tuple

import absl.logging
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions

from modules import features as F

# Written by the ExampleGens next to the splits: the class names (index = label).
LABEL_NAMES_FILE = "label_names.json"


def examples_artifact_dir(file_pattern: str) -> str:
    """'<examples uri>/Split-train/*' -> '<examples uri>' (where ExampleGen wrote label_names.json)."""
    return os.path.dirname(os.path.dirname(file_pattern))


def read_label_names(file_pattern: str) -> List[str]:
    """The class names ExampleGen stored beside the split that `file_pattern` globs."""
    path = os.path.join(examples_artifact_dir(file_pattern), LABEL_NAMES_FILE)
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def count_records(file_pattern: str) -> int:
    """Number of records in the GZIP TFRecord files matching `file_pattern`."""
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


def dataset(file_pattern: str, data_accessor, tf_transform_output, batch_size: int, feature: str,
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
    count = count_records(file_pattern)
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
