"""Pipeline runs: run contexts (local/Kubeflow `pipeline_run`, Airflow `run`), and one row per run."""
import dataclasses
import json
import time
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.metadata.store import (MANUAL_BLESSING_TYPE, RUN_CONTEXT_TYPES, Graph, LineageError, Record, iso_time,
                                     json_field, props, seconds_of, state_name)
from pipelines.preflight import REPEATS_PROPERTY, UNCHANGED_TYPE


# The Pusher's `reason` for not pushing (components/pusher.py not_pushed_reason).
PUSH_NOT_BLESSED = "not blessed"
PUSH_INFRA_FAILED = "infra validation failed"


def pipeline_executions(graph: Graph, pipeline: str) -> List[mlmd_pb2.Execution]:
    """Every execution of a pipeline, oldest first.

    Raises:
      LineageError: no such pipeline.
    """
    return graph.executions_in_context(graph.pipeline_context(pipeline).id)


def pipeline_nodes(graph: Graph, pipeline: str) -> List[str]:
    """Node ids of a pipeline in execution order (LocalDagRunner runs them topologically)."""
    nodes: List[str] = []
    for e in pipeline_executions(graph, pipeline):
        if graph.is_action(e):
            continue
        node = graph.node_of(e)
        if node not in nodes:
            nodes.append(node)
    return nodes


def run_contexts(graph: Graph, pipeline: str) -> List[mlmd_pb2.Context]:
    """Run contexts (types RUN_CONTEXT_TYPES) of a pipeline, oldest first.

    Raises:
      LineageError: no such pipeline.
    """
    runs: Dict[str, mlmd_pb2.Context] = {}
    run_types = {t for t, kind in graph.context_type.items() if kind in RUN_CONTEXT_TYPES}
    for e in pipeline_executions(graph, pipeline):
        for c in graph.store.get_contexts_by_execution(e.id):
            if c.type_id in run_types:
                runs[c.name] = c
    return sorted(runs.values(), key=lambda c: (c.create_time_since_epoch, c.id))


