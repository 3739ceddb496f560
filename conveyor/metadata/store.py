"""Opening the store read-only, a cached view of its graph, and decoding MLMD records.

Every query takes a `MetadataStore`, so the same code works on the SQLite file in
HOME/metadata.sqlite (`open_store(home=...)`) or on MySQL (`open_store(metadata=<a config's
MySQLMetadata>)`; the connection is built in pipelines/metadata_connection.py).
"""
import dataclasses
import datetime
import json
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from modules.settings import MODULES_FINGERPRINT_KEY
from pipelines import metadata_connection
from pipelines.config import DEFAULT_HOME, Config, MySQLMetadata, load_any_config
from pipelines.metadata_connection import METADATA_FILE  # noqa: F401  (re-exported)
from pipelines.preflight import UNCHANGED_TYPE
NOT_RUN = "not run"
# Local/Kubeflow runs record a pipeline_run context; TFX's Airflow launcher records run
# ("<pipeline>.<dag run>") + component_run ("<run>.<node>").
RUN_CONTEXT_TYPES = ("pipeline_run", "run")
# Executions Conveyor records itself, outside the DAG: a no-op rerun (pipelines/preflight.py)
# and `conveyor bless` (conveyor/bless.py: a manual blessing, then its push). They have no
# node; `conveyor runs` shows them as notes on their run, not as component columns.
MANUAL_BLESSING_TYPE = "conveyor.ManualBlessing"
MANUAL_PUSH_TYPE = "conveyor.ManualPush"
ACTION_TYPES = (UNCHANGED_TYPE, MANUAL_BLESSING_TYPE, MANUAL_PUSH_TYPE)
_STATE = {mlmd_pb2.Execution.COMPLETE: "complete",
          mlmd_pb2.Execution.CACHED: "cached",
          mlmd_pb2.Execution.FAILED: "failed",
          mlmd_pb2.Execution.RUNNING: "running",
          mlmd_pb2.Execution.NEW: "new",
          mlmd_pb2.Execution.CANCELED: "canceled"}
_INPUTS = (mlmd_pb2.Event.INPUT, mlmd_pb2.Event.DECLARED_INPUT)
_OUTPUTS = (mlmd_pb2.Event.OUTPUT, mlmd_pb2.Event.DECLARED_OUTPUT)


class LineageError(LookupError):
    """Unknown store/pipeline/run/model/version; the message says what exists instead."""


# ---------------------------------------------------------------------------------------
# Typed results and their JSON form

