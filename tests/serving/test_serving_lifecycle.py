"""Overload, readiness and graceful shutdown of `conveyor serve` (issue 16).

* A full batching queue answers TF Serving's UNAVAILABLE / HTTP 503 at once, and the server
  serves again as soon as the queue drains; the batch-size distribution is in the metrics.
* GET /v1/conveyor/ready is 200 only when every configured model has an AVAILABLE version.
* A caller that gives up while its request waits in the batching queue (a gRPC deadline, the
  REST run timeout) is dropped from the queue; the batch threads keep serving.
* SIGTERM on a real server process: requests already received (REST on keep-alive
  connections, gRPC calls) are answered at once, without waiting for their batch timeout; the
  REST response says `Connection: close`, new connections are refused, and the process exits
  0. gRPC health watchers are told NOT_SERVING and their streams end.
"""
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.health import HealthCheckRequest, HealthCheckResponse
from serving.net import free_port
from serving.server import READY_PATH, ModelServer, ServerOptions
from tests.support.serving_harness import ServerProcess, install, model_entry, write_config


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """A server in this process with a tiny batching queue (2 rows, one batch thread) and a
    second model whose base path has no version yet."""
    root = tmp_path_factory.mktemp("lifecycle")
    text_base, ghost_base = str(root / "text"), str(root / "ghost")
    install("text_v1", text_base, 1)
    os.makedirs(ghost_base)
    config = write_config(str(root / "models.config"), "model_config_list {\n"
                          + model_entry("text", text_base) + model_entry("ghost", ghost_base) + "}\n")
    batching = write_config(str(root / "batching.config"),
                            "max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
                            "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    server = ModelServer(ServerOptions(model_config_file=str(config), port=0,
                                       rest_api_port=free_port(), enable_batching=True,
                                       batching_parameters_file=batching,
                                       file_system_poll_wait_seconds=0.2))
    server.start()
    server.url = f"http://127.0.0.1:{server.options.rest_api_port}"
    server.root = root
    try:
        yield server
    finally:
        server.stop()


def test_full_batching_queue_is_503_and_the_server_recovers(in_process):
    url = f"{in_process.url}/v1/models/text:predict"
    assert requests.post(url, json={"instances": ["good", "bad"]}, timeout=30).status_code == 200
    # Hold the only batch thread with a run of the text model's own queue ...
    release = threading.Event()
    key = ("text", 1, "serving_default", ())
    blocker = in_process.batcher.submit(key, lambda x: release.wait(30) and x, {"x": np.zeros(2)})
    time.sleep(0.2)
    # ... then one 2-row request fills the queue (max_enqueued_batches 1 x max_batch_size 2)
    waiting = {}
    first = threading.Thread(target=lambda: waiting.update(
        r=requests.post(url, json={"instances": ["good", "bad"]}, timeout=30)))
    first.start()
    time.sleep(0.5)
    refused = requests.post(url, json={"instances": ["good"]}, timeout=30)
    assert refused.status_code == 503, refused.text
    assert "queue to which this task was submitted is full" in refused.json()["error"]
    release.set()
    blocker.result(timeout=30)
    first.join(timeout=30)
    assert waiting["r"].status_code == 200
    assert [p["class_names"] for p in waiting["r"].json()["predictions"]] == ["positive", "negative"]
    # recovered; a request larger than max_batch_size runs in chunks of 2 rows
    many = requests.post(url, json={"instances": ["good", "bad", "meh"] * 5}, timeout=30)
    assert many.status_code == 200
    assert [p["class_names"] for p in many.json()["predictions"]][:3] == ["positive", "negative", "neutral"]
    metrics = requests.get(f"{in_process.url}/monitoring/prometheus/metrics", timeout=10).text
    assert 'conveyor_serving_batch_size_bucket{le="2.0",model_name="text",version="1"}' in metrics
    assert 'protocol="rest",status="UNAVAILABLE"' in metrics


