"""Canary releases, the A/B traffic split, ground-truth feedback and `conveyor monitor` (issue 23),
on one real `conveyor serve --feedback --ab_split text:canary=0.3` over loopback.

The stable version 1 is the fixture text model (good/bad/meh -> positive/negative/neutral); the
canary version 2 has the same classes in another order, so it answers "negative" for "good" and
"positive" for "bad": right on a third of the texts sent, a canary made worse than stable.
"""
import collections
import json
import os
import shutil
import threading
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conveyor import cli
from conveyor.feedback import join
from serving import testing as demo_models
from serving.model_config import set_release, update_model
from tests.support.serving_harness import ServerProcess, model_store, versions_by_state, wait_for

TOKEN_ENV = "CONVEYOR_TEST_FEEDBACK_TOKEN"
TOKEN = "s3cret-token"
TEXTS = ["good film", "bad film", "meh film"]
TRUTH = {"good film": "positive", "bad film": "negative", "meh film": "neutral"}
SCHEMA = ('feature { name: "label_name" type: BYTES domain: "label_name" }\n'
          'string_domain { name: "label_name" value: "positive" value: "negative" value: "neutral" }\n')
SHARE, REQUESTS = 0.3, 2000


def _install(source: str, base: str, version: int) -> None:
    final = os.path.join(base, str(version))
    shutil.copytree(source, final)
    os.makedirs(os.path.join(final, "assets.extra"), exist_ok=True)
    with open(os.path.join(final, "assets.extra", "conveyor_schema.pbtxt"), "w") as f:
        f.write(SCHEMA)


@pytest.fixture(scope="module")
def canary_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    home = str(root / "home")
    serving_dir = os.path.join(home, "serving")
    swapped = demo_models.save_model(str(root / "swapped"), "text", ["negative", "positive", "neutral"])
    _install(os.path.join(model_store(), "text_v1"), os.path.join(serving_dir, "text"), 1)
    _install(swapped, os.path.join(serving_dir, "text"), 2)
    update_model(serving_dir, "text", lambda entry: set_release(entry, 1, canary=2))
    os.environ[TOKEN_ENV] = TOKEN  # the server subprocess inherits it
    server = ServerProcess(["--home", home, "--feedback", "--feedback_token_env", TOKEN_ENV,
                            "--ab_split", f"text:canary={SHARE}", "--model_config_file_poll_wait_seconds", "1"],
                           str(root / "server.log"), entry=["-m", "conveyor.cli", "serve"])
    try:
        server.wait_ready("text")
        wait_for(lambda: versions_by_state(server.url, "text").get("AVAILABLE") == [2, 1], what="both versions")
        yield server, home
    finally:
        server.stop()
        os.environ.pop(TOKEN_ENV, None)


def _predict(session, server, text, path="", unit=None):
    headers = {"X-Conveyor-Unit": unit} if unit else {}
    return session.post(f"{server.url}/v1/models/text{path}:predict", json={"instances": [text]},
                        headers=headers, timeout=30)


