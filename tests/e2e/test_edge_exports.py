"""Edge exports in a real image pipeline run (LocalDagRunner, SQLite MLMD): the EdgeExporter
after the Pusher publishes TFLite float16 / dynamic / int8 and TF.js beside the SavedModel,
records their metrics in MLMD, and `conveyor lineage`, the run summary and the report show them."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components import edge_exporter as E
from conveyor.history_cli import format_lineage
from conveyor.metadata.lineage import lineage_of_version
from conveyor.metadata.store import open_store
from conveyor.run_summary import read_summary
from pipelines.config import EDGE_EXPORTS
from tests.support.helpers import subset_digits

NAME = "image_classifier"


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("edge")
    home = str(root / "home")
    data = subset_digits(digits_dir, str(root / "digits"), per_class=25)
    os.makedirs(home)
    config = os.path.join(home, "config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write("infra_p99_budget_ms: 10000\n"  # latency is the infra validator's own tests' business
                f"edge_exports: [{', '.join(EDGE_EXPORTS)}]\nedge_max_accuracy_drop: 0.05\n")
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", "image", "--data", data, "--home", home, "--config", config,
         "--train-steps", "40", "--eval-steps", "5"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Pushed: version 1" in result.stdout, result.stdout[-3000:]
    return home, result.stdout


def test_the_config_names_the_exporters_exports():
    assert E.EXPORTS == EDGE_EXPORTS


def test_exports_are_published_beside_not_inside_the_served_version(edge_run):
    home, _ = edge_run
    version = os.path.join(home, "edge", NAME, "1")
    assert sorted(os.listdir(version)) == sorted(["contract.json", "labels.txt", *EDGE_EXPORTS])
    for name in EDGE_EXPORTS:
        model_file = "model.json" if name == "tfjs" else "model.tflite"
        assert os.path.isfile(os.path.join(version, name, model_file)), name
        assert os.path.isfile(os.path.join(version, name, "golden", "golden.json")), name
    served = os.path.join(home, "serving", NAME, "1")
    found = [f for _, _, files in os.walk(served) for f in files if f.endswith(".tflite") or f == "model.json"]
    assert found == []  # TF Serving's --prefer_tflite_model would load a model.tflite instead
    assert not [d for d in os.listdir(os.path.join(home, "edge", NAME)) if d.startswith(".tmp-")]
    contract = json.load(open(os.path.join(version, "contract.json")))
    assert contract["input"] == {"name": "pixels", "dtype": "float32", "shape": [None, 28, 28, 1]}
    assert open(os.path.join(version, "labels.txt")).read().split() == [str(d) for d in range(10)]


def test_goldens_reproduce_with_each_export_and_with_the_transform(edge_run):
    home, _ = edge_run
    version = os.path.join(home, "edge", NAME, "1")
    store = open_store(home)
    lin = lineage_of_version(store, NAME, "1", with_metrics=False)
    from modules.features import to_example
    from modules.settings import ModuleSettings
    settings = ModuleSettings(kind="image", name=NAME, model="cnn")
    for name in EDGE_EXPORTS:
        golden = E.read_golden(os.path.join(version, name))
        assert golden["input"].shape == (E.GOLDEN_EXAMPLES, 28, 28, 1)
        got, _ = E.predict_export(name, os.path.join(version, name), golden["input"])
        np.testing.assert_allclose(got, golden["expected"], atol=golden["atol"])
        # The golden input is what the real Transform makes of the golden raw image.
        serialized = [to_example({"image_raw": base64.b64decode(r)}).SerializeToString() for r in golden["raw"]]
        np.testing.assert_allclose(E.transformed_inputs(lin.transform_graph.uri, serialized, settings),
                                   golden["input"], atol=1e-6)


def test_metrics_are_recorded_in_mlmd_and_shown_by_lineage_summary_and_report(edge_run):
    home, stdout = edge_run
    lin = lineage_of_version(open_store(home), NAME, "1", with_metrics=False)
    edge = lin.edge_exports
    assert edge is not None and edge.version == "1" and edge.destination == os.path.join(home, "edge", NAME, "1")
    assert [x.name for x in edge.exports] == list(EDGE_EXPORTS)
    for x in edge.exports:
        assert x.pushed and x.reason == "", x
        assert abs(x.accuracy_delta - (x.accuracy - edge.reference_accuracy)) < 1e-5  # MLMD rounds
        assert -0.05 <= x.accuracy_delta and x.size_bytes > 0 and x.latency_ms > 0
    sizes = {x.name: x.size_bytes for x in edge.exports}
    assert sizes["tflite_dynamic"] < sizes["tflite_float16"]  # int8 weights are half of float16's
    assert lin.to_json()["edge_exports"]["exports"][0]["name"] == "tflite_float16"
    summary = read_summary(os.path.join(home, "metadata.sqlite"), NAME)
    assert {n.node: n.state for n in summary.nodes}["EdgeExporter"] == "complete"
    assert "Edge exports -> " in stdout and "    tflite_int8: pushed, accuracy " in stdout
    # `conveyor lineage` prints format_lineage (in-process here: a CLI process costs a TF import)
    assert "      tfjs: pushed, accuracy " in format_lineage(lin)
    report = [line.split("report ", 1)[1] for line in stdout.splitlines() if line.startswith("  report ")][0]
    html = open(report, encoding="utf-8").read()
    assert "id='edge-exports'" in html and "tflite_dynamic" in html
