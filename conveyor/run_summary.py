"""The end-of-run summary, read back from ML Metadata (never from folder names)."""
import dataclasses
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipelines.config import Config
from conveyor.lineage import ACCURACY, state_name



@dataclasses.dataclass
class NodeRun:
    node: str
    state: str
    seconds: float
    outputs: Dict[str, List[metadata_store_pb2.Artifact]]


@dataclasses.dataclass
class RunSummary:
    pipeline: str
    run_id: str
    nodes: List[NodeRun]
    blessed: Optional[bool] = None
    not_blessed_because: List[str] = dataclasses.field(default_factory=list)
    candidate: Dict[str, float] = dataclasses.field(default_factory=dict)
    baseline: Dict[str, float] = dataclasses.field(default_factory=dict)
    majority_baseline: Optional[float] = None
    per_class_accuracy: Dict[str, float] = dataclasses.field(default_factory=dict)
    infra_blessed: Optional[bool] = None
    infra_note: str = ""
    pushed_version: Optional[str] = None
    pushed_path: Optional[str] = None
    push_note: str = ""

    def node(self, name: str) -> Optional[NodeRun]:
        return next((n for n in self.nodes if n.node == name), None)

    def table(self) -> str:
        lines = [f"\nRun {self.run_id} of pipeline '{self.pipeline}'",
                 f"  {'component':<28} {'state':<10} {'seconds':>8}"]
        for n in self.nodes:
            state = n.state.upper() if n.state == "failed" else n.state  # stands out in the table
            lines.append(f"  {n.node:<28} {state:<10} {n.seconds:8.1f}")
        if self.candidate:
            lines.append(f"\n  {'metric':<28} {'candidate':>10} {'baseline':>10}")
            for key in sorted(self.candidate):
                base = self.baseline.get(key)
                lines.append(f"  {key:<28} {self.candidate[key]:10.4f} "
                             f"{(f'{base:10.4f}' if base is not None else '         -')}")
            if self.majority_baseline is not None:
                lines.append(f"  {'majority-class rate (eval)':<28} {self.majority_baseline:10.4f}")
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
        return "\n".join(lines)


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def run_contexts(store, pipeline: str) -> List[metadata_store_pb2.Context]:
    """pipeline_run contexts of one pipeline, oldest first."""
    runs = {}
    for context in store.get_contexts_by_type("pipeline"):
        if context.name != pipeline:
            continue
        for execution in store.get_executions_by_context(context.id):
            for c in store.get_contexts_by_execution(execution.id):
                if c.type_id == store.get_context_type("pipeline_run").id:
                    runs[c.id] = c
    return sorted(runs.values(), key=lambda c: c.create_time_since_epoch)


def node_runs(store, pipeline: str, run: metadata_store_pb2.Context) -> List[NodeRun]:
    node_type = store.get_context_type("node").id
    result = []
    for execution in sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch):
        node = next((c.name.split(".", 1)[1] for c in store.get_contexts_by_execution(execution.id)
                     if c.type_id == node_type and c.name.startswith(pipeline + ".")), "?")
        outputs: Dict[str, List] = {}
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        types = {t.id: t.name for t in store.get_artifact_types()}
        for event in events:
            artifact = artifacts.get(event.artifact_id)
            if artifact is not None:
                outputs.setdefault(types[artifact.type_id], []).append(artifact)
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        result.append(NodeRun(node, state_name(execution), seconds, outputs))
    return result


def _metrics(evaluation_uri: str, summary: RunSummary) -> None:
    import tensorflow_model_analysis as tfma
    for metrics in tfma.load_metrics(evaluation_uri):
        slice_key = {s.column: (s.bytes_value.decode() if s.HasField("bytes_value") else str(s.int64_value))
                     for s in metrics.slice_key.single_slice_keys}
        for kv in metrics.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            is_baseline = kv.key.model_name == "baseline"
            if not slice_key:
                (summary.baseline if is_baseline else summary.candidate)[kv.key.name] = value
            elif kv.key.name == ACCURACY and not is_baseline and "label_name" in slice_key:
                summary.per_class_accuracy[slice_key["label_name"]] = value
    validation = tfma.load_validation_result(evaluation_uri)
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            summary.not_blessed_because.append(
                f"{failure.metric_key.name}"
                f"{' (change vs baseline)' if failure.metric_key.is_diff else ''} = "
                f"{failure.metric_value.double_value.value:.4f} fails threshold "
                f"{_threshold_text(failure.metric_threshold)}")


def _threshold_text(threshold) -> str:
    if threshold.HasField("value_threshold"):
        return f">= {threshold.value_threshold.lower_bound.value:.4f}"
    return f"change >= {threshold.change_threshold.absolute.value:+.4f}"


def read_summary(metadata_path: str, pipeline: str, run: Optional[metadata_store_pb2.Context] = None) -> RunSummary:
    store = open_store(metadata_path)
    runs = run_contexts(store, pipeline)
    run = run or (runs[-1] if runs else None)
    if run is None:
        return RunSummary(pipeline, "-", [])
    summary = RunSummary(pipeline, run.name, node_runs(store, pipeline, run))
    for n in summary.nodes:
        for blessing in n.outputs.get("ModelBlessing", []):
            summary.blessed = blessing.custom_properties["blessed"].int_value == 1
            if "majority_baseline" in blessing.custom_properties:
                summary.majority_baseline = blessing.custom_properties["majority_baseline"].double_value
        for evaluation in n.outputs.get("ModelEvaluation", []):
            _metrics(evaluation.uri, summary)
        for infra in n.outputs.get("InfraBlessing", []):
            props = infra.custom_properties
            summary.infra_blessed = props["blessed"].int_value == 1
            summary.infra_note = props["reason"].string_value if "reason" in props else (
                f"{props['num_requests'].int_value} requests, "
                f"p99 {props['p99_latency_ms'].double_value:.1f} ms" if "p99_latency_ms" in props else "")
        for pushed in n.outputs.get("PushedModel", []):
            props = pushed.custom_properties
            if props["pushed"].int_value == 1:
                summary.pushed_version = props["pushed_version"].string_value
                summary.pushed_path = props["pushed_destination"].string_value
            else:
                summary.push_note = props["reason"].string_value if "reason" in props else "not pushed"
    if summary.blessed is False and summary.push_note == "not blessed":
        summary.push_note = "not blessed by the Evaluator"
    elif summary.infra_blessed is False and summary.push_note == "not blessed":
        summary.push_note = "infra validation failed"
    failed = [n.node for n in summary.nodes if n.state == "failed"]
    if failed and not summary.push_note:
        summary.push_note = f"run stopped at {failed[0]}"
    return summary


def summarize(config: Config) -> RunSummary:
    """The summary of the newest run of config's pipeline (the run that just happened: runs
    hold the HOME lock)."""
    return read_summary(config.metadata_path, config.name)