def json_field(default: Any = None, *, omit_if_none: bool = False, json: bool = True, **kwargs) -> Any:
    """A dataclass field of a `Record` with JSON options.

    Args:
      default: the field's default (use `default_factory=` in kwargs for lists/dicts).
      omit_if_none: leave the key out of `to_json()` when the value is None (keys that
        the CLI's JSON has only sometimes).
      json: False keeps the field out of `to_json()` entirely (in-process data such as protos).
    """
    metadata = {"omit_if_none": omit_if_none, "json": json}
    if "default_factory" in kwargs:
        return dataclasses.field(metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def to_json_value(value: Any) -> Any:
    """Records -> dicts, recursively through dicts, lists and tuples; other values unchanged."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


@dataclasses.dataclass
class Record:
    """Base of the typed results: fields in the order of their JSON keys."""

    def to_json(self) -> Dict[str, Any]:
        """The JSON form (plain dicts/lists/scalars, keys in field order) printed by `--json`."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("json", True):
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue
            out[f.name] = to_json_value(value)
        return out

    # Scripts written against the dict results of the old conveyor.lineage index them by key:
    # record["run_id"] / record.get("pushed_version") keep working, reading the JSON form.
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON form's value of `key`, or `default` (dict-style access for old scripts)."""
        return self.to_json().get(key, default)


# ---------------------------------------------------------------------------------------
# Connecting

def home_dir(home: Optional[str] = None) -> str:
    """Absolute Conveyor HOME: `home`, else the Config default (./conveyor_home)."""
    return os.path.abspath(home or DEFAULT_HOME)


def sqlite_connection_config(metadata_path: str) -> mlmd_pb2.ConnectionConfig:
    """A read-only MLMD ConnectionConfig on the SQLite file at `metadata_path`."""
    return metadata_connection.sqlite_connection_config(metadata_path, read_only=True)


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """Where a read command finds MLMD.

    Fields:
      home: absolute Conveyor HOME (serving/, request_logs/; the SQLite store).
      metadata: the config's MySQL connection; None = HOME/metadata.sqlite.
    """
    home: str
    metadata: Optional[MySQLMetadata] = None

    def open(self) -> metadata_store.MetadataStore:
        """open_store(self.home, metadata=self.metadata)."""
        return open_store(self.home, metadata=self.metadata)

    def exists(self) -> bool:
        """Whether there may be runs to read (metadata_connection.store_exists)."""
        return metadata_connection.store_exists(self.home, self.metadata)

    def describe(self) -> str:
        """The SQLite file or "MySQL database 'D' at H:P (user U)", for messages."""
        return metadata_connection.describe(self.home, self.metadata)


def store_location(home: Optional[str] = None, config_path: Optional[str] = None) -> StoreLocation:
    """The store of a read command's --home and --config flags.

    Args:
      home: --home (default: the config's `home`, else ./conveyor_home).
      config_path: --config: a YAML/JSON config whose `metadata` (and `home`) say where MLMD is.
    Raises:
      ConfigError: the config file is unreadable or invalid.
    """
    if not config_path:
        return StoreLocation(home_dir(home))
    config = load_any_config(config_path, {"home": home})
    return StoreLocation(config.home_dir, config.metadata)


def open_store(home: Optional[str] = None, *, metadata_path: Optional[str] = None,
               connection_config: Optional[mlmd_pb2.ConnectionConfig] = None,
               metadata: Optional[MySQLMetadata] = None) -> metadata_store.MetadataStore:
    """A read-only store on HOME/metadata.sqlite, a given SQLite file, a MySQL database, or
    any ConnectionConfig.

    Args:
      home: Conveyor HOME (default ./conveyor_home); used when no other argument is given.
      metadata_path: an MLMD SQLite file (overrides `home`).
      connection_config: any MLMD connection; used as given (overrides the others).
      metadata: a config's MySQL connection (pipelines/config.py MySQLMetadata; overrides
        `home` and `metadata_path`); the database is never created.
    Raises:
      LineageError: the SQLite file does not exist (nothing has run in that HOME).
      MetadataConnectionError (a ConfigError): the MySQL database cannot be reached; one
        sentence naming host, port and database.
    """
    if connection_config is not None:
        return metadata_store.MetadataStore(connection_config)
    if metadata is not None:
        return metadata_connection.connect(home_dir(home), metadata, read_only=True)
    path = metadata_path or os.path.join(home_dir(home), METADATA_FILE)
    if not os.path.isfile(path):
        raise LineageError(f"no metadata store at {path}: run a pipeline first (conveyor run ...) "
                           "or pass --home (or --config naming a MySQL metadata store)")
    return metadata_store.MetadataStore(sqlite_connection_config(path))


# ---------------------------------------------------------------------------------------
# Decoding records

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
    """Properties and custom properties of an artifact/execution as plain Python values
    (int, float, str; struct values as dicts/lists; proto values as text)."""
    out = {k: _value(v) for k, v in node.properties.items()}
    out.update({k: _value(v) for k, v in node.custom_properties.items()})
    return out


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch (MLMD's timestamps) -> local ISO 8601 time, in seconds."""
    return datetime.datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def state_name(execution: Optional[mlmd_pb2.Execution]) -> str:
    """"complete" | "cached" | "failed" | "running" | "new" | "canceled"; NOT_RUN for None."""
    return NOT_RUN if execution is None else _STATE.get(execution.last_known_state, "unknown")


def seconds_of(execution: mlmd_pb2.Execution) -> float:
    """Wall time of an execution in seconds (last update - creation, ms resolution); for one
    still RUNNING (or NEW), the time since its creation (it is not updated while it runs)."""
    end = execution.last_update_time_since_epoch
    if execution.last_known_state in (mlmd_pb2.Execution.RUNNING, mlmd_pb2.Execution.NEW):
        end = max(end, int(time.time() * 1000))
    return round((end - execution.create_time_since_epoch) / 1000, 3)


def exec_properties(execution: mlmd_pb2.Execution) -> Dict[str, Any]:
    """TFX exec properties of an execution: its custom properties without TFX's internal
    ones (`__*`, tfx_version), JSON strings (protos such as train_args) decoded."""
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


@dataclasses.dataclass
class UserCode(Record):
    """Which user function a Transform/Trainer execution ran.

    Fields:
      module_path: the function's import path (e.g. "modules.trainer.run_fn"), else TFX's wheel path.
      module_fingerprint: sha256 (hex) of the user code, None when not recorded.
    """
    module_path: Optional[str] = None
    module_fingerprint: Optional[str] = None


def user_code(exec_props: Dict[str, Any], fn_key: str) -> UserCode:
    """The user function an execution ran (exec property `fn_key`) and the sha256 of its code.

    Conveyor's pipelines name the function (`preprocessing_fn` / `run_fn`) and record the
    code's sha256 in custom_config under MODULES_FINGERPRINT_KEY (pipelines.pipeline's
    module_config); pipelines built with a module_file have TFX's wheel path, whose local
    version is that sha256.
    """
    custom = exec_props.get("custom_config")
    fingerprint = custom.get(MODULES_FINGERPRINT_KEY) if isinstance(custom, dict) else None
    wheel = exec_props.get("module_path")
    if not fingerprint:
        match = re.search(r"\+([0-9a-f]{16,})-", wheel or "")
        fingerprint = match.group(1) if match else None
    return UserCode(module_path=exec_props.get(fn_key) or wheel, module_fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------
# A cached view of the store's graph

class Graph:
    """Lazy, cached access to MLMD's executions, artifacts, events and contexts.

    One Graph per query: the caches never refresh, so a Graph sees the store as it was
    when each record was first read. Not thread-safe.
    """

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

    # contexts --------------------------------------------------------------------------
    def contexts(self, type_name: str) -> List[mlmd_pb2.Context]:
        """All contexts of one context type ("pipeline", "pipeline_run", "node", ...)."""
        return list(self.store.get_contexts_by_type(type_name))

    def pipelines(self) -> List[str]:
        """Names of every pipeline context, sorted."""
        return sorted(c.name for c in self.contexts("pipeline"))

    def pipeline_context(self, pipeline: str, what: str = "pipeline") -> mlmd_pb2.Context:
        """The pipeline context named `pipeline`.

        Raises:
          LineageError: no such pipeline; the message lists the pipelines (called `what`s).
        """
        context = self.store.get_context_by_type_and_name("pipeline", pipeline)
        if context is None:
            known = self.pipelines()
            raise LineageError(f"no {what} '{pipeline}' in the metadata store; "
                               f"{what}s: {', '.join(known) if known else 'none (nothing has run yet)'}")
        return context

    def pipeline_of(self, execution: mlmd_pb2.Execution) -> str:
        """Name of the pipeline context of an execution ("" when it has none)."""
        for c in self.store.get_contexts_by_execution(execution.id):
            if self.context_type.get(c.type_id) == "pipeline":
                return c.name
        return ""

    # nodes -----------------------------------------------------------------------------
    @staticmethod
    def _cached(ids: Iterable[int], cache: Dict[int, Any], fetch: Callable) -> List[Any]:
        """Records by id in the order asked, fetching only those not read before."""
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if i not in cache]
        if missing:
            cache.update((record.id, record) for record in fetch(missing))
        return [cache[i] for i in ids if i in cache]

    def artifacts(self, ids: Iterable[int]) -> List[mlmd_pb2.Artifact]:
        """Artifacts by id, in the order asked (unknown ids are skipped)."""
        return self._cached(ids, self._artifacts, self.store.get_artifacts_by_id)

    def artifact(self, artifact_id: int) -> Optional[mlmd_pb2.Artifact]:
        """One artifact by id, or None."""
        found = self.artifacts([artifact_id])
        return found[0] if found else None

    def artifacts_in_context(self, context_id: int) -> List[mlmd_pb2.Artifact]:
        """Artifacts attributed to a context (cached for later lookups by id)."""
        found = list(self.store.get_artifacts_by_context(context_id))
        self._artifacts.update((a.id, a) for a in found)
        return found

    def executions(self, ids: Iterable[int]) -> List[mlmd_pb2.Execution]:
        """Executions by id, in the order asked (unknown ids are skipped)."""
        return self._cached(ids, self._executions, self.store.get_executions_by_id)

    def executions_in_context(self, context_id: int) -> List[mlmd_pb2.Execution]:
        """Executions associated with a context, oldest first (creation time, then id)."""
        found = sorted(self.store.get_executions_by_context(context_id),
                       key=lambda e: (e.create_time_since_epoch, e.id))
        self._executions.update((e.id, e) for e in found)
        return found

    def is_action(self, execution: mlmd_pb2.Execution) -> bool:
        """Whether an execution is one Conveyor recorded outside the DAG (ACTION_TYPES)."""
        return self.execution_type.get(execution.type_id) in ACTION_TYPES

    def type_of(self, node) -> str:
        """Type name of an artifact or execution ("?" if unknown)."""
        if isinstance(node, mlmd_pb2.Artifact):
            return self.artifact_type.get(node.type_id, "?")
        return self.execution_type.get(node.type_id, "?")

    def tfx_artifact(self, artifact: mlmd_pb2.Artifact):
        """The MLMD artifact as a `tfx.types.Artifact` of its TFX class (for TFX's readers)."""
        from tfx.types import artifact_utils
        artifact_type = self.store.get_artifact_types_by_id([artifact.type_id])[0]
        return artifact_utils.deserialize_artifact(artifact_type, artifact)

    def _index_contexts(self, execution_id: int) -> None:
        node, run = "?", ""
        for c in self.store.get_contexts_by_execution(execution_id):
            kind = self.context_type.get(c.type_id)
            if kind == "node":
                node = c.name.split(".", 1)[-1]
            elif kind == "component_run":
                node = c.name.rsplit(".", 1)[-1]
            elif kind in RUN_CONTEXT_TYPES:
                run = c.name
        self._exec_node[execution_id], self._exec_run[execution_id] = node, run

    def node_of(self, execution: mlmd_pb2.Execution) -> str:
        """The pipeline node id that ran an execution (e.g. "Trainer"); "?" if unknown."""
        if execution.id not in self._exec_node:
            self._index_contexts(execution.id)
        return self._exec_node[execution.id]

    def run_of(self, execution: mlmd_pb2.Execution) -> str:
        """The run id (run context name) of an execution; "" if it has none."""
        if execution.id not in self._exec_run:
            self._index_contexts(execution.id)
        return self._exec_run[execution.id]

    # events ----------------------------------------------------------------------------
    def execution_events(self, execution_id: int) -> List[mlmd_pb2.Event]:
        """Every event of an execution."""
        if execution_id not in self._exec_events:
            self._exec_events[execution_id] = list(self.store.get_events_by_execution_ids([execution_id]))
        return self._exec_events[execution_id]

    def artifact_events(self, artifact_id: int) -> List[mlmd_pb2.Event]:
        """Every event of an artifact."""
        if artifact_id not in self._art_events:
            self._art_events[artifact_id] = list(self.store.get_events_by_artifact_ids([artifact_id]))
        return self._art_events[artifact_id]

    @staticmethod
    def event_keys(event: mlmd_pb2.Event) -> List[str]:
        """Every input/output key an event files its artifact under, in path order.

        TFX records ONE event per (execution, artifact): an artifact given under two keys
        (e.g. the Evaluator's `model` and `baseline_model` when a rerun's candidate is the
        latest blessed model itself) has the path [key1, index1, key2, index2]
        (tfx/orchestration/portable/mlmd/event_lib.py: add_event_path, _parse_path).
        An event without a key step gives [""].
        """
        keys = list(dict.fromkeys(s.key for s in event.path.steps if s.HasField("key")))
        return keys or [""]

    def _linked(self, execution: mlmd_pb2.Execution, types) -> Dict[str, List[mlmd_pb2.Artifact]]:
        events = [e for e in self.execution_events(execution.id) if e.type in types]
        artifacts = {a.id: a for a in self.artifacts(e.artifact_id for e in events)}
        indexed: Dict[str, List[tuple]] = {}
        for e in events:
            if e.artifact_id not in artifacts:
                continue
            steps = list(e.path.steps)
            pairs = [(s.key, steps[i + 1].index if i + 1 < len(steps) and steps[i + 1].HasField("index") else 0)
                     for i, s in enumerate(steps) if s.HasField("key")] or [("", 0)]
            for key, index in dict.fromkeys(pairs):
                indexed.setdefault(key, []).append((index, e.artifact_id))
        return {key: [artifacts[i] for _, i in sorted(pairs, key=lambda p: p[0])]
                for key, pairs in indexed.items()}

    def inputs(self, execution) -> Dict[str, List[mlmd_pb2.Artifact]]:
        """Input artifacts of an execution by input key (e.g. "examples")."""
        return self._linked(execution, _INPUTS)

    def outputs(self, execution) -> Dict[str, List[mlmd_pb2.Artifact]]:
        """Output artifacts of an execution by output key (e.g. "model")."""
        return self._linked(execution, _OUTPUTS)

    def input(self, execution, key: str) -> Optional[mlmd_pb2.Artifact]:
        """The first input artifact under `key`, or None."""
        found = self.inputs(execution).get(key)
        return found[0] if found else None

    def outputs_of_type(self, execution: mlmd_pb2.Execution, artifact_type: str) -> List[mlmd_pb2.Artifact]:
        """Output artifacts of one type name (e.g. "ModelBlessing"), any output key."""
        return [a for artifacts in self.outputs(execution).values() for a in artifacts
                if self.type_of(a) == artifact_type]

    def first_output_of_type(self, executions: Iterable[mlmd_pb2.Execution], artifact_type: str):
        """(execution, artifact) of the first output of that type, or (None, None).
        Resolvers are skipped: they only re-emit artifacts made earlier."""
        for e in executions:
            if self.type_of(e).endswith("Resolver"):
                continue
            for artifacts in self.outputs(e).values():
                for a in artifacts:
                    if self.type_of(a) == artifact_type:
                        return e, a
        return None, None

    def producer(self, artifact: mlmd_pb2.Artifact) -> Optional[mlmd_pb2.Execution]:
        """The execution that created the artifact, or None. A cached rerun also links it as
        OUTPUT: the first COMPLETE one is the producer; resolvers never are."""
        ids = [e.execution_id for e in self.artifact_events(artifact.id) if e.type in _OUTPUTS]
        executions = sorted(self.executions(ids), key=lambda e: (e.last_known_state != mlmd_pb2.Execution.COMPLETE,
                                                                  e.create_time_since_epoch, e.id))
        executions = [e for e in executions if not self.execution_type.get(e.type_id, "").endswith("Resolver")]
        return executions[0] if executions else None

    def consumers(self, artifact: mlmd_pb2.Artifact, key: Optional[str] = None) -> List[mlmd_pb2.Execution]:
        """Executions that read the artifact (under input `key`, if given), by id."""
        events = [e for e in self.artifact_events(artifact.id)
                  if e.type in _INPUTS and (key is None or key in self.event_keys(e))]
        return sorted(self.executions(e.execution_id for e in events), key=lambda e: e.id)
