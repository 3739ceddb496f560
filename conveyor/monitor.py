"""`conveyor monitor --model NAME [--since ISO-TIME]`: online accuracy of the served versions
on ground-truth feedback (conveyor/feedback.py), and the A/B test between a canary and stable.

For each served version (and each arm of an A/B split) it counts the fed-back predictions,
their accuracy with a 95% Wilson score interval, and the accuracy per true class. For an A/B
split (predictions the split routed, so the arms are randomized) it compares the arms with a
two-sided two-proportion z-test. A version is flagged when its online accuracy is below its
offline eval accuracy (MLMD: the Evaluator's accuracy metric of the pushed model) by more than
`monitor_max_drop` with significance: the upper end of its Wilson interval is below
offline - max_drop. A canary significantly worse than stable (p < 0.05) is flagged too.

Like `conveyor drift`, there is no verdict on too little: a version with fewer than
`monitor_min_feedback` labelled predictions is reported as "not enough feedback", and with
no version (or no A/B arm pair) above it the exit status is 2, never 0.

Exit status: 0 nothing flagged, 1 a flagged version or a canary significantly worse than
stable, 2 no verdict (no or too little feedback, unreadable records, bad arguments).
The record is written to HOME/monitor/<model>.json (temp file + rename).

Statistics (scipy.stats): Wilson score interval = binomtest(k, n).proportion_ci(method="wilson")
(Wilson 1927, "Probable inference, the law of succession, and statistical inference", JASA 22);
two-proportion z-test with the pooled proportion p = (k1 + k2) / (n1 + n2),
z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2)), p-value = 2 sf(|z|) of the standard normal
(e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 7.3.3 "How can we determine whether two
processes produce the same proportion of defectives?").
"""
import dataclasses
import datetime
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from conveyor.feedback import FEEDBACK_DIR, JoinResult, LabelledPrediction, join
from pipelines.config import MySQLMetadata

MONITOR_DIR = "monitor"
CONFIDENCE = 0.95
ALPHA = 0.05


class MonitorError(RuntimeError):
    """No verdict: nothing (or too little) to evaluate; the message says what is missing."""


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """The Wilson score interval of a proportion correct/n (see the module docstring).

    Args:
      correct: successes, 0..n; n: trials, > 0; confidence: two-sided level, e.g. 0.95.
    Returns:
      (low, high), both in [0, 1].
    """
    from scipy.stats import binomtest
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> Tuple[float, float, float]:
    """Two-sided two-proportion z-test of k1/n1 against k2/n2 (see the module docstring).

    Returns:
      (difference p1 - p2, z, p-value); z = 0 and p-value 1.0 when the pooled proportion is
      0 or 1 (both arms all wrong or all right: no evidence of a difference).
    """
    from scipy.stats import norm
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return p1 - p2, 0.0, 1.0
    z = (p1 - p2) / se
    return p1 - p2, z, float(2 * norm.sf(abs(z)))


@dataclasses.dataclass
class Accuracy:
    """Online accuracy of a group of labelled predictions.

    Fields: n (labelled predictions), correct, accuracy (correct / n), wilson_low/high (95%
    Wilson interval), per_class ({true class: {"n", "correct", "accuracy"}}, i.e. recall).
    """
    n: int
    correct: int
    accuracy: float
    wilson_low: float
    wilson_high: float
    per_class: Dict[str, Dict[str, Any]]

    @classmethod
    def of(cls, predictions: List[LabelledPrediction]) -> "Accuracy":
        n = len(predictions)
        correct = sum(p.correct for p in predictions)
        low, high = wilson_interval(correct, n)
        per_class: Dict[str, Dict[str, Any]] = {}
        for p in predictions:
            entry = per_class.setdefault(p.label, {"n": 0, "correct": 0})
            entry["n"] += 1
            entry["correct"] += int(p.correct)
        for entry in per_class.values():
            entry["accuracy"] = round(entry["correct"] / entry["n"], 4)
        return cls(n, correct, round(correct / n, 4), round(low, 4), round(high, 4),
                   dict(sorted(per_class.items())))


