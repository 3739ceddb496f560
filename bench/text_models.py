"""Benchmark: held-out accuracy of each text model, as a user meets it.

For each of `--partitions` shuffles of the IMDB reviews CSV (seed = partition index), the
first `--train` reviews are written to a CSV (in a temporary folder, never in the repo) and
`conveyor run text --data <that folder> --model M` runs the whole pipeline on them with the
default config (ExampleGen's own train/eval split, Transform, Trainer, Evaluator, infra
validation, Pusher). The pushed model is then served by Conveyor's server
(`python -m serving.server`) and asked over REST about the next `--test` reviews, which
the run never saw. Reported per model: held-out accuracy mean ± spread (population standard
deviation over the partitions, and min..max), the run's own eval-split accuracy (what the
Evaluator blessed on), and the wall time of `conveyor run`.

    .venv/bin/python bench/text_models.py                         # every text model, 3 partitions
    .venv/bin/python bench/text_models.py --models tfidf,bilstm --partitions 1

The data is DATA/imdb/imdb_reviews_2500.csv (header review,sentiment); DATA is --data, else
$CONVEYOR_SHARED_DATA, else ../shared/data beside the clone. Writes
bench/results/text_models.json and .md (--out); a run appends to the JSON's runs, so models
can be benchmarked in several sittings.
"""
import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modules.settings import TEXT_MODELS  # noqa: E402 (after the path)
from pipelines.config import DEFAULT_MODELS  # noqa: E402
from tests.support.serving_harness import ServerProcess  # noqa: E402

SHARED_DATA_ENV = "CONVEYOR_SHARED_DATA"
IMDB_FILE = os.path.join("imdb", "imdb_reviews_2500.csv")
NAME = "text_classifier"
# The infra validator's latency budget is for a quiet serving machine; here the bench shares
# the cores with training, and a slow p99 must not keep the model from being pushed.
RUN_CONFIG = "infra_p99_budget_ms: 20000\n"


def reviews(given) -> List[Tuple[str, str]]:
    """(review, sentiment) rows of the shared CSV. Raises SystemExit naming a missing file."""
    root = os.path.abspath(given or os.environ.get(SHARED_DATA_ENV) or os.path.join(ROOT, "..", "shared", "data"))
    path = os.path.join(root, IMDB_FILE)
    if not os.path.isfile(path):
        raise SystemExit(f"bench/text_models.py: no {path}: pass --data DIR (or set {SHARED_DATA_ENV}) "
                         f"holding {IMDB_FILE} (header review,sentiment)")
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["review"], row["sentiment"]) for row in csv.DictReader(f)]


