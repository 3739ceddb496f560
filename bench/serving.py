"""Serving benchmark: REST (wrk) and gRPC (a grpc.aio client in its own process) load against a
`conveyor serve` subprocess, batching off and on, next to the in-process ceiling (the same
SavedModel run by the server's own session code on batches of max_batch_size) and a no-op
model that shows the front ends' own ceiling.

    .venv/bin/python bench/serving.py --setup            # once: installs wrk (apt-get, as root)
    .venv/bin/python bench/serving.py                    # tiny fixture image and text models
    .venv/bin/python bench/serving.py --home conveyor_home --model image_classifier
    .venv/bin/python bench/serving.py --home conveyor_home --model text_classifier --sample "a fine film"

Each point: `--connections` concurrent connections (default 16) for `--seconds` (default 15)
after a 2 s warm-up. Reported: requests/s, p50/p99 latency, non-2xx answers, the share of
the in-process ceiling, and the CPU used by the load generator and by the server (as a
share of all CPUs), plus the machine's load average: other work on the machine lowers
every figure. Writes bench/results/serving[-MODEL].json and .md.
"""
import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
BATCHING = {"max_batch_size": 16, "batch_timeout_micros": 1000, "max_enqueued_batches": 2,
            "num_batch_threads": 2}


# ---- setup ---------------------------------------------------------------------------------

def ensure_wrk() -> str:
    """The path of wrk, installed with apt-get when missing (the bench's own setup step)."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("bench/serving.py: wrk is not installed; run `sudo apt-get install -y wrk`")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk")


# ---- the gRPC load client (runs in its own process: --grpc-client) --------------------------

async def _grpc_load(target: str, request: bytes, connections: int, seconds: float,
                     warmup: float) -> dict:
    import grpc

    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    latencies: List[float] = []
    codes: Dict[str, int] = {}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds

    async def worker(channel):
        call = channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out: no client-side protos
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await call(request, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(worker(c) for c in channels))
    for channel in channels:
        await channel.close()
    return {"requests": len(latencies), "seconds": seconds, "codes": codes,
            **_percentiles(latencies)}


def _percentiles(samples: List[float]) -> dict:
    if not samples:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


# ---- measuring -----------------------------------------------------------------------------

def _stat(pid: int) -> List[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its child processes (the workers of --worker_processes)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[1]) == pid:
                    pids.append(int(entry))
            except OSError:  # exited meanwhile
                pass
    total = 0
    for p in pids:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _load_run(cmd: List[str], server_pid: int, env=None) -> dict:
    """Runs a load generator to completion; its stdout, its and the server's CPU share."""
    cpus = os.cpu_count() or 1
    server_before = _cpu_seconds(server_pid)
    before = os.times()
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    wall = time.perf_counter() - start
    after = os.times()
    client = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"stdout": out, "client_cpu_share": round(client / wall / cpus, 3),
            "server_cpu_share": round((_cpu_seconds(server_pid) - server_before) / wall / cpus, 3)}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    value, unit = match.groups()
    return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit], 2)


def wrk_point(wrk: str, url: str, body_file: str, connections: int, seconds: int, pid: int) -> dict:
    script = os.path.join(tempfile.mkdtemp(prefix="conveyor-wrk-"), "post.lua")
    with open(script, "w") as f:
        f.write('local f = io.open(os.getenv("BODY"), "rb")\nwrk.method = "POST"\n'
                'wrk.body = f:read("*a")\nf:close()\nwrk.headers["Content-Type"] = "application/json"\n')
    env = dict(os.environ, BODY=body_file)
    threads = str(min(2, connections))
    subprocess.run([wrk, "-t", threads, "-c", str(connections), "-d", "2s", "-s", script, url],
                   capture_output=True, env=env, check=True)  # warm-up
    run = _load_run([wrk, "-t", threads, "-c", str(connections), "-d", f"{seconds}s", "--latency",
                     "-s", script, url], pid, env)
    out = run.pop("stdout")
    if "50%" not in out:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": round(rps, 1), "p50_ms": _ms(re.search(r" 50%\s+(\S+)", out).group(1)),
            "p99_ms": _ms(re.search(r" 99%\s+(\S+)", out).group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else "", **run}


