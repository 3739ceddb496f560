"""Run history and lineage, read from ML Metadata (MLMD) only.

Everything here walks MLMD's own records: contexts (pipeline, pipeline_run, node),
executions with their exec properties (stored as execution custom properties by TFX),
and INPUT/OUTPUT events linking executions to artifacts. Artifact *contents* (statistics,
schema, anomalies, TFMA metrics) are read from the artifact URIs MLMD records; nothing is
inferred from folder names.

Every query takes a `MetadataStore`, so the same code works on the SQLite file in
HOME/metadata.sqlite (`open_store(home=...)`) or on MySQL
(`open_store(connection_config=<ConnectionConfig with .mysql set>)`).
"""
import datetime
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from modules.features import LABEL_NAME
from modules.settings import MODULES_FINGERPRINT_KEY

ACCURACY = "sparse_categorical_accuracy"

NOT_RUN = "not run"
_STATE = {mlmd_pb2.Execution.COMPLETE: "complete",
          mlmd_pb2.Execution.CACHED: "cached",
          mlmd_pb2.Execution.FAILED: "failed",
          mlmd_pb2.Execution.RUNNING: "running",
          mlmd_pb2.Execution.NEW: "new",
          mlmd_pb2.Execution.CANCELED: "canceled"}
_INPUTS = (mlmd_pb2.Event.INPUT, mlmd_pb2.Event.DECLARED_INPUT)
_OUTPUTS = (mlmd_pb2.Event.OUTPUT, mlmd_pb2.Event.DECLARED_OUTPUT)


class LineageError(LookupError):
    """Unknown pipeline/run/model/version; the message says what exists instead."""


# ---------------------------------------------------------------------------------------
# Connecting


def sqlite_connection_config(metadata_path: str) -> mlmd_pb2.ConnectionConfig:
    config = mlmd_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = mlmd_pb2.SqliteMetadataSourceConfig.READONLY
    return config


def open_store(home: Optional[str] = None, *, metadata_path: Optional[str] = None,
               connection_config: Optional[mlmd_pb2.ConnectionConfig] = None) -> metadata_store.MetadataStore:
    """A read-only store on HOME/metadata.sqlite, a given SQLite file, or any ConnectionConfig (MySQL)."""
    if connection_config is None:
        path = metadata_path or os.path.join(os.path.abspath(home or "conveyor_home"), "metadata.sqlite")
        if not os.path.isfile(path):
            raise LineageError(f"no metadata store at {path}: run a pipeline first (conveyor run ...) "
                               "or pass --home")
        connection_config = sqlite_connection_config(path)
    return metadata_store.MetadataStore(connection_config)


# ---------------------------------------------------------------------------------------
# A cached view of the store's graph


def _value(value: mlmd_pb2.Value) -> Any:
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        from google.protobuf import json_format
        data = json_format.MessageToDict(value.struct_value)
        return data.get("__value__", data)
    if kind == "proto_value":
        return str(value.proto_value)
    return getattr(value, kind) if kind else None


def props(node) -> Dict[str, Any]:
    """Properties and custom properties of an artifact/execution as plain Python values."""
    out = {k: _value(v) for k, v in node.properties.items()}
    out.update({k: _value(v) for k, v in node.custom_properties.items()})
    return out


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