def partition(rows, seed: int, train: int, test: int):
    """(train rows, held-out rows): disjoint, from one shuffle of `rows` by `seed`."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if train + test > len(rows):
        raise SystemExit(f"bench/text_models.py: --train {train} + --test {test} exceed the {len(rows)} reviews")
    return rows[:train], rows[train:train + test]


def write_csv(folder: str, rows) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, "reviews.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return folder


def run_pipeline(data: str, home: str, model: str, extra: List[str]) -> Tuple[float, str]:
    """`conveyor run text` in a subprocess; (wall seconds, its stdout). Raises RuntimeError."""
    os.makedirs(home)
    config = os.path.join(home, "bench-config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(RUN_CONFIG)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "conveyor.cli", "run", "text", "--data", data, "--home", home,
                             "--config", config, "--model", model, *extra],
                            cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    seconds = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"conveyor run text --model {model} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, result.stdout


def held_out_accuracy(home: str, rows, log: str, batch: int = 50) -> float:
    """Accuracy of the pushed model on `rows`, asked over REST (serving_default, raw texts)."""
    server = ServerProcess(["--model_name", NAME, "--model_base_path", os.path.join(home, "serving", NAME)], log)
    try:
        server.wait_ready(NAME, timeout=180)
        right = 0
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            response = requests.post(f"{server.url}/v1/models/{NAME}:predict",
                                     json={"instances": [text for text, _ in chunk]}, timeout=120)
            response.raise_for_status()
            names = [p["class_names"] for p in response.json()["predictions"]]
            right += sum(name == label for name, (_, label) in zip(names, chunk))
        return right / len(rows)
    finally:
        server.stop()


def eval_split_accuracy(home: str):
    from conveyor.run_summary import read_summary
    summary = read_summary(os.path.join(home, "metadata.sqlite"), NAME)
    return summary.candidate.get("sparse_categorical_accuracy"), summary.blessed, summary.pushed_version


def summarise(runs: List[Dict]) -> List[Dict]:
    """One row per model over its runs: mean, spread, min, max, eval accuracy, time."""
    rows = []
    for model in TEXT_MODELS:
        mine = [r for r in runs if r["model"] == model and r.get("held_out") is not None]
        if not mine:
            continue
        held = [r["held_out"] for r in mine]
        rows.append({"model": model, "partitions": sorted(r["partition"] for r in mine),
                     "held_out_mean": statistics.mean(held), "held_out_spread": statistics.pstdev(held),
                     "held_out_min": min(held), "held_out_max": max(held),
                     "eval_split_mean": statistics.mean(r["eval_split"] for r in mine),
                     "seconds_mean": statistics.mean(r["seconds"] for r in mine)})
    return rows


def markdown(report: Dict) -> str:
    lines = [f"# Text models: held-out accuracy on IMDB reviews (bench/text_models.py)", "",
             f"Per partition: `conveyor run text --model M` on {report['train']} reviews (default config: "
             f"{100 - report['eval_percent']}/{report['eval_percent']} train/eval split by ExampleGen, "
             f"EarlyStopping on {report['validation_percent']}% of train), then the pushed model asked over REST "
             f"about {report['test']} other reviews. Default text model: `{DEFAULT_MODELS['text']}`.", "",
             "| model | partitions | held-out accuracy mean ± spread | min..max | eval-split accuracy (blessed on) "
             "| `conveyor run` wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for row in summarise(report["runs"]):
        lines.append(f"| {row['model']} | {len(row['partitions'])} ({','.join(map(str, row['partitions']))}) "
                     f"| {row['held_out_mean']:.3f} ± {row['held_out_spread']:.3f} "
                     f"| {row['held_out_min']:.3f}..{row['held_out_max']:.3f} | {row['eval_split_mean']:.3f} "
                     f"| {row['seconds_mean']:.0f} |")
    lines += ["", "Spread: population standard deviation over the partitions. A 500-review set alone has a "
              "standard error of about ±0.016.", "", "Runs:", ""]
    for r in report["runs"]:
        lines.append(f"* {r['model']} partition {r['partition']}: held-out {r.get('held_out')}, eval split "
                     f"{r.get('eval_split')}, blessed {r.get('blessed')}, {r.get('seconds', 0):.0f} s, "
                     f"load average {r.get('load_average')}, code {r.get('code', '?')} ({r.get('finished')}){' ' + r['error'] if r.get('error') else ''}")
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """The worktree's commit, with '+changes' when files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no")
                                                  else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder holding imdb/imdb_reviews_2500.csv (default ../shared/data)")
    parser.add_argument("--models", default=",".join(TEXT_MODELS), help="comma-separated text models")
    parser.add_argument("--partitions", type=int, default=3, help="number of shuffles (seeds 0..N-1)")
    parser.add_argument("--first-partition", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="reviews given to `conveyor run`")
    parser.add_argument("--test", type=int, default=500, help="held-out reviews asked over REST")
    parser.add_argument("--run-args", default="", help="extra `conveyor run` flags, e.g. '--train-steps 600'")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--fresh", action="store_true", help="start a new JSON instead of appending runs")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(TEXT_MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {', '.join(TEXT_MODELS)}")
    rows = reviews(args.data)
    from pipelines.config import load_config
    defaults = load_config("text")
    json_path = os.path.join(args.out, "text_models.json")
    report = {"train": args.train, "test": args.test, "eval_percent": defaults.eval_percent,
              "validation_percent": defaults.validation_percent, "run_args": args.run_args, "runs": []}
    if os.path.isfile(json_path) and not args.fresh:
        with open(json_path, encoding="utf-8") as f:
            report["runs"] = json.load(f).get("runs", [])
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-text-") as work:
        for seed in range(args.first_partition, args.first_partition + args.partitions):
            train, test = partition(rows, seed, args.train, args.test)
            data = write_csv(os.path.join(work, f"data-{seed}"), train)
            for model in models:
                home = os.path.join(work, f"home-{seed}-{model}")
                run = {"model": model, "partition": seed, "run_args": args.run_args, "code": code_version()}
                try:
                    run["seconds"], _ = run_pipeline(data, home, model, args.run_args.split())
                    run["eval_split"], run["blessed"], pushed = eval_split_accuracy(home)
                    run["held_out"] = held_out_accuracy(home, test, os.path.join(work, f"server-{seed}-{model}.log")) \
                        if pushed else None
                    if not pushed:
                        run["error"] = "not pushed"
                except RuntimeError as e:
                    run["error"] = str(e).splitlines()[0]
                run["load_average"] = round(os.getloadavg()[0], 1)
                run["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                report["runs"] = [r for r in report["runs"]
                                  if (r["model"], r["partition"]) != (model, seed)] + [run]
                print(json.dumps(run), flush=True)
                with open(json_path, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=1)
                with open(os.path.join(args.out, "text_models.md"), "w", encoding="utf-8") as f:
                    f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
