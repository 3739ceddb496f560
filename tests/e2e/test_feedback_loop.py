"""Closing the loop (issue 23): fed-back requests exported as a new span train in a pipeline run.

Feedback is recorded by the real FeedbackLog (the hook `conveyor serve --feedback` installs)
for real digit images of every class but "3"; `conveyor export-feedback` writes them as class
folders and, by its documented rule, takes class "3" from the previous span; the exported span
then goes through one small real `conveyor run image`.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from conveyor import cli
from conveyor.feedback import FeedbackLog
from serving.predictor import PredictionEvent
from serving.traffic import new_request_id
from tests.support.helpers import RUN_STEPS, subset_digits

PER_CLASS = 30


def test_exported_feedback_span_trains(tmp_path, digits_dir):
    home = str(tmp_path / "home")
    incoming = tmp_path / "incoming"
    subset_digits(digits_dir, str(incoming / "span-1"), per_class=PER_CLASS)
    log = FeedbackLog(os.path.join(home, "feedback"))
    labels = []
    for label in sorted(os.listdir(digits_dir)):
        if label == "3":
            continue  # no feedback for this class: the export takes it from span-1
        for name in sorted(os.listdir(os.path.join(digits_dir, label)))[PER_CLASS:2 * PER_CLASS]:
            with open(os.path.join(digits_dir, label, name), "rb") as f:
                png = f.read()
            request_id = new_request_id()
            log.record(PredictionEvent(request_id, "image_classifier", 1, "", "serving_default", "",
                                       {"images": np.array([png], dtype=object)},
                                       {"class_names": np.array([b"0"]), "probabilities": np.full((1, 10), 0.1)},
                                       time.time()))
            labels.append({"request_id": request_id, "label": label})
    status, answer = log.submit("image_classifier", {}, json.dumps(labels).encode())
    assert status == 200 and answer["accepted"] == len(labels) == 9 * PER_CLASS, answer
    log.close()
    out = incoming / "span-2"
    assert cli.main(["export-feedback", "--model", "image_classifier", "--home", home, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(digits_dir))
    assert all(len(os.listdir(out / label)) == PER_CLASS for label in os.listdir(out))
    assert sorted(os.listdir(out / "3")) == sorted(os.listdir(incoming / "span-1" / "3"))  # merged, documented rule

    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", "image", "--data", str(out), "--home", str(tmp_path / "run"),
         *RUN_STEPS["image"]], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Trainer" in result.stdout, result.stdout[-3000:]
