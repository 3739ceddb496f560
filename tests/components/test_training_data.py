"""Model selection in run_fn never sees the eval split: EarlyStopping's validation data is a
slice of the train split, on a real Transform graph and GZIP TFRecords of a train and an eval
split (images whose brightness encodes their index, so every batch can be traced back)."""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from modules.settings import ModuleSettings

TRAIN, EVAL = range(0, 30), range(30, 40)  # example ids; brightness = 6 * id
SETTINGS = ModuleSettings(kind="image", name="image_classifier", model="cnn", image_size=8, channels=1,
                          batch_size=4, validation_percent=30)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(folder, ids):
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data.gz"), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in ids:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(6 * i)])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))})).SerializeToString())
    (folder.parent / "label_names.json").write_text('["even", "odd"]')
    return str(folder / "*")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """(transform dir, examples dir, train pattern, eval pattern)."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from modules.preprocessing import preprocessing_fn

    tmp = tmp_path_factory.mktemp("training_data")
    spec = {"image_raw": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    transform_dir = str(tmp / "transform")
    rows = [{"image_raw": [_png(6 * i)], "label": [i % 2]} for i in TRAIN]
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp / "tmp")):
        transform_fn = ((pipeline | beam.Create(rows), metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, SETTINGS.to_custom_config())))
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    metadata_io.write_metadata(metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    train = _write_split(tmp / "examples" / "Split-train", TRAIN)
    evaluation = _write_split(tmp / "examples" / "Split-eval", EVAL)
    return transform_dir, str(tmp / "examples"), train, evaluation


def _fn_args(splits):
    from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts
    transform_dir, examples_dir, train, evaluation = splits
    examples = standard_artifacts.Examples()
    examples.uri = examples_dir
    examples.split_names = '["train", "eval"]'
    accessor = DataAccessor(tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
                            record_batch_factory=None, data_view_decode_fn=None)
    return FnArgs(train_files=[train], eval_files=[evaluation], transform_output=transform_dir,
                  data_accessor=accessor, eval_steps=50)


def _ids(data, batches: int):
    """Example ids (from the brightness) of `batches` batches of an endless dataset."""
    return [round(float(image.numpy().mean()) * 255 / 6) for images, _ in data.take(batches) for image in images]


def test_early_stopping_validates_on_a_slice_of_train_never_on_eval(splits):
    import tensorflow_transform as tft

    from modules.trainer import training_data
    args = _fn_args(splits)
    data = training_data(args, SETTINGS, tft.TFTransformOutput(args.transform_output), tf.distribute.get_strategy())
    assert data.validation is not None
    assert data.fit_examples + data.validation_examples == len(TRAIN)
    assert 0 < data.validation_examples < len(TRAIN)
    # One pass of validation (validation_steps batches, the last wrapping around) and a few
    # epochs of fitting: what EarlyStopping and the optimiser see.
    validation = set(_ids(data.validation, data.validation_steps))
    fit = set(_ids(data.fit, 3 * len(TRAIN)))
    assert len(validation) == data.validation_examples and len(fit) == data.fit_examples
    assert validation.isdisjoint(fit)
    assert validation | fit == set(TRAIN)
    assert validation.isdisjoint(EVAL) and fit.isdisjoint(EVAL)


def test_the_validation_slice_is_the_same_in_every_run(splits):
    import dataclasses

    import tensorflow_transform as tft

    from modules.trainer import training_data
    args = _fn_args(splits)
    output = tft.TFTransformOutput(args.transform_output)
    first = training_data(args, SETTINGS, output, tf.distribute.get_strategy())
    again = training_data(args, SETTINGS, output, tf.distribute.get_strategy())
    assert sorted(_ids(first.validation, first.validation_steps)) == \
        sorted(_ids(again.validation, again.validation_steps))
    # Without a validation share, everything is fitted and nothing validated (no early stopping).
    none = training_data(args, dataclasses.replace(SETTINGS, validation_percent=0), output,
                         tf.distribute.get_strategy())
    assert none.validation is None and none.validation_steps is None and none.fit_examples == len(TRAIN)
    assert set(_ids(none.fit, 2 * len(TRAIN))) == set(TRAIN)


def test_the_validation_slice_holds_about_validation_percent_of_any_inputs():
    """The slice is a salted hash of the raw input: independent of ExampleGen's split, it takes
    about validation_percent of any set of inputs."""
    from modules.datasets import in_validation_slice
    values = tf.constant([f"review {i}" for i in range(2000)])
    share = float(tf.reduce_mean(tf.cast(tf.map_fn(lambda v: in_validation_slice(v, 10), values,
                                                   fn_output_signature=tf.bool), tf.float32)))
    assert 0.08 < share < 0.12
