"""preprocessing_fn through real TFT, and the image model builders."""
import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from modules import models
from modules.preprocessing import preprocessing_fn
from modules.settings import ModuleSettings

CONFIG = ModuleSettings(kind="image", name="image_classifier", image_size=12, channels=1, model="cnn",
                        learning_rate=0.01)


def _png(pixels, mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _transform(rows, tmp_path, config=CONFIG):
    spec = {"image_raw": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    with tft_beam.Context(temp_dir=str(tmp_path)):
        (transformed, _), _ = ((rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing_fn(inputs, config.to_custom_config())))
    return transformed


def test_decode_resize_and_scale_through_tft(tmp_path):
    black = np.zeros((8, 8))
    white = np.full((20, 30), 255)  # another size: must come out 12x12 as well
    rgb = np.zeros((8, 8, 3))
    rgb[..., 0] = 255
    rows = [{"image_raw": [_png(black)], "label": [0]},
            {"image_raw": [_png(white)], "label": [1]},
            {"image_raw": [_png(rgb, "RGB")], "label": [2]}]
    out = _transform(rows, tmp_path)
    images = [np.asarray(r["image"]).reshape(12, 12, 1) for r in out]
    assert images[0].max() == 0.0
    assert np.allclose(images[1], 1.0)
    assert 0.2 < images[2].mean() < 0.4  # red converted to grey (~0.3)
    assert [int(np.asarray(r["label"])) for r in out] == [0, 1, 2]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_image_models_shapes(name):
    model = models.build(dataclasses.replace(CONFIG, model=name, image_size=28), num_classes=10)
    out = model(np.zeros((4, 28, 28, 1), np.float32))
    assert out.shape == (4, 10)
    assert np.allclose(np.sum(out, axis=1), 1.0, atol=1e-5)
    layer_types = [type(layer).__name__ for layer in model.layers]
    if name == "mlp":
        assert layer_types == ["InputLayer", "Flatten", "Dense", "Dense"]
    else:
        assert layer_types == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
                               "Flatten", "Dropout", "Dense"]


def test_cnn_learns_a_separable_problem():
    rng = np.random.RandomState(0)
    x = rng.rand(256, 12, 12, 1).astype(np.float32) * 0.2
    y = rng.randint(0, 2, 256)
    x[y == 1, :6] += 0.8  # class 1: bright top half
    model = models.build(dataclasses.replace(CONFIG, model="cnn"), num_classes=2)
    history = model.fit(x, y, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9


def test_trainer_dataset_cached_and_streamed_agree(tmp_path):
    """run_fn's input: the in-memory cache and batch-by-batch transform yield the same pairs."""
    import os

    import apache_beam as beam
    import tensorflow_transform as tft
    from tfx.components.util import tfxio_utils
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.types import standard_artifacts

    from modules import datasets

    spec = {"image_raw": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{"image_raw": [_png(np.full((8, 8), 25 * i))], "label": [i % 3]} for i in range(10)]
    transform_dir = str(tmp_path / "transform")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        transform_fn = ((pipeline | beam.Create(rows), metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, CONFIG.to_custom_config())))
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # TFX's Transform also writes the raw metadata next to the graph; run_fn reads its schema.
    metadata_io.write_metadata(metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.gz"), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for row in rows:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=row["image_raw"])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=row["label"]))})).SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = '["eval"]'
    accessor = DataAccessor(tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
                            record_batch_factory=None, data_view_decode_fn=None)
    output = tft.TFTransformOutput(transform_dir)
    pattern = os.path.join(str(split), "*")

    def one_pass(cache_limit_bytes):
        dataset, count = datasets.dataset(pattern, accessor, output, 5, "image", False, cache_limit_bytes)
        pairs = [(image.numpy().tobytes(), int(label)) for images, labels in dataset.take(2)
                 for image, label in zip(images, labels)]
        return count, sorted(pairs)

    cached, streamed = one_pass(1 << 20), one_pass(0)  # 10 pairs of 12*12*4 + 8 bytes: fit / never
    assert cached[0] == streamed[0] == 10
    assert cached == streamed
    assert sorted(label for _, label in cached[1]) == sorted(i % 3 for i in range(10))


def test_throughput_logger_records_examples_per_second():
    from modules.trainer import ThroughputLogger

    model = models.build(dataclasses.replace(CONFIG, model="mlp"), num_classes=3)
    x = np.random.RandomState(0).rand(12, 12, 12, 1).astype(np.float32)
    y = np.arange(12) % 3
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[ThroughputLogger(4)])
    rates = history.history["examples_per_second"]
    assert len(rates) == 2 and all(r > 0 for r in rates)
