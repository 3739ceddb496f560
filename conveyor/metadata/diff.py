"""Run contents, what changed between two runs, and the DAG's edges as MLMD recorded them."""
import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.metadata.artifacts import (AnomaliesSummary, ExamplesSummary, FeatureSchema, InfraSummary,
                                         RuleResult, SchemaSummary, StatisticsSummary, anomalies_summary, examples_summary,
                                         infra_summary, schema_summary, statistics_summary)
from conveyor.metadata.lineage import Evaluation, ModelSummary, evaluation_of, model_summary
from conveyor.metadata.runs import (RunRecord, default_pipeline, fill_run_record, node_executions, resolve_run,
                                    run_contexts, run_executions)
from conveyor.metadata.store import NOT_RUN, Graph, Record, exec_properties, props


@dataclasses.dataclass
class RunDetails(RunRecord):
    """Everything about one run: its RunRecord plus what its executions recorded.

    Fields (besides RunRecord's; None: the run has no such output):
      exec_properties: node id -> that node's TFX exec properties (see store.exec_properties),
        only for nodes that ran; a cached node's are those of the execution that made the
        artifacts it reused (a cached execution does not record all of them again).
      statistics: StatisticsGen's output.
      schema: the Schema output (SchemaGen or an importer).
      anomalies: ExampleValidator's output.
      examples: ExampleGen's output, with per-split counts from `statistics`.
      evaluation: the Evaluator's evaluation, with majority_baseline/accuracy_floor/rules from its blessing.
      infra_blessing: the InfraValidator's verdict.
      model: the Trainer's Model.
    """
    exec_properties: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    statistics: Optional[StatisticsSummary] = None
    schema: Optional[SchemaSummary] = None
    anomalies: Optional[AnomaliesSummary] = None
    examples: Optional[ExamplesSummary] = None
    evaluation: Optional[Evaluation] = None
    infra_blessing: Optional[InfraSummary] = None
    model: Optional[ModelSummary] = None


def run_details(graph: Graph, pipeline: str, run: mlmd_pb2.Context, with_metrics: bool = True) -> RunDetails:
    """Everything about one run: the runs row plus exec properties, statistics, schema, metrics.

    Args:
      run: a run context of `pipeline` (see runs.resolve_run).
      with_metrics: read the TFMA metrics files of the evaluation.
    """
    details = fill_run_record(RunDetails(), graph, pipeline, run)
    by_node = node_executions(graph, run)
    details.exec_properties = {node: exec_properties(_made_by(graph, e)) for node, e in by_node.items()}
    executions = list(by_node.values())
    _, statistics = graph.first_output_of_type(
        [e for e in executions if "statistics" in graph.outputs(e) and graph.type_of(e).endswith("StatisticsGen")],
        "ExampleStatistics")
    details.statistics = statistics_summary(graph, statistics) if statistics is not None else None
    _, schema = graph.first_output_of_type([e for e in executions if "schema" in graph.outputs(e)], "Schema")
    details.schema = schema_summary(graph, schema) if schema is not None else None
    _, anomalies = graph.first_output_of_type([e for e in executions if "anomalies" in graph.outputs(e)],
                                              "ExampleAnomalies")
    details.anomalies = anomalies_summary(graph, anomalies) if anomalies is not None else None
    _, examples = graph.first_output_of_type(executions, "Examples")
    details.examples = examples_summary(graph, examples, statistics) if examples is not None else None
    evaluator, evaluation = graph.first_output_of_type(executions, "ModelEvaluation")
    if evaluation is not None:
        details.evaluation = evaluation_of(graph, evaluator, with_metrics)
        blessing = (graph.outputs(evaluator).get("blessing") or [None])[0]
        if blessing is not None:
            p = props(blessing)
            details.evaluation.majority_baseline = p.get("majority_baseline")
            details.evaluation.accuracy_floor = p.get("accuracy_floor")
            details.evaluation.rules = [RuleResult.from_property(r) for r in p.get("rules") or []]
    details.infra_blessing = infra_summary(graph, graph.first_output_of_type(executions, "InfraBlessing")[1])
    _, model = graph.first_output_of_type(executions, "Model")
    details.model = model_summary(graph, model) if model is not None else None
    return details


