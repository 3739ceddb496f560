"""`conveyor runs | lineage | diff | report`: run history and lineage read from MLMD.

The commands parse flags and print; the queries live in conveyor/metadata and return
dataclasses, whose `to_json()` is what `--json` prints.
"""
import argparse
import json
import sys
from typing import Any, Callable, List

from conveyor.metadata.diff import RunDiff, diff_runs
from conveyor.metadata.artifacts import rule_line
from conveyor.metadata.lineage import Lineage, ModelsFromExamples, lineage_of_version, models_from_examples
from conveyor.metadata.runs import RunRecord, list_runs
from conveyor.quiet import third_party_output
from conveyor.metadata.store import LineageError, Record, StoreLocation, home_dir, store_location, to_json_value
from pipelines.config import DEFAULT_HOME, Config, ConfigError

COMMANDS = ("runs", "lineage", "diff", "report")
_HOME_HELP = f"Conveyor HOME holding metadata.sqlite (default ./{DEFAULT_HOME})"
CONFIG_HELP = "config file whose `metadata:` (and `home:`) say where ML Metadata is (e.g. a MySQL database)"


def add_store_flags(parser) -> None:
    """--home and --config: where a read command finds ML Metadata (store_location)."""
    parser.add_argument("--home", help=_HOME_HELP)
    parser.add_argument("--config", help=CONFIG_HELP)


def location(args: argparse.Namespace) -> StoreLocation:
    """The store of the command's --home / --config (raises ConfigError for a bad config)."""
    return store_location(getattr(args, "home", None), getattr(args, "config", None))


class UsageError(ValueError):
    """Flags that do not make a command (exit status 2); the message says what to give."""


def add_commands(sub) -> None:
    """Adds the runs, lineage, diff and report subcommands to an argparse subparsers object."""
    runs = sub.add_parser("runs", help="one row per pipeline run: states, durations, blessed, pushed version")
    add_store_flags(runs)
    runs.add_argument("--name", help="only this pipeline/model name (default: all)")
    runs.add_argument("--json", action="store_true", help="machine-readable output")

    lineage = sub.add_parser("lineage", help="a pushed model version back to its data, or data forward "
                                             "to the models trained on it")
    lineage.add_argument("--model", help="model (pipeline) name")
    lineage.add_argument("--version", help="pushed version (default: the latest pushed)")
    lineage.add_argument("--from-examples", metavar="URI",
                         help="Examples artifact URI (or the input data folder): which models trained on it")
    add_store_flags(lineage)
    lineage.add_argument("--json", action="store_true", help="machine-readable output")

    diff = sub.add_parser("diff", help="what changed between two runs: config, data, schema, metrics")
    diff.add_argument("run_a", help="run id, unique prefix, or position (1 = oldest, -1 = latest)")
    diff.add_argument("run_b", help="run id, unique prefix, or position")
    add_store_flags(diff)
    diff.add_argument("--name", help="pipeline name (needed when the store has several)")
    diff.add_argument("--json", action="store_true", help="machine-readable output")

    report = sub.add_parser("report", help="self-contained HTML report of one run")
    report.add_argument("--run", help="run id, unique prefix, or position (default: latest)")
    add_store_flags(report)
    report.add_argument("--name", help="pipeline name (needed when the store has several)")
    report.add_argument("--out", required=True, help="HTML file to write")