def _offline_accuracy(store, model: str, version: int) -> Optional[float]:
    """The Evaluator's overall accuracy of a pushed version, read from MLMD (`store`), or None
    when unknown (no store, no lineage of that version, no accuracy metric)."""
    if store is None:
        return None
    from conveyor.metadata.lineage import lineage_of_version
    from conveyor.metadata.store import LineageError
    from conveyor.pictures import ACCURACY_NAMES  # the Evaluator's names for accuracy
    try:
        info = lineage_of_version(store, model, str(version), with_metrics=True)
    except (LineageError, OSError):
        return None
    candidate = info.evaluation.candidate if info.evaluation else {}
    value = next((candidate[name] for name in ACCURACY_NAMES if candidate.get(name) is not None), None)
    return float(value) if value is not None else None


def _open_store(home: str, metadata: Optional[MySQLMetadata]):
    """The HOME's MLMD store (read-only), None when its SQLite file does not exist.

    Raises:
      MetadataConnectionError (a ConfigError): the MySQL database cannot be reached.
    """
    from conveyor.metadata.store import open_store
    from pipelines.metadata_connection import store_exists
    if not store_exists(home, metadata):
        return None
    return open_store(home, metadata=metadata)


def parse_since(text: Optional[str]) -> Optional[float]:
    """--since ISO-TIME -> Unix seconds (a time without zone is local time; 'Z' is UTC).

    Raises:
      ValueError: not an ISO 8601 date or date-time.
    """
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO 8601 time, e.g. 2026-11-30T09:00") from None
    return value.timestamp()


