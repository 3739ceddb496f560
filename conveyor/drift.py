"""`conveyor drift --model NAME [--home DIR] [--json]`: training/serving drift of the served model.

1. MLMD gives the served version (the latest pushed) and, through its lineage, the
   statistics of the data it was trained on (StatisticsGen's output, train split) and its
   kind (the Trainer's custom_config); nothing is read from folder names.
2. TFDV computes statistics over the requests the server logged for that version
   (HOME/request_logs/<model>/<version>/requests-*.tfrecord, see serving/request_log.py).
3. tfdv.validate_statistics compares them with the training statistics: the schema the
   model trained with (its assets.extra/conveyor_schema.pbtxt, else the Schema artifact),
   in the SERVING environment (no labels), with a Jensen-Shannon drift comparator on each
   profile feature (threshold `drift_threshold` of the config). Schema violations of the
   requests (e.g. images of another size) are reported too.

Anomalies are printed in plain words and written to HOME/drift/<model>-<version>.json
(temp file + rename), which the run report shows. Exit status: 0 no drift, 1 drift
found, 2 nothing to compare (no pushed version, no logged requests, bad arguments).
"""
import argparse
import datetime
import json
import os
import sys
from typing import Any, Dict, List, Optional

from conveyor import lineage as L
from pipelines.config import ConfigError, load_config

DRIFT_DIR = "drift"
SERVING = "SERVING"
TRAINING = "TRAINING"


class DriftError(RuntimeError):
    """Nothing to compare; the message says what is missing."""


def drift_path(home: str, model: str, version: str) -> str:
    return os.path.join(home, DRIFT_DIR, f"{model}-{version}.json")


def _load_schema(served_dir: Optional[str], schema_uri: Optional[str]):
    import tensorflow_data_validation as tfdv
    from modules.training_schema import BASELINE_SCHEMA_FILE, drop_free_value_domains
    for path in ([os.path.join(served_dir, BASELINE_SCHEMA_FILE)] if served_dir else []) + \
            ([os.path.join(schema_uri, "schema.pbtxt")] if schema_uri else []):
        if os.path.isfile(path):
            # Served texts / images are new values: no inferred value domain applies to them.
            return drop_free_value_domains(tfdv.load_schema_text(path)), path
    raise DriftError(f"no schema found for the served model (looked in {served_dir} and {schema_uri})")


def drift_schema(schema, kind: str, threshold: float):
    """The training schema with a SERVING environment (labels are not served) and a
    Jensen-Shannon drift comparator on each profile feature of the kind."""
    from modules import features as F
    out = type(schema)()
    out.CopyFrom(schema)
    del out.default_environment[:]
    out.default_environment.extend([TRAINING, SERVING])
    for feature in out.feature:
        if feature.name in (F.LABEL, F.LABEL_NAME):
            del feature.not_in_environment[:]
            feature.not_in_environment.append(SERVING)
        if feature.name in F.PROFILE_FEATURES[kind]:
            feature.drift_comparator.jensen_shannon_divergence.threshold = threshold
    return out


