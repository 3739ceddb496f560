"""Benchmark: the edge exports (TFLite float16 / dynamic-range / int8, TF.js) of Conveyor's
models on real data: the CNN on the MNIST test set (10,000 images, 80/20 split) and the text
models on the 2,500 IMDB reviews. Each pipeline runs with every export configured; the
accuracy (delta vs the SavedModel on the same eval examples), size and mean batch-1 latency
are read back from MLMD, as `conveyor lineage` shows them.

Writes bench/results/edge.json and bench/results/edge.md.
Usage: .venv/bin/python bench/edge.py [--data DIR] [--text-models multihot,embedding,conv1d] [--no-image]
DIR as for bench/pipeline.py (--data, else $CONVEYOR_SHARED_DATA, else ../shared/data).
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

from bench.pipeline import TEXT_MODELS, shared_data  # noqa: E402

EXPORTS = ["tflite_float16", "tflite_dynamic", "tflite_int8", "tfjs"]


def run(config):
    """Runs the pipeline; returns the edge record of the version it pushed (dict) and the wall time."""
    from conveyor.metadata.lineage import lineage_of_version
    from conveyor.metadata.store import open_store
    from conveyor.run_summary import read_summary
    from pipelines import local_runner
    started = time.time()
    local_runner.run(config, stream=io.StringIO())
    wall = time.time() - started
    summary = read_summary(config.metadata_path, config.name)
    if not summary.pushed_version:
        return {"error": f"nothing pushed: {summary.push_note}", "wall_seconds": round(wall, 1)}
    lin = lineage_of_version(open_store(metadata_path=config.metadata_path), config.name, summary.pushed_version,
                             with_metrics=False)
    seconds = {n.node: round(n.seconds, 1) for n in summary.nodes}
    return {"wall_seconds": round(wall, 1), "edge_exporter_seconds": seconds.get("EdgeExporter"),
            "edge": lin.edge_exports.to_json() if lin.edge_exports else None}


def markdown(results) -> str:
    lines = ["# Edge exports: accuracy, size, batch-1 latency", "",
             "Each model's SavedModel vs its exports on the same eval examples (`bench/edge.py`). "
             "Latency: mean of 50 batch-1 predictions after one untimed call; TFLite with "
             "`tf.lite.Interpreter` (1 thread, XNNPACK), TF.js under Node 20 with the pure-JS CPU backend. "
             f"Measured {time.strftime('%Y-%m-%d')} on a 2-core machine shared with other jobs.", ""]
    for key, r in results.items():
        edge = r.get("edge")
        if not edge:
            lines += [f"## {key}", "", f"no edge exports: {r.get('error')}", ""]
            continue
        lines += [f"## {key}: SavedModel accuracy {edge['reference_accuracy']:.4f} on {edge['eval_examples']} "
                  f"eval examples (EdgeExporter {r['edge_exporter_seconds']} s)", "",
                  "| export | pushed | accuracy | delta | size KB | batch-1 latency ms | note |",
                  "|---|---|---|---|---|---|---|"]
        for x in edge["exports"]:
            if x["accuracy"] is None:
                lines.append(f"| {x['name']} | no: {x['reason']} | - | - | - | - | |")
                continue
            lines.append(f"| {x['name']} | {'yes' if x['pushed'] else 'no'} | {x['accuracy']:.4f} | "
                         f"{x['accuracy_delta']:+.4f} | {x['size_bytes'] / 1024:.1f} | {x['latency_ms']:.3f} | "
                         f"{x.get('detail', '')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--text-models", default=",".join(TEXT_MODELS))
    parser.add_argument("--no-image", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    text_models = [m for m in args.text_models.split(",") if m]
    mnist, csv = shared_data(args.data, bool(text_models))
    from pipelines.config import load_config
    results = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-edge-bench-") as work:
        common = {"home": work, "edge_exports": EXPORTS, "infra_p99_budget_ms": 60000.0}
        if not args.no_image:
            results["mnist cnn"] = run(load_config("image", overrides={
                **common, "name": "mnist_cnn", "model": "cnn", "train_steps": 1000, "eval_steps": 50,
                "epochs": 5, "batch_size": 64, "data": mnist, "input_pattern": "t10k-*"}))
            print(json.dumps(results["mnist cnn"]), flush=True)
        for model in text_models:
            results[f"imdb {model}"] = run(load_config("text", overrides={
                **common, "name": f"imdb_{model}", "model": model, "train_steps": 600, "eval_steps": 20,
                "epochs": 10, "batch_size": 32, "data": os.path.dirname(csv), "input_pattern": os.path.basename(csv)}))
            print(json.dumps(results[f"imdb {model}"]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "edge.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "edge.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
