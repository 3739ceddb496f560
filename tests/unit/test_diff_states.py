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