def check_drift(home: str, model: str, threshold: Optional[float] = None,
                config_path: Optional[str] = None, log_dir: Optional[str] = None) -> Dict[str, Any]:
    """Computes and records the drift of the served version of `model`; returns the record."""
    import tensorflow_data_validation as tfdv
    from tfx.components.statistics_gen import stats_artifact_utils

    from conveyor.request_log import LOG_DIR_NAME, log_files

    home = os.path.abspath(home)
    store = L.open_store(home)
    try:
        info = L.lineage_of_version(store, model, None, with_metrics=False)
    except L.LineageError as e:
        raise DriftError(str(e)) from e
    version = info["version"]
    kind = ((info.get("model") or {}).get("hyperparameters") or {}).get("kind")
    stats_ref = info.get("statistics")
    if kind not in ("image", "text") or not stats_ref:
        raise DriftError(f"MLMD has no training statistics / kind for version {version} of {model}")
    if threshold is None:
        threshold = load_config(kind, config_path).drift_threshold

    graph = L.Graph(store)
    statistics = L._tfx_artifact(graph, graph.artifact(stats_ref["artifact_id"]))
    training = stats_artifact_utils.load_statistics(statistics, "train").proto()

    folder = os.path.join(os.path.abspath(log_dir) if log_dir else os.path.join(home, LOG_DIR_NAME),
                          model, version)
    files = log_files(folder)
    if not files:
        raise DriftError(f"no logged requests of {model} version {version} in {folder}; serve it with "
                         "--request_log_rate > 0 (conveyor serve --home ... --request_log_rate 0.1)")
    serving = tfdv.generate_statistics_from_tfrecord(
        data_location=os.path.join(folder, "requests-*.tfrecord"),
        stats_options=tfdv.StatsOptions())
    schema, schema_path = _load_schema((info.get("pushed") or {}).get("destination"),
                                       (info.get("schema") or {}).get("uri"))
    anomalies = tfdv.validate_statistics(serving, drift_schema(schema, kind, threshold), environment=SERVING,
                                         previous_statistics=training)

    divergence = {}
    for skew in anomalies.drift_skew_info:
        name = skew.path.step[-1] if skew.path.step else ""
        for m in skew.drift_measurements:
            divergence[name] = round(float(m.value), 6)
    found: List[Dict[str, str]] = []
    for feature, anomaly in sorted(anomalies.anomaly_info.items()):
        found.append({"feature": feature, "anomaly": anomaly.short_description,
                      "description": anomaly.description})
    if anomalies.HasField("dataset_anomaly_info"):
        found.append({"feature": "(dataset)", "anomaly": anomalies.dataset_anomaly_info.short_description,
                      "description": anomalies.dataset_anomaly_info.description})
    record = {"model": model, "version": version, "kind": kind,
              "checked_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "requests": int(serving.datasets[0].num_examples), "request_files": len(files),
              "training_examples": int(training.datasets[0].num_examples),
              "training_statistics": statistics.uri, "schema": schema_path,
              "threshold": threshold, "js_divergence": divergence,
              "drift": bool(found), "anomalies": found}
    path = drift_path(home, model, version)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    record["path"] = path
    return record


def read_drift(home: str, model: str, version: str) -> Optional[Dict[str, Any]]:
    """The last drift record of a served version, or None."""
    try:
        with open(drift_path(home, model, version), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(record: Dict[str, Any]) -> str:
    lines = [f"Drift of {record['model']} version {record['version']}: {record['requests']} logged requests "
             f"vs {record['training_examples']} training examples "
             f"(Jensen-Shannon threshold {record['threshold']})"]
    for feature, value in sorted(record["js_divergence"].items()):
        lines.append(f"  {feature:<22} JS divergence {value:.4f}")
    if record["anomalies"]:
        lines.append("DRIFT: the served data differs from the training data:")
        lines += [f"  - feature '{a['feature']}': {a['anomaly']}: {a['description']}" for a in record["anomalies"]]
    else:
        lines.append("No drift: the logged requests match the training data.")
    lines.append(f"  written to {record['path']}")
    return "\n".join(lines)


def add_command(sub) -> None:
    drift = sub.add_parser("drift", help="compare logged requests with the served model's training data (TFDV)")
    drift.add_argument("--model", required=True, help="model name (the pipeline name)")
    drift.add_argument("--home", help="Conveyor HOME (default ./conveyor_home)")
    drift.add_argument("--config", help="YAML/JSON config giving drift_threshold")
    drift.add_argument("--threshold", type=float, help="Jensen-Shannon divergence threshold (overrides the config)")
    drift.add_argument("--request-log-dir", help="request logs folder (default HOME/request_logs)")
    drift.add_argument("--json", action="store_true", help="print the record as JSON")


def cmd_drift(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        print(f"conveyor drift: --threshold: expected 0..1, got {args.threshold}", file=sys.stderr)
        return 2
    try:
        record = check_drift(args.home or "conveyor_home", args.model, args.threshold, args.config,
                             args.request_log_dir)
    except (DriftError, L.LineageError, ConfigError) as e:
        print(f"conveyor drift: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(record, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(describe(record))
    return 1 if record["drift"] else 0
