"""Writing MLMD records by hand in the shapes TFX's LocalDagRunner writes them, for tests
of code that reads MLMD back (preflight, `conveyor bless`, conveyor/metadata) without
running a pipeline: context types "pipeline", "pipeline_run" and "node"
("<pipeline>.<node id>"), executions in all three, events with [key, index] paths."""
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

Step = Union[str, int]


def sqlite_store(path: str) -> metadata_store.MetadataStore:
    """A read-write store on the SQLite file `path` (created with its folder)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    config = mlmd_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = mlmd_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def memory_store() -> metadata_store.MetadataStore:
    """A read-write store in memory (MLMD's fake_database: SQLite in memory)."""
    config = mlmd_pb2.ConnectionConfig()
    config.fake_database.SetInParent()
    return metadata_store.MetadataStore(config)


def context(store, type_name: str, name: str, **custom: str) -> mlmd_pb2.Context:
    """The context of that type and name, created (with string custom properties) if new."""
    found = store.get_context_by_type_and_name(type_name, name)
    if found is not None:
        return found
    type_id = store.put_context_type(mlmd_pb2.ContextType(name=type_name))
    out = mlmd_pb2.Context(type_id=type_id, name=name)
    for key, value in custom.items():
        out.custom_properties[key].string_value = value
    [out.id] = store.put_contexts([out])
    return out


def artifact(store, type_name: str, uri: str, **custom: Union[int, str]) -> mlmd_pb2.Artifact:
    """A new LIVE artifact (not yet stored: `execution` stores it) with int/str custom properties."""
    type_id = store.put_artifact_type(mlmd_pb2.ArtifactType(name=type_name))
    out = mlmd_pb2.Artifact(type_id=type_id, uri=uri, state=mlmd_pb2.Artifact.LIVE)
    for key, value in custom.items():
        if isinstance(value, int):
            out.custom_properties[key].int_value = value
        else:
            out.custom_properties[key].string_value = value
    return out


def event(kind, path: Sequence[Step]) -> mlmd_pb2.Event:
    """An event whose path alternates keys (str) and indexes (int), e.g. ["model", 0]."""
    out = mlmd_pb2.Event(type=kind)
    for step in path:
        if isinstance(step, str):
            out.path.steps.add().key = step
        else:
            out.path.steps.add().index = step
    return out


def execution(store, pipeline: str, run: mlmd_pb2.Context, node: str,
              inputs: Sequence[Tuple[mlmd_pb2.Artifact, Sequence[Step]]] = (),
              outputs: Sequence[Tuple[mlmd_pb2.Artifact, Sequence[Step]]] = (),
              state=mlmd_pb2.Execution.COMPLETE, **exec_properties: str) -> Dict[str, List[int]]:
    """Records one execution of `node` in `run` of `pipeline` with its input and output
    events (paths as in `event`); new artifacts are stored and get their ids in place.

    Returns:
      {"execution": [id], "artifacts": [ids in the order given, inputs first]}.
    """
    type_id = store.put_execution_type(mlmd_pb2.ExecutionType(name=f"test.{node}"))
    out = mlmd_pb2.Execution(type_id=type_id, last_known_state=state)
    for key, value in exec_properties.items():
        out.custom_properties[key].string_value = value
    pairs = [(a, event(mlmd_pb2.Event.INPUT, p)) for a, p in inputs]
    pairs += [(a, event(mlmd_pb2.Event.OUTPUT, p)) for a, p in outputs]
    contexts = [context(store, "pipeline", pipeline), run, context(store, "node", f"{pipeline}.{node}")]
    execution_id, artifact_ids, _ = store.put_execution(out, pairs, contexts)
    for (a, _), artifact_id in zip(pairs, artifact_ids):
        a.id = artifact_id
    return {"execution": [execution_id], "artifacts": list(artifact_ids)}


def run_context(store, name: str, **custom: str) -> mlmd_pb2.Context:
    """A pipeline_run context (LocalDagRunner names runs by their ISO start time)."""
    return context(store, "pipeline_run", name, **custom)


def stored(store, artifact: mlmd_pb2.Artifact) -> Optional[mlmd_pb2.Artifact]:
    """The artifact as the store holds it now."""
    found = store.get_artifacts_by_id([artifact.id])
    return found[0] if found else None