def _post_feedback(server, entries, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{server.url}/v1/conveyor/models/text/feedback", json=entries, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def split_answers(canary_server):
    """REQUESTS unversioned predictions without unit key: (text, arm, version, request id) each."""
    server, _ = canary_server
    answers, lock = [], threading.Lock()

    def send(indices):
        session = requests.Session()
        for i in indices:
            text = TEXTS[i % 3]
            response = _predict(session, server, text)
            assert response.status_code == 200, response.text
            with lock:
                answers.append((text, response.headers.get("X-Conveyor-Arm"), response.headers["X-Conveyor-Version"],
                                response.headers["X-Conveyor-Request-Id"], response.json()["predictions"][0]["class_names"]))

    threads = [threading.Thread(target=send, args=(range(k, REQUESTS, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_split_share_lands_within_four_sigma_and_is_counted_per_arm(canary_server, split_answers):
    server, _ = canary_server
    assert len(split_answers) == REQUESTS
    arms = collections.Counter(arm for _, arm, _, _, _ in split_answers)
    assert set(arms) == {"canary", "stable"}, arms
    sigma = (REQUESTS * SHARE * (1 - SHARE)) ** 0.5
    assert abs(arms["canary"] - REQUESTS * SHARE) < 4 * sigma, arms
    # The answering version is the arm's: 2 for the canary, 1 for stable.
    assert {(arm, version) for _, arm, version, _, _ in split_answers} == {("canary", "2"), ("stable", "1")}
    assert len({rid for _, _, _, rid, _ in split_answers}) == REQUESTS  # one id per prediction
    metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    for arm, version in (("canary", "2"), ("stable", "1")):
        line = next(l for l in metrics.splitlines() if l.startswith("conveyor_serving_arm_request_count_total{")
                    and f'arm="{arm}"' in l and f'version="{version}"' in l and 'status="OK"' in l)
        assert float(line.split()[-1]) == arms[arm], line


def test_sticky_units_never_change_arm_over_rest_and_grpc(canary_server):
    server, _ = canary_server
    session = requests.Session()
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    arms = {}
    for unit in (f"user-{n}" for n in range(40)):
        seen = {_predict(session, server, "good film", unit=unit).headers["X-Conveyor-Arm"] for _ in range(4)}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(["good film"]))
        response, call = stub.Predict.with_call(request, metadata=(("x-conveyor-unit", unit),), timeout=30)
        metadata = dict(call.initial_metadata())
        seen.add(metadata["x-conveyor-arm"])
        assert len(seen) == 1, (unit, seen)
        assert response.model_spec.version.value == (2 if seen == {"canary"} else 1)
        assert len(metadata["x-conveyor-request-id"]) == 32
        arms[unit] = seen.pop()
    channel.close()
    assert set(arms.values()) == {"canary", "stable"}, arms  # 40 units at 0.3: both arms occur


def test_explicit_versions_and_labels_are_never_rerouted(canary_server):
    server, _ = canary_server
    session = requests.Session()
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for path, version in (("/versions/1", "1"), ("/versions/2", "2"), ("/labels/stable", "1"), ("/labels/canary", "2")):
        for n in range(30):
            response = _predict(session, server, "good film", path, unit=f"user-{n}")
            assert response.status_code == 200 and response.headers["X-Conveyor-Version"] == version, path
            assert "X-Conveyor-Arm" not in response.headers
    for label, version in (("stable", 1), ("canary", 2)):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text"
        request.model_spec.version_label = label
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(["good film"]))
        for _ in range(20):
            response, call = stub.Predict.with_call(request, timeout=30)
            assert response.model_spec.version.value == version
            assert "x-conveyor-arm" not in dict(call.initial_metadata())
    channel.close()


def test_feedback_answers_per_id_and_loses_or_duplicates_nothing(canary_server, split_answers):
    server, home = canary_server
    assert _post_feedback(server, [], token=None).status_code == 401
    assert _post_feedback(server, [], token="wrong").status_code == 401
    bad = requests.post(f"{server.url}/v1/conveyor/models/text/feedback", data=b"{not json",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    # The scheme is case-insensitive; a model this server never answered is 404.
    lower = requests.post(f"{server.url}/v1/conveyor/models/text/feedback", data=b"[]",
                          headers={"Authorization": f"bearer {TOKEN}"}, timeout=10)
    assert lower.status_code == 200 and lower.json() == {"results": [], "accepted": 0}
    unknown = requests.post(f"{server.url}/v1/conveyor/models/txet/feedback", data=b"[]",
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert unknown.status_code == 404 and "model 'txet'" in unknown.json()["error"]

    # An id answered a moment ago (its record not flushed yet) is accepted and joined later.
    fresh = _predict(requests.Session(), server, "good film").headers["X-Conveyor-Request-Id"]
    entries = [{"request_id": fresh, "label": "positive"},
               {"request_id": "0" * 32, "label": "positive"},
               {"request_id": split_answers[0][3], "label": "not-a-class"},
               {"request_id": split_answers[0][3], "label": "positive", "instance": 3}]
    results = _post_feedback(server, entries).json()["results"]
    assert [r["status"] for r in results] == ["accepted", "unknown_id", "bad_label", "bad_instance"], results
    assert "positive, negative, neutral" in results[2]["error"]

    labels = [{"request_id": rid, "label": TRUTH[text]} for text, _, _, rid, _ in split_answers]
    # The first 100 are first sent with a wrong label, then corrected: the latest label counts once.
    wrong = [{"request_id": e["request_id"], "label": "neutral" if e["label"] != "neutral" else "positive"}
             for e in labels[:100]]
    for chunk in (wrong, labels[:1000], labels[1000:]):
        answer = _post_feedback(server, chunk).json()
        assert answer["accepted"] == len(chunk), [r for r in answer["results"] if r["status"] != "accepted"][:3]
    feedback_dir = os.path.join(home, "feedback")
    joined = wait_for(lambda: (lambda j: j if len(j.labelled) == REQUESTS + 1 else None)(join(feedback_dir, "text")),
                      timeout=30, what="every labelled prediction flushed")
    assert joined.unmatched_labels == 0
    keys = [(p.request_id, p.instance) for p in joined.labelled]
    assert len(keys) == len(set(keys))  # nothing duplicated
    by_id = {p.request_id: p for p in joined.labelled}
    for text, arm, version, rid, predicted in split_answers:  # nothing lost, each joined with its answer
        record = by_id[rid]
        assert (record.label, record.arm, str(record.version), record.predicted) == (TRUTH[text], arm, version, predicted)
        assert record.input == {"kind": "text", "text": text}


def test_monitor_reports_the_worse_canary(canary_server, split_answers, capsys):
    _, home = canary_server
    test_feedback_ran = os.path.isdir(os.path.join(home, "feedback", "text", "labels"))
    assert test_feedback_ran, "needs the labels of test_feedback_answers_per_id_and_loses_or_duplicates_nothing"
    code = cli.main(["monitor", "--model", "text", "--home", home, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 1, record
    versions = {v["version"]: v for v in record["versions"]}
    assert versions[1]["accuracy"] == 1.0 and versions[1]["per_class"]["positive"]["accuracy"] == 1.0
    assert 0.25 < versions[2]["accuracy"] < 0.42, versions[2]  # right on "meh" only
    assert versions[2]["per_class"]["neutral"]["accuracy"] == 1.0
    assert versions[2]["per_class"]["positive"]["accuracy"] == 0.0
    assert versions[2]["wilson_low"] < versions[2]["accuracy"] < versions[2]["wilson_high"]
    ab = record["ab_test"]
    assert ab["significant"] and ab["difference"] < -0.5 and ab["p_value"] < 1e-6, ab
    assert ab["canary"]["versions"] == [2] and ab["stable"]["versions"] == [1]
    assert any("canary (version 2) is significantly worse than stable" in p for p in record["problems"])
    assert os.path.isfile(os.path.join(home, "monitor", "text.json"))
    # No verdict on too little: a window with no feedback is exit 2, never "ok".
    assert cli.main(["monitor", "--model", "text", "--home", home, "--since", "2999-01-01T00:00"]) == 2
    assert "no labelled predictions of text" in capsys.readouterr().err
    assert cli.main(["monitor", "--model", "text", "--home", home, "--min-feedback", "100000"]) == 2
    assert "not enough feedback" in capsys.readouterr().err
    # Enough feedback for stable but not for the canary: no "OK" (exit 2), since the canary
    # is not judged.
    stable_n, canary_n = versions[1]["n"], versions[2]["n"]
    assert canary_n < stable_n, (canary_n, stable_n)
    assert cli.main(["monitor", "--model", "text", "--home", home, "--min-feedback", str(canary_n + 1)]) == 2
    assert f"{canary_n} labelled prediction(s) of version 2" in capsys.readouterr().err


def test_feedback_command_sends_a_csv(canary_server, tmp_path, capsys):
    server, _ = canary_server
    request_id = _predict(requests.Session(), server, "bad film").headers["X-Conveyor-Request-Id"]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,label\n{request_id},negative\n{'f' * 32},negative\n")
    args = ["feedback", "--model", "text", "--file", str(labels), "--url", server.url, "--token-env", TOKEN_ENV]
    assert cli.main(args) == 1  # one id is unknown
    out = capsys.readouterr().out
    assert "2 label(s) sent: 1 accepted, 1 unknown_id" in out and f"{'f' * 32}: unknown_id" in out, out
    labels.write_text("request_id,label\n,negative\n")
    assert cli.main(args) == 2
    assert "labels.csv line 2: empty request_id or label" in capsys.readouterr().err
    labels.write_text(f"request_id,label\n{request_id},negative\n")
    assert cli.main(args[:-2]) == 1  # without the token: the server's 401 is reported
    assert "HTTP 401" in capsys.readouterr().err


def test_rollback_and_promote_switch_versions_with_no_failed_request(canary_server, capsys):
    server, home = canary_server
    stop, lock, results = threading.Event(), threading.Lock(), collections.Counter()
    errors = []

    def hammer(path):
        session = requests.Session()
        while not stop.is_set():
            try:
                response = _predict(session, server, "good film", path)
                ok = response.status_code == 200
                if not ok:
                    errors.append(response.text)
            except requests.RequestException as e:
                ok = False
                errors.append(repr(e))
            with lock:
                results["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=hammer, args=(p,)) for p in ("", "/labels/stable", "")]
    for t in threads:
        t.start()
    try:
        assert cli.main(["rollback", "text", "--home", home]) == 0
        assert "canary version 2 removed from serving; version 1 stays stable" in capsys.readouterr().out
        wait_for(lambda: versions_by_state(server.url, "text").get("AVAILABLE") == [1], timeout=60, what="rollback")
        assert cli.main(["rollback", "text", "--home", home]) == 1  # no canary any more
        assert "has no canary" in capsys.readouterr().err
        # A new canary push (what the Pusher writes), then promote it.
        update_model(os.path.join(home, "serving"), "text", lambda entry: set_release(entry, 1, canary=2))
        wait_for(lambda: requests.post(f"{server.url}/v1/models/text/labels/canary:predict",
                                       json={"instances": ["good film"]}, timeout=10).status_code == 200,
                 timeout=60, what="the canary back")
        assert cli.main(["promote", "text", "--home", home]) == 0
        assert "canary version 2 is now stable; version 1 unloads" in capsys.readouterr().out
        wait_for(lambda: versions_by_state(server.url, "text").get("AVAILABLE") == [2], timeout=60, what="promote")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results["failed"] == 0, errors[:3]
    assert results["ok"] > 30, results
    response = requests.post(f"{server.url}/v1/models/text/labels/stable:predict", json={"instances": ["good film"]},
                             timeout=10)
    assert response.headers["X-Conveyor-Version"] == "2"


def test_labels_leave_a_version_before_it_unloads(tmp_path):
    """The no-failed-request guarantee of promote/rollback, deterministically: when a version
    unloads, no label points at it any more (labels move first, server_core-style)."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.errors import ServingError
    from serving.model_manager import ModelManager
    base = str(tmp_path / "text")
    for version in (1, 2):
        _install(os.path.join(model_store(), "text_v1"), base, version)

    def release(stable, canary=None):
        entry = model_server_config_pb2.ModelConfig(name="text", base_path=base, model_platform="tensorflow")
        set_release(entry, stable, canary)
        return [entry]

    def labels_now():
        found = {}
        for label in ("stable", "canary"):
            try:
                found[label] = manager.resolve_label("text", label)
            except ServingError:
                pass
        return found

    unloaded = []
    manager = ModelManager(release(1, canary=2), 0,
                           on_unload=lambda name, version: unloaded.append((version, labels_now())))
    assert manager.loaded_versions("text") == [1, 2]
    manager.apply_config(release(2))  # promote: stable moves 1 -> 2, then 1 unloads
    assert unloaded == [(1, {"stable": 2})]
    manager.apply_config(release(2, canary=1))
    manager.apply_config(release(2))  # rollback: the canary label goes, then 1 unloads
    assert unloaded[-1] == (1, {"stable": 2})
    manager.stop()
