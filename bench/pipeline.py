"""Benchmark: Conveyor's image pipeline vs the MNIST example that ships inside tfx,
on the real MNIST test set (10,000 images, 80/20 split), same runner, Beam args and train steps.

Writes bench/results/pipeline.json and bench/results/pipeline.md.
Usage: .venv/bin/python bench/pipeline.py [--data DIR] [--train-steps 1000] [--rounds 3] [--out bench/results]

The data (not in the repo) is DIR/mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz (MNIST's
test set as published: `conveyor download mnist --out DIR/mnist` fetches the whole set) and
DIR/imdb/imdb_reviews_2500.csv (label,review rows; --no-text skips it). DIR is --data, else
$CONVEYOR_SHARED_DATA, else ../shared/data beside the clone.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA_ENV = "CONVEYOR_SHARED_DATA"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMDB_FILE = os.path.join("imdb", "imdb_reviews_2500.csv")
from modules.settings import TEXT_MODELS  # noqa: E402 (after the path)


def _timed_run(pipeline) -> float:
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    started = time.time()
    LocalDagRunner().run(pipeline)
    return time.time() - started


def _component_seconds(metadata_path: str, name: str):
    from conveyor.run_summary import read_summary
    summary = read_summary(metadata_path, name)
    return summary, {n.node: round(n.seconds, 1) for n in summary.nodes}


def _runner_seconds(config, force: bool = False) -> float:
    """Wall seconds of one run through Conveyor's runner layer (pre-flight check included)."""
    import io
    from pipelines import local_runner
    started = time.time()
    local_runner.run(config, stream=io.StringIO(), force=force)
    return time.time() - started


def shared_data(given, text: bool):
    """(the MNIST folder, the IMDB CSV or None when not `text`) under the data folder: `given`,
    else $CONVEYOR_SHARED_DATA, else ../shared/data beside the clone.

    Raises:
      SystemExit: a file is missing; the message names it and how to point at the data.
    """
    root = os.path.abspath(given or os.environ.get(SHARED_DATA_ENV) or os.path.join(ROOT, "..", "shared", "data"))
    mnist = os.path.join(root, "mnist")
    needed = [os.path.join(mnist, name) for name in MNIST_FILES] + ([os.path.join(root, IMDB_FILE)] if text else [])
    missing = [path for path in needed if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"bench/pipeline.py: no {missing[0]}: pass --data DIR (or set {SHARED_DATA_ENV}) with "
                         f"mnist/{MNIST_FILES[0]}, mnist/{MNIST_FILES[1]} (`conveyor download mnist --out DIR/mnist`)"
                         f" and {IMDB_FILE} (or --no-text)")
    return mnist, (os.path.join(root, IMDB_FILE) if text else None)


def run_conveyor(work: str, train_steps: int, beam_args, mnist: str):
    from pipelines.config import load_config
    config = load_config("image", overrides={"home": os.path.join(work, "conveyor"), "name": "mnist_conveyor",
                                             "train_steps": train_steps, "eval_steps": 50, "model": "cnn",
                                             "epochs": 5, "batch_size": 64, "accuracy_floor": 0.9,
                                             "data": mnist, "input_pattern": "t10k-*",
                                             "beam_args": beam_args})
    wall = _runner_seconds(config)
    summary, seconds = _component_seconds(config.metadata_path, config.name)
    # Unchanged rerun: the pre-flight check finds nothing changed and runs nothing
    # (pipelines/preflight.py); --force makes TFX run the DAG on its cache.
    cached = _runner_seconds(config)
    forced = _runner_seconds(config, force=True)
    return {"wall_seconds": round(wall, 1), "cached_rerun_seconds": round(cached, 1),
            "forced_cached_rerun_seconds": round(forced, 1),
            "components": seconds, "eval_accuracy": summary.candidate.get("sparse_categorical_accuracy"),
            "blessed": summary.blessed, "pushed_version": summary.pushed_version}


