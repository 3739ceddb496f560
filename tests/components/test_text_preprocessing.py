"""The text branch of preprocessing_fn through real TFT, and the text model builders."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from modules import models
from modules.preprocessing import preprocessing_fn
from modules.settings import ModuleSettings

CONFIG = ModuleSettings(kind="text", name="text_classifier", model="multihot", vocab_size=3, oov_buckets=1,
                        max_tokens=5).to_custom_config()
SPEC = {"text": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
TRAIN = [  # counts: good 4, movie 3, bad 2, then great / it's once -> top 3 = good, movie, bad
    {"text": [b"Good good movie<br />GREAT!"], "label": [1]},
    {"text": [b"good MOVIE, bad."], "label": [0]},
    {"text": [b"'good' movie<br/>bad it's"], "label": [0]},
]


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """Analyze on TRAIN, transform unseen texts, and write the transform_fn like Transform does."""
    tmp = tmp_path_factory.mktemp("tft")
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(SPEC))
    test = [{"text": [b"unseen words only"], "label": [0]},
            {"text": [b"bad bad movie good zzz extra words"], "label": [1]}]
    with tft_beam.Context(temp_dir=str(tmp / "tmp")):
        transform_fn = (TRAIN, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing_fn(inputs, CONFIG))
        rows, _ = ((test, metadata), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "out"))
    return rows, tft.TFTransformOutput(str(tmp / "out"))


def test_vocabulary_is_the_top_tokens_by_frequency(transformed):
    _, output = transformed
    assert output.vocabulary_by_name("tokens") == [b"good", b"movie", b"bad"]


def test_token_ids_pad_with_zero_and_share_the_oov_id(transformed):
    rows, _ = transformed
    # vocabulary ids 1..3 (good, movie, bad), OOV id 4, padding 0; truncated to max_tokens
    assert list(rows[0]["tokens"]) == [4, 4, 4, 0, 0]
    assert list(rows[1]["tokens"]) == [3, 3, 2, 1, 4]
    assert [row["label"] for row in rows] == [0, 1]


def test_multi_hot_marks_each_vocabulary_and_oov_id_once(transformed):
    rows, _ = transformed
    # columns: good, movie, bad, OOV (padding is dropped)
    np.testing.assert_array_equal(rows[0]["multi_hot"], [0, 0, 0, 1])
    np.testing.assert_array_equal(rows[1]["multi_hot"], [1, 1, 1, 1])


def test_transformed_features_have_the_shapes_the_models_expect(transformed):
    _, output = transformed
    spec = output.transformed_feature_spec()
    assert spec["tokens"] == tf.io.FixedLenFeature([5], tf.int64)
    assert spec["multi_hot"] == tf.io.FixedLenFeature([4], tf.float32)


def _toy(num_classes: int, max_tokens: int = 12, vocab_ids: int = 24, n: int = 96):
    """Token sequences where class c always contains token 2 + c among random filler."""
    rng = np.random.RandomState(0)
    labels = np.arange(n) % num_classes
    tokens = rng.randint(5, vocab_ids, size=(n, max_tokens))
    tokens[np.arange(n), rng.randint(0, max_tokens, n)] = 2 + labels
    tokens[:, -2:] = 0  # padding
    multi_hot = np.zeros((n, vocab_ids - 1), np.float32)
    for row, ids in enumerate(tokens):
        multi_hot[row, ids[ids > 0] - 1] = 1.0
    return tokens, multi_hot, labels


@pytest.mark.parametrize("name", ["multihot", "embedding", "conv1d"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_text_models_shapes_and_learning(name, num_classes):
    tf.keras.utils.set_random_seed(0)
    config = ModuleSettings(kind="text", name="t", model=name, vocab_size=22, oov_buckets=1, max_tokens=12,
                            learning_rate=0.01)
    model = models.build(config, num_classes)
    tokens, multi_hot, labels = _toy(num_classes)
    inputs = multi_hot if models.input_feature(config) == "multi_hot" else tokens
    assert model.output_shape == (None, 1 if num_classes == 2 else num_classes)
    assert model.predict(inputs[:4], verbose=0).shape == (4, model.output_shape[1])
    before = model.evaluate(inputs, labels, verbose=0)[0]
    model.fit(inputs, labels, batch_size=32, epochs=8, verbose=0)
    after = model.evaluate(inputs, labels, verbose=0)[0]
    assert after < before * 0.9
