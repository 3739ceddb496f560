"""Serving benchmark: batch-1 latency over REST and gRPC vs. an in-process SavedModel call,
and throughput with concurrent clients with and without server-side batching.

    .venv/bin/python bench/serving.py                      # tiny fixture models
    .venv/bin/python bench/serving.py --home conveyor_home --model image_classifier
    .venv/bin/python bench/serving.py --home conveyor_home --model text_classifier --sample "a fine film"

Writes bench/results/serving.json and bench/results/serving.md.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List

import numpy as np
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from serving import testing as demo_models  # noqa: E402
from serving.model_manager import version_dirs  # noqa: E402
from serving.net import free_port  # noqa: E402


def start_server(home: str, batching: bool):
    rest, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving.server", "--home", home, "--port", str(grpc_port),
           "--rest_api_port", str(rest), "--log_level", "WARNING"]
    if batching:
        cmd += ["--enable_batching", "--max_batch_size", "16", "--batch_timeout_micros", "2000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"


def wait_ready(url: str, model: str, proc) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during startup")
        try:
            if requests.get(f"{url}/v1/models/{model}", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def percentiles(samples: List[float]) -> Dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(samples)}


def time_calls(fn: Callable[[], None], n: int) -> List[float]:
    for _ in range(min(10, n)):  # warm connections and caches
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def throughput(make_call: Callable[[], Callable[[], None]], clients: int, total: int) -> float:
    per_client = max(1, total // clients)
    calls = [make_call() for _ in range(clients)]
    for call in calls:
        call()
    threads = [threading.Thread(target=lambda c=c: [c() for _ in range(per_client)]) for c in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(per_client * clients / (time.perf_counter() - start), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="Conveyor home with pushed models (default: tiny fixture models)")
    parser.add_argument("--model", default="image", help="model name under HOME/serving/")
    parser.add_argument("--sample", help="image file or text sent in every request (default: a "
                                         "64x64 PNG for image models, a short review for text models)")
    parser.add_argument("--requests", type=int, default=300, help="requests per latency measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = parser.parse_args(argv)

    home = args.home or tempfile.mkdtemp(prefix="conveyor-bench-")
    if not args.home:
        demo_models.build_home(home)
    base = os.path.join(home, "serving", args.model)
    dirs = version_dirs(base)
    version_dir = os.path.join(base, dirs[max(dirs)])
    direct = tf.saved_model.load(version_dir).signatures["serving_default"]
    key = next(iter(direct.structured_input_signature[1]))  # "images" or "text"
    if args.sample and os.path.isfile(args.sample):
        with open(args.sample, "rb") as f:
            sample = f.read()
    elif args.sample:
        sample = args.sample.encode()
    else:
        sample = demo_models.solid_png((200, 30, 30), size=64) if key == "images" else b"a good movie"
    rest_body = {"instances": [{"b64": base64.b64encode(sample).decode()} if key == "images"
                               else sample.decode()]}
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = args.model
    grpc_request.inputs[key].CopyFrom(tf.make_tensor_proto([sample]))

    results = {"model": args.model, "version_dir": version_dir, "cpus": os.cpu_count(),
               "latency_batch1": {}, "throughput_rps": {}}
    inputs = {key: tf.constant([sample])}
    results["latency_batch1"]["in-process SavedModel"] = percentiles(
        time_calls(lambda: direct(**inputs), args.requests))
    # The ceiling for server-side batching: the same model called in-process on batches of 16.
    batch = {key: tf.constant([sample] * 16)}
    batch_seconds = sum(time_calls(lambda: direct(**batch), args.requests // 16 or 1))
    results["throughput_rps"]["in-process SavedModel, batches of 16"] = round(
        16 * (args.requests // 16 or 1) / batch_seconds, 1)

    for batching in (False, True):
        proc, url, target = start_server(home, batching)
        try:
            wait_ready(url, args.model, proc)

            def rest_call():
                session = requests.Session()
                return lambda: session.post(f"{url}/v1/models/{args.model}:predict",
                                            json=rest_body, timeout=30).raise_for_status()

            def grpc_call():
                stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
                return lambda: stub.Predict(grpc_request, timeout=30)

            mode = "batching" if batching else "no batching"
            if not batching:
                results["latency_batch1"]["REST"] = percentiles(time_calls(rest_call(), args.requests))
                results["latency_batch1"]["gRPC"] = percentiles(time_calls(grpc_call(), args.requests))
            results["throughput_rps"][f"REST, {args.clients} clients, {mode}"] = throughput(
                rest_call, args.clients, args.requests * 2)
            results["throughput_rps"][f"gRPC, {args.clients} clients, {mode}"] = throughput(
                grpc_call, args.clients, args.requests * 2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    os.makedirs(args.out, exist_ok=True)
    stem = "serving" if args.model == "image" and not args.home else f"serving-{args.model}"
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Serving benchmark ({args.model}, {results['cpus']} CPUs)", "",
             "| batch-1 latency | p50 ms | p99 ms |", "|---|---|---|"]
    lines += [f"| {k} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in results["latency_batch1"].items()]
    lines += ["", "| throughput | requests/s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results["throughput_rps"].items()]
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
