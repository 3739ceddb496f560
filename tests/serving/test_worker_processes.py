"""--worker_processes: several real server processes behind one REST and one gRPC port
(SO_REUSEPORT), one Prometheus view of all of them, a drained stop on SIGTERM, the whole
server stopping when one worker dies, and no worker left serving when the supervisor is
killed."""
import os
import signal
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support.serving_harness import ServerProcess, install, wait_for

WORKERS = 2


def _children(pid: int):
    """Pids whose parent is `pid` (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _requests_counted(url: str) -> float:
    text = requests.get(f"{url}/monitoring/prometheus/metrics", headers={"Connection": "close"},
                        timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("conveyor_serving_request_count_total{") and 'api="predict"' in line)


def _start(tmp_path):
    install("text_v1", str(tmp_path / "text"), 1)
    server = ServerProcess(["--model_name", "text", "--model_base_path", str(tmp_path / "text"),
                            "--worker_processes", str(WORKERS)], str(tmp_path / "server.log"))
    server.wait_ready("text")
    # Both workers listen once each has loaded the model: wait until both say so.
    wait_for(lambda: server.log().count("Exporting HTTP/REST API") == WORKERS, timeout=300,
             what="both workers serving")
    return server


def test_workers_share_the_ports_and_report_one_set_of_metrics(tmp_path):
    server = _start(tmp_path)
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == WORKERS, server.log()
        for i in range(WORKERS):
            assert f"[worker {i}]" in server.log()
        body = {"instances": ["a fine film"]}
        for _ in range(60):  # a new connection each: the kernel spreads them over the workers
            response = requests.post(f"{server.url}/v1/models/text:predict", json=body,
                                     headers={"Connection": "close"}, timeout=30)
            assert response.status_code == 200, response.text
        channel = grpc.insecure_channel(server.grpc_target)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(["a fine film"]))
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        channel.close()
        # Whichever worker answers a scrape, it counts every worker's requests.
        counts = {_requests_counted(server.url) for _ in range(10)}
        assert counts == {61.0}, counts

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
        assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    finally:
        server.stop()


def test_a_dead_worker_stops_the_server_with_status_1(tmp_path):
    server = _start(tmp_path)
    try:
        first, second = _children(server.proc.pid)
        os.kill(first, signal.SIGKILL)
        started = time.monotonic()
        assert server.proc.wait(timeout=60) == 1
        assert f"Worker process {first} exited with status -9: stopping the others" in server.log()
        wait_for(lambda: not os.path.exists(f"/proc/{second}"), timeout=30, what="the other worker gone")
        print(f"server exited {time.monotonic() - started:.1f} s after a worker was killed")
    finally:
        server.stop()


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_workers_stop_when_the_supervisor_is_killed(tmp_path):
    server = _start(tmp_path)
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == WORKERS
        server.proc.kill()  # SIGKILL: the supervisor cannot stop them itself
        server.proc.wait(timeout=30)
        wait_for(lambda: not any(_running(pid) for pid in workers), timeout=60,
                 what="the orphaned workers gone")
        with pytest.raises(requests.ConnectionError):  # nobody left on the shared port
            requests.get(f"{server.url}/v1/models/text", timeout=5)
    finally:
        server.stop()


def test_a_unix_grpc_socket_cannot_be_shared(tmp_path):
    server = ServerProcess(["--model_base_path", str(tmp_path), "--worker_processes", "2",
                            "--grpc_socket_path", str(tmp_path / "grpc.sock")], str(tmp_path / "log"))
    try:
        assert server.proc.wait(timeout=120) == 2
        assert "--grpc_socket_path cannot be shared by several --worker_processes" in server.log()
    finally:
        server.stop()
