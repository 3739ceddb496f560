"""Next-day evaluation (`eval_span: next`): train on earlier spans, judge on the latest one.

Three runs of the image pipeline on one HOME as three spans of real digits land (LocalDagRunner,
SQLite MLMD, Beam DirectRunner): span 1 alone falls back to its own eval split; span 2 is
judged by a model trained on span 1 only; span 3 by a model trained on spans 1 and 2. MLMD,
the summary, `conveyor lineage` and the report name the spans of each role.
"""
import io
import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor import cli
from conveyor import runner as local_runner
from conveyor.metadata.store import open_store
from pipelines.config import load_config
from tests.e2e.test_spans import _digits, write_span

NAME = "digits_next_day"
SPAN_SIZE = 300


def _run(home: str, data: str) -> dict:
    config = load_config("image", overrides={
        "home": home, "name": NAME, "train_steps": 40, "eval_steps": 5, "epochs": 2, "image_size": 16,
        "infra_requests": 10, "infra_p99_budget_ms": 10000, "eval_span": "next", "data": data,
        # Tiny runs vary by more than the default 0.01; the roles of the spans are what is tested.
        "accuracy_floor": 0.0, "regression_tolerance": 1.0})
    out = io.StringIO()
    summary = local_runner.run(config, stream=out)
    return {"summary": summary, "stdout": out.getvalue()}


@pytest.fixture(scope="module")
def next_day(tmp_path_factory):
    root = tmp_path_factory.mktemp("next_day")
    home, incoming = str(root / "home"), str(root / "incoming")
    os.makedirs(incoming)
    images, labels = _digits()
    runs = {}
    for span in (1, 2, 3):
        part = slice((span - 1) * SPAN_SIZE, span * SPAN_SIZE)
        write_span(incoming, span, images[part], labels[part])
        runs[span] = _run(home, os.path.join(incoming, "span-{SPAN}"))
    return home, runs


def _examples_spans(store, execution_id: int):
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type == mlmd_pb2.Event.INPUT and e.path.steps[0].key == "examples"]
    return sorted(a.custom_properties["span"].int_value
                  for a in store.get_artifacts_by_id([e.artifact_id for e in events]))


def test_each_role_reads_the_spans_next_day_evaluation_names(next_day):
    home, runs = next_day
    expected = {1: ([1], 1, False), 2: ([1], 2, True), 3: ([1, 2], 3, True)}
    store = open_store(home)
    for span, (trained, evaluated, held_out) in expected.items():
        summary = runs[span]["summary"]
        assert summary.pushed_version is not None or span > 1, runs[span]["stdout"]
        assert (summary.spans.trained_on, summary.spans.evaluated_on, summary.spans.next_day) == \
            (trained, evaluated, held_out), runs[span]["stdout"]
        # What the components really read, in MLMD: Transform analysed the training spans too.
        for node in ("Transform", "Trainer"):
            assert _examples_spans(store, summary.node(node).execution_id) == trained, node
        assert _examples_spans(store, summary.node("BaselineEvaluator").execution_id) == [evaluated]
    assert "no earlier run of this pipeline ingested an earlier span" in runs[1]["stdout"]
    assert "next-day evaluation: trained on spans 1, 2, evaluated on span 3 (never trained on)" in runs[3]["stdout"]
    # The model trained on earlier spans classifies the unseen span well above chance.
    third = runs[3]["summary"]
    assert third.candidate["sparse_categorical_accuracy"] > 2 * third.majority_baseline, runs[3]["stdout"]


def test_lineage_and_report_name_the_spans(next_day, capsys):
    home, runs = next_day
    served = runs[3]["summary"].pushed_version or runs[2]["summary"].pushed_version
    assert served, runs[3]["stdout"]
    capsys.readouterr()
    assert cli.main(["lineage", "--home", home, "--model", NAME, "--version", served, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    pushed_by = 3 if runs[3]["summary"].pushed_version else 2  # the run that pushed it judged its own span
    assert record["spans"]["next_day"] is True and record["spans"]["evaluated_on"] == pushed_by
    assert cli.main(["lineage", "--home", home, "--model", NAME, "--version", served]) == 0
    text = capsys.readouterr().out
    assert "next-day evaluation: trained on span" in text
    assert "pass  accuracy > majority-class rate  candidate" in text  # every blessing rule, as in the summary
    from conveyor import report
    html = report.render(open_store(home), NAME, home=home)
    assert "next-day evaluation: trained on span" in html
    # The report of a run names its own spans, also when it pushed nothing.
    assert "Data of this run: next-day evaluation: trained on spans 1, 2, evaluated on span 3" in html