def _made_by(graph: Graph, execution: mlmd_pb2.Execution) -> mlmd_pb2.Execution:
    """The execution whose work `execution` stands for: for a CACHED one, the producer of the
    first artifact it output (TFX links the reused artifacts as its outputs), else itself."""
    if execution.last_known_state != mlmd_pb2.Execution.CACHED or graph.type_of(execution).endswith("Resolver"):
        return execution
    for artifacts in graph.outputs(execution).values():
        for artifact in artifacts:
            producer = graph.producer(artifact)
            if producer is not None:
                return producer
    return execution


# diff ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Change(Record):
    """A value in run A and in run B (None: absent in that run)."""
    a: Any = None
    b: Any = None


@dataclasses.dataclass
class ConfigChange(Record):
    """An exec property that differs. Fields: node, key (dotted path into the property), a, b."""
    node: str = ""
    key: str = ""
    a: Any = None
    b: Any = None


@dataclasses.dataclass
class SplitDiff(Record):
    """One split's data change. Fields: num_examples: Change of the example counts;
    labels: label -> Change of its example count (only labels whose count changed)."""
    num_examples: Change = dataclasses.field(default_factory=Change)
    labels: Dict[str, Change] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExamplesChange(Record):
    """The Examples of both runs. Fields: a, b: artifact URIs; same_artifact: both runs used one artifact."""
    a: Optional[str] = None
    b: Optional[str] = None
    same_artifact: bool = False


@dataclasses.dataclass
class FeatureChange(Record):
    """A schema feature present in both runs whose definition changed (a, b: FeatureSchema)."""
    feature: str = ""
    a: Optional[FeatureSchema] = None
    b: Optional[FeatureSchema] = None


@dataclasses.dataclass
class SchemaDiff(Record):
    """Schema change. Fields: added, removed: feature names (sorted); changed: per feature;
    same_artifact: both runs used one Schema artifact."""
    added: List[str] = dataclasses.field(default_factory=list)
    removed: List[str] = dataclasses.field(default_factory=list)
    changed: List[FeatureChange] = dataclasses.field(default_factory=list)
    same_artifact: bool = False


@dataclasses.dataclass
class MetricChange(Record):
    """An overall candidate metric in both runs; delta = b - a (None if either is missing)."""
    a: Optional[float] = None
    b: Optional[float] = None
    delta: Optional[float] = None


@dataclasses.dataclass
class RunDiff(Record):
    """`conveyor diff A B`: what changed between two runs of a pipeline.

    Fields:
      pipeline, run_a, run_b: the pipeline and the two run ids.
      states: node -> Change of its state (only nodes whose state differs; "not run" for a
        node without an execution in that run).
      config: exec properties that differ, per node and key, of nodes that ran (complete,
        cached or failed) in both runs; a cached node compares the execution that made the
        artifacts it reused. A node that ran in one run only is in `states`, not here.
      data: split -> SplitDiff, only splits whose counts differ (both runs have statistics).
      examples: the two Examples artifacts.
      schema: the schema change (empty unless both runs have a schema).
      evaluated: both runs were evaluated (only then are metrics compared).
      metrics: overall candidate metric name -> MetricChange, only metrics whose value differs
        (empty unless both runs were evaluated).
      per_label_accuracy: label -> Change of the candidate's accuracy (0..1), labels whose
        accuracy differs (empty unless both runs were evaluated).
      blessed: Change of the verdict (bool or None).
      pushed_version: Change of the pushed version (str or None).
      notes: what a run is when it is not a run of the DAG: "B repeats run X" (a no-op rerun,
        compared as the run it repeats) or "B is a manual blessing of run X by Y: reason"
        (compared as the blessed run, with the blessing's verdict and push).
      repeats: B is a no-op rerun of A (or A of B): nothing differs.
    """
    pipeline: str = ""
    run_a: str = ""
    run_b: str = ""
    states: Dict[str, Change] = dataclasses.field(default_factory=dict)
    config: List[ConfigChange] = dataclasses.field(default_factory=list)
    data: Dict[str, SplitDiff] = dataclasses.field(default_factory=dict)
    examples: ExamplesChange = dataclasses.field(default_factory=ExamplesChange)
    schema: SchemaDiff = dataclasses.field(default_factory=SchemaDiff)
    metrics: Dict[str, MetricChange] = dataclasses.field(default_factory=dict)
    per_label_accuracy: Dict[str, Change] = dataclasses.field(default_factory=dict)
    blessed: Change = dataclasses.field(default_factory=Change)
    pushed_version: Change = dataclasses.field(default_factory=Change)
    evaluated: bool = False
    notes: List[str] = dataclasses.field(default_factory=list)
    repeats: bool = False


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _data_diff(a: Optional[StatisticsSummary], b: Optional[StatisticsSummary]) -> Dict[str, SplitDiff]:
    if a is None or b is None:
        return {}
    splits_a = a.splits if a else {}
    splits_b = b.splits if b else {}
    data = {}
    for split in sorted(set(splits_a) | set(splits_b)):
        sa, sb = splits_a.get(split), splits_b.get(split)
        la = sa.labels if sa else {}
        lb = sb.labels if sb else {}
        # A label missing from a split's histogram has no examples there (0), when the split exists.
        change = SplitDiff(num_examples=Change(sa.num_examples if sa else None, sb.num_examples if sb else None),
                           labels={l: Change(la.get(l, 0 if sa else None), lb.get(l, 0 if sb else None))
                                   for l in sorted(set(la) | set(lb)) if la.get(l) != lb.get(l)})
        if change.labels or change.num_examples.a != change.num_examples.b:
            data[split] = change
    return data


