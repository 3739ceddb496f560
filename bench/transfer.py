"""Benchmark: does a backbone pretrained with Conveyor help a small new task?

1. Pretrain: `conveyor run image` with model transfer (MobileNetV2, backbone_weights none: the
   whole network from scratch, 32x32 images) on --pretrain-per-class MNIST images of each of
   the digits 0-4; then `conveyor export-backbone` writes the pushed model's backbone.
2. For each seed: --per-class images of each of the digits 5-9 (drawn by the seed), and two
   runs with the same steps, epochs and batch: "pretrained" (backbone_weights: the exported
   file; head epochs with it frozen, then fine-tuning of its top --fine-tune-layers layers)
   and "scratch" (backbone_weights none). Each pushed model is asked about --test-per-class
   other images of each digit 5-9, none of which any run saw (serving_default on the PNG
   bytes, in this process).

Reported: held-out accuracy and wall time of `conveyor run` (and of its Trainer) per seed,
mean over the seeds. Every run blesses whatever it trains (blessing: accuracy >= 0), so a
poor model is measured rather than not pushed. The pretraining runs once; the seeds vary the
small task's sample.

The data is MNIST's test set (DIR/mnist/t10k-*-ubyte.gz, 10,000 images) as for
bench/pipeline.py: --data DIR, else $CONVEYOR_SHARED_DATA, else ../shared/data beside the
clone. Images are written as PNG class folders in a temporary folder, never in the repo.
Writes bench/results/transfer.json and .md (--out).

    .venv/bin/python bench/transfer.py                 # 3 seeds
    .venv/bin/python bench/transfer.py --seeds 1 --pretrain-steps 100
"""
import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.pipeline import MNIST_FILES, shared_data  # noqa: E402 (after the path)
from bench.text_models import code_version  # noqa: E402

SIZE = 32
PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
# Pushed whatever its accuracy: the benchmark measures it.
ALWAYS_BLESS = [{"metric": "accuracy", "min": 0.0}]


