"""The text branch of preprocessing_fn through real TFT, and the text model builders."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

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


def _analyze_and_transform(tmp, test_rows, config):
    """Analyze on TRAIN, transform `test_rows` and write the transform_fn, as Transform does.

    Returns:
      (transformed rows, TFTransformOutput of the written transform_fn).
    """
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(SPEC))
    with tft_beam.Context(temp_dir=str(tmp / "tmp")):
        transform_fn = (TRAIN, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing_fn(inputs, config))
        rows, _ = ((test_rows, metadata), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "out"))
    return rows, tft.TFTransformOutput(str(tmp / "out"))


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """Analyze on TRAIN, transform unseen texts, and write the transform_fn like Transform does."""
    test = [{"text": [b"unseen words only"], "label": [0]},
            {"text": [b"bad bad movie good zzz extra words"], "label": [1]}]
    return _analyze_and_transform(tmp_path_factory.mktemp("tft"), test, CONFIG)


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


TFIDF_CONFIG = ModuleSettings(kind="text", name="t", model="tfidf", vocab_size=3, oov_buckets=1, max_tokens=5,
                              ngram_vocab_size=10).to_custom_config()


@pytest.fixture(scope="module")
def tfidf_rows(tmp_path_factory):
    """The tfidf model's features: analysed on TRAIN, applied to unseen texts."""
    test = [{"text": [b"bad movie good zzz"], "label": [1]}, {"text": [b"unseen words only"], "label": [0]},
            {"text": [b"!!!"], "label": [0]}]
    return _analyze_and_transform(tmp_path_factory.mktemp("tfidf"), test, TFIDF_CONFIG)


def test_tfidf_vocabulary_holds_words_and_pairs_of_at_least_two_texts(tfidf_rows):
    _, output = tfidf_rows
    # Texts holding each: good 3, movie 3, "good movie" 3, bad 2, "movie bad" 2; the rest 1.
    assert set(output.vocabulary_by_name("ngrams")) == {b"good", b"movie", b"good movie", b"bad", b"movie bad"}
    assert output.transformed_feature_spec()["tfidf"] == tf.io.FixedLenFeature([10], tf.float32)
    assert "multi_hot" not in output.transformed_feature_spec()  # only the bag the model reads


def test_tfidf_weights_are_presence_times_idf_with_unit_norm(tfidf_rows):
    rows, output = tfidf_rows
    vocabulary = [t.decode() for t in output.vocabulary_by_name("ngrams")]
    column = {word: i for i, word in enumerate(vocabulary)}
    idf = lambda texts_with: 1 + np.log((1 + 3) / (1 + texts_with))  # noqa: E731 (tft.tfidf, smooth)
    # "bad movie good zzz": good, movie, bad are known; zzz, "bad movie", "movie good" and
    # "good zzz" are not, and are dropped.
    expected = np.zeros(10)
    expected[[column["good"], column["movie"], column["bad"]]] = [idf(3), idf(3), idf(2)]
    np.testing.assert_allclose(rows[0]["tfidf"], expected / np.linalg.norm(expected), rtol=1e-5)
    np.testing.assert_array_equal(rows[1]["tfidf"], np.zeros(10))  # only unknown words: a zero row
    np.testing.assert_array_equal(rows[2]["tfidf"], np.zeros(10))  # no token


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


