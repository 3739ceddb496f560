"""Benchmark: same-span vs next-day evaluation on three spans of real digits.

scikit-learn's 1,797 digits are cut into three spans in their published order (599 each) and
land one by one in incoming/span-N/<class>/*.png; the image pipeline runs after each landing
on a fresh HOME per mode:
  * same: train on span N's train split, evaluate on span N's eval split (TFX's default);
  * next: train on spans < N, evaluate on span N's eval split (`eval_span: next`).
Reports per run the spans used, the candidate's eval accuracy, blessed/pushed and wall time.
The gap between the two accuracies on span 2 and 3 is how optimistic same-span evaluation is.

Writes bench/results/next_day.json and bench/results/next_day.md.
Usage: .venv/bin/python bench/next_day.py [--train-steps 300] [--out bench/results]
"""
import argparse
import io
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _spans(incoming: str, count: int = 3):
    """Writes the digits as `count` span folders, returned as their paths (in landing order)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    size = len(images) // count
    folders = []
    for span in range(1, count + 1):
        folder = os.path.join(incoming, f"span-{span}")
        for i in range((span - 1) * size, span * size):
            os.makedirs(os.path.join(folder, str(digits.target[i])), exist_ok=True)
            Image.fromarray(images[i], mode="L").save(os.path.join(folder, str(digits.target[i]), f"{i:04d}.png"))
        folders.append(folder)
    return folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)

    from conveyor import runner
    from pipelines.config import load_config

    work = tempfile.mkdtemp(prefix="conveyor-bench-next-day-")
    staged = _spans(os.path.join(work, "staged"))
    rows = []
    for mode in ("same", "next"):
        incoming = os.path.join(work, mode, "incoming")
        os.makedirs(incoming)
        for span, folder in enumerate(staged, start=1):
            os.symlink(folder, os.path.join(incoming, f"span-{span}"))
            config = load_config("image", overrides={
                "home": os.path.join(work, mode, "home"), "data": os.path.join(incoming, "span-{SPAN}"),
                "train_steps": args.train_steps, "eval_steps": 10, "eval_span": mode,
                # Latency is not what this measures; the machine is shared.
                "infra_p99_budget_ms": 10000})
            started = time.perf_counter()
            summary = runner.run(config, stream=io.StringIO())
            rows.append({"mode": mode, "span": span,
                         "trained_on": summary.spans.trained_on if summary.spans else None,
                         "evaluated_on": summary.spans.evaluated_on if summary.spans else None,
                         "accuracy": summary.candidate.get("sparse_categorical_accuracy"),
                         "baseline_accuracy": summary.baseline.get("sparse_categorical_accuracy"),
                         "eval_examples": summary.candidate.get("example_count"),
                         "blessed": summary.blessed, "pushed_version": summary.pushed_version,
                         "wall_seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "next_day.json"), "w", encoding="utf-8") as f:
        json.dump({"train_steps": args.train_steps, "runs": rows}, f, indent=2)
    lines = ["# Same-span vs next-day evaluation, three spans of sklearn digits (599 each)", "",
             f"Image CNN, {args.train_steps} train steps per run, 2-core machine.", "",
             "| mode | span landed | trained on | evaluated on | candidate accuracy | baseline | blessed | pushed | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        base = f"{r['baseline_accuracy']:.4f}" if r["baseline_accuracy"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['span']} | {r['trained_on']} | {r['evaluated_on']} | {acc} | {base} | "
                     f"{r['blessed']} | {r['pushed_version'] or '-'} | {r['wall_seconds']} |")
    with open(os.path.join(args.out, "next_day.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
