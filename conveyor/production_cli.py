"""`conveyor promote | rollback | feedback | monitor | export-feedback`: the model in production.

promote / rollback end a canary release with one atomic models.config rewrite the server
picks up by polling (serving/model_config.py); feedback sends true labels to a running
`conveyor serve --feedback`; monitor computes online accuracy (conveyor/monitor.py);
export-feedback writes fed-back requests as a new span (conveyor/feedback.py).
"""
import argparse
import csv
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Dict, List

from conveyor.metadata.store import home_dir, store_location
from pipelines.config import DEFAULT_HOME, ConfigError

COMMANDS = ("promote", "rollback", "feedback", "monitor", "export-feedback")
_HOME_HELP = f"Conveyor HOME (default ./{DEFAULT_HOME})"
_CHUNK = 1000


def add_commands(sub) -> None:
    """Adds the commands of COMMANDS to an argparse subparsers object."""
    for name, help_text in (("promote", "make the canary the stable version (the old stable unloads)"),
                            ("rollback", "take the canary out of serving (stable stays)")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("model", help="model name")
        command.add_argument("--home", help=_HOME_HELP)
    feedback = sub.add_parser("feedback", help="send true labels for served request ids to `conveyor serve --feedback`")
    feedback.add_argument("--model", required=True)
    feedback.add_argument("--file", required=True, help="CSV with columns request_id,label[,instance]")
    feedback.add_argument("--url", default="http://127.0.0.1:8501", help="the server's REST URL")
    feedback.add_argument("--token-env", help="environment variable holding the server's feedback token")
    monitor = sub.add_parser("monitor", help="online accuracy per served version and A/B arm from feedback")
    monitor.add_argument("--model", required=True)
    monitor.add_argument("--home", help=_HOME_HELP)
    monitor.add_argument("--since", help="only predictions answered since this ISO time")
    monitor.add_argument("--config", help="YAML/JSON config giving monitor_max_drop / monitor_min_feedback, "
                                               "and home and metadata: (where ML Metadata is, e.g. MySQL)")
    monitor.add_argument("--max-drop", type=float, help="allowed online drop below offline accuracy (default 0.05)")
    monitor.add_argument("--min-feedback", type=int, help="labelled predictions needed per version (default 30)")
    monitor.add_argument("--feedback-dir", help="default HOME/feedback")
    monitor.add_argument("--json", action="store_true", help="print the record as JSON")
    export = sub.add_parser("export-feedback", help="write fed-back requests as a new span (class folders / CSV)")
    export.add_argument("--model", required=True)
    export.add_argument("--out", required=True, help="the new span folder, e.g. incoming/span-4")
    export.add_argument("--home", help=_HOME_HELP)
    export.add_argument("--previous", help="span to take classes missing from the feedback from "
                                           "(default: the sibling span with the highest smaller number)")
    export.add_argument("--since", help="only predictions answered since this ISO time")
    export.add_argument("--feedback-dir", help="default HOME/feedback")


def dispatch(args: argparse.Namespace) -> int:
    """Runs `args.command` (one of COMMANDS); returns its exit status."""
    return {"promote": cmd_release, "rollback": cmd_release, "feedback": cmd_feedback,
            "monitor": cmd_monitor, "export-feedback": cmd_export}[args.command](args)


def _error(command: str, message: str, status: int) -> int:
    print(f"conveyor {command}: {message}", file=sys.stderr)
    return status


def cmd_release(args: argparse.Namespace) -> int:
    """promote / rollback: 0 done, 1 no canary (nothing changed), 2 unreadable or unwritable
    models.config."""
    from serving.model_config import ModelConfigError, ReleaseError, promote_canary, rollback_canary
    serving_dir = os.path.join(home_dir(args.home), "serving")
    try:
        if args.command == "promote":
            old, new = promote_canary(serving_dir, args.model)
            print(f"{args.model}: canary version {new} is now stable; version {old} unloads. "
                  "A server polling models.config switches within its poll interval.")
        else:
            stable, canary = rollback_canary(serving_dir, args.model)
            print(f"{args.model}: canary version {canary} removed from serving; version {stable} stays stable.")
    except ReleaseError as e:
        return _error(args.command, str(e), 1)
    except ModelConfigError as e:
        return _error(args.command, str(e), 2)
    except OSError as e:  # e.g. a read-only serving folder: models.config is left as it was
        return _error(args.command, f"cannot rewrite {os.path.join(serving_dir, 'models.config')}: "
                                    f"{e.strerror or e} (nothing changed)", 2)
    return 0


def read_labels_csv(path: str) -> List[Dict]:
    """Feedback entries of a CSV with a header naming request_id and label (instance optional).

    Raises:
      ValueError: unreadable file, missing columns, or a row with an empty value or a bad
        instance; the message names the file and line.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "request_id" not in fields or "label" not in fields:
                raise ValueError(f"{path}: the header must name request_id and label columns, got {fields}")
            entries = []
            for row in reader:
                line = reader.line_num
                if not (row.get("request_id") or "").strip() or not (row.get("label") or "").strip():
                    raise ValueError(f"{path} line {line}: empty request_id or label")
                entry = {"request_id": row["request_id"].strip(), "label": row["label"].strip()}
                if (row.get("instance") or "").strip():
                    try:
                        entry["instance"] = int(row["instance"])
                    except ValueError:
                        raise ValueError(f"{path} line {line}: instance '{row['instance']}' is not an integer") from None
                entries.append(entry)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from e
    return entries


def cmd_feedback(args: argparse.Namespace) -> int:
    """0 every label accepted, 1 some refused or the server failed, 2 bad file or arguments."""
    try:
        entries = read_labels_csv(args.file)
    except ValueError as e:
        return _error("feedback", str(e), 2)
    headers = {"Content-Type": "application/json"}
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if not token:
            return _error("feedback", f"--token-env {args.token_env}: the variable is unset or empty", 2)
        headers["Authorization"] = f"Bearer {token}"
    url = f"{args.url.rstrip('/')}/v1/conveyor/models/{args.model}/feedback"
    counts: Dict[str, int] = {}
    refused = []
    for start in range(0, len(entries), _CHUNK):
        request = urllib.request.Request(url, data=json.dumps(entries[start:start + _CHUNK]).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            return _error("feedback", f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}", 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            return _error("feedback", f"{url}: {getattr(e, 'reason', e)}", 1)
        for result in answer["results"]:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
            if result["status"] != "accepted":
                refused.append(result)
    print(f"{len(entries)} label(s) sent: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for result in refused[:5]:
        print(f"  {result['request_id']}: {result['status']}" + (f" ({result['error']})" if result.get("error") else ""))
    return 1 if refused else 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """0 nothing flagged, 1 a problem, 2 no verdict or bad arguments."""
    from conveyor.monitor import MonitorError, check_model, describe
    from conveyor.quiet import third_party_output
    try:
        max_drop, min_feedback = args.max_drop, args.min_feedback
        if max_drop is None or min_feedback is None:
            from conveyor.serve import _serving_config
            serving, _ = _serving_config(args.config)
            if serving is None:
                from pipelines.config import ServingConfig
                serving = ServingConfig()
            max_drop = serving.monitor_max_drop if max_drop is None else max_drop
            min_feedback = serving.monitor_min_feedback if min_feedback is None else min_feedback
        if not 0.0 <= max_drop <= 1.0 or min_feedback < 1:
            return _error("monitor", f"expected --max-drop in 0..1 and --min-feedback >= 1, got "
                                     f"{max_drop} and {min_feedback}", 2)
        where = store_location(args.home, args.config)
        with third_party_output(where.home, "monitor"):
            record = check_model(where.home, args.model, args.since, max_drop, min_feedback,
                                 args.feedback_dir, metadata=where.metadata)
    except (MonitorError, ConfigError, ValueError) as e:
        return _error("monitor", str(e), 2)
    if args.json:
        json.dump(record, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(describe(record))
    return 1 if record["problems"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    """0 written, 2 nothing to export or bad arguments."""
    from conveyor.feedback import FEEDBACK_DIR, ExportError, export_span
    from conveyor.monitor import parse_since
    try:
        result = export_span(args.feedback_dir or os.path.join(home_dir(args.home), FEEDBACK_DIR),
                             args.model, args.out, args.previous, parse_since(args.since))
    except (ExportError, ValueError, OSError) as e:
        return _error("export-feedback", str(e), 2)
    total = sum(result["examples"].values())
    print(f"{result['out']}: {total} fed-back {result['kind']} example(s) "
          + ", ".join(f"{k} {v}" for k, v in result["examples"].items()))
    if result["merged"]:
        print(f"  classes without feedback, taken from {result['previous']}: "
              + ", ".join(f"{k} {v}" for k, v in result["merged"].items()))
    return 0