def grpc_point(target: str, request_file: str, connections: int, seconds: int, pid: int) -> dict:
    run = _load_run([sys.executable, os.path.abspath(__file__), "--grpc-client", target,
                     "--request-file", request_file, "--connections", str(connections),
                     "--seconds", str(seconds)], pid)
    result = json.loads(run.pop("stdout").strip().splitlines()[-1])
    ok = result["codes"].get("OK", 0)
    return {"rps": round(result["requests"] / seconds, 1), "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "non_ok": result["requests"] - ok,
            "codes": result["codes"], **run}


def in_process(version_dir: str, key: str, sample: bytes, batch: int, seconds: float) -> dict:
    """Rows/s of the SavedModel run by the server's own session code on batches of `batch`,
    and batch-1 latency: the ceiling the front ends are measured against."""
    from serving.servables import SavedModelServable

    servable = SavedModelServable("bench", 1, version_dir)
    one = {key: np.array([sample], dtype=object)}
    many = {key: np.array([sample] * batch, dtype=object)}
    for _ in range(50):
        servable.run("", one)
        servable.run("", many)
    samples = []
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        servable.run("", one)
        samples.append(time.perf_counter() - t0)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        servable.run("", many)
        runs += 1
    rows_per_second = runs * batch / (time.perf_counter() - start)
    servable.close()
    return {"rps": round(rows_per_second, 1), "batch": batch, "batch1": _percentiles(samples)}


# ---- the server ----------------------------------------------------------------------------