def _schema_diff(a: Optional[SchemaSummary], b: Optional[SchemaSummary]) -> SchemaDiff:
    if a is None or b is None:
        return SchemaDiff()
    fa = a.features if a else {}
    fb = b.features if b else {}
    return SchemaDiff(added=sorted(set(fb) - set(fa)), removed=sorted(set(fa) - set(fb)),
                      changed=[FeatureChange(f, fa[f], fb[f]) for f in sorted(set(fa) & set(fb)) if fa[f] != fb[f]],
                      same_artifact=bool(a and b and a.artifact_id == b.artifact_id))


def diff_runs(store, pipeline: Optional[str], run_a: str, run_b: str) -> RunDiff:
    """`conveyor diff A B`: what changed between two runs of a pipeline.

    Args:
      pipeline: the pipeline name (None: the store's only pipeline).
      run_a, run_b: run references (id, unique prefix, or position; see runs.resolve_run).
    Raises:
      LineageError: unknown/ambiguous pipeline or run.
    """
    graph = Graph(store)
    pipeline = default_pipeline(graph, pipeline)
    a = run_details(graph, pipeline, resolve_run(graph, pipeline, run_a))
    b = run_details(graph, pipeline, resolve_run(graph, pipeline, run_b))
    notes = []
    a_as, b_as = _stands_for(graph, pipeline, a, "A", notes), _stands_for(graph, pipeline, b, "B", notes)
    if a_as.run_id == b_as.run_id and (a.unchanged_since or b.unchanged_since) \
            and not (a.manual_blessing or b.manual_blessing):
        first, second = ("B", "A") if b.unchanged_since else ("A", "B")
        return RunDiff(pipeline=pipeline, run_a=a.run_id, run_b=b.run_id, repeats=True,
                       notes=[f"{first} repeats {second}: no differences" if a_as.run_id in (a.run_id, b.run_id)
                              else f"A and B both repeat run {a_as.run_id}: no differences"])
    diff = compare_runs(a_as, b_as)
    diff.run_a, diff.run_b, diff.notes = a.run_id, b.run_id, notes
    return diff


def _stands_for(graph: Graph, pipeline: str, run: RunDetails, label: str, notes: List[str]) -> RunDetails:
    """The run to compare in place of `run`: for a no-op rerun the run it repeats, for a
    manual blessing the blessed run with the blessing's verdict and push; else `run`.
    Appends a note saying so to `notes`."""
    if run.unchanged_since:
        notes.append(f"{label} ({run.run_id}) repeats run {run.unchanged_since} (nothing changed, nothing ran)")
        return run_details(graph, pipeline, resolve_run(graph, pipeline, run.unchanged_since))
    if run.manual_blessing:
        m = run.manual_blessing
        notes.append(f"{label} ({run.run_id}) is a manual blessing of run {m['run_id']} by {m['by']}: {m['reason']}"
                     " (compared as that run, blessed by hand)")
        blessed = run_details(graph, pipeline, resolve_run(graph, pipeline, m["run_id"]))
        blessed.blessed = True if run.blessed is None else run.blessed
        blessed.pushed_version = run.pushed_version
        return blessed
    return run