def mnist(folder: str):
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the MNIST test set."""
    from data.idx import read_idx
    return (read_idx(os.path.join(folder, MNIST_FILES[0])), read_idx(os.path.join(folder, MNIST_FILES[1])))


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_folders(target: str, images, labels, indices) -> str:
    """target/<digit>/<index>.png for the given indices; returns target."""
    for i in indices:
        folder = os.path.join(target, str(int(labels[i])))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(png(images[i]))
    return target


def draw(labels, digits, per_class: int, rng: np.random.RandomState, exclude=()) -> List[int]:
    """per_class random indices of each digit, none of them in `exclude`."""
    excluded = set(exclude)
    out = []
    for digit in digits:
        pool = [i for i in np.flatnonzero(labels == digit) if i not in excluded]
        out += [int(i) for i in rng.choice(pool, per_class, replace=False)]
    return out


def run(config) -> Dict:
    """Runs the pipeline; its wall and Trainer seconds, eval-split accuracy and pushed folder."""
    from conveyor.run_summary import read_summary
    from pipelines import local_runner
    started = time.time()
    local_runner.run(config, stream=io.StringIO())
    wall = time.time() - started
    summary = read_summary(config.metadata_path, config.name)
    trainer = {n.node: n.seconds for n in summary.nodes}.get("Trainer")
    return {"wall_seconds": round(wall, 1), "trainer_seconds": round(trainer, 1) if trainer else None,
            "eval_split_accuracy": summary.candidate.get("sparse_categorical_accuracy"),
            "pushed_path": summary.pushed_path, "push_note": summary.push_note}


def held_out_accuracy(saved_model: str, images, labels, indices, batch: int = 250) -> float:
    """Accuracy of a pushed model on the images `indices` (serving_default on PNG bytes)."""
    import tensorflow as tf
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    right = 0
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        names = serve(images=tf.constant([png(images[i]) for i in chunk]))["class_names"].numpy()
        right += sum(name.decode() == str(int(labels[i])) for name, i in zip(names, chunk))
    return right / len(indices)


def markdown(report: Dict) -> str:
    s = report["settings"]
    lines = ["# Transfer learning: a backbone pretrained with Conveyor vs training from scratch (bench/transfer.py)",
             "",
             f"Pretraining: `model: transfer`, MobileNetV2 from scratch at {SIZE}x{SIZE} on "
             f"{s['pretrain_per_class']} MNIST images of each digit 0-4 ({s['pretrain_steps']} steps, batch "
             f"{s['batch_size']}), then `conveyor export-backbone`: {report['pretrain']['wall_seconds']:.0f} s "
             f"(Trainer {report['pretrain']['trainer_seconds']} s), eval-split accuracy "
             f"{report['pretrain']['eval_split_accuracy']:.3f}.", "",
             f"New task: digits 5-9, {s['per_class']} images per class given to `conveyor run` (ExampleGen keeps "
             f"about 20% for its eval split, EarlyStopping watches 10% of the rest); {s['steps']} steps in "
             f"{s['epochs']} epochs, batch {s['batch_size']}. pretrained: `backbone_weights` = the exported file, "
             f"{s['head_epochs']} head epochs with it frozen, then its top {s['fine_tune_layers']} layers "
             "fine-tuned at learning_rate / 10; scratch: `backbone_weights: none`. Held-out: "
             f"{s['test_per_class']} other images of each digit 5-9.", "",
             "| seed | pretrained held-out | scratch held-out | pretrained run s (Trainer s) | scratch run s "
             "(Trainer s) |", "| --- | --- | --- | --- | --- |"]
    for r in report["seeds"]:
        p, c = r["pretrained"], r["scratch"]
        lines.append(f"| {r['seed']} | {p.get('held_out', float('nan')):.3f} | {c.get('held_out', float('nan')):.3f} "
                     f"| {p['wall_seconds']:.0f} ({p['trainer_seconds']}) | {c['wall_seconds']:.0f} "
                     f"({c['trainer_seconds']}) |")
    done = [r for r in report["seeds"] if "held_out" in r["pretrained"] and "held_out" in r["scratch"]]
    if done:
        mean = {k: statistics.mean(r[k]["held_out"] for r in done) for k in ("pretrained", "scratch")}
        spread = {k: statistics.pstdev(r[k]["held_out"] for r in done) for k in ("pretrained", "scratch")}
        wall = {k: statistics.mean(r[k]["wall_seconds"] for r in done) for k in ("pretrained", "scratch")}
        lines.append(f"| mean ± spread | {mean['pretrained']:.3f} ± {spread['pretrained']:.3f} | "
                     f"{mean['scratch']:.3f} ± {spread['scratch']:.3f} | {wall['pretrained']:.0f} | "
                     f"{wall['scratch']:.0f} |")
    lines += ["", f"Spread: population standard deviation over the seeds. Code {report['code']}, measured "
              f"{report['finished']} on a 2-core machine shared with other jobs (load average "
              f"{report['load_average']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder holding mnist/t10k-*-ubyte.gz (default ../shared/data)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-per-class", type=int, default=400)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--head-epochs", type=int, default=3)
    parser.add_argument("--fine-tune-layers", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    folder, _ = shared_data(args.data, False)
    images, labels = mnist(folder)
    from conveyor.backbone import export_backbone
    from pipelines.config import load_config
    settings = {k: getattr(args, k) for k in ("pretrain_per_class", "pretrain_steps", "per_class", "test_per_class",
                                              "steps", "epochs", "head_epochs", "fine_tune_layers", "batch_size")}
    report = {"settings": settings, "code": code_version(), "seeds": []}
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-transfer-") as work:
        home = os.path.join(work, "home")
        common = {"home": home, "model": "transfer", "backbone": "mobilenet_v2", "image_size": SIZE,
                  "blessing": ALWAYS_BLESS, "infra_p99_budget_ms": 60000.0, "eval_steps": 20,
                  "batch_size": args.batch_size}
        pre_indices = draw(labels, PRETRAIN_DIGITS, args.pretrain_per_class, np.random.RandomState(1000))
        pre_data = write_folders(os.path.join(work, "digits_0_4"), images, labels, pre_indices)
        report["pretrain"] = run(load_config("image", overrides={
            **common, "name": "digits_0_4", "backbone_weights": "none", "train_steps": args.pretrain_steps,
            "epochs": 5, "data": pre_data}))
        print(json.dumps(report["pretrain"]), flush=True)
        if not report["pretrain"]["pushed_path"]:
            raise SystemExit(f"bench/transfer.py: pretraining pushed nothing: {report['pretrain']['push_note']}")
        weights = os.path.join(work, "digits_0_4_backbone.weights.h5")
        print(export_backbone(home, "digits_0_4", None, weights), flush=True)
        for seed in range(args.seeds):
            rng = np.random.RandomState(seed)
            train = draw(labels, TARGET_DIGITS, args.per_class, rng)
            test = draw(labels, TARGET_DIGITS, args.test_per_class, rng, exclude=train)
            data = write_folders(os.path.join(work, f"digits_5_9_seed{seed}"), images, labels, train)
            row = {"seed": seed}
            for variant, extra in (("pretrained", {"backbone_weights": weights, "head_epochs": args.head_epochs,
                                                   "fine_tune_layers": args.fine_tune_layers}),
                                   ("scratch", {"backbone_weights": "none"})):
                result = run(load_config("image", overrides={
                    **common, **extra, "name": f"digits_5_9_{variant}_{seed}", "train_steps": args.steps,
                    "epochs": args.epochs, "data": data}))
                if result["pushed_path"]:
                    result["held_out"] = held_out_accuracy(result["pushed_path"], images, labels, test)
                row[variant] = result
                print(json.dumps({"seed": seed, variant: result}), flush=True)
            report["seeds"].append(row)
            report["load_average"] = round(os.getloadavg()[0], 1)
            report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            with open(os.path.join(args.out, "transfer.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            with open(os.path.join(args.out, "transfer.md"), "w", encoding="utf-8") as f:
                f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
