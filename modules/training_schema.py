"""The raw-data schema a model is trained with, saved in its export.

The Trainer (run_fn) writes it to `assets.extra/conveyor_schema.pbtxt` (BASELINE_SCHEMA_FILE)
of the exported model, tightened from the training split's statistics; the next run's data
gate (components/example_validator.py) and `conveyor drift` validate new data against it.
"""
import os
from typing import List, Optional

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
from tfx.components.trainer.fn_args_utils import FnArgs

from modules import features as F

# Inside an exported model directory; the Pusher and the infra validator copy the whole dir.
BASELINE_SCHEMA_FILE = os.path.join("assets.extra", "conveyor_schema.pbtxt")


def feature_stats(dataset: statistics_pb2.DatasetFeatureStatistics,
                   name: str) -> Optional[statistics_pb2.FeatureNameStatistics]:
    """A top-level feature's statistics, whether the proto names it by path or by name."""
    for feature in dataset.features:
        if (feature.path.step[-1] if feature.path.step else feature.name) == name:
            return feature
    return None


def _num_stats(dataset: statistics_pb2.DatasetFeatureStatistics, name: str):
    feature = feature_stats(dataset, name)
    return feature.num_stats if feature is not None and feature.HasField("num_stats") else None


def drop_free_value_domains(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """`schema` without value domains on features whose values are new in every run.

    TFDV infers a categorical string domain for a BYTES feature with few distinct values (up
    to `max_string_domain_size`, 100 by default), so a run on 80 reviews records those 80
    texts as the only values `text` may take, and every later run on new reviews would be
    an "Unexpected string values" anomaly. What a feature *is* decides, not how many values
    one run had: features.FREE_VALUE_FEATURES (free text, encoded image bytes) never carry a
    domain. Top-level string domains only they referenced are removed too.

    Args:
      schema: a TFDV schema (not changed).
    Returns:
      A new Schema; other features (label_name's class domain, numeric bounds) are untouched.
    """
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    dropped = set()
    for feature in out.feature:
        if feature.name not in F.FREE_VALUE_FEATURES:
            continue
        if feature.HasField("domain"):
            dropped.add(feature.domain)
        feature.ClearField("domain_info")
    still_used = {f.domain for f in out.feature if f.HasField("domain")}
    for i in reversed(range(len(out.string_domain))):
        if out.string_domain[i].name in dropped - still_used:
            del out.string_domain[i]
    return out


def tighten_schema(schema: schema_pb2.Schema, statistics: statistics_pb2.DatasetFeatureStatistics,
                   label_names: List[str]) -> schema_pb2.Schema:
    """The inferred schema made strict where drift must stop a later run.

    SchemaGen leaves numeric features unbounded and derives the label domain from whatever
    the data held. Here, from the training statistics:
      * image_height / image_width: int_domain [min, max] seen in training (min = max for
        the fixed-size inputs of an image data set), so images of another size are an
        out-of-range anomaly;
      * text_alpha_ratio: float_domain [half the training minimum, 1], so a text column
        of numbers (ratio ~0) is out of range while prose with some digits is not;
      * label_name: a string domain of exactly the model's classes, so a new class is an
        "unexpected string values" anomaly (a *missing* class is checked by the gate, see
        class_anomaly).
      * text / image_raw (features.FREE_VALUE_FEATURES): no value domain, whatever SchemaGen
        inferred (drop_free_value_domains).
    Returns a new Schema; the input is not changed.
    """
    out = drop_free_value_domains(schema)
    by_name = {f.name: f for f in out.feature}
    for name in (F.IMAGE_HEIGHT, F.IMAGE_WIDTH):
        stats = _num_stats(statistics, name)
        if name in by_name and stats is not None:
            by_name[name].int_domain.min = int(stats.min)
            by_name[name].int_domain.max = int(stats.max)
    stats = _num_stats(statistics, F.TEXT_ALPHA_RATIO)
    if F.TEXT_ALPHA_RATIO in by_name and stats is not None:
        by_name[F.TEXT_ALPHA_RATIO].float_domain.min = float(stats.min) / 2.0
        by_name[F.TEXT_ALPHA_RATIO].float_domain.max = 1.0
    if F.LABEL_NAME in by_name and label_names:
        for i in reversed(range(len(out.string_domain))):
            if out.string_domain[i].name == F.LABEL_NAME:
                del out.string_domain[i]
        out.string_domain.add(name=F.LABEL_NAME, value=list(label_names))
        feature = by_name[F.LABEL_NAME]
        feature.ClearField("string_domain")
        feature.domain = F.LABEL_NAME
    return out


def save_training_schema(fn_args: FnArgs, label_names: List[str], kind: str) -> str:
    """Writes the raw-data schema this model trained with, tightened from the training split's
    TFDV statistics, into the export (assets.extra/conveyor_schema.pbtxt): the next run's gate
    validates new data against it (components/example_validator.py). Returns the file's path.

    The statistics of the few profile features are computed in memory with TFDV's own
    generators (a Beam pipeline would add seconds of start-up for a handful of numbers).
    Only those features are decoded, a chunk of records at a time, so the memory this takes
    does not grow with the image bytes / texts of the split.
    """
    # Imported here: TFDV and pyarrow cost seconds, and the gate imports this module only
    # for tighten_schema.
    import pyarrow as pa
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

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