class Graph:
    """Lazy, cached access to MLMD's executions, artifacts and events."""

    def __init__(self, store: metadata_store.MetadataStore):
        self.store = store
        self.artifact_type = {t.id: t.name for t in store.get_artifact_types()}
        self.execution_type = {t.id: t.name for t in store.get_execution_types()}
        self.context_type = {t.id: t.name for t in store.get_context_types()}
        self._artifacts: Dict[int, mlmd_pb2.Artifact] = {}
        self._executions: Dict[int, mlmd_pb2.Execution] = {}
        self._exec_events: Dict[int, List[mlmd_pb2.Event]] = {}
        self._art_events: Dict[int, List[mlmd_pb2.Event]] = {}
        self._exec_node: Dict[int, str] = {}
        self._exec_run: Dict[int, str] = {}

    # nodes ---------------------------------------------------------------------------
    def contexts(self, type_name: str) -> List[mlmd_pb2.Context]:
        return list(self.store.get_contexts_by_type(type_name))

    def pipelines(self) -> List[str]:
        return sorted(c.name for c in self.contexts("pipeline"))

    @staticmethod
    def _cached(ids: Iterable[int], cache: Dict[int, Any], fetch) -> List[Any]:
        """Records by id in the order asked, fetching only those not read before."""
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if i not in cache]
        if missing:
            cache.update((record.id, record) for record in fetch(missing))
        return [cache[i] for i in ids if i in cache]

    def artifacts(self, ids: Iterable[int]) -> List[mlmd_pb2.Artifact]:
        return self._cached(ids, self._artifacts, self.store.get_artifacts_by_id)

    def artifact(self, artifact_id: int) -> Optional[mlmd_pb2.Artifact]:
        found = self.artifacts([artifact_id])
        return found[0] if found else None

    def executions(self, ids: Iterable[int]) -> List[mlmd_pb2.Execution]:
        return self._cached(ids, self._executions, self.store.get_executions_by_id)

    def type_of(self, node) -> str:
        if isinstance(node, mlmd_pb2.Artifact):
            return self.artifact_type.get(node.type_id, "?")
        return self.execution_type.get(node.type_id, "?")

    def _index_contexts(self, execution_id: int) -> None:
        node, run = "?", ""
        for c in self.store.get_contexts_by_execution(execution_id):
            kind = self.context_type.get(c.type_id)
            # Local/Kubeflow runs record pipeline_run + node contexts; TFX's Airflow
            # launcher records run ("<pipeline>.<dag run>") + component_run ("<run>.<node>").
            if kind == "node":
                node = c.name.split(".", 1)[-1]
            elif kind == "component_run":
                node = c.name.rsplit(".", 1)[-1]
            elif kind in RUN_CONTEXT_TYPES:
                run = c.name
        self._exec_node[execution_id], self._exec_run[execution_id] = node, run

    def node_of(self, execution: mlmd_pb2.Execution) -> str:
        if execution.id not in self._exec_node:
            self._index_contexts(execution.id)
        return self._exec_node[execution.id]

    def run_of(self, execution: mlmd_pb2.Execution) -> str:
        if execution.id not in self._exec_run:
            self._index_contexts(execution.id)
        return self._exec_run[execution.id]

    # events --------------------------------------------------------------------------
    def execution_events(self, execution_id: int) -> List[mlmd_pb2.Event]:
        if execution_id not in self._exec_events:
            self._exec_events[execution_id] = list(self.store.get_events_by_execution_ids([execution_id]))
        return self._exec_events[execution_id]

    def artifact_events(self, artifact_id: int) -> List[mlmd_pb2.Event]:
        if artifact_id not in self._art_events:
            self._art_events[artifact_id] = list(self.store.get_events_by_artifact_ids([artifact_id]))
        return self._art_events[artifact_id]

    @staticmethod
    def _key(event: mlmd_pb2.Event) -> str:
        return next((s.key for s in event.path.steps if s.HasField("key")), "")

    def _linked(self, execution: mlmd_pb2.Execution, types) -> Dict[str, List[mlmd_pb2.Artifact]]:
        events = [e for e in self.execution_events(execution.id) if e.type in types]
        artifacts = {a.id: a for a in self.artifacts(e.artifact_id for e in events)}
        out: Dict[str, List[mlmd_pb2.Artifact]] = {}
        for e in events:
            if e.artifact_id in artifacts:
                out.setdefault(self._key(e), []).append(artifacts[e.artifact_id])
        return out

    def inputs(self, execution) -> Dict[str, List[mlmd_pb2.Artifact]]:
        return self._linked(execution, _INPUTS)

    def outputs(self, execution) -> Dict[str, List[mlmd_pb2.Artifact]]:
        return self._linked(execution, _OUTPUTS)

    def input(self, execution, key: str) -> Optional[mlmd_pb2.Artifact]:
        found = self.inputs(execution).get(key)
        return found[0] if found else None

    def producer(self, artifact: mlmd_pb2.Artifact) -> Optional[mlmd_pb2.Execution]:
        """The execution that created the artifact (a cached rerun also links it as OUTPUT:
        the first COMPLETE one is the producer)."""
        ids = [e.execution_id for e in self.artifact_events(artifact.id) if e.type in _OUTPUTS]
        executions = sorted(self.executions(ids), key=lambda e: (e.last_known_state != mlmd_pb2.Execution.COMPLETE,
                                                                  e.create_time_since_epoch, e.id))
        executions = [e for e in executions if not self.execution_type.get(e.type_id, "").endswith("Resolver")]
        return executions[0] if executions else None

    def consumers(self, artifact: mlmd_pb2.Artifact, key: Optional[str] = None) -> List[mlmd_pb2.Execution]:
        events = [e for e in self.artifact_events(artifact.id)
                  if e.type in _INPUTS and (key is None or self._key(e) == key)]
        return sorted(self.executions(e.execution_id for e in events), key=lambda e: e.id)


def state_name(execution: Optional[mlmd_pb2.Execution]) -> str:
    return NOT_RUN if execution is None else _STATE.get(execution.last_known_state, "unknown")


