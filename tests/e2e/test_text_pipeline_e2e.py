"""The text pipeline end to end on real IMDB reviews: LocalDagRunner, SQLite MLMD, Beam DirectRunner."""
import csv
import io
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipelines.config import load_config
from conveyor.run_summary import open_store, read_summary
from conveyor import runner as local_runner
from serving.model_config import read_models_config
from tests.support.helpers import SHARED_DATA

IMDB_CSV = os.path.join(SHARED_DATA, "imdb", "imdb_reviews_2500.csv")
REVIEWS = 500
SETTINGS = {"train_steps": 120, "eval_steps": 5, "eval_percent": 20, "model": "multihot",
            "infra_p99_budget_ms": 10000}  # latency budgets are bench matters, not this test's
COMPONENTS = {"TextExampleGen", "StatisticsGen", "SchemaGen", "GatedExampleValidator", "Transform",
              "Trainer", "BaselineEvaluator", "ConveyorInfraValidator", "ServingPusher"}

pytestmark = pytest.mark.skipif(not os.path.exists(IMDB_CSV), reason=f"{IMDB_CSV} not available")


def _write_reviews(folder: str, shuffle_labels: bool = False):
    """The first REVIEWS real reviews as a CSV; returns the folder and the rows written."""
    with open(IMDB_CSV, encoding="utf-8", newline="") as f:
        rows = [(r["review"], r["sentiment"]) for r in list(csv.DictReader(f))[:REVIEWS]]
    if shuffle_labels:
        labels = [label for _, label in rows]
        random.Random(7).shuffle(labels)
        rows = [(text, label) for (text, _), label in zip(rows, labels)]
    os.makedirs(folder)
    with open(os.path.join(folder, "reviews.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return folder, rows


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_e2e")
    home = str(root / "home")
    data, rows = _write_reviews(str(root / "reviews"))
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", "text", "--data", data, "--home", home,
         "--model", "multihot", "--train-steps", str(SETTINGS["train_steps"]), "--eval-steps", "5"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home, rows, result.stdout


def test_every_component_succeeded_and_the_model_was_pushed(first_run):
    home, _, stdout = first_run
    summary = read_summary(os.path.join(home, "metadata.sqlite"), "text_classifier")
    states = {n.node: n.state for n in summary.nodes}
    assert {c: states.get(c) for c in COMPONENTS} == {c: "complete" for c in COMPONENTS}
    assert summary.blessed is True and summary.pushed_version == "1", summary.not_blessed_because
    assert summary.candidate["sparse_categorical_accuracy"] > summary.majority_baseline
    assert "Pushed: version 1" in stdout
    config = read_models_config(os.path.join(home, "serving", "models.config"))
    assert [c.name for c in config.model_config_list.config] == ["text_classifier"]


def test_text_report_shows_token_lengths_and_reviews_it_got_wrong(first_run, tmp_path):
    """The run's report in headless chromium: the histogram of tokens per review (TFDV's
    text_tokens statistics) and the most confident mistakes as truncated review texts."""
    import glob
    from tests.support.browser import browser_page
    home, rows, _ = first_run
    [report] = glob.glob(os.path.join(home, "reports", "*.html"))
    with browser_page() as (page, _):
        page.goto("file://" + report)
        bars = page.locator("svg.histogram rect.hist-bar")
        assert bars.count() >= 5
        texts = page.locator("figure.mistake blockquote").all_inner_texts()
        assert texts, page.locator("#mistakes").inner_text()
        words = lambda t: " ".join(t.split())  # noqa: E731 - the page collapses white space
        # The report shows IMDB's <br /> tags as line breaks.
        reviews = [words(re.sub(r"<br\s*/?>", " ", text)) for text, _ in rows]
        assert all(any(r.startswith(words(t)[:200]) for r in reviews) for t in texts)
        assert page.locator("svg.confusion g.cm-cell").count() == 4
        page.screenshot(path=str(tmp_path / "text-report.png"), full_page=True)


def test_pushed_model_classifies_raw_strings(first_run):
    home, rows, _ = first_run
    model = tf.saved_model.load(os.path.join(home, "serving", "text_classifier", "1"))
    out = model.signatures["serving_default"](text=tf.constant([text for text, _ in rows]))
    names = [n.decode() for n in out["class_names"].numpy()]
    assert set(names) <= {"negative", "positive"}
    # Mostly training data, so well above chance; the eval-split accuracy is checked by the Evaluator.
    accuracy = np.mean([name == label for name, (_, label) in zip(names, rows)])
    assert accuracy > 0.7, accuracy
    assert set(model.signatures) == {"serving_default", "serving_examples"}


def test_bad_candidate_is_not_blessed_or_pushed(first_run, tmp_path):
    home, _, _ = first_run
    shuffled, _ = _write_reviews(str(tmp_path / "shuffled"), shuffle_labels=True)
    # Two classes: chance is ~0.5 on a 100-review eval split (sd ~0.05), so a floor of 0.65 keeps a
    # lucky draw on shuffled labels from passing; the first model cleared the default floor.
    config = load_config("text", overrides={"home": home, "accuracy_floor": 0.65, "data": shuffled, **SETTINGS})
    summary = local_runner.run(config, stream=io.StringIO())
    assert summary.blessed is False
    assert summary.baseline  # compared against the blessed version 1
    assert summary.pushed_path is None
    assert sorted(os.listdir(os.path.join(home, "serving", "text_classifier"))) == [".push.lock", "1"]
    blessings = open_store(os.path.join(home, "metadata.sqlite")).get_artifacts_by_type("ModelBlessing")
    assert blessings[-1].custom_properties["blessed"].int_value == 0
