"""Edge exports of text models (components/edge_exporter.py) on a real Transform graph and a
real exported SavedModel: token-id (embedding) and multi-hot models convert, evaluate, gate,
and their goldens and client contract reproduce the Transform."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from components import edge_exporter as E
from modules import export, models
from modules.features import LABEL_NAMES_FILE, to_example
from modules.preprocessing import preprocessing_fn
from modules.settings import ModuleSettings
from tests.support.generated import LABELS, reviews

SPEC = {"text": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
EVAL = 40


def _settings(model: str) -> ModuleSettings:
    return ModuleSettings(kind="text", name="t", model=model, vocab_size=60, oov_buckets=2, max_tokens=16)


def _write_split(folder, rows):
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "data.gz"), options="GZIP") as writer:
        for text, label in rows:
            writer.write(to_example({"text": text, "label": LABELS.index(label)}).SerializeToString())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Examples (train/eval splits as ExampleGen writes them), one Transform graph (vocabulary
    + OOV buckets) and a trained, exported SavedModel per text model kind."""
    root = tmp_path_factory.mktemp("edge_text")
    rows = reviews("en", 240, seed=3)
    train, evaluation = rows[EVAL:], rows[:EVAL]
    examples = root / "examples"
    _write_split(str(examples / "Split-train"), train)
    _write_split(str(examples / "Split-eval"), evaluation)
    (examples / LABEL_NAMES_FILE).write_text(json.dumps(list(LABELS)))
    config = _settings("multihot").to_custom_config()  # its graph has tokens and multi_hot
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(SPEC))
    graph = str(root / "transform_graph")
    with tft_beam.Context(temp_dir=str(root / "tmp")):
        transform_fn = ([{"text": [t.encode()], "label": [LABELS.index(l)]} for t, l in train], metadata) | \
            tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, config))
        _ = transform_fn | tft_beam.WriteTransformFn(graph)
    metadata_io.write_metadata(metadata, os.path.join(graph, "metadata"))
    tft_output = tft.TFTransformOutput(graph)
    raw = tf.constant([[t] for t, _ in train])
    transformed = tft_output.transform_raw_features({"text": raw})
    labels = np.array([LABELS.index(l) for _, l in train])
    saved = {}
    for name, feature in (("embedding", "tokens"), ("multihot", "multi_hot")):
        settings = _settings(name)
        tf.keras.utils.set_random_seed(0)
        model = models.build(settings, len(LABELS))
        model.fit(transformed[feature].numpy(), labels, epochs=15, batch_size=32, verbose=0)
        saved[name] = str(root / f"model_{name}")
        export.export(model, tft_output, list(LABELS), settings, saved[name])
    return {"examples": str(examples), "graph": graph, "saved": saved, "root": root}


def _build(artifacts, model, exports, max_drop=0.05):
    work = artifacts["root"] / f"work-{model}-{'-'.join(exports)}-{max_drop}"
    work.mkdir()
    reference, evaluated, results = E.build_exports(
        artifacts["saved"][model], artifacts["graph"], artifacts["examples"], _settings(model), list(LABELS),
        exports, max_drop, str(work), latency_examples=5)
    return str(work), reference, evaluated, results


def test_token_model_exports_to_int8_and_tfjs_and_keeps_its_accuracy(artifacts):
    work, reference, evaluated, results = _build(artifacts, "embedding", ["tflite_int8", "tfjs"])
    assert evaluated == EVAL and reference > 0.8  # the SavedModel learned the toy task
    for r in results:
        assert r.pushed, r
        assert abs(r.accuracy_delta) <= 0.05 and r.size_bytes > 0 and r.latency_ms > 0
    assert os.path.isfile(os.path.join(work, "tflite_int8", "model.tflite"))
    assert os.path.isfile(os.path.join(work, "tfjs", "model.json"))
    contract = json.load(open(os.path.join(work, "contract.json")))
    assert contract["input"] == {"name": "tokens", "dtype": "int32", "shape": [None, 16]}
    assert contract["output"]["shape"] == [None, 2]
    for name in ("tflite_int8", "tfjs"):  # each export reproduces its goldens
        golden = E.read_golden(os.path.join(work, name))
        got, _ = E.predict_export(name, os.path.join(work, name), golden["input"])
        np.testing.assert_allclose(got, golden["expected"], atol=golden["atol"])


def test_golden_inputs_follow_the_written_contract(artifacts):
    """A client that implements contract.json (vocabulary.txt line + 1, OOV ids by FarmHash
    bucket after the vocabulary, 0 padding) gets the golden input tensor from the golden raw
    texts, and the real Transform's ids for a text of unknown words."""
    work, *_ = _build(artifacts, "embedding", ["tflite_dynamic"])
    contract = json.load(open(os.path.join(work, "contract.json")))
    vocabulary = open(os.path.join(work, "vocabulary.txt"), encoding="utf-8").read().splitlines()
    golden = E.read_golden(os.path.join(work, "tflite_dynamic"))
    from modules.preprocessing import normalize_text  # the normalisation steps the contract lists

    def client_ids(text):
        tokens = normalize_text(tf.constant([text])).numpy()[0].decode().split()[:contract["max_tokens"]]
        ids = [vocabulary.index(t) + 1 if t in vocabulary else
               1 + contract["vocabulary_size"] + int(tf.strings.to_hash_bucket_fast(t, contract["oov_buckets"]))
               for t in tokens]
        return ids + [0] * (contract["max_tokens"] - len(ids))

    for text, expected in zip(golden["raw"], golden["input"]):
        np.testing.assert_array_equal(expected, client_ids(text))
    unknown = "Zyx film qwerty, wonderful plot!"
    real = E.transformed_inputs(artifacts["graph"], [to_example({"text": unknown}).SerializeToString()],
                                _settings("embedding"))
    assert max(client_ids(unknown)) > contract["vocabulary_size"]  # OOV ids are exercised
    np.testing.assert_array_equal(real[0], client_ids(unknown))


def test_multi_hot_model_exports_and_an_export_that_drops_too_much_is_not_kept(artifacts):
    work, _, _, results = _build(artifacts, "multihot", ["tflite_float16"])
    assert results[0].pushed and results[0].accuracy_delta == pytest.approx(0.0, abs=0.03)
    contract = json.load(open(os.path.join(work, "contract.json")))
    assert contract["input"] == {"name": "multi_hot", "dtype": "float32", "shape": [None, 60 + 2]}
    # The gate: a drop allowance below the export's real delta refuses it and removes its folder.
    work, _, _, results = _build(artifacts, "multihot", ["tflite_float16"],
                                 max_drop=-results[0].accuracy_delta - 0.01)
    assert not results[0].pushed and "below the SavedModel's" in results[0].reason
    assert not os.path.exists(os.path.join(work, "tflite_float16"))
