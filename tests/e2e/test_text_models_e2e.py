"""Text models through the whole pipeline on small generated reviews (no shared data needed):
the default model on three classes, and the course's BiLSTM served over REST from raw strings.
Runs are in this process (a subprocess would pay ~25 s of TF/TFX imports again)."""
import io
import os
import random

import pytest
import requests

from conveyor import runner
from pipelines.config import DEFAULT_MODELS, load_config
from tests.support.generated import LEXICON, reviews, write_reviews_csv
from tests.support.serving_harness import ServerProcess

NAME = "text_classifier"


def _run(data: str, home: str, **overrides):
    """One `conveyor run text`; returns its RunSummary. Infra validation is not under test:
    a few requests and a budget a loaded test machine meets."""
    config = load_config("text", overrides={"home": home, "data": data, "eval_steps": 5, "infra_requests": 5,
                                            "infra_p99_budget_ms": 10000, **overrides})
    out = io.StringIO()
    try:
        return runner.run(config, stream=out)
    except runner.ConveyorError as e:
        raise AssertionError(f"{e}\n{out.getvalue()[-3000:]}") from None


NEUTRAL = ["average", "okay", "mediocre", "decent", "passable", "ordinary", "fine"]


def _three_classes(count: int):
    """Balanced negative / neutral / positive reviews: two words of the class among 4-8
    fillers (tests/support/generated.py's English lexicon, plus NEUTRAL words)."""
    lex = LEXICON["en"]
    words_of = {"negative": lex["neg"], "neutral": NEUTRAL, "positive": lex["pos"]}
    rng = random.Random("three-classes")
    rows, seen = [], set()
    while len(rows) < count:
        label = ("negative", "neutral", "positive")[len(rows) % 3]
        words = rng.sample(lex["filler"], rng.randint(4, 8)) + rng.sample(words_of[label], 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows


def _predict(url: str, texts):
    response = requests.post(f"{url}/v1/models/{NAME}:predict", json={"instances": list(texts)}, timeout=60)
    assert response.status_code == 200, response.text
    return [p["class_names"] for p in response.json()["predictions"]]


def test_default_model_on_three_classes_trains_blesses_and_pushes(tmp_path):
    import tensorflow as tf
    rows = _three_classes(90)
    summary = _run(write_reviews_csv(str(tmp_path / "data"), rows), str(tmp_path / "home"), train_steps=60)
    assert summary.blessed is True and summary.pushed_version == "1", summary.not_blessed_because
    model = tf.saved_model.load(str(tmp_path / "home" / "serving" / NAME / "1"))
    out = model.signatures["serving_default"](text=tf.constant([text for text, _ in rows]))
    names = [n.decode() for n in out["class_names"].numpy()]
    assert out["probabilities"].shape == (len(rows), 3)
    accuracy = sum(name == label for name, (_, label) in zip(names, rows)) / len(rows)
    assert accuracy > 0.8, (DEFAULT_MODELS["text"], accuracy)


def test_bilstm_trains_exports_and_serves_raw_strings_over_rest(tmp_path):
    rows = reviews("en", 80, seed=3)
    home = str(tmp_path / "home")
    summary = _run(write_reviews_csv(str(tmp_path / "data"), rows), home, model="bilstm", train_steps=40,
                   learning_rate=0.01, max_tokens=16)
    assert summary.pushed_version == "1", summary.not_blessed_because
    server = ServerProcess(["--model_name", NAME, "--model_base_path", os.path.join(home, "serving", NAME)],
                           str(tmp_path / "server.log"))
    try:
        server.wait_ready(NAME)
        names = _predict(server.url, [text for text, _ in rows])
    finally:
        server.stop()
    accuracy = sum(name == label for name, (_, label) in zip(names, rows)) / len(rows)
    assert accuracy > 0.8, accuracy
