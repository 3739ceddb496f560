"""`conveyor metadata copy` on a real MariaDB server (tests/support/mariadb.py): every MLMD
record of a SQLite store arrives with its id, timestamps, properties and non-ASCII strings as
MLMD reads them; a non-empty target and a value MySQL's MLMD schema cannot hold (an integer
property beyond 32 bits) are refused in one line with nothing written."""
import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.metadata_copy import CopyError, copy_sqlite_to_mysql
from pipelines import metadata_connection as mc
from pipelines.config import MySQLMetadata
from tests.support import mlmd_records as rec
from tests.support.mariadb import PASSWORD_ENV, USER, running_mariadb

PASSWORD = "copy-test-pw"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_mariadb(str(tmp_path_factory.mktemp("mariadb_copy"))) as s:
        s.add_user(PASSWORD)
        yield s


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def _target(server, database: str) -> MySQLMetadata:
    return MySQLMetadata(socket=server.socket, database=database, user=USER, password_env=PASSWORD_ENV)


def _event(kind, key):
    event = pb.Event(type=kind)
    event.path.steps.add().key = key
    event.path.steps.add().index = 0
    return event


def _source(path: str, big: bool = False) -> None:
    """A small store: types with properties, a run that reads examples and writes a model."""
    store = rec.sqlite_store(path)
    examples_type = store.put_artifact_type(pb.ArtifactType(name="Examples", properties={"span": pb.INT}))
    model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
    trainer = store.put_execution_type(pb.ExecutionType(name="Trainer", properties={"steps": pb.INT}))
    pipeline_type = store.put_context_type(pb.ContextType(name="pipeline"))
    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    examples = pb.Artifact(type_id=examples_type, uri="/home/data/Zürich ✓", state=pb.Artifact.LIVE)
    examples.properties["span"].int_value = 2 ** 40 if big else 20261130
    examples.custom_properties["label_names"].string_value = '["chat", "café", "猫"]'
    examples.custom_properties["share"].double_value = 0.25
    model = pb.Artifact(type_id=model_type, uri="/home/model", state=pb.Artifact.LIVE)
    model.custom_properties["proto"].proto_value.Pack(pb.Artifact(uri="ü", type_id=7))  # a BLOB column
    model.custom_properties["flag"].bool_value = True
    model.custom_properties["struct"].struct_value.update({"steps": 30, "names": ["é"]})
    execution = pb.Execution(type_id=trainer, last_known_state=pb.Execution.COMPLETE)
    execution.properties["steps"].int_value = 30
    execution.custom_properties["note"].string_value = "naïve"
    pipeline = pb.Context(type_id=pipeline_type, name="image_classifier")
    run = pb.Context(type_id=run_type, name="2026-11-30T10:00:00")
    run.custom_properties["fingerprint"].string_value = "abc"
    [examples.id] = store.put_artifacts([examples])
    _, _, [pipeline.id, run.id] = store.put_execution(
        execution, [(examples, _event(pb.Event.INPUT, "examples")), (model, _event(pb.Event.OUTPUT, "model"))],
        [pipeline, run])
    store.put_parent_contexts([pb.ParentContext(child_id=run.id, parent_id=pipeline.id)])


def _records(store):
    """Everything MLMD returns about the store, ids and timestamps included."""
    by_id = lambda items: sorted(items, key=lambda x: x.id)  # noqa: E731
    artifacts, executions, contexts = by_id(store.get_artifacts()), by_id(store.get_executions()), by_id(
        store.get_contexts())
    return {
        "types": [by_id(store.get_artifact_types()), by_id(store.get_execution_types()),
                  by_id(store.get_context_types())],
        "artifacts": artifacts, "executions": executions, "contexts": contexts,
        "events": sorted(store.get_events_by_execution_ids([e.id for e in executions]),
                         key=lambda e: (e.execution_id, e.artifact_id, e.type)),
        "attributions": {c.id: [a.id for a in by_id(store.get_artifacts_by_context(c.id))] for c in contexts},
        "associations": {c.id: [e.id for e in by_id(store.get_executions_by_context(c.id))] for c in contexts},
        "parents": {c.id: [p.id for p in store.get_parent_contexts_by_context(c.id)] for c in contexts},
    }


def test_every_record_arrives_as_it_was(server, tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    _source(path)
    result = copy_sqlite_to_mysql(path, _target(server, "copied"))
    assert result.rows["Artifact"] == 2 and result.rows["Execution"] == 1 and result.rows["Event"] == 2
    assert result.rows["ParentContext"] == 1 and result.rows["Attribution"] == 4 and result.rows["Association"] == 2
    source = _records(rec.sqlite_store(path))
    copied = _records(mc.connect(str(tmp_path), _target(server, "copied"), read_only=True))
    assert copied == source
    examples = copied["artifacts"][0]
    assert examples.uri == "/home/data/Zürich ✓" and "café" in examples.custom_properties["label_names"].string_value
    # What MLMD's own client would have stored: the UTF-8 bytes read as latin1 (double-encoded).
    assert server.sql("SELECT HEX(uri) FROM Artifact WHERE id = 1", "copied").strip().startswith(
        "/home/data/Zürich".encode("utf-8").decode("latin-1").encode("utf-8").hex().upper())


def test_a_second_copy_into_the_same_database_is_refused(server, tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    _source(path)
    copy_sqlite_to_mysql(path, _target(server, "twice"))
    with pytest.raises(CopyError, match=r"MySQL database 'twice' at socket .* already holds 2 artifacts, 1 "
                                        r"executions and 2 contexts; copy into an empty \(or new\) database"):
        copy_sqlite_to_mysql(path, _target(server, "twice"))


def test_a_value_mysql_cannot_hold_is_one_line_and_nothing_is_written(server, tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    _source(path, big=True)  # a 41-bit integer property: MLMD's MySQL tables hold 32-bit ones
    with pytest.raises(CopyError) as error:
        copy_sqlite_to_mysql(path, _target(server, "big"))
    assert "failed, nothing was written: Out of range value for column 'int_value'" in str(error.value)
    assert "\n" not in str(error.value)
    assert server.sql("SELECT COUNT(*) FROM Artifact", "big").strip() == "0"


def test_no_source_is_refused(server, tmp_path):
    with pytest.raises(CopyError, match="no metadata store at .*nothing to copy"):
        copy_sqlite_to_mysql(os.path.join(str(tmp_path), "metadata.sqlite"), _target(server, "none"))