def check_model(home: str, model: str, since: Optional[str] = None, max_drop: float = 0.05,
                min_feedback: int = 30, feedback_dir: Optional[str] = None,
                offline: Optional[Dict[int, float]] = None,
                metadata: Optional[MySQLMetadata] = None) -> Dict[str, Any]:
    """Computes and records the online evaluation of `model` (see the module docstring).

    Args:
      home: Conveyor HOME (feedback/, metadata.sqlite, monitor/).
      model: the model name.
      since: ISO time; only predictions answered since then count.
      max_drop: allowed drop of online below offline accuracy (0..1).
      min_feedback: labelled predictions a version (or arm) needs for a verdict (>= 1).
      feedback_dir: default HOME/feedback.
      offline: {version: offline accuracy}; default read from MLMD per version.
      metadata: the config's MySQL connection of MLMD; None = HOME/metadata.sqlite.
    Returns:
      The record (also written to HOME/monitor/<model>.json, its "path" key says where):
      model, checked_at, since, predictions, labels, labelled, unmatched_labels, max_drop,
      min_feedback, versions [{version, arms, enough, offline_accuracy, below_offline, n,
      correct, accuracy, wilson_low, wilson_high, per_class}], arms [{arm, versions, ...}],
      ab_test (None or {stable, canary, difference, z, p_value, significant}), problems
      [one line each], verdict ("ok" | "problem").
    Raises:
      MonitorError: no labelled prediction read, or none of the versions / arms has
        min_feedback of them (nothing is written then).
      ValueError: a bad --since or an unreadable record file; MetadataConnectionError (a
        ConfigError, a ValueError) when MLMD on MySQL cannot be reached.
    """
    home = os.path.abspath(home)
    folder = feedback_dir or os.path.join(home, FEEDBACK_DIR)
    joined: JoinResult = join(folder, model, parse_since(since))
    if not joined.labelled:
        raise MonitorError(
            f"no labelled predictions of {model} in {folder} ({joined.predictions} prediction(s), "
            f"{joined.labels} label(s) read{', since ' + since if since else ''}); serve with "
            "--feedback and send labels (conveyor feedback --file)")
    by_version: Dict[int, List[LabelledPrediction]] = {}
    by_arm: Dict[str, List[LabelledPrediction]] = {}
    for p in joined.labelled:
        by_version.setdefault(p.version, []).append(p)
        if p.arm:
            by_arm.setdefault(p.arm, []).append(p)
    problems: List[str] = []
    versions = []
    store = _open_store(home, metadata) if offline is None else None
    for version, group in sorted(by_version.items()):
        acc = Accuracy.of(group)
        reference = offline.get(version) if offline is not None else _offline_accuracy(store, model, version)
        enough = acc.n >= min_feedback
        below = bool(enough and reference is not None and acc.wilson_high < reference - max_drop)
        if below:
            problems.append(f"version {version}: online accuracy {acc.accuracy:.3f} "
                            f"(95% CI {acc.wilson_low:.3f}-{acc.wilson_high:.3f}, n={acc.n}) is below "
                            f"its offline accuracy {reference:.3f} by more than {max_drop}")
        versions.append({"version": version, "arms": sorted({p.arm for p in group if p.arm}),
                         "enough": enough, "offline_accuracy": reference, "below_offline": below,
                         **dataclasses.asdict(acc)})
    arms = []
    for arm, group in sorted(by_arm.items()):
        arms.append({"arm": arm, "versions": sorted({p.version for p in group}),
                     "enough": len(group) >= min_feedback, **dataclasses.asdict(Accuracy.of(group))})
    ab_test = None
    arm_stats = {a["arm"]: a for a in arms}
    if {"stable", "canary"} <= set(arm_stats) and all(arm_stats[a]["enough"] for a in ("stable", "canary")):
        s, c = arm_stats["stable"], arm_stats["canary"]
        difference, z, p_value = two_proportion_test(c["correct"], c["n"], s["correct"], s["n"])
        ab_test = {"stable": {k: s[k] for k in ("versions", "n", "correct", "accuracy")},
                   "canary": {k: c[k] for k in ("versions", "n", "correct", "accuracy")},
                   "difference": round(difference, 4), "z": round(z, 3), "p_value": round(p_value, 6),
                   "significant": p_value < ALPHA}
        if ab_test["significant"] and difference < 0:
            problems.append(f"canary (version {', '.join(map(str, c['versions']))}) is significantly worse "
                            f"than stable: accuracy {c['accuracy']:.3f} vs {s['accuracy']:.3f}, "
                            f"difference {difference:+.3f}, p = {p_value:.2g}")
    short = [f"{v['n']} labelled prediction(s) of version {v['version']}" for v in versions if not v["enough"]]
    short += [f"{a['n']} of the {a['arm']} arm" for a in arms if not a["enough"]]
    if short and not problems:  # "OK" needs every served version and arm judged
        raise MonitorError(
            f"not enough feedback: {model} has " + ", ".join(short)
            + f"; need at least {min_feedback} (monitor_min_feedback) per version and arm for a verdict")
    record = {"model": model,
              "checked_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "since": since, "predictions": joined.predictions, "labels": joined.labels,
              "labelled": len(joined.labelled), "unmatched_labels": joined.unmatched_labels,
              "max_drop": max_drop, "min_feedback": min_feedback, "versions": versions, "arms": arms,
              "ab_test": ab_test, "problems": problems, "verdict": "problem" if problems else "ok"}
    path = os.path.join(home, MONITOR_DIR, f"{model}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    record["path"] = path
    return record


def describe(record: Dict[str, Any]) -> str:
    """The record in plain words: one line per version and arm, the A/B test, the verdict."""
    lines = [f"Online accuracy of {record['model']}: {record['labelled']} labelled of "
             f"{record['predictions']} logged predictions"
             + (f" since {record['since']}" if record["since"] else "")]
    for v in record["versions"]:
        offline = "" if v["offline_accuracy"] is None else f", offline {v['offline_accuracy']:.3f}"
        note = "" if v["enough"] else f"  (not enough feedback, < {record['min_feedback']})"
        lines.append(f"  version {v['version']:<4} accuracy {v['accuracy']:.3f} "
                     f"(95% CI {v['wilson_low']:.3f}-{v['wilson_high']:.3f}, {v['correct']}/{v['n']}){offline}{note}")
        for name, c in v["per_class"].items():
            lines.append(f"      class {name:<16} {c['accuracy']:.3f} ({c['correct']}/{c['n']})")
    for a in record["arms"]:
        lines.append(f"  arm {a['arm']:<8} versions {a['versions']} accuracy {a['accuracy']:.3f} "
                     f"(95% CI {a['wilson_low']:.3f}-{a['wilson_high']:.3f}, {a['correct']}/{a['n']})")
    ab = record["ab_test"]
    if ab:
        lines.append(f"  A/B: canary - stable = {ab['difference']:+.3f}, z = {ab['z']}, p = {ab['p_value']:.3g}"
                     f" ({'significant' if ab['significant'] else 'not significant'} at {ALPHA})")
    if record["problems"]:
        lines.append("PROBLEM:")
        lines += [f"  - {p}" for p in record["problems"]]
    else:
        lines.append("OK: no version below its offline accuracy, no canary worse than stable.")
    lines.append(f"  written to {record['path']}")
    return "\n".join(lines)


def read_monitor(home: str, model: str) -> Optional[Dict[str, Any]]:
    """The last `conveyor monitor` record of a model, or None (no file, or not a JSON object)."""
    try:
        with open(os.path.join(home, MONITOR_DIR, f"{model}.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
