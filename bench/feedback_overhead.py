"""Overhead of feedback logging (`--feedback`) and of the A/B split (`--ab_split`) on REST
predict latency (issue 23).

Serves the tiny fixture text model as `stable` version 1 and `canary` version 2 with
`conveyor serve` four ways (plain, --feedback, --ab_split text:canary=0.1, both) and times
unversioned :predict calls from a Python client: one connection sequentially, then
`--threads` connections at once. Each configuration runs in rounds interleaved with the
others (plain, feedback, split, both, plain, ...) so a change in the machine's load hits all
of them alike. Prints p50/p99 per configuration and the load average; writes
bench/results/feedback_overhead.md.

    .venv/bin/python bench/feedback_overhead.py [--requests 1000] [--rounds 3] [--threads 8]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIGS = {"plain": [], "feedback": ["--feedback"], "split": ["--ab_split", "text:canary=0.1"],
           "feedback+split": ["--feedback", "--ab_split", "text:canary=0.1"]}


def _home(root: str) -> str:
    from serving import testing
    from serving.model_config import set_release, update_model
    home = os.path.join(root, "home")
    base = os.path.join(home, "serving", "text")
    testing.save_model(os.path.join(base, "1"), "text")
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "2"))
    update_model(os.path.join(home, "serving"), "text", lambda entry: set_release(entry, 1, canary=2))
    return home


def _serve(home: str, flags: List[str], log_path: str):
    from serving.net import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "serve", "--home", home, "--port", "0",
                             "--rest_api_port", str(port), *flags],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    import requests
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(open(log_path).read()[-2000:])
        try:
            if requests.get(f"{url}/v1/conveyor/ready", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server not ready")


def _time(url: str, requests_count: int, threads: int) -> List[float]:
    import requests
    latencies: List[float] = []
    lock = threading.Lock()

    def run(n):
        session = requests.Session()
        mine = []
        for i in range(n):
            t0 = time.perf_counter()
            response = session.post(f"{url}/v1/models/text:predict", json={"instances": ["good film"]}, timeout=30)
            mine.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(requests_count // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def _pct(samples: List[float], q: float) -> float:
    ordered = sorted(samples)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "feedback_overhead.md"))
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="conveyor-feedback-bench-")
    try:
        home = _home(root)
        servers = {name: _serve(home, flags, os.path.join(root, f"{name}.log")) for name, flags in CONFIGS.items()}
        samples: Dict[str, Dict[str, List[float]]] = {n: {"sequential": [], "concurrent": []} for n in CONFIGS}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            for name, (_, url) in servers.items():
                _time(url, 100, 1)  # warm-up
                samples[name]["sequential"] += _time(url, args.requests, 1)
                samples[name]["concurrent"] += _time(url, args.requests, args.threads)
        load_after = os.getloadavg()
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        lines = ["# Feedback logging and A/B split overhead (REST :predict, fixture text model)", "",
                 f"{args.rounds} interleaved rounds of {args.requests} requests per mode; Python `requests` "
                 f"client on the same machine; load average {load_before[0]:.2f} before, "
                 f"{load_after[0]:.2f} after ({os.cpu_count()} CPUs).", "",
                 "| configuration | sequential p50 ms | sequential p99 ms | "
                 f"{args.threads} threads p50 ms | {args.threads} threads p99 ms | "
                 f"{args.threads} threads mean ms |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for name in CONFIGS:
            seq, conc = samples[name]["sequential"], samples[name]["concurrent"]
            lines.append(f"| {name} | {_pct(seq, 0.5):.2f} | {_pct(seq, 0.99):.2f} | {_pct(conc, 0.5):.2f} | "
                         f"{_pct(conc, 0.99):.2f} | {1000 * statistics.mean(conc):.2f} |")
        text = "\n".join(lines) + "\n"
        print(text)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