def resolve_run(graph: Graph, pipeline: str, ref: Optional[str]) -> mlmd_pb2.Context:
    """A run of `pipeline` by id, unique id prefix, or position (1 = oldest, -1 = latest).

    Args:
      ref: the run reference; None, "" or "latest" = the latest run.
    Raises:
      LineageError: no such pipeline, no runs, or `ref` matches no run / several runs
        (the message lists the runs with their positions).
    """
    runs = run_contexts(graph, pipeline)
    if not runs:
        raise LineageError(f"pipeline '{pipeline}' has no runs in the metadata store")
    if ref in (None, "", "latest"):
        return runs[-1]
    exact = [r for r in runs if r.name == ref]
    if exact:
        return exact[0]
    try:
        position = int(ref)
    except ValueError:
        position = None
    if position is not None and 1 <= abs(position) <= len(runs):
        return runs[position - 1] if position > 0 else runs[position]
    prefixed = [r for r in runs if r.name.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    listing = ", ".join(f"{i}={r.name}" for i, r in enumerate(runs, 1))
    what = "matches several runs" if prefixed else "is not a run"
    raise LineageError(f"'{ref}' {what} of pipeline '{pipeline}'; runs: {listing}")


def default_pipeline(graph: Graph, name: Optional[str]) -> str:
    """`name` if the store has that pipeline, else the store's only pipeline.

    Raises:
      LineageError: unknown `name`, no pipelines, or several and `name` not given.
    """
    if name:
        graph.pipeline_context(name)
        return name
    names = graph.pipelines()
    if len(names) == 1:
        return names[0]
    if not names:
        raise LineageError("the metadata store has no pipelines yet (nothing has run)")
    raise LineageError(f"the store holds several pipelines ({', '.join(names)}); pick one with --name")


def run_executions(graph: Graph, run: mlmd_pb2.Context) -> List[mlmd_pb2.Execution]:
    """Every execution of a run, oldest first."""
    return graph.executions_in_context(run.id)


def node_executions(graph: Graph, run: mlmd_pb2.Context) -> Dict[str, mlmd_pb2.Execution]:
    """Node id -> its (last) execution in the run, in execution order (DAG nodes only)."""
    return {graph.node_of(e): e for e in run_executions(graph, run) if not graph.is_action(e)}


@dataclasses.dataclass
class NodeRun(Record):
    """One node of one run.

    Fields:
      node: the pipeline node id (e.g. "Trainer").
      state: "complete" | "cached" | "failed" | ... | "not run" (see store.state_name).
      seconds: the execution's wall time in seconds (None: not run).
      execution_id: MLMD execution id (None: not run).
      outputs: output artifacts by artifact type name (e.g. "ModelBlessing"); filled by
        node_runs only, not part of the JSON.
    """
    node: str = ""
    state: str = ""
    seconds: Optional[float] = None
    execution_id: Optional[int] = None
    outputs: Dict[str, List[mlmd_pb2.Artifact]] = json_field(default_factory=dict, json=False)
    error: Optional[str] = json_field(omit_if_none=True)


EXECUTION_RESULT = "__execution_result__"  # tfx/orchestration/portable/mlmd/execution_lib.py


def failure_message(execution: Optional[mlmd_pb2.Execution]) -> Optional[str]:
    """Why a failed execution failed: the result_message of the ExecutionResult TFX (or
    pipelines/preflight.record_failure) stored on it; None when there is none."""
    if execution is None or execution.last_known_state != mlmd_pb2.Execution.FAILED:
        return None
    value = execution.custom_properties.get(EXECUTION_RESULT)
    if value is None or not value.string_value:
        return None
    try:
        return json.loads(value.string_value).get("resultMessage") or None
    except (ValueError, AttributeError):
        return None


def node_runs(graph: Graph, run: mlmd_pb2.Context) -> List[NodeRun]:
    """Every DAG execution of a run as a NodeRun with its outputs by artifact type, oldest first."""
    out = []
    for e in run_executions(graph, run):
        if graph.is_action(e):
            continue
        outputs: Dict[str, List[mlmd_pb2.Artifact]] = {}
        for artifacts in graph.outputs(e).values():
            for a in artifacts:
                outputs.setdefault(graph.type_of(a), []).append(a)
        out.append(NodeRun(graph.node_of(e), state_name(e), seconds_of(e), e.id, outputs))
    return out


@dataclasses.dataclass
class RunRecord(Record):
    """One row of `conveyor runs`: states, durations, verdict and push of one pipeline run.

    Fields:
      run_id: the run context's name.
      pipeline: the pipeline (model) name.
      start: first execution's creation, local ISO 8601 (None: no executions).
      start_ms: the same in milliseconds since the epoch.
      duration_seconds: first creation to last update over the run's executions, seconds;
        for a run still running (a node RUNNING or NEW), first creation to now.
      running: a node of the run is still running (then duration_seconds counts up to now).
      nodes: every node of the pipeline (the pipeline's node order, then any others), run or not.
      blessed: the Evaluator's verdict (None: no ModelBlessing in the run).
      infra_blessed: the InfraValidator's verdict (None: none in the run).
      pushed_version: the version pushed by the run (None: nothing pushed).
      push_note: why nothing was pushed: the Pusher's reason, "not pushed", or
        "run failed at <node>" (None when pushed or undetermined).
      unchanged_since: for a no-op rerun (nothing changed, nothing ran), the run it repeats;
        left out of the JSON otherwise.
      manual_blessing: for a `conveyor bless`, {"run_id": the blessed run, "by", "reason"};
        left out of the JSON otherwise.
    """
    run_id: str = ""
    pipeline: str = ""
    start: Optional[str] = None
    start_ms: Optional[int] = None
    duration_seconds: Optional[float] = None
    nodes: List[NodeRun] = dataclasses.field(default_factory=list)
    blessed: Optional[bool] = None
    infra_blessed: Optional[bool] = None
    pushed_version: Optional[str] = None
    push_note: Optional[str] = None
    unchanged_since: Optional[str] = json_field(omit_if_none=True)
    running: bool = json_field(False, json=False)
    manual_blessing: Optional[Dict[str, str]] = json_field(omit_if_none=True)


def fill_run_record(record: RunRecord, graph: Graph, pipeline: str, run: mlmd_pb2.Context,
                    nodes: Optional[List[str]] = None) -> RunRecord:
    """Fills a RunRecord (or a subclass such as diff.RunDetails) for one run; returns it.

    Args:
      nodes: the pipeline's node ids (default: pipeline_nodes; pass them when listing many runs).
    """
    nodes = nodes or pipeline_nodes(graph, pipeline)
    by_node = node_executions(graph, run)
    everything = run_executions(graph, run)
    executions = list(by_node.values()) + [e for e in everything if graph.is_action(e)]
    record.run_id, record.pipeline = run.name, pipeline
    if executions:
        start = min(e.create_time_since_epoch for e in executions)
        end = max(e.last_update_time_since_epoch for e in executions)
        record.running = any(e.last_known_state in (mlmd_pb2.Execution.RUNNING, mlmd_pb2.Execution.NEW)
                             for e in executions)
        if record.running:
            end = max(end, int(time.time() * 1000))
        record.start, record.start_ms = iso_time(start), start
        record.duration_seconds = round((end - start) / 1000, 3)
    for node in nodes + [n for n in by_node if n not in nodes]:
        e = by_node.get(node)
        record.nodes.append(NodeRun(node=node, state=state_name(e), seconds=seconds_of(e) if e else None,
                                    execution_id=e.id if e else None, error=failure_message(e)))
    _, blessing = graph.first_output_of_type(executions, "ModelBlessing")
    if blessing is not None:
        record.blessed = props(blessing).get("blessed") == 1
    _, infra = graph.first_output_of_type(executions, "InfraBlessing")
    if infra is not None:
        record.infra_blessed = props(infra).get("blessed") == 1
    _, pushed = graph.first_output_of_type(executions, "PushedModel")
    if pushed is not None:
        p = props(pushed)
        if p.get("pushed") == 1:
            record.pushed_version = p.get("pushed_version")
        else:
            record.push_note = p.get("reason", "not pushed")
            if record.push_note == PUSH_NOT_BLESSED and record.blessed and record.infra_blessed is False:
                record.push_note = PUSH_INFRA_FAILED  # Pushers before the reasons were told apart
    elif any(n.state == "failed" for n in record.nodes):
        record.push_note = "run failed at " + next(n.node for n in record.nodes if n.state == "failed")
    for e in everything:
        kind, p = graph.type_of(e), props(e)
        if kind == UNCHANGED_TYPE:
            record.unchanged_since = p.get(REPEATS_PROPERTY)
            served = p.get("served_version")
            record.push_note = (f"nothing changed since run {record.unchanged_since}; "
                                + (f"served version {served} unchanged" if served else "nothing served"))
        elif kind == MANUAL_BLESSING_TYPE:
            record.manual_blessing = {"run_id": p.get("blesses_run", ""), "by": p.get("blessed_by", ""),
                                      "reason": p.get("reason", "")}
    return record


def run_record(graph: Graph, pipeline: str, run: mlmd_pb2.Context,
               nodes: Optional[List[str]] = None) -> RunRecord:
    """One row of `conveyor runs` for one run context of `pipeline` (see RunRecord)."""
    return fill_run_record(RunRecord(), graph, pipeline, run, nodes)


def list_runs(store, pipeline: Optional[str] = None) -> List[RunRecord]:
    """`conveyor runs`: every run of one pipeline (or of all pipelines), oldest first.

    Raises:
      LineageError: `pipeline` is not in the store.
    """
    graph = Graph(store)
    names = [pipeline] if pipeline else graph.pipelines()
    rows: List[RunRecord] = []
    for name in names:
        nodes = pipeline_nodes(graph, name)
        rows.extend(run_record(graph, name, run, nodes) for run in run_contexts(graph, name))
    return sorted(rows, key=lambda r: (r.start_ms or 0, r.run_id))