@pytest.mark.parametrize("name", ["tfidf", "multihot", "embedding", "conv1d", "bilstm"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_text_models_shapes_and_learning(name, num_classes):
    tf.keras.utils.set_random_seed(0)
    config = ModuleSettings(kind="text", name="t", model=name, vocab_size=22, oov_buckets=1, max_tokens=12,
                            ngram_vocab_size=23, learning_rate=0.01)
    model = models.build(config, num_classes)
    tokens, multi_hot, labels = _toy(num_classes)
    inputs = {"multi_hot": multi_hot, "tfidf": multi_hot / np.linalg.norm(multi_hot, axis=1, keepdims=True),
              "tokens": tokens}[models.input_feature(config)]
    assert model.output_shape == (None, 1 if num_classes == 2 else num_classes)
    assert model.predict(inputs[:4], verbose=0).shape == (4, model.output_shape[1])
    before = model.evaluate(inputs, labels, verbose=0)[0]
    model.fit(inputs, labels, batch_size=32, epochs=8, verbose=0)
    after = model.evaluate(inputs, labels, verbose=0)[0]
    assert after < before * 0.9


# --- text in any language (issue 13, case 4) ------------------------------------------------

@pytest.mark.parametrize("raw, tokens", [
    ("Schöner FILM!<br />Très BIEN, l'été", ["schöner", "film", "très", "bien", "l'été"]),
    ("Прекрасный ФИЛЬМ, очень хороший!", ["прекрасный", "фильм", "очень", "хороший"]),
    ("这部电影非常精彩！", ["这", "部", "电", "影", "非", "常", "精", "彩"]),  # one token per character
    ("great🙂👍 film ❤️", ["great", "🙂", "👍", "film", "❤"]),  # emoji are tokens; VS16 dropped
    ("don't 'quoted' it's\u00a0wide\u3000space", ["don't", "quoted", "it's", "wide", "space"]),
])
def test_normalisation_and_tokenisation_are_unicode_aware(raw, tokens):
    from modules.preprocessing import tokenize
    sparse = tokenize(tf.constant([raw]), 20)
    assert [t.decode() for t in sparse.values.numpy()] == tokens


def _analyze(rows, config, out):
    """TFT analysis of raw texts like Transform does; writes the transform_fn to `out`."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(SPEC))
    with tft_beam.Context(temp_dir=str(out / "tmp")):
        transform_fn = ([{"text": [t.encode()], "label": [i % 2]} for i, t in enumerate(rows)], metadata) | \
            tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, config))
        _ = transform_fn | tft_beam.WriteTransformFn(str(out / "graph"))
    metadata_io.write_metadata(metadata, str(out / "graph" / "metadata"))  # the raw schema, as Transform writes it
    return tft.TFTransformOutput(str(out / "graph"))


def _train_files(rows, path):
    from modules.features import to_example
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for text in rows:
            writer.write(to_example({"text": text, "label": 0}).SerializeToString())
    return str(path)


def test_vocabulary_holds_the_words_of_every_language(tmp_path):
    from tests.support.generated import reviews
    config = ModuleSettings(kind="text", name="t", model="multihot").to_custom_config()
    rows = [text for language in ("ru", "de", "zh") for text, _ in reviews(language, 40, 1)]
    vocabulary = {t.decode() for t in _analyze(rows, config, tmp_path).vocabulary_by_name("tokens")}
    assert {"прекрасный", "ужасный", "schöner", "öder", "精", "彩", "🙂"} <= vocabulary


def test_an_empty_vocabulary_stops_the_run_naming_the_feature(tmp_path):
    from components.transform import VocabularyError, check_vocabulary
    config = ModuleSettings(kind="text", name="t", model="multihot").to_custom_config()
    rows = ["!!! ...", "?? -- ??", "*** ***"] * 4  # no word survives normalisation
    _analyze(rows, config, tmp_path)
    with pytest.raises(VocabularyError, match=r"feature 'text': the Transform vocabulary is empty"):
        check_vocabulary(str(tmp_path / "graph"), _train_files(rows, tmp_path / "train.gz"))


def test_a_vocabulary_missing_most_training_tokens_stops_the_run(tmp_path):
    from components.transform import VocabularyError, check_vocabulary
    config = ModuleSettings(kind="text", name="t", model="multihot", vocab_size=3).to_custom_config()
    rows = [f"word{i} other{i} more{i}" for i in range(30)]  # 90 distinct tokens, 3 kept
    kept = [t.decode() for t in _analyze(rows, config, tmp_path).vocabulary_by_name("tokens")]
    with pytest.raises(VocabularyError, match=r"feature 'text': 9\d% of the training tokens are outside"):
        check_vocabulary(str(tmp_path / "graph"), _train_files(rows, tmp_path / "train.gz"))
    ok = [" ".join(kept + kept[:1]), f"{kept[0]} unknown"]  # 1 of 6 tokens outside
    assert check_vocabulary(str(tmp_path / "graph"), _train_files(ok, tmp_path / "ok.gz")) == pytest.approx(1 / 6)


def test_oov_tokens_count_without_oov_buckets(tmp_path):
    """With oov_buckets 0 an unknown token shares the padding id: it must still count as OOV."""
    from components.transform import VocabularyError, check_vocabulary
    config = ModuleSettings(kind="text", name="t", model="multihot", vocab_size=3,
                            oov_buckets=0).to_custom_config()
    rows = [f"word{i} other{i} more{i}" for i in range(30)]
    _analyze(rows, config, tmp_path)
    with pytest.raises(VocabularyError, match=r"feature 'text': 9\d% of the training tokens are outside"):
        check_vocabulary(str(tmp_path / "graph"), _train_files(rows, tmp_path / "train.gz"))
