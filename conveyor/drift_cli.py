"""`conveyor drift --model NAME [--home DIR] [--json]`: the command around drift.check_drift.

Anomalies are printed in plain words (or the record as JSON). Exit status: 0 no drift,
1 drift found, 2 no verdict: nothing to compare (no pushed version, no logged requests, zero
requests read, unreadable logs), not enough requests (drift_min_requests), bad arguments.
"""
import argparse
import json
import sys

from conveyor.quiet import third_party_output
from conveyor.drift import DriftError, DriftRecord, check_drift
from conveyor.metadata.store import LineageError, store_location
from pipelines.config import DEFAULT_HOME, Config, ConfigError


def describe(record: DriftRecord) -> str:
    """The record in plain words: divergence per feature, then the anomalies or "No drift"."""
    lines = [f"Drift of {record.model} version {record.version}: {record.requests} logged requests "
             f"vs {record.training_examples} training examples "
             f"(Jensen-Shannon threshold {record.threshold})"]
    for feature, value in sorted(record.js_divergence.items()):
        lines.append(f"  {feature:<22} JS divergence {value:.4f}")
    if record.anomalies:
        lines.append("DRIFT: the served data differs from the training data:")
        lines += [f"  - feature '{a.feature}': {a.anomaly}: {a.description}" for a in record.anomalies]
    else:
        lines.append("No drift: the logged requests match the training data.")
    lines.append(f"  written to {record.path}")
    return "\n".join(lines)


def add_command(sub) -> None:
    """Adds the `drift` subcommand to an argparse subparsers object."""
    drift = sub.add_parser("drift", help="compare logged requests with the served model's training data (TFDV)")
    drift.add_argument("--model", required=True, help="model name (the pipeline name)")
    drift.add_argument("--home", help=f"Conveyor HOME (default ./{DEFAULT_HOME})")
    drift.add_argument("--config", help="YAML/JSON config giving drift_threshold (and `metadata:` / `home:`: "
                                        "where ML Metadata is)")
    drift.add_argument("--threshold", type=float, help="Jensen-Shannon divergence threshold (overrides the config)")
    drift.add_argument("--request-log-dir", help="request logs folder (default HOME/request_logs)")
    drift.add_argument("--min-requests", type=int,
                       help="minimum logged requests for a verdict (default: drift_min_requests of the config, 200)")
    drift.add_argument("--version", help="pushed version to check (default: the served one: the stable "
                                          "label while a canary is out, else the latest pushed)")
    drift.add_argument("--json", action="store_true", help="print the record as JSON")


def cmd_drift(args: argparse.Namespace) -> int:
    """Runs `conveyor drift`; returns 0 no drift, 1 drift, 2 no verdict (nothing or not enough to
    compare) / bad arguments."""
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        print(f"conveyor drift: --threshold: expected 0..1, got {args.threshold}", file=sys.stderr)
        return 2
    if args.min_requests is not None and args.min_requests < 1:
        print(f"conveyor drift: --min-requests: expected at least 1, got {args.min_requests}", file=sys.stderr)
        return 2
    try:
        where = store_location(args.home, args.config)
        with third_party_output(where.home, "drift"):
            record = check_drift(where.home, args.model, args.threshold, args.config, args.request_log_dir,
                                 args.min_requests, metadata=where.metadata, version=args.version)
    except (DriftError, LineageError, ConfigError) as e:
        print(f"conveyor drift: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(record.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(describe(record))
    return 1 if record.drift else 0
