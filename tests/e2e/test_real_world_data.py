"""Real-world data end to end (issue 13): continuous training on new data of the same kind,
every image format ingestion accepts, texts in any language. Generated data only.

One HOME per kind, shared by the module's tests: run 1 pushes version 1; run 2 on a disjoint
set of the same kind must pass the gate, train and be evaluated against version 1. For text,
version 1's saved schema is first given the text value domain the code before this fix saved
(an existing user's HOME), so run 2 also proves the gate drops it; run 2's table also has a
row whose quote is never closed, run with --skip-bad-rows. The image model answers every
served format, refuses the others and a decompression bomb with 400s naming the instance.
"""
import base64
import io
import os

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_data_validation as tfdv

from conveyor import runner
from conveyor.metadata.store import open_store, props
from conveyor.run_summary import read_summary
from modules.image_contract import normalize
from modules.training_schema import BASELINE_SCHEMA_FILE
from pipelines.config import load_config
from serving.contract import SERVED_IMAGE_FORMATS
from tests.support.generated import (INGEST_ONLY, SERVED, digit_like, image_class_folders, image_files,
                                     png_bomb, reviews, write_reviews_csv)
from tests.support.serving_harness import ServerProcess

LANGUAGES = ("ru", "de", "zh")
ACCURACY = "sparse_categorical_accuracy"


def _run(kind: str, data: str, home: str, steps: int, **overrides) -> str:
    """One `conveyor run` in this process (the pytest process has TF and TFX imported, which a
    subprocess would pay ~25 s for); returns what it printed. Infra validation is not what
    these runs test: a few requests and a budget a loaded test machine meets (500 ms was once
    missed by 12 ms, and nothing was pushed)."""
    config = load_config(kind, overrides={"home": home, "data": data, "train_steps": steps, "eval_steps": 5,
                                          "infra_requests": 5, "infra_p99_budget_ms": 10000, **overrides})
    out = io.StringIO()
    try:
        runner.run(config, stream=out)
    except runner.ConveyorError as e:
        raise AssertionError(f"{e}\n{out.getvalue()[-3000:]}") from None
    return out.getvalue()


def _trainer_models(home: str, name: str):
    root = os.path.join(home, "pipelines", name, "Trainer", "model")
    return sorted((os.path.join(root, d) for d in os.listdir(root)), key=lambda p: int(os.path.basename(p)))


def _give_legacy_text_domain(home: str, texts) -> None:
    """Version 1's saved schema as the code before this fix wrote it: TFDV's inferred string
    domain for `text` (the training texts) kept, in the Trainer's export and the pushed copy."""
    for model_dir in [os.path.join(m, "Format-Serving") for m in _trainer_models(home, "text_classifier")] + \
            [os.path.join(home, "serving", "text_classifier", "1")]:
        path = os.path.join(model_dir, BASELINE_SCHEMA_FILE)
        schema = tfdv.load_schema_text(path)
        text = next(f for f in schema.feature if f.name == "text")
        text.domain = "text"
        schema.string_domain.add(name="text", value=list(texts))
        tfdv.write_schema_text(schema, path)


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_world_text")
    home = str(root / "home")
    first = [row for language in LANGUAGES for row in reviews(language, 30, seed=1)]
    second = [row for language in LANGUAGES for row in reviews(language, 30, seed=2)]
    assert not {t for t, _ in first} & {t for t, _ in second}
    stdout1 = _run("text", write_reviews_csv(str(root / "one"), first), home, 60)
    assert "Pushed: version 1" in stdout1, stdout1[-3000:]
    _give_legacy_text_domain(home, [t for t, _ in first])
    # Run 2's table has a row whose quote is never closed (line 12): with --skip-bad-rows that
    # row alone is skipped, named in the run summary, and every row after it is still read.
    folder = write_reviews_csv(str(root / "two"), second)
    path = os.path.join(folder, "reviews.csv")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    lines.insert(11, '"an unclosed quote, positive\n')
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    stdout2 = _run("text", folder, home, 60, skip_bad_rows=True)
    return home, stdout2


def test_second_text_run_on_new_reviews_passes_the_gate_and_is_evaluated_against_the_first(text_runs):
    home, stdout = text_runs
    assert "Unexpected string values" not in stdout
    assert len(_trainer_models(home, "text_classifier")) == 2
    summary = read_summary(os.path.join(home, "metadata.sqlite"), "text_classifier")
    assert ACCURACY in summary.candidate and ACCURACY in summary.baseline, stdout[-2000:]


