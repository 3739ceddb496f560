"""`conveyor runs | lineage | diff | report` against real pipeline runs, checked against MLMD's own records.

Two tiny image runs share one HOME: a blessed model on 3 digit classes x 40 images (pushed
as version 1) and a rejected one on the same images with shuffled labels. The digit 7 lies
in a class folder named `<b>x<b>` (a folder name cannot hold "/"), so every page that shows
class names must show it as text. The same HOME serves the `conveyor ui` and report tests in
headless chromium (tests/support/browser.py).
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.cli import main
from tests.support.browser import browser_page, ui_server
from conveyor.metadata import runs as mlmd_runs
from conveyor.metadata.artifacts import ACCURACY
from conveyor.metadata.diff import run_details
from conveyor.metadata.lineage import lineage_of_model, lineage_of_version
from conveyor.metadata.store import Graph, LineageError, open_store
from pipelines.config import load_config
from data.digits import materialize_digits
from modules.settings import MODULES_FINGERPRINT_KEY
from conveyor import runner as local_runner
from modules.settings import modules_fingerprint
from pipelines.pipeline import RUN_FN

CLASSES = ("0", "1", "7")
FOLDERS = {"0": "0", "1": "1", "7": "<b>x<b>"}  # digit class -> the class folder it is copied to
LABELS = tuple(FOLDERS[c] for c in CLASSES)
PER_CLASS = 40
NAME = "image_classifier"
STATE = {pb.Execution.COMPLETE: "complete", pb.Execution.CACHED: "cached", pb.Execution.FAILED: "failed"}


def _subset(source: str, target: str) -> str:
    for c in CLASSES:
        os.makedirs(os.path.join(target, FOLDERS[c]))
        for f in sorted(os.listdir(os.path.join(source, c)))[:PER_CLASS]:
            shutil.copy(os.path.join(source, c, f), os.path.join(target, FOLDERS[c], f))
    return target


@pytest.fixture(scope="module")
def history(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("lineage")
    good = _subset(digits_dir, str(root / "good"))
    shuffled = _subset(materialize_digits(str(root / "shuffled_full"), shuffle_labels_seed=1), str(root / "bad"))
    home = str(root / "home")
    summaries = []
    for data in (good, shuffled):
        config = load_config("image", overrides={"home": home, "train_steps": 30, "eval_steps": 2,
                                                 "infra_p99_budget_ms": 10000, "data": data})
        summaries.append(local_runner.run(config, stream=io.StringIO()))
    assert summaries[0].blessed is True and summaries[0].pushed_version == "1", summaries[0].table()
    assert summaries[1].blessed is False, summaries[1].table()
    return {"home": home, "good": good, "bad": shuffled, "config": config}


@pytest.fixture()
def store(history):
    return open_store(history["home"])


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv):
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# direct MLMD queries the tests compare against ---------------------------------------------

def _run_contexts(store):
    return sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)


def _node(store, execution):
    node_type = store.get_context_type("node").id
    return next(c.name.split(".", 1)[1] for c in store.get_contexts_by_execution(execution.id)
                if c.type_id == node_type)


def _outputs(store, execution, type_name):
    type_id = store.get_artifact_type(type_name).id
    ids = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id]) if e.type == pb.Event.OUTPUT]
    return [a for a in store.get_artifacts_by_id(ids) if a.type_id == type_id]


def _inputs_by_key(store, execution):
    events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type == pb.Event.INPUT]
    return {e.path.steps[0].key: e.artifact_id for e in events}


def _run_execution(store, run, node):
    return next(e for e in store.get_executions_by_context(run.id) if _node(store, e) == node)


# runs --------------------------------------------------------------------------------------

def test_runs_json_matches_mlmd(capsys, history, store):
    rows = cli_json(capsys, "runs", "--home", history["home"])
    runs = _run_contexts(store)
    assert [r["run_id"] for r in rows] == [c.name for c in runs]
    for row, run in zip(rows, runs):
        executions = store.get_executions_by_context(run.id)
        assert row["pipeline"] == NAME
        assert {n["node"]: (n["state"], n["execution_id"]) for n in row["nodes"]} == {
            _node(store, e): (STATE[e.last_known_state], e.id) for e in executions}
        start = min(e.create_time_since_epoch for e in executions)
        end = max(e.last_update_time_since_epoch for e in executions)
        assert row["start_ms"] == start and row["duration_seconds"] == pytest.approx((end - start) / 1000)
        blessing = _outputs(store, next(e for e in executions if _node(store, e) == "BaselineEvaluator"),
                            "ModelBlessing")[0]
        assert row["blessed"] == (blessing.custom_properties["blessed"].int_value == 1)
        pushed = _outputs(store, next(e for e in executions if _node(store, e) == "ServingPusher"), "PushedModel")[0]
        expected = (pushed.custom_properties["pushed_version"].string_value
                    if pushed.custom_properties["pushed"].int_value == 1 else None)
        assert row["pushed_version"] == expected
    assert [(r["blessed"], r["pushed_version"]) for r in rows] == [(True, "1"), (False, None)]
    assert rows[1]["push_note"] == "not blessed"


def test_runs_table_and_filters(capsys, history):
    code, out, _ = cli(capsys, "runs", "--home", history["home"])
    assert code == 0
    assert "pipeline image_classifier" in out and "Trainer" in out and "- (not blessed)" in out
    assert len(re.findall(r"^\s+[12] \d{4}-\d\d-\d\dT", out, re.M)) == 2
    assert [r["pipeline"] for r in cli_json(capsys, "runs", "--home", history["home"], "--name", NAME)] == [NAME] * 2
    code, _, err = cli(capsys, "runs", "--home", history["home"], "--name", "nothing_here")
    assert code == 1 and "no pipeline 'nothing_here' in the metadata store; pipelines: image_classifier" in err
    code, _, err = cli(capsys, "runs", "--home", os.path.join(history["home"], "missing"))
    assert code == 1 and "no metadata store at" in err


def test_runs_through_the_installed_entry_point(history):
    exe = os.path.join(os.path.dirname(sys.executable), "conveyor")
    result = subprocess.run([exe if os.path.exists(exe) else sys.executable, *([] if os.path.exists(exe) else
                             ["-m", "conveyor.cli"]), "runs", "--home", history["home"], "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads(result.stdout)) == 2


# JSON keys ---------------------------------------------------------------------------------
# Scripts read `conveyor runs | lineage | diff --json`: the keys of every fixed-shape object,
# and their order, are pinned here (objects keyed by data, e.g. splits or labels, are not).

REF = ["artifact_id", "type", "uri", "created", "run_id", "execution_id"]
MODEL = REF + ["node", "state", "model_type", "hyperparameters", "train_steps", "eval_steps", "module_file",
               "module_path", "module_fingerprint"]
EXAMPLES = REF + ["node", "input_base", "input_pattern", "span", "version", "input_fingerprint", "example_count",
                  "skipped_count", "label_names", "splits", "split_counts"]
EVALUATION = REF + ["baseline_model", "candidate", "baseline", "per_label", "failures", "per_class"]
FEATURE_KEYS = ["type", "min_fraction", "min_count", "shape", "int_domain", "domain"]


def test_cli_json_keys_are_pinned(capsys, history, store):
    for row in cli_json(capsys, "runs", "--home", history["home"]):
        assert list(row) == ["run_id", "pipeline", "start", "start_ms", "duration_seconds", "nodes", "blessed",
                             "infra_blessed", "pushed_version", "push_note"]
        assert {tuple(n) for n in row["nodes"]} == {("node", "state", "seconds", "execution_id")}

    lin = cli_json(capsys, "lineage", "--model", NAME, "--home", history["home"])
    assert list(lin) == ["model_name", "version", "pushed_versions", "pushed", "model", "blessing", "evaluation",
                         "transform_graph", "schema", "statistics", "anomalies", "examples", "infra_blessing",
                         "spans"]
    expected = {"pushed": REF + ["destination"], "model": MODEL,
                "blessing": REF + ["blessed", "majority_baseline", "accuracy_floor", "rules"], "evaluation": EVALUATION,
                "transform_graph": REF + ["module_path", "module_fingerprint"], "schema": REF + ["features"],
                "statistics": REF + ["splits"], "anomalies": REF + ["splits", "count"], "examples": EXAMPLES,
                "infra_blessing": REF + ["blessed", "num_requests", "num_failures", "p50_latency_ms",
                                         "p99_latency_ms", "p99_budget_ms"]}
    assert {k: list(lin[k]) for k in expected} == expected
    for feature in lin["schema"]["features"].values():
        assert list(feature) == [k for k in FEATURE_KEYS if k in feature] and "type" in feature
    assert {tuple(v) for v in lin["statistics"]["splits"].values()} == {("num_examples", "labels")}
    assert {tuple(v) for v in lin["evaluation"]["per_label"].values()} == {("candidate",)}  # version 1: no baseline

    forward = cli_json(capsys, "lineage", "--from-examples", history["good"], "--home", history["home"])
    assert list(forward) == ["examples", "models"] and list(forward["examples"]) == EXAMPLES
    assert [list(m) for m in forward["models"]] == [
        MODEL + ["model_name", "blessed", "pushed_versions", "served", "serving_latest"]]

    diff = cli_json(capsys, "diff", "1", "2", "--home", history["home"])
    assert list(diff) == ["pipeline", "run_a", "run_b", "states", "config", "data", "examples", "schema",
                          "metrics", "per_label_accuracy", "blessed", "pushed_version", "evaluated", "notes",
                          "repeats"]
    assert diff["config"] and {tuple(c) for c in diff["config"]} == {("node", "key", "a", "b")}
    for split in diff["data"].values():
        assert list(split) == ["num_examples", "labels"] and list(split["num_examples"]) == ["a", "b"]
        assert {tuple(v) for v in split["labels"].values()} == {("a", "b")}
    assert list(diff["examples"]) == ["a", "b", "same_artifact"]
    assert list(diff["schema"]) == ["added", "removed", "changed", "same_artifact"]
    assert diff["metrics"] and {tuple(v) for v in diff["metrics"].values()} == {("a", "b", "delta")}
    assert diff["per_label_accuracy"] and {tuple(v) for v in diff["per_label_accuracy"].values()} == {("a", "b")}
    assert list(diff["blessed"]) == list(diff["pushed_version"]) == ["a", "b"]

    # The rejected run's evaluation names its baseline (version 1's lineage has none).
    graph = Graph(store)
    rejected = _run_execution(store, _run_contexts(store)[-1], "Trainer")
    evaluation = lineage_of_model(graph, _outputs(store, rejected, "Model")[0]).to_json()["evaluation"]
    assert list(evaluation) == EVALUATION and list(evaluation["baseline_model"]) == REF + ["pushed_versions"]
    assert {tuple(v) for v in evaluation["per_label"].values()} == {("candidate", "baseline")}

    # Users' scripts that import the old module still find the queries there.
    from conveyor import lineage as compat
    assert compat.list_runs is mlmd_runs.list_runs and compat.lineage_of_version is lineage_of_version


# lineage -----------------------------------------------------------------------------------

def test_lineage_of_pushed_version_matches_mlmd(capsys, history, store):
    result = cli_json(capsys, "lineage", "--model", NAME, "--home", history["home"])
    first = _run_contexts(store)[0]
    pusher = _run_execution(store, first, "ServingPusher")
    pushed = _outputs(store, pusher, "PushedModel")[0]
    inputs = _inputs_by_key(store, pusher)
    assert result["version"] == "1" and result["pushed_versions"] == ["1"]
    assert result["pushed"]["artifact_id"] == pushed.id
    assert result["pushed"]["destination"] == pushed.custom_properties["pushed_destination"].string_value
    # The Pusher's own record in the served version names the same model artifact.
    with open(os.path.join(result["pushed"]["destination"], "assets.extra", "conveyor_push.json")) as f:
        record = json.load(f)
    assert result["model"]["artifact_id"] == inputs["model"] == record["model_id"]
    assert result["model"]["uri"] == record["model_uri"]
    assert result["blessing"]["artifact_id"] == inputs["model_blessing"]
    assert result["blessing"]["blessed"] is True

    trainer = _run_execution(store, first, "Trainer")
    assert result["model"]["execution_id"] == trainer.id
    custom_config = json.loads(trainer.custom_properties["custom_config"].string_value)
    fingerprint = custom_config.pop(MODULES_FINGERPRINT_KEY)
    assert result["model"]["hyperparameters"] == custom_config
    assert result["model"]["model_type"] == "cnn" and result["model"]["train_steps"] == 30
    assert result["model"]["module_path"] == trainer.custom_properties["run_fn"].string_value == RUN_FN
    assert result["model"]["module_fingerprint"] == fingerprint == modules_fingerprint()
    trainer_inputs = _inputs_by_key(store, trainer)
    assert result["transform_graph"]["artifact_id"] == trainer_inputs["transform_graph"]
    assert result["schema"]["artifact_id"] == trainer_inputs["schema"]
    assert set(result["schema"]["features"]) == {"image_raw", "label", "label_name",
                                                 "image_height", "image_width", "image_mean"}

    evaluator = _run_execution(store, first, "BaselineEvaluator")
    evaluation = _outputs(store, evaluator, "ModelEvaluation")[0]
    assert result["evaluation"]["artifact_id"] == evaluation.id
    assert result["evaluation"]["baseline_model"] is None  # the first blessed model had nothing to beat
    accuracy = result["evaluation"]["candidate"][ACCURACY]
    assert accuracy > result["blessing"]["majority_baseline"] and accuracy >= result["blessing"]["accuracy_floor"]
    assert set(result["evaluation"]["per_label"]) == set(LABELS)

    stats = _outputs(store, _run_execution(store, first, "StatisticsGen"), "ExampleStatistics")[0]
    assert result["statistics"]["artifact_id"] == stats.id
    assert result["anomalies"]["count"] == 0
    examples = _outputs(store, _run_execution(store, first, "ImageExampleGen"), "Examples")[0]
    ex = result["examples"]
    assert ex["artifact_id"] == trainer_inputs["examples"] == examples.id
    assert ex["uri"] == examples.uri and ex["input_base"] == history["good"]
    assert ex["span"] == examples.custom_properties["span"].int_value
    assert ex["input_fingerprint"] == examples.custom_properties["input_fingerprint"].string_value
    assert ex["example_count"] == examples.custom_properties["example_count"].int_value == len(CLASSES) * PER_CLASS
    assert sum(ex["split_counts"].values()) == ex["example_count"] and set(ex["split_counts"]) == {"train", "eval"}
    assert ex["label_names"] == list(LABELS)

    code, out, _ = cli(capsys, "lineage", "--model", NAME, "--version", "1", "--home", history["home"])
    assert code == 0 and f"model {NAME} version 1" in out and "BLESSED" in out and history["good"] in out


@pytest.mark.parametrize("argv, message", [
    (["--model", NAME, "--version", "7"], f"no pushed version 7 of model {NAME}; pushed versions: 1"),
    (["--model", "no_such_model"], f"no model 'no_such_model' in the metadata store; models: {NAME}"),
    (["--from-examples", "/no/such/examples"], "no Examples artifact with URI /no/such/examples"),
    ([], "give --model NAME [--version V] or --from-examples URI"),
])
def test_lineage_errors_are_readable(capsys, history, argv, message):
    code, out, err = cli(capsys, "lineage", *argv, "--home", history["home"])
    assert code in (1, 2) and message in err and not out


def test_lineage_forward_from_examples(capsys, history, store):
    runs = _run_contexts(store)
    for run, served in zip(runs, (True, False)):
        examples = _outputs(store, _run_execution(store, run, "ImageExampleGen"), "Examples")[0]
        result = cli_json(capsys, "lineage", "--from-examples", examples.uri, "--home", history["home"])
        trainer = _run_execution(store, run, "Trainer")
        model = _outputs(store, trainer, "Model")[0]
        assert result["examples"]["artifact_id"] == examples.id
        assert [m["artifact_id"] for m in result["models"]] == [model.id]
        assert result["models"][0]["served"] is served
        assert result["models"][0]["pushed_versions"] == (["1"] if served else [])
        assert result["models"][0]["blessed"] is served
    # The input folder finds the same examples as the artifact URI.
    by_folder = cli_json(capsys, "lineage", "--from-examples", history["bad"], "--home", history["home"])
    assert by_folder["examples"]["input_base"] == history["bad"] and by_folder["models"][0]["served"] is False


# diff --------------------------------------------------------------------------------------

def _label_counts(stats_uri: str, split: str):
    import tensorflow_data_validation as tfdv
    stats = tfdv.load_stats_binary(os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb"))
    dataset = stats.datasets[0]
    feature = next(f for f in dataset.features if f.path.step[-1] == "label_name")
    return dataset.num_examples, {b.label: int(b.sample_count) for b in feature.string_stats.rank_histogram.buckets}


def test_diff_matches_mlmd(capsys, history, store):
    runs = _run_contexts(store)
    result = cli_json(capsys, "diff", runs[0].name, "-1", "--home", history["home"])
    assert (result["run_a"], result["run_b"]) == (runs[0].name, runs[1].name)
    changes = {(c["node"], c["key"]): (c["a"], c["b"]) for c in result["config"]}
    assert changes[("ImageExampleGen", "input_base")] == (history["good"], history["bad"])
    assert not any(node == "Trainer" for node, _ in changes)  # same hyperparameters both times
    for split, counts in result["data"].items():
        (na, la), (nb, lb) = [_label_counts(_outputs(store, _run_execution(store, r, "StatisticsGen"),
                                                     "ExampleStatistics")[0].uri, split) for r in runs]
        assert counts["num_examples"] == {"a": na, "b": nb}
        assert counts["labels"] == {k: {"a": la.get(k, 0), "b": lb.get(k, 0)} for k in set(la) | set(lb)
                                    if la.get(k) != lb.get(k)}
    assert result["data"]["train"]["labels"]  # shuffling moved images between labels
    assert result["schema"]["added"] == result["schema"]["removed"] == [] == result["schema"]["changed"]
    accuracy = result["metrics"][ACCURACY]
    assert accuracy["a"] > accuracy["b"] and accuracy["delta"] == pytest.approx(accuracy["b"] - accuracy["a"])
    assert result["blessed"] == {"a": True, "b": False}
    assert result["pushed_version"] == {"a": "1", "b": None}

    code, out, _ = cli(capsys, "diff", "1", "2", "--home", history["home"])
    assert code == 0 and "ImageExampleGen.input_base" in out and "blessed: yes -> no" in out
    code, _, err = cli(capsys, "diff", "1", "nope", "--home", history["home"])
    assert code == 1 and "'nope' is not a run of pipeline 'image_classifier'; runs: 1=" in err


# report ------------------------------------------------------------------------------------

def test_report_is_self_contained(capsys, history, store):
    out = os.path.join(history["home"], "out", "report.html")
    code, stdout, err = cli(capsys, "report", "--run", "2", "--home", history["home"], "--out", out)
    assert code == 0, err
    assert stdout.strip() == out
    text = open(out, encoding="utf-8").read()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"] * text.count("<svg")
    # DAG, accuracy chart, confusion matrix, loss and accuracy curves; images as PNG data URIs
    assert text.count("<svg") == 5 and "<style>" in text
    assert text.count('src="data:image/png;base64,') >= len(LABELS)


def _shot(page, path):
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10000


def test_report_renders_in_headless_chromium(capsys, history, store, tmp_path):
    out = str(tmp_path / "report.html")
    assert cli(capsys, "report", "--home", history["home"], "--out", out)[0] == 0  # latest run: the rejected one
    runs = _run_contexts(store)
    details = run_details(Graph(store), NAME, runs[-1])
    with browser_page() as (page, _):
        page.goto("file://" + out)
        html_text = page.content()
        assert runs[-1].name in html_text and "NOT BLESSED" in html_text
        for node in details.nodes:
            assert page.locator(f'g.dag-node[data-node="{node.node}"][data-state="{node.state}"]').count() == 1
        evaluation = details.evaluation
        assert f'{evaluation.candidate[ACCURACY]:.4f}' in html_text
        assert f'{evaluation.baseline[ACCURACY]:.4f}' in html_text
        for split, s in details.statistics.splits.items():
            assert f"split {split}" in html_text
            for count in s.labels.values():
                assert f"{count} <span" in html_text
        assert "No anomalies in any split." in html_text
        assert "This run pushed nothing (not blessed); the model served now is version 1." in html_text
        assert history["good"] in html_text  # lineage of the served version reaches its input folder
        # The class folder `<b>x<b>` is text wherever a class is named, never markup.
        assert page.locator("b", has_text=re.compile(r"^x$")).count() == 0
        assert page.get_by_text("<b>x<b>").first.is_visible()

        # Confusion matrix: TFMA's counts, one cell per (true, predicted), summing to the eval split.
        cells = page.locator("svg.confusion g.cm-cell")
        assert cells.count() == len(LABELS) ** 2
        counts = [int(c) for c in cells.evaluate_all("els => els.map(e => e.dataset.count)")]
        assert sum(counts) == details.statistics.splits["eval"].num_examples
        assert set(cells.evaluate_all("els => els.map(e => e.dataset.true)")) == set(LABELS)
        # Most confident mistakes: decoded thumbnails, sorted by probability, from the Evaluator's record.
        figures = page.locator("figure.mistake")
        assert 0 < figures.count() <= 12
        assert all(w > 0 for w in page.locator("figure.mistake img").evaluate_all(
            "els => els.map(e => e.naturalWidth)"))
        assert "true <b>" in page.locator("figure.mistake figcaption").first.inner_html()
        # Training curves: candidate and the baseline (run 1's model), train and validation.
        series = set(page.locator("svg.curve path.series").evaluate_all("els => els.map(e => e.dataset.series)"))
        assert {"candidate train", "candidate validation", "baseline train", "baseline validation"} <= series
        # Sample images per class, decoded.
        rows = page.locator("tr.samples")
        assert rows.count() == len(LABELS)
        widths = page.locator("tr.samples img").evaluate_all("els => els.map(e => e.naturalWidth)")
        assert len(widths) >= len(LABELS) and all(w > 0 for w in widths)
        _shot(page, tmp_path / "report.png")


def test_ui_pages_in_headless_chromium(history, store, tmp_path):
    """`conveyor ui` on the two runs: runs, report, models, lineage graph, compare, serving;
    no console errors, links work, `<b>x<b>` is text."""
    runs = _run_contexts(store)
    with ui_server(history["home"]) as url, browser_page() as (page, _):
        page.goto(url + "/")
        rows = page.locator("tr.run")
        assert rows.count() == 2
        assert rows.evaluate_all("els => els.map(e => e.dataset.run)") == [runs[1].name, runs[0].name]  # newest first
        assert "no" in rows.nth(0).inner_text() and "yes" in rows.nth(1).inner_text()
        _shot(page, tmp_path / "ui-runs.png")
        page.select_option("#pipeline-filter", NAME)
        page.click("button[type=submit]")
        assert page.locator("tr.run").count() == 2 and f"pipeline={NAME}" in page.url
        rows.nth(1).locator("a.report-link").click()
        assert page.locator("#run-id").inner_text() == runs[0].name and page.locator("#verdict").inner_text() == "BLESSED"
        assert page.locator("svg.confusion").count() == 1
        page.go_back()

        page.click("nav >> text=Models")
        version = page.locator("tr.version")
        assert version.count() == 1 and version.get_attribute("data-version") == "1"
        assert "live" in version.inner_text()  # models.config's latest-version policy serves version 1
        _shot(page, tmp_path / "ui-models.png")
        version.locator("a.lineage-link").click()
        drawn = set(page.locator("#lineage-graph g.dag-node").evaluate_all("els => els.map(e => e.dataset.node)"))
        assert {"Examples", "Statistics", "Schema", "TransformGraph", "Model", "ModelEvaluation", "ModelBlessing",
                "PushedModel"} <= drawn
        assert page.locator("#lineage-graph path").count() >= 7  # the edges are drawn
        assert history["good"] in page.locator("table.lineage").inner_text()
        _shot(page, tmp_path / "ui-lineage.png")

        page.click("nav >> text=Compare")
        page.select_option("#run-a", runs[0].name)
        page.select_option("#run-b", runs[1].name)
        page.click("#compare-button")
        diff = page.locator("#diff")
        assert diff.locator('tr[data-key="blessed"]').inner_text().split("\t")[1:] == ["yes", "no"]
        assert diff.locator('tr[data-key="config:ImageExampleGen.input_base"]').count() == 1
        assert diff.locator(f'tr[data-key="metric:{ACCURACY}"]').count() == 1
        assert "-> None" not in diff.inner_text()
        # the shuffled labels moved examples into and out of class `<b>x<b>`: shown as text
        assert f"label {LABELS[2]}" in diff.inner_text()
        assert page.locator("b", has_text=re.compile(r"^x$")).count() == 0
        _shot(page, tmp_path / "ui-compare.png")

        page.click("nav >> text=Serving")
        assert page.locator("#no-server").is_visible()
        # (chromium logs a console error for any 404 page, so the error page is fetched directly)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "/models/no_such_model/1", timeout=30)
        assert missing.value.code == 404
        assert "no model &#39;no_such_model&#39; in the metadata store" in missing.value.read().decode()


def test_write_run_report_names_file_after_run(history, store):
    from conveyor.report import write_run_report
    path = write_run_report(history["config"])
    latest = _run_contexts(store)[-1].name
    assert path == os.path.join(history["config"].home_dir, "reports",
                                f"{NAME}-{re.sub(r'[^A-Za-z0-9._-]+', '-', latest)}.html")
    assert latest in open(path, encoding="utf-8").read()


# states without a real pipeline: cached, failed, not run -------------------------------------

def test_runs_states_on_any_connection_config():
    """The queries take a MetadataStore, so an in-memory (or MySQL) ConnectionConfig works as well."""
    config = pb.ConnectionConfig()
    config.fake_database.SetInParent()
    store = metadata_store.MetadataStore(config)
    types = {n: store.put_context_type(pb.ContextType(name=n)) for n in ("pipeline", "pipeline_run", "node")}
    exec_type = store.put_execution_type(pb.ExecutionType(name="Component"))
    pipeline_id = store.put_contexts([pb.Context(type_id=types["pipeline"], name="p")])[0]
    nodes = dict(zip(("A", "B", "C"), store.put_contexts(
        [pb.Context(type_id=types["node"], name=f"p.{n}") for n in ("A", "B", "C")])))
    runs = store.put_contexts([pb.Context(type_id=types["pipeline_run"], name=r) for r in ("r1", "r2")])
    plan = {runs[0]: [("A", pb.Execution.COMPLETE), ("B", pb.Execution.COMPLETE), ("C", pb.Execution.COMPLETE)],
            runs[1]: [("A", pb.Execution.CACHED), ("B", pb.Execution.FAILED)]}
    for run_id, steps in plan.items():
        for node, state in steps:
            [eid] = store.put_executions([pb.Execution(type_id=exec_type, last_known_state=state)])
            store.put_attributions_and_associations(
                [], [pb.Association(context_id=c, execution_id=eid) for c in (pipeline_id, run_id, nodes[node])])
    rows = mlmd_runs.list_runs(store)
    assert [r.run_id for r in rows] == ["r1", "r2"]
    assert [n.state for n in rows[0].nodes] == ["complete"] * 3
    assert {n.node: n.state for n in rows[1].nodes} == {"A": "cached", "B": "failed", "C": "not run"}
    assert rows[1].push_note == "run failed at B" and rows[1].blessed is None
    from conveyor.history_cli import format_runs
    assert re.search(r"r2 .* cached +failed +not run", format_runs(rows))
    graph = Graph(store)
    assert mlmd_runs.resolve_run(graph, "p", "-1").name == "r2" and mlmd_runs.resolve_run(graph, "p", "r1").name == "r1"
    with pytest.raises(LineageError, match="'r9' is not a run of pipeline 'p'; runs: 1=r1, 2=r2"):
        mlmd_runs.resolve_run(graph, "p", "r9")
    with pytest.raises(LineageError, match="no model 'q' in the metadata store; models: p"):
        lineage_of_version(store, "q")
    with pytest.raises(LineageError, match="model 'p' has no pushed versions yet"):
        lineage_of_version(store, "p")


def test_ui_shows_a_running_model_server(history, tmp_path):
    """--serving-url: the versions `conveyor serve` reports AVAILABLE and its request counts."""
    from tests.support.serving_harness import ServerProcess
    server = ServerProcess(["--model_config_file", os.path.join(history["home"], "serving", "models.config")],
                           str(tmp_path / "server.log"), entry=["-m", "conveyor.cli", "serve"])
    try:
        server.wait_ready(NAME, timeout=180)
        folder = os.path.join(history["good"], "0")
        image = os.path.join(folder, sorted(os.listdir(folder))[0])
        code, _, err = cli_capture("predict", "--model", NAME, "--url", server.url, image)
        assert code == 0, err
        with ui_server(history["home"], serving_url=server.url) as url, browser_page() as (page, _):
            page.goto(url + "/serving")
            versions = page.locator("#serving-versions tbody tr")
            assert versions.count() == 1 and versions.first.inner_text().split("\t")[1:3] == ["1", "AVAILABLE"]
            cells = [r.split("\t") for r in page.locator("#serving-requests tbody tr").all_inner_texts()]
            assert any(c[0] == NAME and c[1] == "1" and c[2] == "OK" and int(c[3]) >= 1 for c in cells), cells
            _shot(page, tmp_path / "ui-serving.png")
    finally:
        server.stop()
    with ui_server(history["home"], serving_url=server.url) as url, browser_page() as (page, _):
        page.goto(url + "/serving")  # the server is gone: one line, no traceback
        assert "cannot reach the model server at " + server.url in page.locator("#serving-error").inner_text()


def cli_capture(*argv):
    """Runs `conveyor ARGV` in a subprocess; (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "conveyor.cli", *argv], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout, result.stderr
