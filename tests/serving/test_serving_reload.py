"""File-system polling: hot reload under load, corrupt versions, temp dirs; with batching on."""
import base64
import os
import shutil
import threading
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.testing import solid_png
from tests.support.serving_harness import (ServerProcess, install, model_entry, model_store,
                                   versions_by_state, wait_for, write_config)

RED = solid_png((255, 0, 0))


@pytest.fixture(scope="module")
def reload_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("reload")
    base = str(root / "image")
    install("image", base, 1)
    config = write_config(str(root / "models.config"),
                          "model_config_list {\n" + model_entry("image", base) + "}\n")
    proc = ServerProcess(["--model_config_file", config, "--enable_batching",
                          "--max_batch_size", "8", "--batch_timeout_micros", "3000",
                          "--max_num_load_retries=1", "--load_retry_interval_micros=100000"],
                         str(root / "server.log"))
    try:
        proc.wait_ready("image")
        yield proc, base
    finally:
        proc.stop()


def _hammer(server, stop: threading.Event, results: dict, lock: threading.Lock, use_grpc: bool) -> None:
    session = requests.Session()
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    body = {"instances": [{"b64": base64.b64encode(RED).decode()}]}
    while not stop.is_set():
        try:
            if use_grpc:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "image"
                request.inputs["images"].CopyFrom(tf.make_tensor_proto([RED]))
                response = stub.Predict(request, timeout=30)
                ok = tf.make_ndarray(response.outputs["class_names"])[0] == b"red"
            else:
                response = session.post(f"{server.url}/v1/models/image:predict", json=body, timeout=30)
                ok = response.status_code == 200 and response.json()["predictions"][0]["class_names"] == "red"
        except Exception as e:  # any failure counts, whatever its type
            ok = False
            results.setdefault("errors", []).append(repr(e))
        with lock:
            results["ok" if ok else "failed"] = results.get("ok" if ok else "failed", 0) + 1
    channel.close()


def test_hot_reload_under_load_drops_no_request(reload_server):
    server, base = reload_server
    stop, lock, results = threading.Event(), threading.Lock(), {}
    threads = [threading.Thread(target=_hammer, args=(server, stop, results, lock, i % 2 == 1))
               for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        install("image", base, 2)
        wait_for(lambda: versions_by_state(server.url, "image").get("AVAILABLE") == [2],
                 what="version 2 to replace version 1")
        assert versions_by_state(server.url, "image") == {"AVAILABLE": [2], "END": [1]}
        install("image", base, 3)
        wait_for(lambda: versions_by_state(server.url, "image").get("AVAILABLE") == [3],
                 what="version 3 to replace version 2")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert results.get("failed", 0) == 0, results.get("errors", [])[:5]
    assert results["ok"] > 50
    log = server.log()
    assert "Successfully loaded servable version {name: image version: 2}" in log
    assert "Unloaded servable version {name: image version: 1}" in log


def test_corrupt_version_is_skipped_while_others_serve(reload_server):
    server, base = reload_server
    serving = wait_for(lambda: versions_by_state(server.url, "image").get("AVAILABLE"), what="a version")
    good = max(serving)
    bad = good + 1
    os.makedirs(os.path.join(base, ".tmp-99"))  # half-written pusher dir: never looked at
    corrupt = os.path.join(base, str(bad))
    shutil.copytree(os.path.join(model_store(), "image"), corrupt)
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a protobuf")
    status = wait_for(lambda: [s for s in requests.get(f"{server.url}/v1/models/image", timeout=5)
                               .json()["model_version_status"] if s["version"] == str(bad)
                               and s["state"] == "END"], what="the corrupt version to fail")
    assert status[0]["status"]["error_code"] != "OK"
    assert status[0]["status"]["error_message"]
    assert versions_by_state(server.url, "image")["AVAILABLE"] == [good]
    response = requests.post(f"{server.url}/v1/models/image:predict", timeout=10,
                             json={"instances": [{"b64": base64.b64encode(RED).decode()}]})
    assert response.json()["predictions"][0]["class_names"] == "red"
    assert f"Loading servable version {{name: image version: {bad}}} failed" in server.log()
    assert "retry 1 of 1" in server.log()  # --max_num_load_retries=1 before giving up
    assert "99" not in str(versions_by_state(server.url, "image"))

    # A fixed (newer) version still loads after the failure.
    install("image", base, bad + 1)
    wait_for(lambda: versions_by_state(server.url, "image").get("AVAILABLE") == [bad + 1],
             what="the next good version")
