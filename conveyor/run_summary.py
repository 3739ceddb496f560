"""The end-of-run summary table, read back from ML Metadata (never from folder names).

It reads MLMD through conveyor/metadata (the same store, run contexts and TFMA reader as
`conveyor runs | lineage | diff`); only the table's wording is its own.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from conveyor.metadata import artifacts, runs
from conveyor.metadata.artifacts import RuleResult, SpansUsed, rule_line
from conveyor.metadata import store as mlmd
from conveyor.metadata.runs import NodeRun
from pipelines.config import Config

# The list of skipped inputs in an Examples artifact (components/labelled_example_gen.py
# SKIPPED_FILE, not imported: that module loads Beam).
SKIPPED_FILE = "skipped.json"
SKIPPED_SHOWN = 3


@dataclasses.dataclass
class RunSummary:
    """What a person reads after `conveyor run`: one run's states, metrics, verdicts and push.

    Fields:
      pipeline, run_id: the pipeline and the run ("-" when the pipeline has no runs).
      nodes: every execution of the run, oldest first (NodeRun.seconds in seconds).
      blessed: the Evaluator's verdict (None: it did not run).
      not_blessed_because: one sentence per failed blessing rule (per failed TFMA threshold
        for blessings without rule results).
      rules: every blessing rule with candidate, baseline and verdict (RuleResult).
      candidate, baseline: overall TFMA metrics (accuracies 0..1) of the candidate and the baseline.
      majority_baseline: majority-class rate on the eval split (0..1), from the ModelBlessing.
      per_class_accuracy: label name -> the candidate's accuracy (0..1).
      infra_blessed: the InfraValidator's verdict (None: it did not run); infra_note: its reason
        or "<n> requests, p99 <ms> ms".
      pushed_version, pushed_path: the version pushed and its folder (None: nothing pushed).
      push_note: why nothing was pushed, for a person ("" when pushed).
      unchanged_since: for a no-op rerun (nothing changed, nothing ran), the run it repeats.
      spans: the spans the candidate trained on and was evaluated on (None: no Trainer ran).
      eval_span: the config's eval_span ("same"/"next"; None when unknown), for the wording.
      skipped_count: inputs the ExampleGen skipped (--skip-bad-rows / --skip-bad-images).
      skipped_file: the JSON list of all of them ([{"source", "reason"}]; None: nothing skipped).
      skipped_first: (source, reason) of the first SKIPPED_SHOWN of them.
      edge: the EdgeExporter's record (None: no edge exports configured or it did not run).
    """
    pipeline: str
    run_id: str
    nodes: List[NodeRun]
    blessed: Optional[bool] = None
    not_blessed_because: List[str] = dataclasses.field(default_factory=list)
    rules: List[RuleResult] = dataclasses.field(default_factory=list)
    candidate: Dict[str, float] = dataclasses.field(default_factory=dict)
    baseline: Dict[str, float] = dataclasses.field(default_factory=dict)
    majority_baseline: Optional[float] = None
    per_class_accuracy: Dict[str, float] = dataclasses.field(default_factory=dict)
    infra_blessed: Optional[bool] = None
    infra_note: str = ""
    pushed_version: Optional[str] = None
    pushed_path: Optional[str] = None
    push_note: str = ""
    unchanged_since: Optional[str] = None
    spans: Optional[SpansUsed] = None
    eval_span: Optional[str] = None
    skipped_count: int = 0
    skipped_file: Optional[str] = None
    skipped_first: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    edge: Optional[artifacts.EdgeExportsSummary] = None

    def node(self, name: str) -> Optional[NodeRun]:
        """The NodeRun of node id `name`, or None if it did not run."""
        return next((n for n in self.nodes if n.node == name), None)

    def table(self) -> str:
        """The summary as a plain-text table (component states, metrics, verdicts, push)."""
        lines = [f"\nRun {self.run_id} of pipeline '{self.pipeline}'",
                 f"  {'component':<28} {'state':<10} {'seconds':>8}"]
        for n in self.nodes:
            state = n.state.upper() if n.state == "failed" else n.state  # stands out in the table
            lines.append(f"  {n.node:<28} {state:<10} {n.seconds:8.1f}")
        if self.skipped_count:
            lines.append(f"\n  Skipped inputs: {self.skipped_count} (bad rows or images), all listed in "
                         f"{self.skipped_file}")
            lines.extend(f"    - {source}: {reason}" for source, reason in self.skipped_first)
            if self.skipped_count > len(self.skipped_first):
                lines.append(f"    ... and {self.skipped_count - len(self.skipped_first)} more")
        if self.candidate:
            lines.append(f"\n  {'metric':<28} {'candidate':>10} {'baseline':>10}")
            for key in sorted(self.candidate):
                base = self.baseline.get(key)
                lines.append(f"  {key:<28} {self.candidate[key]:10.4f} "
                             f"{(f'{base:10.4f}' if base is not None else '         -')}")
            if self.majority_baseline is not None:
                lines.append(f"  {'majority-class rate (eval)':<28} {self.majority_baseline:10.4f}")
        if self.spans is not None and self.spans.worth_showing(self.eval_span):
            lines.append(f"\n  Data: {self.spans.sentence(self.eval_span)}")
        if self.rules:
            lines.append("\n  Blessing rules:")
            lines.extend(f"    {rule_line(r)}" for r in self.rules)
        if self.blessed is not None:
            verdict = "BLESSED" if self.blessed else "NOT blessed"
            lines.append(f"\n  Model: {verdict}" + ("" if self.blessed else
                         "".join(f"\n    - {r}" for r in self.not_blessed_because)))
        if self.infra_blessed is not None:
            lines.append(f"  Infra validation: {'passed' if self.infra_blessed else 'FAILED'} ({self.infra_note})")
        if self.pushed_path:
            lines.append(f"  Pushed: version {self.pushed_version} -> {self.pushed_path}")
        elif self.push_note:
            lines.append(f"  Not pushed: {self.push_note}")
        if self.edge is not None and self.edge.exports:
            lines.append(f"  Edge exports -> {self.edge.destination} (SavedModel accuracy "
                         f"{self.edge.reference_accuracy:.4f} on {self.edge.eval_examples} eval examples):")
            lines.extend(f"    {x.line()}" for x in self.edge.exports)
        elif self.edge is not None and self.edge.reason:
            lines.append(f"  Edge exports: none ({self.edge.reason})")
        return "\n".join(lines)


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """A read-only store on the MLMD SQLite file `metadata_path` (see metadata.store.open_store).

    Raises:
      LineageError: the file does not exist.
    """
    return mlmd.open_store(metadata_path=metadata_path)


def read_summary(metadata_path: str, pipeline: str, run: Optional[metadata_store_pb2.Context] = None) -> RunSummary:
    """The summary of one run of `pipeline` (default: its latest run).

    Args:
      metadata_path: the MLMD SQLite file (Config.metadata_path).
      run: a run context (see metadata.runs.resolve_run); None = the latest run.
    Returns:
      the RunSummary; RunSummary(pipeline, "-", []) when the store or the pipeline has no runs.
    """
    if not os.path.isfile(metadata_path):
        return RunSummary(pipeline, "-", [])
    return store_summary(open_store(metadata_path), pipeline, run)


def store_summary(store: metadata_store.MetadataStore, pipeline: str,
                  run: Optional[metadata_store_pb2.Context] = None) -> RunSummary:
    """read_summary on an open store (any backend: SQLite, MySQL).

    Returns:
      the RunSummary; RunSummary(pipeline, "-", []) when the pipeline has no runs.
    """
    graph = mlmd.Graph(store)
    if run is None:
        try:
            contexts = runs.run_contexts(graph, pipeline)
        except mlmd.LineageError:  # the pipeline never ran
            contexts = []
        run = contexts[-1] if contexts else None
    if run is None:
        return RunSummary(pipeline, "-", [])
    summary = RunSummary(pipeline, run.name, runs.node_runs(graph, run))
    for n in summary.nodes:
        for examples in n.outputs.get("Examples", []):
            count = mlmd.props(examples).get("skipped_count")
            if count:  # Conveyor's ExampleGens set it; Transform's examples have none
                summary.skipped_count = int(count)
                summary.skipped_file = os.path.join(examples.uri, SKIPPED_FILE)
                summary.skipped_first = _first_skipped(summary.skipped_file)
        for blessing in n.outputs.get("ModelBlessing", []):
            found = artifacts.blessing_summary(graph, blessing)
            summary.blessed = found.blessed
            summary.rules = found.rules
            if found.majority_baseline is not None:
                summary.majority_baseline = found.majority_baseline
        for evaluation in n.outputs.get("ModelEvaluation", []):
            metrics = artifacts.evaluation_metrics(evaluation.uri)
            summary.candidate.update(metrics.candidate)
            summary.baseline.update(metrics.baseline)
            summary.per_class_accuracy.update(
                (label, v["candidate"]) for label, v in metrics.per_label.items() if "candidate" in v)
            if not summary.rules:  # the blessing's rule results say it better
                summary.not_blessed_because.extend(metrics.failures)
            if metrics.error:
                summary.not_blessed_because.append(metrics.error)
        for infra in n.outputs.get("InfraBlessing", []):
            found = artifacts.infra_summary(graph, infra)
            summary.infra_blessed, summary.infra_note = found.blessed, found.note()
        for edge in n.outputs.get(artifacts.EDGE_EXPORTS_TYPE, []):
            summary.edge = artifacts.edge_exports_summary(graph, edge)
        for pushed in n.outputs.get("PushedModel", []):
            p = mlmd.props(pushed)
            if p.get("pushed") == 1:
                summary.pushed_version = p.get("pushed_version")
                summary.pushed_path = p.get("pushed_destination")
            else:
                summary.push_note = p.get("reason", "not pushed")
    summary.spans = artifacts.run_spans(graph, {n.node: n.execution_id for n in summary.nodes
                                                if n.execution_id is not None})
    blocked = [r for r in summary.rules if r.passed is False]
    summary.not_blessed_because[:0] = [f"rule {r.rule}: candidate " + (
        f"{r.candidate:.4f}" if r.candidate is not None else "-") + (f" ({r.note})" if r.note != "failed" else "")
        for r in blocked]
    if summary.blessed is False and summary.push_note.startswith(runs.PUSH_NOT_BLESSED):
        summary.push_note = ((f"blocked by blessing rule {blocked[0].rule}" if blocked
                              else "not blessed by the Evaluator")
                             + summary.push_note[len(runs.PUSH_NOT_BLESSED):])
    elif summary.infra_blessed is False and summary.push_note == runs.PUSH_NOT_BLESSED:
        summary.push_note = runs.PUSH_INFRA_FAILED  # recorded by Pushers before the reasons were told apart
    failed = [n.node for n in summary.nodes if n.state == "failed"]
    if failed and not summary.push_note:
        summary.push_note = f"run stopped at {failed[0]}"
    return summary


def _first_skipped(path: str) -> List[Tuple[str, str]]:
    """(source, reason) of the first SKIPPED_SHOWN entries of a skipped.json; [] if unreadable
    (the count and the path are still shown)."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        return [(str(e["source"]), str(e["reason"])) for e in entries[:SKIPPED_SHOWN]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def summarize(config: Config) -> RunSummary:
    """The summary of the newest run of config's pipeline (the run that just happened: runs
    hold the HOME lock)."""
    if config.metadata is None:
        summary = read_summary(config.metadata_path, config.name)
    else:
        summary = store_summary(mlmd.open_store(config.home_dir, metadata=config.metadata), config.name)
    summary.eval_span = config.eval_span
    return summary
