"""Continuous training on data spans: `{SPAN}` inputs resolved by TFX's own ExampleGen driver,
warm start from the latest blessed model, and validation against it before a push.

The first tests run the real FileBasedDriver + executor on each input layout (cheap); the
pipeline tests run the image pipeline three times on real digits (LocalDagRunner, SQLite
MLMD, Beam DirectRunner): span 1 -> version 1, span 2 -> version 2, span 3 with shuffled
labels -> not blessed, version 2 stays served.
"""
import dataclasses
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import message
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
from PIL import Image
from tfx.components.example_gen.driver import FileBasedDriver, update_output_artifact
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.labelled_example_gen import IngestError

from pipelines.config import load_config
from data.idx import write_idx
from conveyor import runner as local_runner
from modules.settings import ModuleSettings
from pipelines.pipeline import example_gen
from tests.support.helpers import read_examples

NAME = "digits_spans"
SPAN_SIZE = 400


def _digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images * (255.0 / 16.0)).round().astype(np.uint8), digits.target


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_span(incoming: str, span: int, images: np.ndarray, labels: np.ndarray) -> str:
    """incoming/span-N/<label>/<i>.png, written beside and renamed in, as a span should land."""
    target = os.path.join(incoming, f"span-{span}")
    tmp = os.path.join(incoming, f".span-{span}.tmp")
    for i, (pixels, label) in enumerate(zip(images, labels)):
        os.makedirs(os.path.join(tmp, str(label)), exist_ok=True)
        with open(os.path.join(tmp, str(label), f"{i:04d}.png"), "wb") as f:
            f.write(_png(pixels))
    os.replace(tmp, target)
    return target


# --- {SPAN} paths and TFX's driver on every layout ---------------------------------------


def _class_folders(span_dir, images, labels):
    for i, (pixels, label) in enumerate(zip(images, labels)):
        os.makedirs(os.path.join(span_dir, str(label)), exist_ok=True)
        with open(os.path.join(span_dir, str(label), f"{i}.png"), "wb") as f:
            f.write(_png(pixels))


def _idx(span_dir, images, labels):
    os.makedirs(span_dir)
    write_idx(os.path.join(span_dir, "t10k-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(span_dir, "t10k-labels-idx1-ubyte.gz"), labels)


def _tfrecord(span_dir, images, labels):
    os.makedirs(span_dir)
    with tf.io.TFRecordWriter(os.path.join(span_dir, "digits.tfrecord")) as writer:
        for pixels, label in zip(images, labels):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(pixels)])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))})
            ).SerializeToString())


def _csv(span_dir, _images, labels):
    os.makedirs(span_dir)
    rows = [f"review {i} of the film,{'pos' if label % 2 else 'neg'}" for i, label in enumerate(labels)]
    with open(os.path.join(span_dir, "reviews.csv"), "w", encoding="utf-8") as f:
        f.write("text,label\n" + "\n".join(rows) + "\n")


LAYOUTS = {  # kind, writer, pattern the span folder's layout detection must complete the glob with
    "class folders": ("image", _class_folders, "span-{SPAN}/*/*"),
    "IDX": ("image", _idx, "span-{SPAN}/*"),
    "TFRecord": ("image", _tfrecord, "span-{SPAN}/*"),
    "text CSV": ("text", _csv, "span-{SPAN}/*.csv"),
}


def _resolve(component) -> dict:
    """What TFX's ExampleGen driver hands the executor: latest span, its pattern, fingerprint."""
    props = {k: proto_utils.proto_to_json(v) if isinstance(v, message.Message) else v
             for k, v in component.exec_properties.items()}
    return FileBasedDriver(None).resolve_exec_properties(props, None, None)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_latest_span_is_ingested_and_recorded(layout, tmp_path):
    kind, write, expected_pattern = LAYOUTS[layout]
    images, labels = _digits()
    incoming = tmp_path / "incoming"
    write(str(incoming / "span-1"), images[:30], labels[:30])
    config = load_config(kind, overrides={"home": str(tmp_path / "home"),
                                          "class_names": [str(d) for d in range(10)] if kind == "image" else None,
                                          "data": str(incoming / "span-{SPAN}")})
    first = _resolve(example_gen(config))
    # ~30 per class: a class the hash split leaves without eval examples is refused.
    write(str(incoming / "span-2"), images[30:330], labels[30:330])
    component = example_gen(config)
    assert component.exec_properties["input_base"] == str(incoming)
    input_config = json.loads(component.exec_properties["input_config"])
    assert [s["pattern"] for s in input_config["splits"]] == [expected_pattern]

    resolved = _resolve(component)
    assert (first["span"], resolved["span"]) == (1, 2)
    # Span, resolved pattern and input fingerprint are exec properties, i.e. part of the cache key.
    assert json.loads(resolved["input_config"])["splits"][0]["pattern"] == expected_pattern.replace("{SPAN}", "2")
    assert resolved["input_fingerprint"] != first["input_fingerprint"]

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    component.executor_spec.executor_class().Do({}, {"examples": [examples]}, resolved)
    update_output_artifact(resolved, examples.mlmd_artifact)  # what the driver records in MLMD
    assert examples.mlmd_artifact.custom_properties["span"].int_value == 2
    ingested = read_examples(examples.uri, "train") + read_examples(examples.uri, "eval")
    assert len(ingested) == 300  # span 2 only


