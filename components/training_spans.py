"""Next-day evaluation's training data: the spans ingested before the latest one.

The course's "validate using unseen data": train on earlier spans, evaluate on the span that
arrived last. TFX's RollingRange cannot leave out the latest span, and its resolver ops
(LatestSpan's `skip_last_n`) have no fallback for the first span, when there is nothing to
hold out, and they read `span`/`version` from the Examples type's properties while TFX's
ExampleGen driver records both as custom properties (tfx/components/example_gen/driver.py), so
on ExampleGen outputs every artifact looks like span 0. Hence this small ResolverStrategy: the
same selection as LatestSpan(n=K, skip_last_n=1) on the recorded span, plus the fallback and
finding this run's artifact in MLMD.
"""
from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver

from ml_metadata.proto import metadata_store_pb2

TRAINING_KEY = "examples"  # the Resolver's input (= output) key: every Examples of the ExampleGen


def latest_ingested(store, artifacts: List[types.Artifact]) -> List[types.Artifact]:
    """The output of the newest execution (complete or cached) that produced any of `artifacts`.

    The Resolver runs right after this run's ExampleGen (an upstream node), so that is this
    run's Examples, also when ExampleGen was served from cache and returned an older artifact.
    """
    by_id = {a.id: a for a in artifacts}
    produced = [e for e in store.get_events_by_artifact_ids(list(by_id))
                if e.type == metadata_store_pb2.Event.OUTPUT]
    if not produced:
        return []
    newest = max(e.execution_id for e in produced)
    return [by_id[e.artifact_id] for e in produced if e.execution_id == newest]


class NextDayTrainingSpans(resolver.ResolverStrategy):
    """Resolves {TRAINING_KEY: every Examples artifact of the ExampleGen, all runs} to the
    training Examples: the latest version of each span below this run's span, the last
    `train_spans` of them (0: all); with no earlier span, this run's Examples (the run falls
    back to same-span evaluation).

    Args:
      train_spans: how many earlier spans to train on, newest first (0 = all).
    """

    def __init__(self, train_spans: int = 0):
        self._train_spans = int(train_spans or 0)

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        """Returns {TRAINING_KEY: the training Examples, oldest span first}, or None (the
        consumers do not run) when the ExampleGen has no output yet.

        Args:
          store: the MLMD MetadataStore (ml_metadata), read for which execution made what.
          input_dict: {TRAINING_KEY: Examples artifacts with span/version properties}.
        """
        history = list(input_dict.get(TRAINING_KEY) or [])
        latest = latest_ingested(store, history) if history else []
        if not latest:
            return None
        span = span_of(latest[0])
        newest_per_span: Dict[int, types.Artifact] = {}
        for artifact in sorted(history, key=lambda a: (_int_property(a, "version"), a.id)):
            if span_of(artifact) < span:
                newest_per_span[span_of(artifact)] = artifact
        if not newest_per_span:
            return {TRAINING_KEY: latest}
        spans = sorted(newest_per_span)[-self._train_spans:] if self._train_spans else sorted(newest_per_span)
        return {TRAINING_KEY: [newest_per_span[s] for s in spans]}


def _int_property(artifact: types.Artifact, name: str) -> int:
    """An int the ExampleGen driver records as a custom property (else the type's property)."""
    if artifact.has_custom_property(name):
        return int(artifact.get_int_custom_property(name))
    return int(getattr(artifact, name, 0) or 0)


def span_of(artifact: types.Artifact) -> int:
    """The TFX span an Examples artifact holds (0 for inputs without {SPAN})."""
    return _int_property(artifact, "span")
