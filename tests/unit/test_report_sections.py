"""The run report (conveyor/report.py) on MLMD records written by hand (tests/support/mlmd_records):
a run stopped at the data gate shows why, free-text features show no value domain, a
running run says for how long it has been running."""
import json
import os

from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.report import domain_text, render
from pipelines import preflight
from pipelines.config import Config
from tests.support import mlmd_records as rec

P = "text_classifier"
STOP = ("data validation found anomalies; the run stops before Transform:\n  [train] feature 'label_name': "
        "new class(es) ['three'] not among the blessed model's classes ['one', 'two']")


def _schema(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    texts = "".join(f'  value: "review number {i} <b>great</b>"\n' for i in range(200))
    with open(os.path.join(folder, "schema.pbtxt"), "w") as f:
        f.write('feature { name: "text" type: BYTES domain: "text" }\n'
                'feature { name: "label_name" type: BYTES domain: "label_name" }\n'
                f'string_domain {{ name: "text"\n{texts}}}\n'
                'string_domain { name: "label_name" value: "a" value: "b" value: "c" value: "d" value: "e" '
                'value: "f" value: "g" }\n')
    return folder


def _gate_stopped_run(tmp_path, result_message=None):
    store = rec.memory_store()
    run = rec.run_context(store, "r1")
    examples = rec.artifact(store, "Examples", str(tmp_path / "examples"))
    rec.execution(store, P, run, "TextExampleGen", outputs=[(examples, ["examples", 0])])
    schema = rec.artifact(store, "Schema", _schema(str(tmp_path / "schema")))
    rec.execution(store, P, run, "SchemaGen", outputs=[(schema, ["schema", 0])])
    extra = {} if result_message is None else {
        "__execution_result__": json.dumps({"code": 2, "resultMessage": result_message})}
    rec.execution(store, P, run, "GatedExampleValidator", inputs=[(schema, ["schema", 0])],
                  state=pb.Execution.FAILED, **extra)
    return store


def test_a_run_stopped_at_the_gate_shows_the_anomalies_that_stopped_it(tmp_path):
    page = render(_gate_stopped_run(tmp_path, STOP), P, "r1")
    assert "The validator did not run" not in page
    assert "GatedExampleValidator stopped the run" in page and "new class(es) [&#x27;three&#x27;]" in page
    # recorded before pipelines/preflight.record_failure existed: say where the reason is
    page = render(_gate_stopped_run(tmp_path), P, "r1")
    assert "GatedExampleValidator stopped the run" in page and "HOME/logs" in page


def test_record_failure_stores_the_reason_on_the_failed_execution(tmp_path):
    path = str(tmp_path / "home" / "metadata.sqlite")
    store = rec.sqlite_store(path)
    run = rec.run_context(store, "r1")
    rec.execution(store, P, run, "StatisticsGen")
    rec.execution(store, P, run, "GatedExampleValidator", state=pb.Execution.FAILED)
    config = Config(kind="text", name=P, home=str(tmp_path / "home"))
    assert len(preflight.record_failure(config, 0, STOP)) == 1
    assert preflight.record_failure(config, 0, "again") == []  # the first reason stays
    assert "new class(es) [&#x27;three&#x27;]" in render(rec.sqlite_store(path), P, "r1")


def test_free_text_features_show_no_value_domain(tmp_path):
    page = render(_gate_stopped_run(tmp_path, STOP), P, "r1")
    assert "review number" not in page
    assert "a, b, c, d, e, … 2 more" in page
    assert domain_text("text", ["x"] * 300).startswith("free values")
    assert domain_text("label_name", ["a", "b"]) == "a, b" and domain_text("f", None) == ""


def test_a_running_run_says_for_how_long_it_has_been_running(tmp_path):
    import time
    store = rec.memory_store()
    run = rec.run_context(store, "r1")
    rec.execution(store, P, run, "TextExampleGen")
    rec.execution(store, P, run, "Trainer", state=pb.Execution.RUNNING)
    time.sleep(1.1)
    page = render(store, P, "r1")
    header = page[page.index('id="run-id"'):]
    header = header[:header.index("</p>")]
    assert "running for" in header and "took" not in header
    seconds = float(page[page.index("running for ", page.index("<table")) + 12:].split("<")[0])
    assert seconds >= 1.0  # time since the Trainer started, not its (never updated) last update


def test_review_line_breaks_are_breaks_and_everything_else_is_escaped():
    from conveyor.pictures import mistakes_html, text_html
    assert text_html("Great.<br /><br />Not <b>bad</b><BR>x") == "Great.<br><br>Not &lt;b&gt;bad&lt;/b&gt;<br>x"
    page = mistakes_html({"scored": 2, "wrong": 1, "mistakes": [
        {"true": "neg", "predicted": "pos", "probability": 0.9, "text": "a<br /><br />b<script>"}]})
    assert "&lt;br /&gt;" not in page and "a<br><br>b&lt;script&gt;" in page


def test_monitor_section_shows_versions_and_problems():
    from conveyor.report import _monitor_section
    assert _monitor_section(None) == ""
    record = {"labelled": 40, "predictions": 90, "checked_at": "2026-11-30T10:00:00+00:00",
              "versions": [{"version": 2, "arms": ["canary"], "n": 40, "accuracy": 0.5, "wilson_low": 0.35,
                            "wilson_high": 0.65, "offline_accuracy": 0.9}],
              "ab_test": {"difference": -0.4, "p_value": 0.0001, "significant": True},
              "problems": ["version 2: online accuracy 0.500 <below>"]}
    html = _monitor_section(record)
    assert 'id="monitor">PROBLEM<' in html and "<td>canary</td>" in html and "0.3500-0.6500" in html
    assert "&lt;below&gt;" in html and "significant" in html
