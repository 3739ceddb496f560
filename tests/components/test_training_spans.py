"""NextDayTrainingSpans: which Examples artifacts next-day evaluation trains on, resolved from a
real (in-memory SQLite) ML Metadata store."""
import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
from tfx.types import standard_artifacts

from components.training_spans import TRAINING_KEY, NextDayTrainingSpans
from tests.support.mlmd_records import memory_store


@pytest.fixture
def store():
    return memory_store()


class _ExampleGen:
    """Records ExampleGen executions and their Examples outputs in `store`."""

    def __init__(self, store):
        self.store = store
        self.type_id = store.put_execution_type(mlmd_pb2.ExecutionType(name="ExampleGen"))
        self.artifact_type_id = store.put_artifact_type(standard_artifacts.Examples._get_artifact_type())
        self.made = []

    def ingest(self, span: int, version: int = 0, reuse=None):
        """One execution whose output is a new Examples of `span` (or `reuse`, as a cached run)."""
        artifact = reuse
        if artifact is None:
            artifact = standard_artifacts.Examples()
            artifact.uri = f"/examples/{len(self.made)}"
            # As TFX's ExampleGen driver records them: custom properties.
            artifact.set_int_custom_property("span", span)
            artifact.set_int_custom_property("version", version)
            artifact.mlmd_artifact.type_id = self.artifact_type_id
        output = mlmd_pb2.Event(type=mlmd_pb2.Event.OUTPUT)
        output.path.steps.add().key = "examples"
        if reuse is not None:
            output.artifact_id = reuse.id
        _, (artifact_id,), _ = self.store.put_execution(
            mlmd_pb2.Execution(type_id=self.type_id), [(artifact.mlmd_artifact, output)], [])
        if reuse is None:
            artifact.id = artifact_id
            self.made.append(artifact)
        return artifact


def _resolve(store, history, train_spans=0):
    out = NextDayTrainingSpans(train_spans).resolve_artifacts(store, {TRAINING_KEY: history})
    return None if out is None else [(a.get_int_custom_property("span"), a.get_int_custom_property("version"))
                                     for a in out[TRAINING_KEY]]


def test_trains_on_every_earlier_span_newest_version_each(store):
    gen = _ExampleGen(store)
    for span, version in ((1, 0), (2, 0), (2, 1), (3, 0)):
        gen.ingest(span, version)
    assert _resolve(store, gen.made) == [(1, 0), (2, 1)]


def test_train_spans_keeps_the_last_k_earlier_spans(store):
    gen = _ExampleGen(store)
    for span in (1, 2, 3, 4):
        gen.ingest(span)
    assert _resolve(store, gen.made, train_spans=2) == [(2, 0), (3, 0)]


def test_this_runs_span_is_the_newest_executions_even_when_cached(store):
    gen = _ExampleGen(store)
    first = gen.ingest(1)
    gen.ingest(2)
    gen.ingest(1, reuse=first)  # this run re-ingested span 1 from ExampleGen's cache
    out = NextDayTrainingSpans().resolve_artifacts(store, {TRAINING_KEY: gen.made})
    assert [a.id for a in out[TRAINING_KEY]] == [first.id]  # nothing earlier than span 1: itself


def test_a_first_span_or_spanless_input_falls_back_to_this_runs_examples(store):
    gen = _ExampleGen(store)
    gen.ingest(0)
    latest = gen.ingest(0)  # inputs without {SPAN}: every run is span 0
    out = NextDayTrainingSpans().resolve_artifacts(store, {TRAINING_KEY: gen.made})
    assert [a.id for a in out[TRAINING_KEY]] == [latest.id]


def test_nothing_ingested_resolves_nothing(store):
    assert _resolve(store, []) is None