def _write_tfx_example_data(path: str, mnist: str) -> None:
    """The tfx example reads tf.Examples with `image_floats` (784 floats in [-0.5, 0.5]) and `image_class`."""
    import numpy as np
    import tensorflow as tf
    from data.idx import read_idx
    images = read_idx(os.path.join(mnist, MNIST_FILES[0])).reshape(-1, 784)
    labels = read_idx(os.path.join(mnist, MNIST_FILES[1]))
    os.makedirs(path, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(path, "mnist.tfrecord")) as writer:
        for pixels, label in zip(images, labels):
            floats = (pixels.astype(np.float32) / 255.0 - 0.5).tolist()
            example = tf.train.Example(features=tf.train.Features(feature={
                "image_floats": tf.train.Feature(float_list=tf.train.FloatList(value=floats)),
                "image_class": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
            writer.write(example.SerializeToString())


def run_tfx_example(work: str, train_steps: int, beam_args, mnist: str):
    from tfx.examples.mnist import mnist_pipeline_native_keras as example
    from tfx.proto import trainer_pb2
    from tfx.utils import proto_utils
    data = os.path.join(work, "tfx_example_data")
    _write_tfx_example_data(data, mnist)
    module_file = os.path.join(os.path.dirname(example.__file__), "mnist_utils_native_keras.py")
    metadata_path = os.path.join(work, "tfx_example", "metadata.sqlite")
    pipeline = example._create_pipeline(  # the example exposes no public factory
        pipeline_name="mnist_tfx_example", pipeline_root=os.path.join(work, "tfx_example", "root"),
        data_root=data, module_file=module_file,
        serving_model_dir=os.path.join(work, "tfx_example", "serving"), metadata_path=metadata_path,
        beam_pipeline_args=beam_args, accuracy_threshold=0.8)
    for component in pipeline.components:  # the example hard-codes 5000 steps; use ours
        if component.id.startswith("Trainer"):
            # Component specs hold proto parameters as JSON strings.
            component.exec_properties["train_args"] = proto_utils.proto_to_json(
                trainer_pb2.TrainArgs(num_steps=train_steps))
    wall = _timed_run(pipeline)
    summary, seconds = _component_seconds(metadata_path, "mnist_tfx_example")
    cached = _timed_run(pipeline)
    return {"wall_seconds": round(wall, 1), "cached_rerun_seconds": round(cached, 1),
            "components": seconds, "eval_accuracy": summary.candidate.get("sparse_categorical_accuracy"),
            "blessed": summary.blessed}


def run_text(work: str, model: str, train_steps: int, beam_args, csv: str):
    """The text pipeline on the 2,500 real IMDB reviews (80/20 hash split)."""
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline
    config = load_config("text", overrides={"home": os.path.join(work, "text"), "name": f"imdb_{model}",
                                            "model": model, "train_steps": train_steps, "eval_steps": 20,
                                            "epochs": 10, "batch_size": 32,
                                            "data": os.path.dirname(csv),
                                            "input_pattern": os.path.basename(csv),
                                            "beam_args": beam_args})
    wall = _timed_run(create_pipeline(config))
    summary, seconds = _component_seconds(config.metadata_path, config.name)
    return {"wall_seconds": round(wall, 1), "components": seconds,
            "eval_accuracy": summary.candidate.get("sparse_categorical_accuracy"),
            "majority_baseline": summary.majority_baseline, "blessed": summary.blessed}


def median_run(runs):
    """The median of a list of run results: wall and cached times, per-component seconds."""
    def med(values):
        return round(statistics.median(values), 1)
    components = {name: med([r["components"].get(name, 0.0) for r in runs]) for name in runs[0]["components"]}
    out = {"wall_seconds": med([r["wall_seconds"] for r in runs]),
           "cached_rerun_seconds": med([r["cached_rerun_seconds"] for r in runs]),
           "eval_accuracy": statistics.median(r["eval_accuracy"] for r in runs),
           "blessed": all(r["blessed"] for r in runs), "components": components}
    if all("forced_cached_rerun_seconds" in r for r in runs):
        out["forced_cached_rerun_seconds"] = med([r["forced_cached_rerun_seconds"] for r in runs])
    return out


def markdown(results) -> str:
    conveyor, example = results["conveyor"], results["tfx_example"]
    rounds = results["rounds"]
    lines = [f"# Image pipeline benchmark ({results['images']} real MNIST images, 80/20, "
             f"{results['train_steps']} train steps, {results['cores']} cores)", "",
             f"Medians of {len(rounds)} rounds; each round runs both pipelines in fresh directories, "
             "alternating which goes first (this VM's speed drifts by tens of percent between minutes).", "",
             "| | Conveyor (cnn) | tfx MNIST example |", "|---|---|---|",
             f"| eval accuracy | {conveyor['eval_accuracy']:.4f} | {example['eval_accuracy']:.4f} |",
             f"| total wall time (s) | {conveyor['wall_seconds']} | {example['wall_seconds']} |",
             f"| unchanged rerun (s) | {conveyor['cached_rerun_seconds']} (pre-flight: nothing runs) | "
             f"{example['cached_rerun_seconds']} (TFX cache) |",
             f"| cached rerun with --force (s) | {conveyor.get('forced_cached_rerun_seconds', '-')} | - |",
             f"| blessed (every round) | {conveyor['blessed']} | {example['blessed']} |", "",
             "| round | first | Conveyor wall (s) | tfx example wall (s) | Conveyor accuracy | tfx example accuracy |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | {r['first']} | {r['conveyor']['wall_seconds']} | {r['tfx_example']['wall_seconds']} | "
                     f"{r['conveyor']['eval_accuracy']:.4f} | {r['tfx_example']['eval_accuracy']:.4f} |")
    lines += ["", "| component (Conveyor, median s) | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in conveyor["components"].items()]
    lines += ["", "| component (tfx example, median s) | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in example["components"].items()]
    text = results.get("text")
    if text:
        lines += ["", f"# Text pipeline ({results['text_reviews']} real IMDB reviews, 80/20, "
                      f"{results['text_train_steps']} train steps)", "",
                  "| model | eval accuracy | majority rate | blessed | wall (s) | Transform (s) | Trainer (s) | Evaluator (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, r in text.items():
            c = r["components"]
            lines.append(f"| {model} | {r['eval_accuracy']:.4f} | {r['majority_baseline']:.4f} | {r['blessed']} | "
                         f"{r['wall_seconds']} | {c.get('Transform')} | {c.get('Trainer')} | {c.get('BaselineEvaluator')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="image-pipeline rounds (medians are reported)")
    parser.add_argument("--text-train-steps", type=int, default=600)
    parser.add_argument("--no-text", action="store_true", help="skip the text pipeline")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--data", help=f"folder with mnist/ and imdb/ (default ${SHARED_DATA_ENV}, "
                                       "else ../shared/data beside the clone)")
    args = parser.parse_args()
    mnist, csv = shared_data(args.data, text=not args.no_text)
    from pipelines.config import Config
    beam_args = Config().beam_args
    work = tempfile.mkdtemp(prefix="conveyor-bench-")
    try:
        rounds = []
        for i in range(args.rounds):
            round_dir = os.path.join(work, f"round-{i}")
            order = ("conveyor", "tfx_example") if i % 2 == 0 else ("tfx_example", "conveyor")
            result = {"first": order[0]}
            for which in order:
                run = run_conveyor if which == "conveyor" else run_tfx_example
                result[which] = run(os.path.join(round_dir, which), args.train_steps, beam_args, mnist)
            rounds.append(result)
            shutil.rmtree(round_dir, ignore_errors=True)
        results = {"images": 10000, "train_steps": args.train_steps, "cores": os.cpu_count(),
                   "beam_args": beam_args, "rounds": rounds,
                   "conveyor": median_run([r["conveyor"] for r in rounds]),
                   "tfx_example": median_run([r["tfx_example"] for r in rounds]),
                   "text_reviews": 2500, "text_train_steps": args.text_train_steps,
                   "text": {} if args.no_text else
                   {m: run_text(work, m, args.text_train_steps, beam_args, csv) for m in TEXT_MODELS}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pipeline.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "pipeline.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