def seconds_of(execution: mlmd_pb2.Execution) -> float:
    return round((execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000, 3)


def _exec_properties(execution: mlmd_pb2.Execution) -> Dict[str, Any]:
    """TFX stores exec properties as execution custom properties (JSON strings for protos)."""
    out = {}
    for key, value in props(execution).items():
        if key.startswith("__") or key in ("tfx_version",):
            continue
        if isinstance(value, str) and value[:1] in "{[" or value == "null":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out




def user_code(exec_properties: Dict[str, Any], fn_key: str) -> Dict[str, Optional[str]]:
    """Which user function a Transform/Trainer execution ran and the sha256 of its code.

    Conveyor's pipelines name the function (`preprocessing_fn` / `run_fn`) and record the
    code's sha256 in custom_config under MODULES_FINGERPRINT_KEY (pipelines.pipeline's
    module_config); pipelines built with a module_file have TFX's wheel path, whose local
    version is that sha256.
    """
    custom = exec_properties.get("custom_config")
    fingerprint = custom.get(MODULES_FINGERPRINT_KEY) if isinstance(custom, dict) else None
    wheel = exec_properties.get("module_path")
    if not fingerprint:
        match = re.search(r"\+([0-9a-f]{16,})-", wheel or "")
        fingerprint = match.group(1) if match else None
    return {"module_path": exec_properties.get(fn_key) or wheel, "module_fingerprint": fingerprint}


# ---------------------------------------------------------------------------------------
# Runs


def _pipeline_context(graph: Graph, pipeline: str) -> mlmd_pb2.Context:
    context = graph.store.get_context_by_type_and_name("pipeline", pipeline)
    if context is None:
        known = graph.pipelines()
        raise LineageError(f"no pipeline '{pipeline}' in the metadata store; "
                           f"pipelines: {', '.join(known) if known else 'none (nothing has run yet)'}")
    return context


def _pipeline_executions(graph: Graph, pipeline: str) -> List[mlmd_pb2.Execution]:
    executions = sorted(graph.store.get_executions_by_context(_pipeline_context(graph, pipeline).id),
                        key=lambda e: (e.create_time_since_epoch, e.id))
    for e in executions:
        graph._executions[e.id] = e
    return executions


def pipeline_nodes(graph: Graph, pipeline: str) -> List[str]:
    """Node ids of a pipeline in execution order (LocalDagRunner runs them topologically)."""
    nodes: List[str] = []
    for e in _pipeline_executions(graph, pipeline):
        node = graph.node_of(e)
        if node not in nodes:
            nodes.append(node)
    return nodes


RUN_CONTEXT_TYPES = ("pipeline_run", "run")


def run_contexts(graph: Graph, pipeline: str) -> List[mlmd_pb2.Context]:
    """pipeline_run contexts of a pipeline, oldest first."""
    runs: Dict[str, mlmd_pb2.Context] = {}
    run_types = {t for t, kind in graph.context_type.items() if kind in RUN_CONTEXT_TYPES}
    for e in _pipeline_executions(graph, pipeline):
        for c in graph.store.get_contexts_by_execution(e.id):
            if c.type_id in run_types:
                runs[c.name] = c
    return sorted(runs.values(), key=lambda c: (c.create_time_since_epoch, c.id))


def resolve_run(graph: Graph, pipeline: str, ref: Optional[str]) -> mlmd_pb2.Context:
    """A run by id, unique id prefix, or position (1 = oldest, -1 = latest); None = latest."""
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


def run_executions(graph: Graph, run: mlmd_pb2.Context) -> List[mlmd_pb2.Execution]:
    executions = sorted(graph.store.get_executions_by_context(run.id),
                        key=lambda e: (e.create_time_since_epoch, e.id))
    for e in executions:
        graph._executions[e.id] = e
    return executions


def _node_executions(graph: Graph, run: mlmd_pb2.Context) -> Dict[str, mlmd_pb2.Execution]:
    """node -> its (last) execution in the run."""
    out = {}
    for e in run_executions(graph, run):
        out[graph.node_of(e)] = e
    return out


def _typed_outputs(graph: Graph, execution: mlmd_pb2.Execution, artifact_type: str) -> List[mlmd_pb2.Artifact]:
    return [a for artifacts in graph.outputs(execution).values() for a in artifacts
            if graph.type_of(a) == artifact_type]


def infra_summary(graph: Graph, blessing: Optional[mlmd_pb2.Artifact]) -> Optional[Dict[str, Any]]:
    """An InfraBlessing (InfraValidator's serving check): verdict and what it measured."""
    if blessing is None:
        return None
    p = props(blessing)
    keep = ("num_requests", "num_failures", "p50_latency_ms", "p99_latency_ms", "p99_budget_ms", "reason")
    return dict(_artifact_ref(graph, blessing), blessed=p.get("blessed") == 1,
                **{k: v for k, v in p.items() if k in keep})


def _first_of_type(graph: Graph, executions: Iterable[mlmd_pb2.Execution], artifact_type: str):
    """(execution, artifact) of the first output of that type; resolvers only re-emit old artifacts."""
    for e in executions:
        if graph.type_of(e).endswith("Resolver"):
            continue
        for artifacts in graph.outputs(e).values():
            for a in artifacts:
                if graph.type_of(a) == artifact_type:
                    return e, a
    return None, None


def run_record(graph: Graph, pipeline: str, run: mlmd_pb2.Context,
               nodes: Optional[List[str]] = None) -> Dict[str, Any]:
    """One row of `conveyor runs`: states, durations, verdict and push of one pipeline run."""
    nodes = nodes or pipeline_nodes(graph, pipeline)
    by_node = _node_executions(graph, run)
    executions = list(by_node.values())
    record: Dict[str, Any] = {"run_id": run.name, "pipeline": pipeline, "start": None, "start_ms": None,
                              "duration_seconds": None, "nodes": [], "blessed": None,
                              "infra_blessed": None, "pushed_version": None, "push_note": None}
    if executions:
        start = min(e.create_time_since_epoch for e in executions)
        end = max(e.last_update_time_since_epoch for e in executions)
        record.update(start=_iso(start), start_ms=start, duration_seconds=round((end - start) / 1000, 3))
    for node in nodes + [n for n in by_node if n not in nodes]:
        e = by_node.get(node)
        record["nodes"].append({"node": node, "state": state_name(e),
                                "seconds": seconds_of(e) if e else None,
                                "execution_id": e.id if e else None})
    _, blessing = _first_of_type(graph, executions, "ModelBlessing")
    if blessing is not None:
        record["blessed"] = props(blessing).get("blessed") == 1
    _, infra = _first_of_type(graph, executions, "InfraBlessing")
    if infra is not None:
        record["infra_blessed"] = props(infra).get("blessed") == 1
    _, pushed = _first_of_type(graph, executions, "PushedModel")
    if pushed is not None:
        p = props(pushed)
        if p.get("pushed") == 1:
            record["pushed_version"] = p.get("pushed_version")
        else:
            record["push_note"] = p.get("reason", "not pushed")
    elif any(n["state"] == "failed" for n in record["nodes"]):
        record["push_note"] = "run failed at " + next(n["node"] for n in record["nodes"] if n["state"] == "failed")
    return record


def list_runs(store, pipeline: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every run of one pipeline (or of all pipelines), oldest first."""
    graph = Graph(store)
    names = [pipeline] if pipeline else graph.pipelines()
    rows = []
    for name in names:
        nodes = pipeline_nodes(graph, name)
        rows.extend(run_record(graph, name, run, nodes) for run in run_contexts(graph, name))
    return sorted(rows, key=lambda r: (r["start_ms"] or 0, r["run_id"]))


def default_pipeline(graph: Graph, name: Optional[str]) -> str:
    if name:
        _pipeline_context(graph, name)
        return name
    names = graph.pipelines()
    if len(names) == 1:
        return names[0]
    if not names:
        raise LineageError("the metadata store has no pipelines yet (nothing has run)")
    raise LineageError(f"the store holds several pipelines ({', '.join(names)}); pick one with --name")


# ---------------------------------------------------------------------------------------
# Artifact contents


def _tfx_artifact(graph: Graph, artifact: mlmd_pb2.Artifact):
    from tfx.types import artifact_utils
    artifact_type = graph.store.get_artifact_types_by_id([artifact.type_id])[0]
    return artifact_utils.deserialize_artifact(artifact_type, artifact)


def split_names(artifact: mlmd_pb2.Artifact) -> List[str]:
    raw = props(artifact).get("split_names")
    try:
        return list(json.loads(raw)) if raw else []
    except ValueError:
        return []


def statistics_summary(graph: Graph, statistics: mlmd_pb2.Artifact) -> Dict[str, Any]:
    """Per split: example count and label distribution, from StatisticsGen's FeatureStats."""
    from tfx.components.statistics_gen import stats_artifact_utils
    tfx_artifact = _tfx_artifact(graph, statistics)
    splits: Dict[str, Any] = {}
    for split in split_names(statistics):
        try:
            view = stats_artifact_utils.load_statistics(tfx_artifact, split)
        except Exception as e:  # noqa: BLE001 - a missing/corrupt file is reported, not fatal
            splits[split] = {"error": str(e)}
            continue
        dataset = view.proto().datasets[0]
        labels: Dict[str, int] = {}
        for feature in dataset.features:
            name = feature.path.step[-1] if feature.path.step else feature.name
            if name == LABEL_NAME and feature.HasField("string_stats"):
                buckets = feature.string_stats.rank_histogram.buckets
                labels = {b.label: int(b.sample_count) for b in buckets} or {
                    v.value: int(v.frequency) for v in feature.string_stats.top_values}
        splits[split] = {"num_examples": int(dataset.num_examples),
                         "labels": dict(sorted(labels.items()))}
    return {"artifact_id": statistics.id, "uri": statistics.uri, "splits": splits}


def anomalies_summary(graph: Graph, anomalies: mlmd_pb2.Artifact) -> Dict[str, Any]:
    from tensorflow_data_validation.utils import anomalies_util
    splits: Dict[str, List[str]] = {}
    for split in split_names(anomalies):
        path = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        found: List[str] = []
        if os.path.exists(path):
            result = anomalies_util.load_anomalies_binary(path)
            for feature, info in sorted(result.anomaly_info.items()):
                found.append(f"feature '{feature}': {info.short_description} - {info.description}")
            if result.HasField("dataset_anomaly_info"):
                info = result.dataset_anomaly_info
                found.append(f"dataset: {info.short_description} - {info.description}")
        splits[split] = found
    return {"artifact_id": anomalies.id, "uri": anomalies.uri, "splits": splits,
            "count": sum(len(v) for v in splits.values())}


def schema_summary(schema: mlmd_pb2.Artifact) -> Dict[str, Any]:
    """Features of a Schema artifact: type, presence, shape, domain."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2
    path = os.path.join(schema.uri, "schema.pbtxt")
    features: Dict[str, Dict[str, Any]] = {}
    if os.path.exists(path):
        proto = tfdv.load_schema_text(path)
        for f in proto.feature:
            entry: Dict[str, Any] = {"type": schema_pb2.FeatureType.Name(f.type)}
            if f.HasField("presence"):
                entry["min_fraction"] = round(f.presence.min_fraction, 6)
                entry["min_count"] = int(f.presence.min_count)
            if f.HasField("shape"):
                entry["shape"] = [int(d.size) for d in f.shape.dim]
            if f.HasField("int_domain"):
                entry["int_domain"] = [int(f.int_domain.min), int(f.int_domain.max)]
            if f.HasField("domain"):
                domain = next((d for d in proto.string_domain if d.name == f.domain), None)
                entry["domain"] = sorted(domain.value) if domain else f.domain
            features[f.name] = entry
    return {"artifact_id": schema.id, "uri": schema.uri, "features": features}


def evaluation_metrics(evaluation_uri: str) -> Dict[str, Any]:
    """TFMA metrics of a ModelEvaluation: overall and per label, candidate and baseline."""
    import tensorflow_model_analysis as tfma
    out: Dict[str, Any] = {"candidate": {}, "baseline": {}, "per_label": {}, "failures": []}
    try:
        loaded = list(tfma.load_metrics(evaluation_uri))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"cannot read metrics: {e}"
        return out
    for metrics in loaded:
        slice_key = {s.column: (s.bytes_value.decode() if s.HasField("bytes_value") else str(s.int64_value))
                     for s in metrics.slice_key.single_slice_keys}
        for kv in metrics.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            who = "baseline" if kv.key.model_name == "baseline" else "candidate"
            if not slice_key:
                out[who][kv.key.name] = value
            elif kv.key.name == ACCURACY and LABEL_NAME in slice_key:
                out["per_label"].setdefault(slice_key[LABEL_NAME], {})[who] = value
    out["per_label"] = dict(sorted(out["per_label"].items()))
    try:
        validation = tfma.load_validation_result(evaluation_uri)
    except Exception:  # noqa: BLE001
        return out
    for per_slice in validation.metric_validations_per_slice:
        where = ", ".join(f"{k.column}={k.bytes_value.decode() if k.HasField('bytes_value') else k.int64_value}"
                          for k in per_slice.slice_key.single_slice_keys)
        for failure in per_slice.failures:
            t = failure.metric_threshold
            bound = (f">= {t.value_threshold.lower_bound.value:.4f}" if t.HasField("value_threshold")
                     else f"change >= {t.change_threshold.absolute.value:+.4f}")
            out["failures"].append(
                f"{f'[{where}] ' if where else ''}"
                f"{failure.metric_key.name}{' (change vs baseline)' if failure.metric_key.is_diff else ''}"
                f" = {failure.metric_value.double_value.value:.4f} fails threshold {bound}")
    return out


# ---------------------------------------------------------------------------------------
# Lineage


def pushed_models(graph: Graph, model_name: str) -> List[Tuple[int, mlmd_pb2.Artifact]]:
    """(version, PushedModel) of every model version actually pushed (pushed == 1), ascending.

    The model name is the pipeline name; the PushedModel artifacts are those attributed
    to that pipeline's context in MLMD.
    """
    context = graph.store.get_context_by_type_and_name("pipeline", model_name)
    if context is None:
        known = graph.pipelines()
        raise LineageError(f"no model '{model_name}' in the metadata store; "
                           f"models: {', '.join(known) if known else 'none (nothing has run yet)'}")
    pushed_type = graph.store.get_artifact_type("PushedModel") if "PushedModel" in graph.artifact_type.values() else None
    out = []
    if pushed_type is not None:
        for a in graph.store.get_artifacts_by_context(context.id):
            if a.type_id != pushed_type.id:
                continue
            p = props(a)
            if p.get("pushed") == 1 and str(p.get("pushed_version", "")).isdigit():
                graph._artifacts[a.id] = a
                out.append((int(p["pushed_version"]), a))
    return sorted(out, key=lambda x: x[0])


def _pusher_and_model(graph: Graph, pushed: mlmd_pb2.Artifact):
    pusher = graph.producer(pushed)
    model = graph.input(pusher, "model") if pusher else None
    return pusher, model


def versions_of_model(graph: Graph, model_name: str, model: mlmd_pb2.Artifact) -> List[str]:
    return [str(v) for v, pushed in pushed_models(graph, model_name)
            if (_pusher_and_model(graph, pushed)[1] or mlmd_pb2.Artifact()).id == model.id]


def _artifact_ref(graph: Graph, artifact: Optional[mlmd_pb2.Artifact]) -> Optional[Dict[str, Any]]:
    if artifact is None:
        return None
    producer = graph.producer(artifact)
    return {"artifact_id": artifact.id, "type": graph.type_of(artifact), "uri": artifact.uri,
            "created": _iso(artifact.create_time_since_epoch),
            "run_id": graph.run_of(producer) if producer else None,
            "execution_id": producer.id if producer else None}


def examples_summary(graph: Graph, examples: mlmd_pb2.Artifact,
                     statistics: Optional[mlmd_pb2.Artifact] = None) -> Dict[str, Any]:
    p = props(examples)
    gen = graph.producer(examples)
    gen_props = _exec_properties(gen) if gen else {}
    out = _artifact_ref(graph, examples)
    splits_cfg = ((gen_props.get("input_config") or {}).get("splits") or [{}])
    out.update({"node": graph.node_of(gen) if gen else None,
                "input_base": gen_props.get("input_base"),
                "input_pattern": splits_cfg[0].get("pattern") if splits_cfg else None,
                "span": p.get("span"), "version": p.get("version"),
                "input_fingerprint": p.get("input_fingerprint"),
                "example_count": p.get("example_count"), "skipped_count": p.get("skipped_count"),
                "label_names": p.get("label_names"), "splits": split_names(examples),
                "split_counts": {}})
    if statistics is None:
        for e in graph.consumers(examples, "examples"):
            if graph.type_of(e).endswith("StatisticsGen"):
                stats = graph.outputs(e).get("statistics")
                if stats:
                    statistics = stats[0]
                    break
    if statistics is not None:
        summary = statistics_summary(graph, statistics)
        out["split_counts"] = {s: v.get("num_examples") for s, v in summary["splits"].items()}
    return out


def _trainer_summary(graph: Graph, model: mlmd_pb2.Artifact) -> Dict[str, Any]:
    trainer = graph.producer(model)
    out = _artifact_ref(graph, model)
    if trainer is None:
        return out
    ep = _exec_properties(trainer)
    hyper = ep.get("custom_config") or {}
    if isinstance(hyper, dict):  # the code's fingerprint is reported as module_fingerprint
        hyper = {k: v for k, v in hyper.items() if k != MODULES_FINGERPRINT_KEY}
    out.update({"node": graph.node_of(trainer), "state": state_name(trainer),
                "model_type": hyper.get("model") if isinstance(hyper, dict) else None,
                "hyperparameters": hyper,
                "train_steps": (ep.get("train_args") or {}).get("num_steps"),
                "eval_steps": (ep.get("eval_args") or {}).get("num_steps"),
                "module_file": ep.get("module_file"),
                **user_code(ep, "run_fn")})
    return out


def lineage_of_model(graph: Graph, model: mlmd_pb2.Artifact, blessing: Optional[mlmd_pb2.Artifact] = None,
                     with_metrics: bool = True) -> Dict[str, Any]:
    """Model -> Trainer -> transform graph, schema, statistics, anomalies, examples; plus
    its evaluation/blessing (the given one, else the newest)."""
    out: Dict[str, Any] = {"model": _trainer_summary(graph, model)}
    trainer = graph.producer(model)
    # Evaluation and blessing
    evaluator = graph.producer(blessing) if blessing is not None else None
    if evaluator is None:
        evaluators = [(e, b) for e in graph.consumers(model, "model") for b in _typed_outputs(graph, e, "ModelBlessing")]
        if evaluators:
            evaluator, blessing = evaluators[-1]
    if blessing is not None:
        bp = props(blessing)
        out["blessing"] = dict(_artifact_ref(graph, blessing), blessed=bp.get("blessed") == 1,
                               majority_baseline=bp.get("majority_baseline"),
                               accuracy_floor=bp.get("accuracy_floor"))
    if evaluator is not None:
        evaluation = (graph.outputs(evaluator).get("evaluation") or [None])[0]
        baseline = graph.input(evaluator, "baseline_model")
        ev = _artifact_ref(graph, evaluation) or {}
        ev["baseline_model"] = None
        if baseline is not None:
            ev["baseline_model"] = dict(_artifact_ref(graph, baseline),
                                        pushed_versions=versions_of_model(graph, _pipeline_of(graph, evaluator), baseline))
        if evaluation is not None and with_metrics:
            ev.update(evaluation_metrics(evaluation.uri))
        out["evaluation"] = ev
    if trainer is None:
        return out
    transform_graph = graph.input(trainer, "transform_graph")
    schema = graph.input(trainer, "schema")
    examples = graph.input(trainer, "examples")
    if transform_graph is not None:
        transform = graph.producer(transform_graph)
        tp = _exec_properties(transform) if transform else {}
        out["transform_graph"] = dict(_artifact_ref(graph, transform_graph),
                                      **user_code(tp, "preprocessing_fn"))
    statistics = anomalies = None
    if schema is not None:
        out["schema"] = dict(_artifact_ref(graph, schema), **{k: v for k, v in schema_summary(schema).items()
                                                             if k == "features"})
        schema_gen = graph.producer(schema)
        statistics = graph.input(schema_gen, "statistics") if schema_gen else None
        for validator in graph.consumers(schema, "schema"):
            found = graph.outputs(validator).get("anomalies")
            if found and (statistics is None or graph.input(validator, "statistics").id == statistics.id):
                anomalies = found[0]
    if statistics is None and examples is not None:
        for e in graph.consumers(examples, "examples"):
            if "statistics" in graph.outputs(e):
                statistics = graph.outputs(e)["statistics"][0]
    if statistics is not None:
        out["statistics"] = dict(_artifact_ref(graph, statistics), **statistics_summary(graph, statistics))
    if anomalies is not None:
        out["anomalies"] = dict(_artifact_ref(graph, anomalies), **anomalies_summary(graph, anomalies))
    if examples is not None:
        out["examples"] = examples_summary(graph, examples, statistics)
    return out


def _pipeline_of(graph: Graph, execution: mlmd_pb2.Execution) -> str:
    for c in graph.store.get_contexts_by_execution(execution.id):
        if graph.context_type.get(c.type_id) == "pipeline":
            return c.name
    return ""


def lineage_of_version(store, model_name: str, version: Optional[str] = None,
                       with_metrics: bool = True) -> Dict[str, Any]:
    """`conveyor lineage --model NAME [--version V]`: a pushed version back to its data."""
    graph = Graph(store)
    pushed = pushed_models(graph, model_name)
    if not pushed:
        raise LineageError(f"model '{model_name}' has no pushed versions yet "
                           "(no run produced a blessed model that was pushed)")
    versions = ", ".join(str(v) for v, _ in pushed)
    if version in (None, "", "latest"):
        number, artifact = pushed[-1]
    else:
        matches = [(v, a) for v, a in pushed if str(v) == str(version).lstrip("v")]
        if not matches:
            raise LineageError(f"no pushed version {version} of model {model_name}; pushed versions: {versions}")
        number, artifact = matches[-1]
    pusher, model = _pusher_and_model(graph, artifact)
    blessing = graph.input(pusher, "model_blessing") if pusher else None
    p = props(artifact)
    out = {"model_name": model_name, "version": str(number),
           "pushed_versions": [str(v) for v, _ in pushed],
           "pushed": dict(_artifact_ref(graph, artifact), destination=p.get("pushed_destination"))}
    if model is None:
        raise LineageError(f"version {number} of model {model_name}: MLMD has no Pusher input model for "
                           f"PushedModel artifact {artifact.id}")
    out.update(lineage_of_model(graph, model, blessing, with_metrics))
    infra = graph.input(pusher, "infra_blessing") if pusher else None
    if infra is not None:
        out["infra_blessing"] = infra_summary(graph, infra)
    return out


def find_examples(graph: Graph, uri: str) -> mlmd_pb2.Artifact:
    """An Examples artifact by its URI, or the newest one ingested from that input folder."""
    candidates = [os.path.abspath(uri), uri.rstrip("/"), uri]
    for u in dict.fromkeys(candidates):
        found = [a for a in graph.store.get_artifacts_by_uri(u) if graph.type_of(a) == "Examples"]
        if found:
            return found[-1]
    examples_type = "Examples" in graph.artifact_type.values()
    matches = []
    if examples_type:
        for a in graph.store.get_artifacts_by_type("Examples"):
            gen = graph.producer(a)
            if gen and _exec_properties(gen).get("input_base") in candidates:
                matches.append(a)
    if matches:
        return sorted(matches, key=lambda a: a.id)[-1]
    raise LineageError(f"no Examples artifact with URI {uri} (nor examples ingested from that folder) "
                       "in the metadata store")


def models_from_examples(store, uri: str) -> Dict[str, Any]:
    """`conveyor lineage --from-examples URI`: which models trained on the data, which are served."""
    graph = Graph(store)
    examples = find_examples(graph, uri)
    out = {"examples": examples_summary(graph, examples), "models": []}
    for trainer in graph.consumers(examples, "examples"):
        models = graph.outputs(trainer).get("model")
        if not models:
            continue
        model = models[0]
        if any(m["artifact_id"] == model.id for m in out["models"]):
            continue  # a cached Trainer rerun links the same model again
        pipeline = _pipeline_of(graph, trainer)
        blessings = [props(b).get("blessed") == 1 for evaluator in graph.consumers(model, "model")
                     for b in _typed_outputs(graph, evaluator, "ModelBlessing")]
        pushed = pushed_models(graph, pipeline)
        versions = versions_of_model(graph, pipeline, model)
        out["models"].append({
            **_trainer_summary(graph, model), "model_name": pipeline,
            "blessed": any(blessings) if blessings else None,
            "pushed_versions": versions,
            "served": bool(versions),
            "serving_latest": bool(versions) and pushed and versions[-1] == str(pushed[-1][0])})
    return out


# ---------------------------------------------------------------------------------------
# Run contents and diff


def run_details(graph: Graph, pipeline: str, run: mlmd_pb2.Context, with_metrics: bool = True) -> Dict[str, Any]:
    """Everything about one run: the runs row plus exec properties, statistics, schema, metrics."""
    record = run_record(graph, pipeline, run)
    by_node = _node_executions(graph, run)
    record["exec_properties"] = {node: _exec_properties(e) for node, e in by_node.items()}
    executions = list(by_node.values())
    _, statistics = _first_of_type(graph, [e for e in executions if "statistics" in graph.outputs(e)
                                           and graph.type_of(e).endswith("StatisticsGen")], "ExampleStatistics")
    record["statistics"] = statistics_summary(graph, statistics) if statistics is not None else None
    schema_exec, schema = _first_of_type(graph, [e for e in executions if "schema" in graph.outputs(e)], "Schema")
    record["schema"] = schema_summary(schema) if schema is not None else None
    _, anomalies = _first_of_type(graph, [e for e in executions if "anomalies" in graph.outputs(e)],
                                  "ExampleAnomalies")
    record["anomalies"] = anomalies_summary(graph, anomalies) if anomalies is not None else None
    _, examples = _first_of_type(graph, executions, "Examples")
    record["examples"] = examples_summary(graph, examples, statistics) if examples is not None else None
    evaluator, evaluation = _first_of_type(graph, executions, "ModelEvaluation")
    record["evaluation"] = None
    if evaluation is not None:
        ev = _artifact_ref(graph, evaluation)
        blessing = (graph.outputs(evaluator).get("blessing") or [None])[0]
        if blessing is not None:
            bp = props(blessing)
            ev.update(majority_baseline=bp.get("majority_baseline"), accuracy_floor=bp.get("accuracy_floor"))
        baseline = graph.input(evaluator, "baseline_model")
        ev["baseline_model"] = (dict(_artifact_ref(graph, baseline),
                                     pushed_versions=versions_of_model(graph, pipeline, baseline))
                                if baseline is not None else None)
        if with_metrics:
            ev.update(evaluation_metrics(evaluation.uri))
        record["evaluation"] = ev
    record["infra_blessing"] = infra_summary(graph, _first_of_type(graph, executions, "InfraBlessing")[1])
    _, model = _first_of_type(graph, executions, "Model")
    record["model"] = _trainer_summary(graph, model) if model is not None else None
    return record


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff_runs(store, pipeline: Optional[str], run_a: str, run_b: str) -> Dict[str, Any]:
    """`conveyor diff A B`: what changed between two runs of a pipeline."""
    graph = Graph(store)
    pipeline = default_pipeline(graph, pipeline)
    a = run_details(graph, pipeline, resolve_run(graph, pipeline, run_a))
    b = run_details(graph, pipeline, resolve_run(graph, pipeline, run_b))
    config = []
    for node in dict.fromkeys(list(a["exec_properties"]) + list(b["exec_properties"])):
        fa = _flatten(a["exec_properties"].get(node, {}))
        fb = _flatten(b["exec_properties"].get(node, {}))
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                config.append({"node": node, "key": key, "a": fa.get(key), "b": fb.get(key)})
    data = {}
    for split in sorted(set((a["statistics"] or {}).get("splits", {})) | set((b["statistics"] or {}).get("splits", {}))):
        sa = (a["statistics"] or {}).get("splits", {}).get(split, {})
        sb = (b["statistics"] or {}).get("splits", {}).get(split, {})
        labels = sorted(set(sa.get("labels", {})) | set(sb.get("labels", {})))
        data[split] = {"num_examples": {"a": sa.get("num_examples"), "b": sb.get("num_examples")},
                       "labels": {l: {"a": sa.get("labels", {}).get(l), "b": sb.get("labels", {}).get(l)}
                                  for l in labels
                                  if sa.get("labels", {}).get(l) != sb.get("labels", {}).get(l)}}
    fa = (a["schema"] or {}).get("features", {})
    fb = (b["schema"] or {}).get("features", {})
    schema = {"added": sorted(set(fb) - set(fa)), "removed": sorted(set(fa) - set(fb)),
              "changed": [{"feature": f, "a": fa[f], "b": fb[f]} for f in sorted(set(fa) & set(fb))
                          if fa[f] != fb[f]],
              "same_artifact": bool(a["schema"] and b["schema"]
                                    and a["schema"]["artifact_id"] == b["schema"]["artifact_id"])}
    metrics = {}
    ma = ((a["evaluation"] or {}).get("candidate") or {})
    mb = ((b["evaluation"] or {}).get("candidate") or {})
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        metrics[key] = {"a": va, "b": vb, "delta": (vb - va) if va is not None and vb is not None else None}
    per_label = {}
    pa = ((a["evaluation"] or {}).get("per_label") or {})
    pb = ((b["evaluation"] or {}).get("per_label") or {})
    for label in sorted(set(pa) | set(pb)):
        per_label[label] = {"a": pa.get(label, {}).get("candidate"), "b": pb.get(label, {}).get("candidate")}
    return {"pipeline": pipeline, "run_a": a["run_id"], "run_b": b["run_id"],
            "states": {n["node"]: {"a": n["state"], "b": m["state"]}
                       for n, m in zip(a["nodes"], b["nodes"]) if n["state"] != m["state"]},
            "config": config, "data": data,
            "examples": {"a": (a["examples"] or {}).get("uri"), "b": (b["examples"] or {}).get("uri"),
                         "same_artifact": bool(a["examples"] and b["examples"]
                                               and a["examples"]["artifact_id"] == b["examples"]["artifact_id"])},
            "schema": schema, "metrics": metrics, "per_label_accuracy": per_label,
            "blessed": {"a": a["blessed"], "b": b["blessed"]},
            "pushed_version": {"a": a["pushed_version"], "b": b["pushed_version"]}}


def dag_edges(graph: Graph, pipeline: str) -> List[Tuple[str, str]]:
    """Node -> node edges seen in MLMD: a consumer's input produced by another node's execution
    in the same run (so a resolver that hands over an earlier run's model counts, not the old Trainer)."""
    edges = set()
    for run in run_contexts(graph, pipeline):
        executions = run_executions(graph, run)
        made_by: Dict[int, str] = {}
        for e in executions:
            for artifacts in graph.outputs(e).values():
                for art in artifacts:
                    # a resolver re-emits existing artifacts; it is the producer within this run
                    if art.id not in made_by or graph.type_of(e).endswith("Resolver"):
                        made_by[art.id] = graph.node_of(e)
        resolvers = [graph.node_of(e) for e in executions if graph.type_of(e).endswith("Resolver")]
        for e in executions:
            for artifacts in graph.inputs(e).values():
                for art in artifacts:
                    src = made_by.get(art.id)
                    if src is None and len(resolvers) == 1:
                        src = resolvers[0]  # an earlier run's artifact, handed over by the run's resolver
                    if src and src != graph.node_of(e):
                        edges.add((src, graph.node_of(e)))
    return sorted(edges)
