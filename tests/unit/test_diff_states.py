"""`conveyor diff` on runs recorded by hand in MLMD: nodes that did not run are "not run"
(not a list of `X -> None` changes), a cached node compares the execution that made the
artifact it reused, and only real differences are listed."""
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.history_cli import format_diff
from conveyor.metadata.diff import diff_runs
from tests.support import mlmd_records as rec

P = "p"
GEN_PROPS = {"input_base": "/data/digits", "input_fingerprint": "split:single_split,num_files:3",
             "span": "0", "output_config": '{"split_config": {"splits": [{"name": "train"}]}}'}


def _two_runs(trainer_lr_b: str = "0.001"):
    store = rec.memory_store()
    r1, r2 = rec.run_context(store, "r1"), rec.run_context(store, "r2")
    examples = rec.artifact(store, "Examples", "/home/ex/1", span=0, input_fingerprint="fp")
    rec.execution(store, P, r1, "ImageExampleGen", outputs=[(examples, ["examples", 0])], **GEN_PROPS)
    model = rec.artifact(store, "Model", "/home/model/1")
    rec.execution(store, P, r1, "Trainer", inputs=[(examples, ["examples", 0])], outputs=[(model, ["model", 0])],
                  learning_rate="0.001")
    rec.execution(store, P, r1, "Pusher", inputs=[(model, ["model", 0])])
    # r2: ExampleGen cached (TFX records the reused artifact as its output, without the
    # driver's span/fingerprint properties), Trainer ran with other settings, Pusher did not run.
    rec.execution(store, P, r2, "ImageExampleGen", outputs=[(examples, ["examples", 0])], state=pb.Execution.CACHED)
    model2 = rec.artifact(store, "Model", "/home/model/2")
    rec.execution(store, P, r2, "Trainer", inputs=[(examples, ["examples", 0])], outputs=[(model2, ["model", 0])],
                  state=pb.Execution.FAILED, learning_rate=trainer_lr_b)
    return store


def test_not_run_and_cached_nodes_are_not_changes():
    d = diff_runs(_two_runs(), P, "r1", "r2")
    assert d.config == []  # no `X -> None` for the Pusher that never ran, none for the cached ExampleGen
    assert {n: (c.a, c.b) for n, c in d.states.items()} == {
        "ImageExampleGen": ("complete", "cached"), "Trainer": ("complete", "failed"), "Pusher": ("complete", "not run")}
    assert d.examples.same_artifact and d.metrics == {} and d.per_label_accuracy == {} and d.data == {}
    text = format_diff(d)
    assert "Pusher: complete -> not run" in text and "-> None" not in text
    assert "config (exec properties of components that ran in both runs):\n  no changes" in text


def test_real_config_change_is_listed_once():
    d = diff_runs(_two_runs(trainer_lr_b="0.01"), P, "1", "2")
    assert [(c.node, c.key, c.a, c.b) for c in d.config] == [("Trainer", "learning_rate", "0.001", "0.01")]
    assert "Trainer.learning_rate: '0.001' -> '0.01'" in format_diff(d)


def _action(store, run_name: str, type_name: str, outputs=(), **props: str):
    """An execution Conveyor records outside the DAG (a no-op rerun, `conveyor bless`) in its
    own pipeline_run context, as pipelines/preflight.py and conveyor/bless.py write them."""
    run = rec.run_context(store, run_name, **({"repeats_run": props["repeats_run"]} if "repeats_run" in props else {}))
    execution = pb.Execution(type_id=store.put_execution_type(pb.ExecutionType(name=type_name)),
                             last_known_state=pb.Execution.COMPLETE)
    for key, value in props.items():
        execution.custom_properties[key].string_value = value
    pairs = [(a, rec.event(pb.Event.OUTPUT, path)) for a, path in outputs]
    store.put_execution(execution, pairs, [rec.context(store, "pipeline", P), run])


def test_rerun_is_compared_as_the_run_it_repeats():
    from pipelines.preflight import REPEATS_PROPERTY, UNCHANGED_TYPE
    store = _two_runs()
    _action(store, "r3", UNCHANGED_TYPE, **{REPEATS_PROPERTY: "r1", "served_version": "1"})
    d = diff_runs(store, P, "r1", "r3")
    assert d.repeats and d.states == {} and d.config == []
    text = format_diff(d)
    assert "B repeats A: no differences" in text and "not run" not in text and "None" not in text
    # a rerun of r1 against r2 is r1 against r2
    d = diff_runs(store, P, "r2", "r3")
    assert not d.repeats and d.states["Trainer"].a == "failed" and d.states["Trainer"].b == "complete"
    assert any("repeats run r1" in n for n in d.notes)


