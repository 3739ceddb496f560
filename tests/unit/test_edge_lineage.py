"""Which EdgeExports artifact `conveyor lineage` shows for a pushed version (MLMD in memory)."""
import json

from conveyor.metadata.artifacts import EDGE_EXPORTS_TYPE
from conveyor.metadata.lineage import edge_exports_of
from conveyor.metadata.store import Graph
from tests.support.mlmd_records import artifact, execution, memory_store, run_context

PIPELINE = "image_classifier"


def _edge_run(store, run_name: str, pushed, exports: list, version: str = "1"):
    edge = artifact(store, EDGE_EXPORTS_TYPE, f"/h/out/{run_name}", pushed_version=version,
                    destination=f"/h/edge/{PIPELINE}/{version}", exports=json.dumps(exports))
    execution(store, PIPELINE, run_context(store, run_name), "EdgeExporter",
              inputs=[(pushed, ["pushed_model", 0])], outputs=[(edge, ["edge_exports", 0])])
    return edge


def test_exports_made_by_a_later_run_belong_to_the_version_it_exported():
    store = memory_store()
    pushed = artifact(store, "PushedModel", "/h/pushed/1", pushed=1, pushed_version="1")
    execution(store, PIPELINE, run_context(store, "run-1"), "ServingPusher", outputs=[(pushed, ["pushed_model", 0])])
    # run 1 was killed during its EdgeExporter (nothing recorded); run 2 found version 1 served
    # already and exported it from its own PushedModel.
    rerun_pushed = artifact(store, "PushedModel", "/h/pushed/2", pushed=0, pushed_version="1")
    execution(store, PIPELINE, run_context(store, "run-2"), "ServingPusher",
              outputs=[(rerun_pushed, ["pushed_model", 0])])
    made = _edge_run(store, "run-2", rerun_pushed, [{"name": "tfjs", "pushed": True}])
    _edge_run(store, "run-3", rerun_pushed, [], version="1")  # "already exist": no exports
    _edge_run(store, "run-4", rerun_pushed, [{"name": "tfjs", "pushed": True}], version="2")
    graph = Graph(store)
    assert edge_exports_of(graph, pushed, PIPELINE, 1).id == made.id
    assert edge_exports_of(graph, pushed, "other_model", 1) is None


def test_a_push_without_exports_shows_why():
    store = memory_store()
    pushed = artifact(store, "PushedModel", "/h/pushed/1", pushed=1, pushed_version="1")
    execution(store, PIPELINE, run_context(store, "run-1"), "ServingPusher", outputs=[(pushed, ["pushed_model", 0])])
    graph = Graph(store)
    assert edge_exports_of(graph, pushed, PIPELINE, 1) is None
    why = _edge_run(store, "run-1", pushed, [])
    assert edge_exports_of(Graph(store), pushed, PIPELINE, 1).id == why.id