def compare_runs(a: RunDetails, b: RunDetails) -> RunDiff:
    """The RunDiff of two RunDetails of one pipeline (see RunDiff for what is compared)."""
    config = []
    for node in [n for n in a.exec_properties if n in b.exec_properties]:
        fa = _flatten(a.exec_properties[node])
        fb = _flatten(b.exec_properties[node])
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                config.append(ConfigChange(node, key, fa.get(key), fb.get(key)))
    evaluated = a.evaluation is not None and b.evaluation is not None
    ma = a.evaluation.candidate if evaluated else {}
    mb = b.evaluation.candidate if evaluated else {}
    metrics = {}
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        if not _same_number(va, vb):
            metrics[key] = MetricChange(va, vb, (vb - va) if va is not None and vb is not None else None)
    pa = a.evaluation.metrics.per_label if evaluated and a.evaluation.metrics else {}
    pb = b.evaluation.metrics.per_label if evaluated and b.evaluation.metrics else {}
    per_label = {label: Change(pa.get(label, {}).get("candidate"), pb.get(label, {}).get("candidate"))
                 for label in sorted(set(pa) | set(pb))
                 if pa.get(label, {}).get("candidate") != pb.get(label, {}).get("candidate")}
    states_b = {n.node: n.state for n in b.nodes}
    states_a = {n.node: n.state for n in a.nodes}
    return RunDiff(
        pipeline=a.pipeline, run_a=a.run_id, run_b=b.run_id,
        states={node: Change(states_a.get(node, NOT_RUN), states_b.get(node, NOT_RUN))
                for node in dict.fromkeys(list(states_a) + list(states_b))
                if states_a.get(node, NOT_RUN) != states_b.get(node, NOT_RUN)},
        config=config, data=_data_diff(a.statistics, b.statistics),
        examples=ExamplesChange(a.examples.uri if a.examples else None, b.examples.uri if b.examples else None,
                                bool(a.examples and b.examples and a.examples.artifact_id == b.examples.artifact_id)),
        schema=_schema_diff(a.schema, b.schema), metrics=metrics, per_label_accuracy=per_label,
        blessed=Change(a.blessed, b.blessed), pushed_version=Change(a.pushed_version, b.pushed_version),
        evaluated=evaluated)


ORDERED_AFTER_GATE = "Transform"


def _same_number(a: Optional[float], b: Optional[float]) -> bool:
    """Equal, or both NaN (TFMA reports NaN e.g. for a precision without predictions)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def dag_edges(graph: Graph, pipeline: str) -> List[Tuple[str, str]]:
    """Node -> node edges seen in MLMD, sorted: a consumer's input produced by an earlier
    execution of another node in the same run (so a resolver that hands over an earlier
    run's model counts, not the old Trainer or a cached one), plus the data gate ->
    Transform order of pipelines/pipeline.py."""
    edges = set()
    for run in run_contexts(graph, pipeline):
        executions = run_executions(graph, run)
        resolvers = [graph.node_of(e) for e in executions if graph.type_of(e).endswith("Resolver")]
        made_by: Dict[int, str] = {}
        # Oldest first, an input is matched only with outputs of executions before it: a
        # cached Trainer later in the run outputs the very model the resolver handed to the
        # gate as its baseline, and is not the gate's producer.
        for e in executions:
            for artifacts in graph.inputs(e).values():
                for art in artifacts:
                    src = made_by.get(art.id)
                    if src is None and len(resolvers) == 1:
                        src = resolvers[0]  # an earlier run's artifact, handed over by the run's resolver
                    if src and src != graph.node_of(e):
                        edges.add((src, graph.node_of(e)))
            for artifacts in graph.outputs(e).values():
                for art in artifacts:
                    # a resolver re-emits existing artifacts; it is the producer within this run
                    if art.id not in made_by or graph.type_of(e).endswith("Resolver"):
                        made_by[art.id] = graph.node_of(e)
        nodes = {graph.node_of(e) for e in executions}
        # pipelines/pipeline.py orders Transform after the data gate (add_upstream_node): no
        # artifact links them, so MLMD has no edge; the drawing shows the order all the same.
        edges.update((gate, ORDERED_AFTER_GATE) for gate in nodes
                     if gate.endswith("ExampleValidator") and ORDERED_AFTER_GATE in nodes)
    return sorted(edges)