def test_manual_blessing_is_compared_as_the_blessed_run():
    from conveyor.metadata.store import MANUAL_BLESSING_TYPE
    store = _two_runs()
    blessing = rec.artifact(store, "ModelBlessing", "/home/blessing/9", blessed=1)
    pushed = rec.artifact(store, "PushedModel", "/home/pushed/9", pushed=1, pushed_version="3")
    _action(store, "r4", MANUAL_BLESSING_TYPE, outputs=[(blessing, ["blessing", 0]), (pushed, ["pushed_model", 0])],
            blesses_run="r2", blessed_by="eve", reason="shuffled eval split")
    d = diff_runs(store, P, "r2", "r4")
    assert d.states == {} and d.config == [] and d.examples.same_artifact
    assert (d.blessed.b, d.pushed_version.a, d.pushed_version.b) == (True, None, "3")
    text = format_diff(d)
    assert "B (r4) is a manual blessing of run r2 by eve: shuffled eval split" in text
    assert "not run" not in text and "None" not in text and "pushed version: - -> 3" in text


def test_only_changed_metrics_are_listed_and_none_is_never_printed():
    from conveyor.metadata.artifacts import EvaluationMetrics, SplitStatistics, StatisticsSummary
    from conveyor.metadata.diff import RunDetails, compare_runs
    from conveyor.metadata.lineage import Evaluation

    def details(run_id, accuracy, eval_labels):
        return RunDetails(run_id=run_id, pipeline=P, evaluation=Evaluation(metrics=EvaluationMetrics(
            candidate={"example_count": 80.0, "macro_precision": float("nan"),
                       "sparse_categorical_accuracy": accuracy})),
            statistics=StatisticsSummary(splits={"eval": SplitStatistics(num_examples=sum(eval_labels.values()),
                                                                         labels=eval_labels)}))

    d = compare_runs(details("a", 0.5, {"one": 40, "three": 43}), details("b", 0.75, {"one": 83}))
    assert list(d.metrics) == ["sparse_categorical_accuracy"]
    text = format_diff(d)
    assert "example_count" not in text and "(+0.2500)" in text
    assert "[eval] label three: 43 -> 0" in text and "None" not in text
    same = compare_runs(details("a", 0.5, {"one": 1}), details("b", 0.5, {"one": 1}))
    assert same.metrics == {} and "metrics (candidate):\n  no changes" in format_diff(same)


def test_dag_edges_follow_execution_order():
    """Run 2: the resolver hands run 1's model to the gate as its baseline; the Trainer,
    cached, outputs that same model later. The gate is not downstream of the Trainer."""
    from conveyor.metadata.diff import dag_edges
    from conveyor.metadata.store import Graph
    store = rec.memory_store()
    r1, r2 = rec.run_context(store, "r1"), rec.run_context(store, "r2")
    stats = rec.artifact(store, "ExampleStatistics", "/s/1")
    rec.execution(store, P, r1, "StatisticsGen", outputs=[(stats, ["statistics", 0])])
    rec.execution(store, P, r1, "blessed_Resolver")
    rec.execution(store, P, r1, "GatedExampleValidator", inputs=[(stats, ["statistics", 0])])
    model = rec.artifact(store, "Model", "/m/1")
    rec.execution(store, P, r1, "Trainer", inputs=[(stats, ["statistics", 0])], outputs=[(model, ["model", 0])])
    rec.execution(store, P, r2, "StatisticsGen", outputs=[(stats, ["statistics", 0])], state=pb.Execution.CACHED)
    rec.execution(store, P, r2, "blessed_Resolver")
    rec.execution(store, P, r2, "GatedExampleValidator", inputs=[(stats, ["statistics", 0]),
                                                                  (model, ["baseline_model", 0])])
    rec.execution(store, P, r2, "Transform", inputs=[(stats, ["statistics", 0])], state=pb.Execution.CACHED)
    rec.execution(store, P, r2, "Trainer", inputs=[(stats, ["statistics", 0])], outputs=[(model, ["model", 0])],
                  state=pb.Execution.CACHED)
    edges = dag_edges(Graph(store), P)
    assert ("Trainer", "GatedExampleValidator") not in edges
    assert ("GatedExampleValidator", "Transform") in edges  # the pipeline's order, drawn as an edge
    assert ("blessed_Resolver", "GatedExampleValidator") in edges and ("StatisticsGen", "Trainer") in edges