def test_readiness_needs_every_model_available(in_process):
    response = requests.get(in_process.url + READY_PATH, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"] == "Not ready: no AVAILABLE version of model(s) ghost"
    assert response.json()["models"] == {"text": [1], "ghost": []}
    install("text_v2", str(in_process.root / "ghost"), 3)
    deadline = time.monotonic() + 60
    while requests.get(in_process.url + READY_PATH, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "ghost never became available"
        time.sleep(0.2)
    assert requests.get(in_process.url + READY_PATH, timeout=10).json() == {
        "ready": True, "models": {"text": [1], "ghost": [3]}}


def test_sigterm_answers_requests_in_flight_then_exits_0(tmp_path):
    base = str(tmp_path / "text")
    install("text_v1", base, 1)
    config = write_config(str(tmp_path / "models.config"),
                          "model_config_list {\n" + model_entry("text", base) + "}\n")
    # A batch waits up to 4 s to fill to 64 rows: the requests below are in flight that
    # long (longer than the 2 s gRPC grace this server used to give).
    proc = ServerProcess(["--model_config_file", config, "--enable_batching",
                          "--max_batch_size=64", "--batch_timeout_micros=4000000",
                          "--drain_seconds=30"], str(tmp_path / "server.log"))
    try:
        proc.wait_ready("text")
        keep_alive = requests.Session()
        assert keep_alive.get(f"{proc.url}/v1/models/text", timeout=30).headers.get(
            "Connection", "keep-alive") != "close"
        idle = requests.Session()
        assert idle.get(f"{proc.url}/v1/models/text", timeout=30).status_code == 200
        results, finished = {}, {}

        def rest_call():
            results["rest"] = keep_alive.post(f"{proc.url}/v1/models/text:predict", timeout=120,
                                              json={"instances": ["good", "bad"] * 10})
            finished["rest"] = time.monotonic()

        def grpc_call():
            with grpc.insecure_channel(proc.grpc_target) as channel:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "text"
                request.inputs["text"].CopyFrom(tf.make_tensor_proto(["good", "bad"] * 20))
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                results["grpc"] = stub.Predict(request, timeout=120)
            finished["grpc"] = time.monotonic()

        threads = [threading.Thread(target=rest_call), threading.Thread(target=grpc_call)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(1.0)  # both requests are received and wait for their batch
        assert not finished
        proc.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(requests.ConnectionError):  # no new connections
            requests.get(f"{proc.url}/v1/models/text", timeout=5)
        for t in threads:
            t.join(timeout=120)
        assert results["rest"].status_code == 200
        assert len(results["rest"].json()["predictions"]) == 20
        assert results["rest"].headers["Connection"] == "close"
        names = tf.make_ndarray(results["grpc"].outputs["class_names"])
        assert len(names) == 40 and names[-1] == b"negative"
        # Without the drain they would wait for their 4 s batch timeout.
        assert min(finished.values()) > signalled and max(finished.values()) - signalled < 2.5
        assert proc.proc.wait(timeout=60) == 0
        log = proc.log()
        assert "Traceback" not in log, log[-3000:]
    finally:
        proc.stop()


@pytest.fixture
def slow_batches(tmp_path):
    """A server in this process whose batches wait 2 s to fill (one batch thread), with a
    500 ms REST run timeout and the gRPC health service."""
    base = str(tmp_path / "text")
    install("text_v1", base, 1)
    config = write_config(str(tmp_path / "models.config"),
                          "model_config_list {\n" + model_entry("text", base) + "}\n")
    batching = write_config(str(tmp_path / "batching.config"),
                            "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000000 }\n"
                            "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 1 }\n")
    server = ModelServer(ServerOptions(model_config_file=str(config), port=free_port(),
                                       rest_api_port=free_port(), enable_batching=True,
                                       batching_parameters_file=batching,
                                       rest_api_timeout_in_ms=500, drain_seconds=20,
                                       enable_grpc_healthcheck_service=True))
    server.start()
    server.url = f"http://127.0.0.1:{server.options.rest_api_port}"
    server.target = f"127.0.0.1:{server.options.port}"
    try:
        yield server
    finally:
        server.stop()


def _grpc_predict(target: str, timeout: float):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["good"]))
    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def test_callers_that_give_up_in_the_queue_are_dropped_and_batching_goes_on(slow_batches):
    with pytest.raises(grpc.RpcError) as error:
        _grpc_predict(slow_batches.target, timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    response = requests.post(f"{slow_batches.url}/v1/models/text:predict",
                             json={"instances": ["good"]}, timeout=30)
    assert response.status_code == 504, response.text
    assert "Timed out waiting for the model run (500 ms" in response.json()["error"]
    assert time.monotonic() - started < 1.9  # not held until the 2 s batch timeout
    time.sleep(2.5)  # the dropped requests' batch time has come and gone
    assert all(t.is_alive() for t in slow_batches.batcher._threads)
    names = tf.make_ndarray(_grpc_predict(slow_batches.target, timeout=30).outputs["class_names"])
    assert list(names) == [b"positive"]


def test_health_watchers_hear_not_serving_and_do_not_hold_the_drain(slow_batches):
    channel = grpc.insecure_channel(slow_batches.target)
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch",
                                 request_serializer=HealthCheckRequest.SerializeToString,
                                 response_deserializer=HealthCheckResponse.FromString)
    stream = watch(HealthCheckRequest(service=""), timeout=60)
    assert next(stream).status == 1  # SERVING
    started = time.monotonic()
    stopper = threading.Thread(target=slow_batches.stop)
    stopper.start()
    assert next(stream).status == 2  # NOT_SERVING
    with pytest.raises(StopIteration):
        next(stream)
    stopper.join(timeout=30)
    assert not stopper.is_alive() and time.monotonic() - started < 10  # drain_seconds is 20
    channel.close()
