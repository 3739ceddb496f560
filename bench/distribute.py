"""Benchmark: the Trainer in one process vs `mirrored` on 2 logical CPU devices vs
`multi_worker` with 2 worker processes on loopback, on the MNIST benchmark data (the 10,000
test images in ../shared/data/mnist, IDX, read in place), same train_steps and global batch.

The pipeline runs once up to Transform; then each mode runs the real Trainer executor in fresh
processes (tests/support/trainer_workers.py), one mode at a time. Reports wall time (process
start to exit, TensorFlow start-up included), training time (the Trainer's per-epoch timings),
optimisation steps and accuracy of the exported SavedModel on the eval split.

Writes bench/results/distribute.json and bench/results/distribute.md.
Usage: .venv/bin/python bench/distribute.py [--train-steps 300] [--batch-size 64] [--out bench/results]
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")


def _accuracy(saved_model: str, examples) -> float:
    import numpy as np
    import tensorflow as tf
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    correct = 0
    for start in range(0, len(examples), 256):
        chunk = examples[start:start + 256]
        images = tf.constant([e.features.feature["image_raw"].bytes_list.value[0] for e in chunk])
        labels = np.array([e.features.feature["label"].int64_list.value[0] for e in chunk])
        correct += int((serve(images)["class_ids"].numpy() == labels).sum())
    return correct / len(examples)


def _run(mode: str, job, work: str, settings):
    from tests.support import trainer_workers as tw
    folder = os.path.join(work, mode)
    os.makedirs(folder)
    started = time.perf_counter()
    if mode == "multi_worker":
        processes = tw.start_workers(job, folder, 2, folder, **settings)
    else:
        command = job.command(folder, logical_cpus=2 if mode == "mirrored" else 1, distribution=mode, **settings)
        processes = [tw.start(command, os.path.join(folder, "worker0.log"))]
    codes = tw.wait_all(processes, timeout=3600)
    wall = time.perf_counter() - started
    log = open(os.path.join(folder, "worker0.log")).read()
    if codes != [0] * len(processes):
        raise RuntimeError(f"{mode}: exit codes {codes}\n{log[-3000:]}")
    epochs = [(int(steps), float(seconds)) for steps, seconds in
              re.findall(r"Epoch \d+: (\d+) steps in ([\d.]+) s", log)]
    return {"processes": len(processes), "replicas": 2 if mode != "none" else 1,
            "wall_seconds": round(wall, 1), "train_seconds": round(sum(s for _, s in epochs), 1),
            "first_epoch_seconds": epochs[0][1], "later_epochs_seconds": round(sum(s for _, s in epochs[1:]), 1),
            "steps": sum(n for n, _ in epochs), "saved_model": tw.serving_dir(folder)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)

    from pipelines.config import load_config
    from tests.support import trainer_workers as tw
    from tests.support.helpers import read_examples

    work = tempfile.mkdtemp(prefix="conveyor-bench-distribute-")
    settings = {"train_steps": args.train_steps, "batch_size": args.batch_size, "epochs": args.epochs}
    config = load_config("image", overrides={"data": os.path.abspath(MNIST), "input_pattern": "*",
                                             "home": os.path.join(work, "home"), "eval_steps": 50, **settings})
    load_before = os.getloadavg()
    started = time.perf_counter()
    job = tw.prepare(config.with_local_data())
    prepare_seconds = time.perf_counter() - started
    eval_examples = read_examples(job.inputs["examples"][0].uri, "eval")
    results = {}
    for mode in ("none", "mirrored", "multi_worker"):
        results[mode] = _run(mode, job, work, {})
        results[mode]["eval_accuracy"] = round(_accuracy(results[mode].pop("saved_model"), eval_examples), 4)
        print(mode, results[mode], flush=True)
    report = {"data": "MNIST t10k (10,000 images, 80/20 split)", "eval_examples": len(eval_examples),
              "train_steps": args.train_steps, "global_batch": args.batch_size, "epochs": args.epochs,
              "model": config.model, "cpus": os.cpu_count(), "load_average_before": [round(x, 1) for x in load_before],
              "load_average_after": [round(x, 1) for x in os.getloadavg()],
              "prepare_seconds": round(prepare_seconds, 1), "modes": results}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distribute.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "distribute.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))


def markdown(report) -> str:
    """The report as a markdown table."""
    lines = [f"# Trainer distribution: {report['data']}", "",
             f"{report['train_steps']} steps, global batch {report['global_batch']}, {report['epochs']} epochs, "
             f"model {report['model']}, {report['cpus']} CPUs; load average before/after "
             f"{report['load_average_before']} / {report['load_average_after']}.", "",
             "| distribution | processes | replicas | wall s | training s | 1st epoch s | later epochs s | steps | eval accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in report["modes"].items():
        lines.append(f"| {mode} | {r['processes']} | {r['replicas']} | {r['wall_seconds']} | {r['train_seconds']} | "
                     f"{r['first_epoch_seconds']} | {r['later_epochs_seconds']} | {r['steps']} | {r['eval_accuracy']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