def test_span_pattern_without_any_span_is_a_clear_error(tmp_path):
    (tmp_path / "incoming").mkdir()
    config = load_config("image", overrides={"home": str(tmp_path / "home"),
                                             "data": str(tmp_path / "incoming" / "span-{SPAN}")})
    with pytest.raises(IngestError, match=r"incoming/span-\{SPAN\}: no span matches"):
        example_gen(config)


# --- the pipeline on three spans of real digits --------------------------------------------

def _state(home: str) -> dict:
    serving = os.path.join(home, "serving")
    with open(os.path.join(serving, "models.config"), "rb") as f:
        config = f.read()
    return {"versions": sorted(os.listdir(os.path.join(serving, NAME))), "models_config": config}


def _run(home: str, data: str) -> dict:
    config = load_config("image", overrides={
        "home": home, "name": NAME, "train_steps": 40, "eval_steps": 5, "epochs": 2, "image_size": 16,
        "infra_requests": 10, "infra_p99_budget_ms": 10000, "warm_start": True, "data": data})
    logs = set(os.listdir(os.path.join(home, "logs"))) if os.path.isdir(os.path.join(home, "logs")) else set()
    out = io.StringIO()
    summary = local_runner.run(config, stream=out)
    (log,) = set(os.listdir(os.path.join(home, "logs"))) - logs
    with open(os.path.join(home, "logs", log), encoding="utf-8") as f:
        return {"summary": summary, "stdout": out.getvalue(), "log": f.read(), **_state(home)}


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """Three runs on one HOME as spans land: 1 and 2 are real digits, 3 has shuffled labels."""
    root = tmp_path_factory.mktemp("spans")
    home, incoming = str(root / "home"), str(root / "incoming")
    os.makedirs(incoming)
    data = os.path.join(incoming, "span-{SPAN}")
    images, labels = _digits()
    runs = {}
    for span in (1, 2, 3):
        part = slice((span - 1) * SPAN_SIZE, span * SPAN_SIZE)
        span_labels = labels[part]
        if span == 3:  # real images in random class folders
            span_labels = np.random.RandomState(3).permutation(span_labels)
        write_span(incoming, span, images[part], span_labels)
        runs[span] = _run(home, data)
    return home, runs