def dispatch(args: argparse.Namespace) -> int:
    """Runs the subcommand `args.command` (one of COMMANDS).

    Returns:
      the exit status: 0 done, 1 a lookup failed (message on stderr), 2 bad arguments, a bad
      config or an unreachable MySQL store (one line).
      Third-party start-up output goes to HOME/logs/<command>.log (conveyor/quiet.py).
    """
    command = {"runs": cmd_runs, "lineage": cmd_lineage, "diff": cmd_diff, "report": cmd_report}[args.command]
    try:
        # Output is printed inside the block (stdout is the terminal's); error lines after it.
        with third_party_output(home_dir(getattr(args, "home", None)), args.command):
            return command(args)
    except LineageError as e:
        print(f"conveyor {args.command}: {e}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError) as e:
        print(f"conveyor {args.command}: {e}", file=sys.stderr)
        return 2


def _print_json(value: Any) -> None:
    json.dump(to_json_value(value), sys.stdout, indent=1, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _emit(args, result: Record, text_format: Callable[[Any], str]) -> int:
    """--json prints the record's JSON form; otherwise text_format renders it for a person."""
    if args.json:
        _print_json(result)
    else:
        print(text_format(result))
    return 0


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# runs ---------------------------------------------------------------------------------

_SHORT = {"ImageExampleGen": "ExampleGen", "TextExampleGen": "ExampleGen", "GatedExampleValidator": "Validator",
          "latest_blessed_model": "Resolver", "BaselineEvaluator": "Evaluator", "ServingPusher": "Pusher",
          "StatisticsGen": "Stats", "ConveyorInfraValidator": "InfraVal"}


def cmd_runs(args: argparse.Namespace) -> int:
    """`conveyor runs [--name N] [--json]`: one row per run. Raises LineageError (see dispatch)."""
    rows = list_runs(location(args).open(), args.name)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no runs recorded" + (f" for '{args.name}'" if args.name else ""))
        return 0
    print(format_runs(rows))
    return 0


def format_runs(rows: List[RunRecord]) -> str:
    """The runs as one text table per pipeline: states per component, blessed, pushed version."""
    lines = []
    for pipeline in dict.fromkeys(r.pipeline for r in rows):
        mine = [r for r in rows if r.pipeline == pipeline]
        nodes = list(dict.fromkeys(n.node for r in mine for n in r.nodes))
        heads = [_SHORT.get(n, n) for n in nodes]
        widths = [max(len(h), 8) for h in heads]
        lines.append(f"pipeline {pipeline}")
        header = f"  {'#':>2} {'run id':<27} {'start':<20} {'secs':>6}  " + " ".join(
            h.ljust(w) for h, w in zip(heads, widths)) + "  blessed  pushed"
        lines.append(header)
        for i, r in enumerate(mine, 1):
            states = {n.node: n.state for n in r.nodes}
            start = (r.start or "-")[:19].replace("T", " ")
            cells = " ".join(states.get(n, "not run").ljust(w) for n, w in zip(nodes, widths))
            pushed = r.pushed_version or (f"- ({r.push_note})" if r.push_note else "-")
            if r.manual_blessing:
                m = r.manual_blessing
                pushed += f"  manual blessing of run {m['run_id']} by {m['by']}: {m['reason']}"
            lines.append(f"  {i:>2} {r.run_id:<27} {start:<20} {_fmt(r.duration_seconds, 1):>6}  "
                         f"{cells}  {_fmt(r.blessed):<7}  {pushed}")
        lines.append("")
    return "\n".join(lines).rstrip()


# lineage ------------------------------------------------------------------------------

def cmd_lineage(args: argparse.Namespace) -> int:
    """`conveyor lineage --model N [--version V] | --from-examples URI [--json]`; 2 if neither is given."""
    if not args.model and not args.from_examples:
        raise UsageError("give --model NAME [--version V] or --from-examples URI")
    store = location(args).open()
    if args.from_examples:
        return _emit(args, models_from_examples(store, args.from_examples), format_forward)
    return _emit(args, lineage_of_version(store, args.model, args.version), format_lineage)


def format_lineage(r: Lineage) -> str:
    """A Lineage as text: pushed version, verdicts, metrics, model, transform, schema, data."""
    out = [f"model {r.model_name} version {r.version}  (pushed versions: {', '.join(r.pushed_versions)})",
           f"  pushed      artifact {r.pushed.artifact_id} -> {r.pushed.destination}  "
           f"run {r.pushed.run_id}"]
    b = r.blessing
    if b and b.manual:
        out.append(f"  blessing    artifact {b.artifact_id}: BLESSED MANUALLY by {b.blessed_by} at {b.created}: "
                   f"{b.reason}  (overrides the Evaluator's blessing artifact {b.overrides_blessing_id})")
    elif b:
        out.append(f"  blessing    artifact {b.artifact_id}: {'BLESSED' if b.blessed else 'NOT blessed'}"
                   f"  (accuracy floor {_fmt(b.accuracy_floor)}, majority-class rate "
                   f"{_fmt(b.majority_baseline)})")
        out.extend(f"      {rule_line(rule)}" for rule in b.rules)
    infra = r.infra_blessing
    if infra:
        out.append(f"  infra       artifact {infra.artifact_id}: {'BLESSED' if infra.blessed else 'NOT blessed'}"
                   f"  ({infra.measurements.get('num_requests', '-')} requests, "
                   f"p99 {_fmt(infra.measurements.get('p99_latency_ms'), 1)} ms)")
    edge = r.edge_exports
    if edge and edge.exports:
        out.append(f"  edge        artifact {edge.artifact_id} -> {edge.destination}  (SavedModel accuracy "
                   f"{_fmt(edge.reference_accuracy)} on {edge.eval_examples} eval examples)")
        out.extend(f"      {x.line()}" for x in edge.exports)
    ev = r.evaluation
    if ev:
        base = ev.baseline_model
        out.append(f"  evaluation  artifact {ev.artifact.artifact_id if ev.artifact else None}  baseline: " +
                   (f"model artifact {base.artifact_id} (pushed versions {', '.join(base.pushed_versions) or '-'})"
                    if base else "none (first blessed model)"))
        for key in sorted(ev.candidate):
            digits = 0 if "count" in key else 4
            out.append(f"      {key:<30} candidate {_fmt(ev.candidate[key], digits)}  "
                       f"baseline {_fmt(ev.baseline.get(key), digits)}")
        for label, v in (ev.metrics.per_label if ev.metrics else {}).items():
            out.append(f"      accuracy[{label}]{'':<{max(0, 19 - len(label))}} candidate {_fmt(v.get('candidate'))}  "
                       f"baseline {_fmt(v.get('baseline'))}")
    if r.spans and r.spans.worth_showing():
        out.append(f"  data        {r.spans.sentence()}")
    m = r.model
    if m:
        out.append(f"  model       artifact {m.artifact_id} ({m.model_type}), run {m.run_id}, "
                   f"train steps {m.train_steps}, eval steps {m.eval_steps}")
        out.append(f"      module  {m.module_path}")
        out.append(f"      hyperparameters {json.dumps(m.hyperparameters, sort_keys=True)}")
    t = r.transform_graph
    if t:
        out.append(f"  transform   artifact {t.artifact_id}  {t.uri}  module fingerprint "
                   f"{(t.module_fingerprint or '-')[:12]}")
    s = r.schema
    if s:
        out.append(f"  schema      artifact {s.artifact_id}  features: {', '.join(sorted(s.features))}")
    st = r.statistics
    if st:
        counts = ", ".join(f"{k}={v.num_examples}" for k, v in st.splits.items())
        out.append(f"  statistics  artifact {st.artifact_id}  {counts}")
    a = r.anomalies
    if a:
        out.append(f"  anomalies   artifact {a.artifact_id}  " +
                   ("none" if not a.count else "; ".join(x for v in a.splits.values() for x in v)))
    e = r.examples
    if e:
        counts = ", ".join(f"{k}={v}" for k, v in e.split_counts.items())
        out.append(f"  examples    artifact {e.artifact_id}  {e.uri}")
        out.append(f"      input {e.input_base} ({e.input_pattern}), span {e.span}, "
                   f"{e.example_count} examples ({counts}), fingerprint {e.input_fingerprint}")
    return "\n".join(out)


def format_forward(r: ModelsFromExamples) -> str:
    """The models trained on some examples as text: blessed, served versions."""
    e = r.examples
    out = [f"examples artifact {e.artifact_id} {e.uri}  (input {e.input_base}, span {e.span})"]
    if not r.models:
        out.append("  no model was trained on these examples")
    for m in r.models:
        served = (f"served as version {', '.join(m.pushed_versions)}"
                  + (" (latest)" if m.serving_latest else "")) if m.served else "not served"
        out.append(f"  model artifact {m.artifact_id} of {m.model_name} ({m.model_type}), run "
                   f"{m.run_id}: blessed {_fmt(m.blessed)}, {served}")
    return "\n".join(out)


# diff ---------------------------------------------------------------------------------

def cmd_diff(args: argparse.Namespace) -> int:
    """`conveyor diff A B [--name N] [--json]`. Raises LineageError (see dispatch)."""
    return _emit(args, diff_runs(location(args).open(), args.name, args.run_a, args.run_b), format_diff)


def format_diff(d: RunDiff) -> str:
    """A RunDiff as text: component states, then config, data, schema and metric changes
    between runs A and B (only what differs; a component that ran in one run only is
    listed under its states as "not run", not compared)."""
    out = [f"pipeline {d.pipeline}:  A = {d.run_a}   B = {d.run_b}"] + [f"  {n}" for n in d.notes]
    if d.repeats:
        return "\n".join(out)
    out += ["", "component states:"]
    out += [f"  {n}: {v.a} -> {v.b}" for n, v in d.states.items()] or ["  same in both runs"]
    out += ["", "config (exec properties of components that ran in both runs):"]
    out += [f"  {c.node}.{c.key}: {_repr(c.a)} -> {_repr(c.b)}" for c in d.config] or ["  no changes"]
    out += ["", "data:"]
    ex = d.examples
    change = "same artifact" if ex.same_artifact else f"{_fmt(ex.a)} -> {_fmt(ex.b)}"
    out.append(f"  examples: {change}")
    for split, s in d.data.items():
        n = s.num_examples
        out.append(f"  [{split}] examples {_fmt(n.a)} -> {_fmt(n.b)}")
        for label, v in s.labels.items():
            out.append(f"  [{split}] label {label}: {_fmt(v.a)} -> {_fmt(v.b)}")
    sc = d.schema
    out += ["", "schema:" + (" same artifact" if sc.same_artifact else "")]
    if not (sc.added or sc.removed or sc.changed):
        out.append("  no feature changes")
    out += [f"  + {f}" for f in sc.added] + [f"  - {f}" for f in sc.removed]
    out += [f"  ~ {c.feature}: {c.a.to_json()} -> {c.b.to_json()}" for c in sc.changed]
    out += ["", "metrics (candidate):"]
    if not d.evaluated:
        out.append("  not compared: a run was not evaluated")
    elif not (d.metrics or d.per_label_accuracy):
        out.append("  no changes")
    for key, v in d.metrics.items():
        digits = 0 if "count" in key else 4
        delta = f"  ({v.delta:+.{digits}f})" if v.delta is not None else ""
        out.append(f"  {key:<32} {_fmt(v.a, digits)} -> {_fmt(v.b, digits)}{delta}")
    for label, v in d.per_label_accuracy.items():
        out.append(f"  accuracy[{label}]{'':<{max(0, 22 - len(label))}} {_fmt(v.a)} -> {_fmt(v.b)}")
    out.append(f"  blessed: {_fmt(d.blessed.a)} -> {_fmt(d.blessed.b)}   pushed version: "
               f"{_fmt(d.pushed_version.a)} -> {_fmt(d.pushed_version.b)}")
    return "\n".join(out)


def _repr(value: Any) -> str:
    """An exec property value in a diff line: repr, or "absent" when the run has none."""
    return "absent" if value is None else repr(value)


# report -------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    """`conveyor report [--run R] [--name N] --out FILE`: writes the HTML report, prints its path."""
    from conveyor import report
    where = location(args)
    print(report.write_report(where.open(), args.out, args.name, args.run, home=where.home))
    return 0
