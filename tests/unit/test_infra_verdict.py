"""The infra validator's pure parts: percentile, the verdict, the prediction check and the
blessing marks (what TFX's Pusher reads). No model is exported and no server started."""
import math
import os

from tfx.components.util import model_utils
from tfx.types import standard_artifacts

from components.infra_validator import executor
from serving.client import PredictClient
from serving.net import free_port

GOOD_ROW = {"probabilities": [0.25, 0.75], "class_ids": 1, "class_names": "b"}


def test_percentile_is_nearest_rank():
    values = [float(i) for i in range(100, 0, -1)]  # unsorted input
    assert executor.percentile(values, 99) == 99.0
    assert executor.percentile(values, 50) == 50.0
    assert executor.percentile(values, 100) == 100.0
    assert executor.percentile(values, 0) == 1.0
    assert executor.percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert math.isnan(executor.percentile([], 99))


def test_verdict_blesses_only_without_failures_within_the_budget():
    assert executor.verdict([1.0, 2.0], [], budget_ms=2.0) is None
    assert "1 of 2 requests failed" in executor.verdict([1.0, 2.0], ["request 1: HTTP 400"], 100.0)
    shown = executor.verdict([1.0] * 5, [f"request {i}: x" for i in range(5)], 100.0)
    assert shown.startswith("5 of 5 requests failed: request 0: x; request 1: x; request 2: x")
    assert "request 3" not in shown
    assert executor.verdict([1.0, 2.5], [], budget_ms=2.0) == (
        "p99 latency 2.500 ms exceeds the budget of 2 ms")
    assert "exceeds the budget" in executor.verdict([], [], budget_ms=2.0)  # NaN never passes


def test_check_predictions_holds_answers_to_the_contract():
    assert executor.check_predictions([GOOD_ROW, GOOD_ROW], 2) is None
    assert executor.check_predictions([{"probabilities": [1.0]}], 1).startswith(
        "prediction lacks outputs ['class_ids', 'class_names']")
    assert executor.check_predictions([GOOD_ROW], 2).startswith("expected 2 prediction rows")
    assert executor.check_predictions({"predictions": [GOOD_ROW]}, 1).startswith("expected 1 prediction rows")
    for bad in ([], [float("nan"), 1.0], "0.5", [None]):
        assert executor.check_predictions([dict(GOOD_ROW, probabilities=bad)], 1).startswith(
            "'probabilities' is not a list of finite numbers"), bad


def test_timed_predict_reports_an_unreachable_server_as_a_failure():
    client = PredictClient(f"http://127.0.0.1:{free_port()}", timeout=5.0)
    error, latency_ms = executor.timed_predict(client, "m", ["x"])
    assert error.startswith("cannot reach http://127.0.0.1:") and latency_ms >= 0.0


def _blessing(tmp_path):
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(tmp_path)
    return blessing


def test_blessing_marks_are_what_tfx_reads(tmp_path):
    blessed = _blessing(tmp_path / "yes")
    os.makedirs(blessed.uri)
    executor.mark_blessed(blessed)
    assert model_utils.is_infra_validated(blessed)
    assert os.listdir(blessed.uri) == ["INFRA_BLESSED"]

    refused = _blessing(tmp_path / "no")
    os.makedirs(refused.uri)
    executor.mark_not_blessed(refused, "p99 latency 9 ms exceeds the budget of 1 ms")
    assert not model_utils.is_infra_validated(refused)
    assert refused.get_int_custom_property("blessed") == 0
    assert refused.get_string_custom_property("reason").startswith("p99 latency 9 ms")
    assert os.listdir(refused.uri) == ["INFRA_NOT_BLESSED"]