def _lineage_json(home: str, version: str, capsys) -> dict:
    from conveyor import cli
    capsys.readouterr()
    assert cli.main(["lineage", "--home", home, "--model", NAME, "--version", version, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_span_produces_the_next_version_and_lineage_names_it(spans, capsys):
    home, runs = spans
    assert runs[1]["summary"].pushed_version == "1", runs[1]["stdout"]
    assert runs[2]["summary"].pushed_version == "2", runs[2]["stdout"]
    # The new span was ingested, not served from ExampleGen's cache.
    assert runs[2]["summary"].node("ImageExampleGen").state == "complete"
    for version, span in (("1", 1), ("2", 2)):
        examples = _lineage_json(home, version, capsys)["examples"]
        assert (examples["span"], examples["input_pattern"]) == (span, f"span-{span}/*/*")
        assert examples["example_count"] == SPAN_SIZE


def test_span_is_an_mlmd_property_of_the_examples_each_model_trained_on(spans):
    home, _ = spans
    from ml_metadata import metadata_store
    from conveyor.lineage import sqlite_connection_config
    store = metadata_store.MetadataStore(sqlite_connection_config(os.path.join(home, "metadata.sqlite")))
    spans_by_version = {}
    for pushed in store.get_artifacts_by_type("PushedModel"):
        if pushed.custom_properties["pushed"].int_value != 1:
            continue
        pusher = store.get_executions_by_id(
            [e.execution_id for e in store.get_events_by_artifact_ids([pushed.id])
             if e.type == mlmd_pb2.Event.OUTPUT])[0]
        model_id = _input(store, pusher.id, "model")
        trainer_id = [e.execution_id for e in store.get_events_by_artifact_ids([model_id])
                      if e.type == mlmd_pb2.Event.OUTPUT][0]
        (examples,) = store.get_artifacts_by_id([_input(store, trainer_id, "examples")])
        version = pushed.custom_properties["pushed_version"]
        version = version.string_value or str(version.int_value)
        spans_by_version[version] = examples.custom_properties["span"].int_value
    assert spans_by_version == {"1": 1, "2": 2}


def _input(store, execution_id: int, key: str) -> int:
    (artifact_id,) = [e.artifact_id for e in store.get_events_by_execution_ids([execution_id])
                      if e.type == mlmd_pb2.Event.INPUT and e.path.steps[0].key == key]
    return artifact_id


def test_span_with_corrupted_labels_is_stopped_by_the_evaluator(spans):
    _, runs = spans
    run = runs[3]
    summary = run["summary"]
    # The data gate passes: shuffled labels keep every feature's distribution...
    assert summary.node("GatedExampleValidator").state == "complete"
    # ...the Evaluator is what stops it: accuracy falls below the floor and the majority rate.
    assert summary.blessed is False, run["stdout"]
    # The Evaluator names the accuracy rule the corrupted span failed.
    assert any(reason.startswith("rule accuracy >=") for reason in summary.not_blessed_because), \
        summary.not_blessed_because
    assert summary.baseline  # compared with the blessed version 2 on span 3's eval split
    assert summary.pushed_version is None and summary.pushed_path is None
    assert run["versions"] == [".push.lock", "1", "2"]
    assert run["models_config"] == runs[2]["models_config"]


def test_warm_start_trains_from_the_latest_blessed_model(spans):
    home, runs = spans
    assert "Warm start: training from scratch: no blessed model yet" in runs[1]["log"]
    from ml_metadata import metadata_store
    from conveyor.lineage import sqlite_connection_config
    store = metadata_store.MetadataStore(sqlite_connection_config(os.path.join(home, "metadata.sqlite")))
    trainers = sorted((e for e in store.get_executions()
                       if store.get_execution_types_by_id([e.type_id])[0].name.endswith("Trainer")),
                      key=lambda e: e.id)
    assert len(trainers) == 3
    base_inputs = [[e.artifact_id for e in store.get_events_by_execution_ids([t.id])
                    if e.type == mlmd_pb2.Event.INPUT and e.path.steps[0].key == "base_model"] for t in trainers]
    first_model = [e.artifact_id for e in store.get_events_by_execution_ids([trainers[0].id])
                   if e.type == mlmd_pb2.Event.OUTPUT and e.path.steps[0].key == "model"]
    # Run 1 had no blessed model; run 2 got version 1's model as the Trainer's base_model input.
    assert base_inputs[0] == [] and base_inputs[1] == first_model
    (base,) = store.get_artifacts_by_id(first_model)
    assert f"Warm start: initialised from the base model {base.uri}/Format-Serving" in runs[2]["log"]


def test_warm_start_refuses_a_base_model_of_another_architecture(spans):
    """run_fn's warm_start against version 1's real export: same model loads, another does not."""
    from conveyor.lineage import sqlite_connection_config
    from ml_metadata import metadata_store
    from modules import models
    from modules.trainer import warm_start
    import tensorflow_transform as tft
    home, _ = spans
    store = metadata_store.MetadataStore(sqlite_connection_config(os.path.join(home, "metadata.sqlite")))
    transform_graph = sorted(store.get_artifacts_by_type("TransformGraph"), key=lambda a: a.id)[0]
    transform_output = tft.TFTransformOutput(transform_graph.uri)
    base = os.path.join(home, "serving", NAME, "1")
    config = ModuleSettings(kind="image", name=NAME, model="cnn", image_size=16, channels=1, learning_rate=0.001)

    same = models.build(config, 10)
    assert warm_start(same, base, config, 10, transform_output) == ""
    reader = tf.train.load_checkpoint(os.path.join(base, "variables", "variables"))
    saved = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
             if k.startswith("model/") and "optimizer" not in k and "/metrics/" not in k]
    assert len(saved) == len(same.get_weights())
    for weight in same.get_weights():  # every layer weight is one of version 1's
        assert any(w.shape == weight.shape and np.array_equal(w, weight) for w in saved)

    for other, classes in ((dataclasses.replace(config, model="mlp"), 10), (dataclasses.replace(config, image_size=20), 10),
                           (config, 5)):
        model = models.build(other, classes)
        before = [w.copy() for w in model.get_weights()]
        why = warm_start(model, base, other, classes, transform_output)
        assert why.startswith("the base model's architecture differs"), why
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert warm_start(models.build(config, 10), None, config, 10, transform_output) == "no blessed model yet"