def noop_model(root: str) -> str:
    """A SavedModel whose serving_default returns its string input: the front ends' ceiling."""
    import tensorflow as tf

    class Noop(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"echo": tf.identity(text)}

    module = Noop()
    path = os.path.join(root, "noop", "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return os.path.dirname(path)


def start_server(config: str, batching: Optional[dict], workdir: str, processes: int = 1):
    from serving.net import free_port

    rest, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving.server", "--model_config_file", config,
           "--port", str(grpc_port), "--rest_api_port", str(rest), "--log_level", "WARNING",
           f"--worker_processes={processes}"]
    if batching:
        params = os.path.join(workdir, "batching.config")
        with open(params, "w") as f:
            f.write("".join(f"{k} {{ value: {v} }}\n" for k, v in batching.items()))
        cmd += ["--enable_batching", f"--batching_parameters_file={params}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"


def wait_ready(url: str, proc) -> None:
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during startup")
        try:
            if requests.get(f"{url}/v1/conveyor/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def _write_request(path: str, model: str, key: str, value: bytes, binary: bool) -> tuple:
    """(REST body file, gRPC request file) for one instance."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    instance = {"b64": base64.b64encode(value).decode()} if binary else value.decode()
    rest = f"{path}-{model}.json"
    with open(rest, "w") as f:
        json.dump({"instances": [instance]}, f)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[key].CopyFrom(tf.make_tensor_proto([value]))
    grpc_file = f"{path}-{model}.pb"
    with open(grpc_file, "wb") as f:
        f.write(request.SerializeToString())
    return rest, grpc_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="install wrk and exit")
    parser.add_argument("--home", help="Conveyor home with pushed models (default: fixture models)")
    parser.add_argument("--model", default="image", help="model name under HOME/serving/")
    parser.add_argument("--sample", help="image file or text sent in every request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--overload_connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--worker_processes", type=int, default=2,
                        help="also measure batching with this many server processes (1: skip)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--grpc-client", help=argparse.SUPPRESS)
    parser.add_argument("--request-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.grpc_client:
        with open(args.request_file, "rb") as f:
            request = f.read()
        print(json.dumps(asyncio.run(_grpc_load(args.grpc_client, request, args.connections,
                                                args.seconds, warmup=2.0))))
        return 0
    wrk = ensure_wrk()
    if args.setup:
        print(f"wrk: {wrk}")
        return 0

    from serving import testing as demo_models
    from serving.model_manager import version_dirs
    from serving.servables import read_signature_defs

    work = tempfile.mkdtemp(prefix="conveyor-bench-")
    home = args.home or os.path.join(work, "home")
    if not args.home:
        demo_models.build_home(home)
    base = os.path.join(home, "serving", args.model)
    dirs = version_dirs(base)
    version_dir = os.path.join(base, dirs[max(dirs)])
    signature = read_signature_defs(version_dir)["serving_default"]
    key = next(iter(signature.inputs))
    is_image = "image" in key
    if args.sample and os.path.isfile(args.sample):
        with open(args.sample, "rb") as f:
            sample = f.read()
    elif args.sample:
        sample = args.sample.encode()
    else:
        sample = demo_models.solid_png((200, 30, 30), size=64) if is_image else b"a good movie"
    noop_base = noop_model(work)
    config = os.path.join(work, "models.config")
    with open(config, "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
            for name, path in ((args.model, base), ("noop", noop_base))) + "}\n")
    try:
        binary = not sample.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        binary = True
    files = {args.model: _write_request(os.path.join(work, "req"), args.model, key, sample, binary),
             "noop": _write_request(os.path.join(work, "req"), "noop", "text", b"x", False)}

    results = {"model": args.model, "version_dir": version_dir, "cpus": os.cpu_count(),
               "connections": args.connections, "seconds": args.seconds, "batching": BATCHING,
               "load_average_before": os.getloadavg(), "points": {}}
    ceiling = in_process(version_dir, key, sample, BATCHING["max_batch_size"], 10)
    results["in_process"] = ceiling
    print(f"in-process ceiling: {ceiling}", flush=True)
    setups = [(None, 1), (BATCHING, 1)] + ([(BATCHING, args.worker_processes)]
                                           if args.worker_processes > 1 else [])
    for batching, processes in setups:
        mode = ("batching" if batching else "no batching") + (
            f", {processes} processes" if processes > 1 else "")
        proc, url, target = start_server(config, batching, work, processes)
        try:
            wait_ready(url, proc)
            if processes > 1:  # every worker listening (readiness answers once one is)
                time.sleep(30)
            for model in (args.model, "noop"):
                rest_file, grpc_file = files[model]
                points = {f"REST {model}, {mode}": wrk_point(
                              wrk, f"{url}/v1/models/{model}:predict", rest_file,
                              args.connections, args.seconds, proc.pid),
                          f"gRPC {model}, {mode}": grpc_point(
                              target, grpc_file, args.connections, args.seconds, proc.pid)}
                for name, point in points.items():
                    print(name, point, flush=True)
                results["points"].update(points)
            if not batching:  # batch-1 latency: one connection, one request at a time
                name = f"REST {args.model}, {mode}, 1 connection"
                results["points"][name] = wrk_point(wrk, f"{url}/v1/models/{args.model}:predict",
                                                    files[args.model][0], 1, args.seconds, proc.pid)
                print(name, results["points"][name], flush=True)
            if batching and processes == 1:
                name = f"REST {args.model}, {mode}, {args.overload_connections} connections"
                point = wrk_point(wrk, f"{url}/v1/models/{args.model}:predict", files[args.model][0],
                                  args.overload_connections, args.seconds, proc.pid)
                import requests

                with open(files[args.model][0]) as f:
                    after = requests.post(f"{url}/v1/models/{args.model}:predict", data=f.read(), timeout=30)
                point["answers_after"] = after.status_code
                results["points"][name] = point
                print(name, point, flush=True)
        finally:
            proc.terminate()
            results.setdefault("exit_codes", []).append(proc.wait(timeout=60))
    results["load_average_after"] = os.getloadavg()
    for point in results["points"].values():
        point["share_of_ceiling"] = round(point["rps"] / ceiling["rps"], 3)

    os.makedirs(args.out, exist_ok=True)
    stem = "serving" if args.model == "image" and not args.home else f"serving-{args.model}"
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Serving benchmark ({args.model}, {results['cpus']} CPUs, {args.connections} "
             f"connections, {args.seconds} s per point)", "",
             f"Load average before/after: {', '.join(f'{x:.1f}' for x in results['load_average_before'])}"
             f" / {', '.join(f'{x:.1f}' for x in results['load_average_after'])}. "
             f"Batching: {json.dumps(BATCHING)}.", "",
             f"In-process ceiling (server's session code, batches of {ceiling['batch']}): "
             f"{ceiling['rps']} rows/s; batch-1 p50 {ceiling['batch1']['p50_ms']} ms, "
             f"p99 {ceiling['batch1']['p99_ms']} ms.", "",
             "| point | requests/s | share of ceiling | p50 ms | p99 ms | errors | client CPU | server CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in results["points"].items():
        errors = p.get("non_2xx", p.get("non_ok", 0))
        lines.append(f"| {name} | {p['rps']} | {p['share_of_ceiling']:.0%} | {p['p50_ms']} | "
                     f"{p['p99_ms']} | {errors} | {p['client_cpu_share']:.0%} | {p['server_cpu_share']:.0%} |")
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