def test_a_row_with_an_unclosed_quote_is_skipped_alone_and_shown_in_the_summary(text_runs):
    home, stdout = text_runs
    assert "Skipped inputs: 1 (bad rows or images), all listed in " in stdout, stdout[-3000:]
    assert "reviews.csv line 12: a quoted field opened on this line is not closed" in stdout
    store = open_store(home)
    counts = [props(a).get("example_count") for a in store.get_artifacts_by_type("Examples")]
    assert [c for c in counts if c is not None][-1] == 30 * len(LANGUAGES)  # no row after it lost


def test_vocabulary_holds_words_of_every_language(text_runs):
    home, _ = text_runs
    served = os.path.join(home, "serving", "text_classifier")
    latest = os.path.join(served, max(os.listdir(served), key=lambda v: int(v) if v.isdigit() else -1))
    with open(os.path.join(latest, "assets", "tokens"), encoding="utf-8") as f:
        vocabulary = {line.strip() for line in f}
    assert {"прекрасный", "ужасный", "schöner", "scheußlicher", "精", "糟"} <= vocabulary


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_pushed_text_model_classifies_each_language(text_runs, language):
    home, _ = text_runs
    served = os.path.join(home, "serving", "text_classifier")
    latest = max((v for v in os.listdir(served) if v.isdigit()), key=int)
    predict = tf.saved_model.load(os.path.join(served, latest)).signatures["serving_default"]
    rows = reviews(language, 20, seed=3)
    names = predict(text=tf.constant([t for t, _ in rows]))["class_names"].numpy()
    accuracy = np.mean([n.decode() == label for n, (_, label) in zip(names, rows)])
    assert accuracy >= 0.8, (language, accuracy)


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_world_images")
    home = str(root / "home")
    one = image_class_folders(str(root / "one"), classes=3, per_class=14, seed=1)
    stdout1 = _run("image", one, home, 40)
    assert "Pushed: version 1" in stdout1, stdout1[-3000:]
    two = image_class_folders(str(root / "two"), classes=3, per_class=14, seed=2)
    stdout2 = _run("image", two, home, 40)
    return home, stdout2


def test_second_image_run_on_new_images_passes_the_gate_and_is_evaluated_against_the_first(image_runs):
    home, stdout = image_runs
    assert "Unexpected" not in stdout
    assert len(_trainer_models(home, "image_classifier")) == 2
    summary = read_summary(os.path.join(home, "metadata.sqlite"), "image_classifier")
    assert ACCURACY in summary.candidate and ACCURACY in summary.baseline, stdout[-2000:]


def test_pushed_image_model_answers_served_formats_and_refuses_others_with_400(image_runs, tmp_path):
    home, _ = image_runs
    server = ServerProcess(["--home", home], str(tmp_path / "server.log"))
    url = f"{server.url}/v1/models/image_classifier:predict"

    def predict(data: bytes) -> requests.Response:
        return requests.post(url, json={"instances": [{"b64": base64.b64encode(data).decode()}]}, timeout=60)

    try:
        server.wait_ready("image_classifier")
        rng = np.random.default_rng(9)
        for label in range(3):
            pixels = digit_like(label, rng)
            for name, (extension, data) in image_files(pixels).items():
                answer = predict(data)
                if name in SERVED:
                    assert answer.status_code == 200, (name, answer.text)
                    # The server sees exactly the pixels ingestion trained on for this file.
                    normalised = predict(normalize(data)).json()["predictions"][0]["probabilities"]
                    assert answer.json()["predictions"][0]["probabilities"] == normalised, name
                    assert answer.json()["predictions"][0]["class_names"] == str(label), name
                else:
                    assert answer.status_code == 400, (name, answer.status_code, answer.text)
                    error = answer.json()["error"]
                    assert error.startswith("Input 'images' instance 0: ") and SERVED_IMAGE_FORMATS in error, error
                    # `conveyor predict` converts such files to PNG and gets an answer.
                    path = tmp_path / f"{name}-{label}{extension}"
                    path.write_bytes(data)
                    from serving.client import main as predict_main
                    assert predict_main(["--model", "image_classifier", "--url", server.url, str(path)]) == 0
        assert set(SERVED) | set(INGEST_ONLY) == set(image_files(pixels))
        bomb = predict(png_bomb(10000, 10000))
        assert bomb.status_code == 400 and bomb.json()["error"].startswith(
            "Input 'images' instance 0: PNG of 10000x10000 pixels is more than the limit of 89,478,485"), bomb.text
    finally:
        server.stop()
