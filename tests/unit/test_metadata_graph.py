"""conveyor/metadata/store.py Graph on a real (in-memory) MLMD store: how events file
artifacts under input keys, in the shapes TFX records them."""
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.metadata.store import Graph
from tests.support.mlmd_records import event, memory_store


def _artifact(store, type_name, uri):
    type_id = store.put_artifact_type(mlmd_pb2.ArtifactType(name=type_name))
    [artifact_id] = store.put_artifacts([mlmd_pb2.Artifact(type_id=type_id, uri=uri)])
    return store.get_artifacts_by_id([artifact_id])[0]


def test_an_artifact_input_under_two_keys_is_found_under_both():
    # A threshold-only rerun: the Evaluator's candidate is the latest blessed model itself.
    # TFX then records ONE input event whose path names both keys (event_lib.add_event_path).
    store = memory_store()
    model = _artifact(store, "Model", "/m/1")
    examples = _artifact(store, "Examples", "/e/1")
    blessing = _artifact(store, "ModelBlessing", "/b/1")
    type_id = store.put_execution_type(mlmd_pb2.ExecutionType(name="Evaluator"))
    execution = mlmd_pb2.Execution(type_id=type_id, last_known_state=mlmd_pb2.Execution.COMPLETE)
    store.put_execution(execution, [
        (model, event(mlmd_pb2.Event.INPUT, ["baseline_model", 0, "model", 0])),
        (examples, event(mlmd_pb2.Event.INPUT, ["examples", 0])),
        (blessing, event(mlmd_pb2.Event.OUTPUT, ["blessing", 0]))], [])
    graph = Graph(store)
    [evaluator] = graph.executions(e.id for e in store.get_executions())
    assert graph.input(evaluator, "model").id == model.id
    assert graph.input(evaluator, "baseline_model").id == model.id
    assert graph.input(evaluator, "examples").id == examples.id
    assert sorted(graph.inputs(evaluator)) == ["baseline_model", "examples", "model"]
    assert [e.id for e in graph.consumers(model, "model")] == [evaluator.id]
    assert [e.id for e in graph.consumers(model, "baseline_model")] == [evaluator.id]
    assert graph.consumers(model, "examples") == []


def test_artifacts_under_one_key_keep_their_index_order():
    store = memory_store()
    spans = [_artifact(store, "Examples", f"/e/{i}") for i in range(3)]
    type_id = store.put_execution_type(mlmd_pb2.ExecutionType(name="Trainer"))
    execution = mlmd_pb2.Execution(type_id=type_id)
    # events given out of order: the path index decides the position
    store.put_execution(execution, [(spans[2], event(mlmd_pb2.Event.INPUT, ["examples", 0])),
                                    (spans[0], event(mlmd_pb2.Event.INPUT, ["examples", 2])),
                                    (spans[1], event(mlmd_pb2.Event.INPUT, ["examples", 1]))], [])
    graph = Graph(store)
    [trainer] = graph.executions(e.id for e in store.get_executions())
    assert [a.uri for a in graph.inputs(trainer)["examples"]] == ["/e/2", "/e/1", "/e/0"]


def test_runs_say_infra_validation_blocked_the_push(tmp_path):
    from conveyor.history_cli import format_runs
    from conveyor.metadata.runs import list_runs
    from tests.support import mlmd_records as rec
    store = rec.sqlite_store(str(tmp_path / "metadata.sqlite"))
    name = "image_classifier"
    for run_id, reason in (("2026-01-01T10:00:00", "infra validation failed"),  # components/pusher.py now
                           ("2026-01-01T11:00:00", "not blessed")):  # Pushers before that, for both verdicts
        run = rec.run_context(store, run_id)
        model = rec.artifact(store, "Model", f"/m/{run_id}")
        rec.execution(store, name, run, "Trainer", outputs=[(model, ["model", 0])])
        rec.execution(store, name, run, "BaselineEvaluator", inputs=[(model, ["model", 0])],
                      outputs=[(rec.artifact(store, "ModelBlessing", "/b", blessed=1), ["blessing", 0])])
        rec.execution(store, name, run, "ConveyorInfraValidator", inputs=[(model, ["model", 0])],
                      outputs=[(rec.artifact(store, "InfraBlessing", "/i", blessed=0, reason="p99"), ["blessing", 0])])
        rec.execution(store, name, run, "ServingPusher", inputs=[(model, ["model", 0])],
                      outputs=[(rec.artifact(store, "PushedModel", "/p", pushed=0, reason=reason),
                                ["pushed_model", 0])])
    rows = list_runs(store, name)
    assert [(r.blessed, r.infra_blessed, r.push_note) for r in rows] == [
        (True, False, "infra validation failed"), (True, False, "infra validation failed")]
    assert "(not blessed)" not in format_runs(rows) and "- (infra validation failed)" in format_runs(rows)
