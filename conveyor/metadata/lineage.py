"""Model lineage: a pushed version back to its data, and data forward to the models trained on it.

The model name is the pipeline name; a pushed version is a PushedModel artifact with
pushed == 1 attributed to that pipeline's context.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.metadata.artifacts import (EDGE_EXPORTS_TYPE, AnomaliesSummary, ArtifactRef, BlessingSummary,
                                         EdgeExportsSummary, EvaluationMetrics, RuleResult, ExamplesSummary,
                                         InfraSummary, SchemaSummary, SpansUsed, StatisticsSummary, anomalies_summary,
                                         artifact_ref, blessing_summary, edge_exports_summary, evaluation_metrics,
                                         examples_summary, infra_summary, schema_summary, spans_used,
                                         statistics_summary)
from conveyor.metadata.store import (MANUAL_BLESSING_TYPE, Graph, LineageError, Record, exec_properties, iso_time,
                                     json_field, props, state_name, user_code)
from modules.settings import MODULES_FINGERPRINT_KEY


# pushed versions -----------------------------------------------------------------------

@dataclasses.dataclass
class PushedVersion:
    """One pushed version of a model.

    Fields:
      version: the version number (the serving folder's name).
      artifact: the PushedModel artifact.
      destination: the served version's folder.
      pusher: the Pusher execution that pushed it (None if MLMD has none).
      model: the Model artifact the Pusher read (None if MLMD has none).
      run_id: run id of the Pusher execution (None without a Pusher).
      pushed_at: creation time of the PushedModel artifact, local ISO 8601.
    """
    version: int
    artifact: mlmd_pb2.Artifact
    destination: Optional[str]
    pusher: Optional[mlmd_pb2.Execution]
    model: Optional[mlmd_pb2.Artifact]
    run_id: Optional[str]
    pushed_at: str


def pushed_models(graph: Graph, model_name: str) -> List[PushedVersion]:
    """Every version of `model_name` actually pushed (pushed == 1), ascending by version.

    Raises:
      LineageError: no pipeline (model) of that name; the message lists the models.
    """
    context = graph.pipeline_context(model_name, what="model")
    if "PushedModel" not in graph.artifact_type.values():
        return []
    pushed_type = graph.store.get_artifact_type("PushedModel")
    out = []
    for a in graph.artifacts_in_context(context.id):
        if a.type_id != pushed_type.id:
            continue
        p = props(a)
        if p.get("pushed") == 1 and str(p.get("pushed_version", "")).isdigit():
            pusher = graph.producer(a)
            out.append(PushedVersion(version=int(p["pushed_version"]), artifact=a,
                                     destination=p.get("pushed_destination"), pusher=pusher,
                                     model=graph.input(pusher, "model") if pusher else None,
                                     run_id=graph.run_of(pusher) if pusher else None,
                                     pushed_at=iso_time(a.create_time_since_epoch)))
    return sorted(out, key=lambda v: v.version)


def versions_of_model(graph: Graph, model_name: str, model: mlmd_pb2.Artifact) -> List[str]:
    """The versions (as strings, ascending) under which a Model artifact was pushed."""
    return [str(v.version) for v in pushed_models(graph, model_name)
            if v.model is not None and v.model.id == model.id]


# summaries -----------------------------------------------------------------------------

_TRAINER_FIELDS = ("node", "state", "model_type", "hyperparameters", "train_steps", "eval_steps",
                   "module_file", "module_path", "module_fingerprint")


@dataclasses.dataclass
class ModelSummary(ArtifactRef):
    """A Model artifact and the Trainer execution that made it.

    Fields (besides ArtifactRef's; all None when the model has no producer, and then left
    out of the JSON):
      node: the Trainer node id.
      state: the Trainer execution's state (see store.state_name).
      model_type: the architecture name (custom_config "model", e.g. "cnn").
      hyperparameters: the Trainer's custom_config without the code fingerprint.
      train_steps, eval_steps: TFX train_args / eval_args num_steps.
      module_file: TFX module_file exec property (None for Conveyor's pipelines).
      module_path, module_fingerprint: the user function and the sha256 of its code (see UserCode).
    """
    node: Optional[str] = None
    state: Optional[str] = None
    model_type: Optional[str] = None
    hyperparameters: Any = None
    train_steps: Optional[int] = None
    eval_steps: Optional[int] = None
    module_file: Optional[str] = None
    module_path: Optional[str] = None
    module_fingerprint: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """Record.to_json without the Trainer keys when the model has no producer."""
        out = super().to_json()
        if self.node is None:  # no Trainer execution: only where the artifact is
            for key in _TRAINER_FIELDS:
                out.pop(key)
        return out


def model_summary(graph: Graph, model: mlmd_pb2.Artifact) -> ModelSummary:
    """A Model artifact with its Trainer's hyperparameters, steps and user code."""
    out = ModelSummary(**artifact_ref(graph, model).ref_fields())
    trainer = graph.producer(model)
    if trainer is None:
        return out
    ep = exec_properties(trainer)
    hyper = ep.get("custom_config") or {}
    if isinstance(hyper, dict):  # the code's fingerprint is reported as module_fingerprint
        hyper = {k: v for k, v in hyper.items() if k != MODULES_FINGERPRINT_KEY}
    code = user_code(ep, "run_fn")
    out.node, out.state = graph.node_of(trainer), state_name(trainer)
    out.model_type = hyper.get("model") if isinstance(hyper, dict) else None
    out.hyperparameters = hyper
    out.train_steps = (ep.get("train_args") or {}).get("num_steps")
    out.eval_steps = (ep.get("eval_args") or {}).get("num_steps")
    out.module_file = ep.get("module_file")
    out.module_path, out.module_fingerprint = code.module_path, code.module_fingerprint
    return out


@dataclasses.dataclass
class BaselineModel(ArtifactRef):
    """The baseline an Evaluator compared against. Fields (besides ArtifactRef's):
    pushed_versions: versions under which that model was pushed (strings, ascending)."""
    pushed_versions: List[str] = dataclasses.field(default_factory=list)


def baseline_model(graph: Graph, evaluator: mlmd_pb2.Execution) -> Optional[BaselineModel]:
    """The evaluator's baseline_model input with its pushed versions, or None (first model)."""
    baseline = graph.input(evaluator, "baseline_model")
    if baseline is None:
        return None
    return BaselineModel(**artifact_ref(graph, baseline).ref_fields(),
                         pushed_versions=versions_of_model(graph, graph.pipeline_of(evaluator), baseline))


@dataclasses.dataclass
class Evaluation(Record):
    """An Evaluator execution: its ModelEvaluation, baseline and metrics.

    Fields:
      artifact: the ModelEvaluation artifact (None if the Evaluator recorded none).
      baseline_model: the model compared against (None: no blessed model existed yet).
      metrics: TFMA metrics (None when not read, e.g. `with_metrics=False`).
      majority_baseline, accuracy_floor, rules: from the Evaluator's ModelBlessing (0..1;
        RuleResults); filled by diff.run_details only, not part of the JSON (the lineage JSON
        has them under "blessing").
    JSON: the artifact's keys, "baseline_model", then the metrics' keys, in one object.
    """
    artifact: Optional[ArtifactRef] = None
    baseline_model: Optional[BaselineModel] = None
    metrics: Optional[EvaluationMetrics] = None
    majority_baseline: Optional[float] = None
    accuracy_floor: Optional[float] = None
    rules: List[RuleResult] = dataclasses.field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The artifact's keys, "baseline_model", then the metrics' keys (see the class docstring)."""
        out = self.artifact.to_json() if self.artifact is not None else {}
        out["baseline_model"] = self.baseline_model.to_json() if self.baseline_model is not None else None
        if self.metrics is not None:
            out.update(self.metrics.to_json())
        return out

    @property
    def candidate(self) -> Dict[str, float]:
        """Overall metrics of the candidate ({} when metrics were not read)."""
        return self.metrics.candidate if self.metrics else {}

    @property
    def baseline(self) -> Dict[str, float]:
        """Overall metrics of the baseline ({} when metrics were not read or there is none)."""
        return self.metrics.baseline if self.metrics else {}


def evaluation_of(graph: Graph, evaluator: mlmd_pb2.Execution, with_metrics: bool = True) -> Evaluation:
    """The Evaluation of one Evaluator execution (TFMA files are read only if with_metrics)."""
    artifact = (graph.outputs(evaluator).get("evaluation") or [None])[0]
    out = Evaluation(artifact=artifact_ref(graph, artifact), baseline_model=baseline_model(graph, evaluator))
    if artifact is not None and with_metrics:
        examples = graph.input(evaluator, "examples")
        names = props(examples).get("label_names") if examples is not None else None
        out.metrics = evaluation_metrics(artifact.uri, names if isinstance(names, list) else None)
    return out


@dataclasses.dataclass
class TransformGraphSummary(ArtifactRef):
    """A TransformGraph artifact. Fields (besides ArtifactRef's): module_path,
    module_fingerprint: the preprocessing_fn that made it and the sha256 of its code."""
    module_path: Optional[str] = None
    module_fingerprint: Optional[str] = None


@dataclasses.dataclass
class PushedSummary(ArtifactRef):
    """A PushedModel artifact. Fields (besides ArtifactRef's): destination: the served folder."""
    destination: Optional[str] = None


@dataclasses.dataclass
class Lineage(Record):
    """`conveyor lineage --model NAME [--version V]`: a pushed version back to its data.

    Fields (None ones are left out of the JSON: MLMD had no such record):
      model_name, version: the model and the version asked for ("1", ...).
      pushed_versions: every pushed version of the model (strings, ascending).
      pushed: the PushedModel artifact and its destination.
      model: the Model the Pusher read, with its Trainer.
      blessing: the ModelBlessing the Pusher read (else the newest): the Evaluator's, or a
        manual one (`conveyor bless`, `manual` true).
      evaluation: that Evaluator's evaluation, baseline and metrics (for a manual blessing,
        the evaluation it overrode).
      transform_graph, schema, statistics, anomalies, examples: the Trainer's inputs and
        the data-side artifacts they came from.
      infra_blessing: the InfraValidator's verdict the Pusher read.
      spans: the spans the model trained on and was evaluated on (next-day evaluation or not).
      edge_exports: the TFLite / TF.js exports made from this pushed version, with their
        accuracy, size and latency (config edge_exports; components/edge_exporter.py).
    """
    model_name: str = ""
    version: str = ""
    pushed_versions: List[str] = dataclasses.field(default_factory=list)
    pushed: Optional[PushedSummary] = None
    model: Optional[ModelSummary] = json_field(omit_if_none=True)
    blessing: Optional[BlessingSummary] = json_field(omit_if_none=True)
    evaluation: Optional[Evaluation] = json_field(omit_if_none=True)
    transform_graph: Optional[TransformGraphSummary] = json_field(omit_if_none=True)
    schema: Optional[SchemaSummary] = json_field(omit_if_none=True)
    statistics: Optional[StatisticsSummary] = json_field(omit_if_none=True)
    anomalies: Optional[AnomaliesSummary] = json_field(omit_if_none=True)
    examples: Optional[ExamplesSummary] = json_field(omit_if_none=True)
    infra_blessing: Optional[InfraSummary] = json_field(omit_if_none=True)
    spans: Optional[SpansUsed] = json_field(omit_if_none=True)
    edge_exports: Optional[EdgeExportsSummary] = json_field(omit_if_none=True)


def lineage_of_model(graph: Graph, model: mlmd_pb2.Artifact, blessing: Optional[mlmd_pb2.Artifact] = None,
                     with_metrics: bool = True, out: Optional[Lineage] = None) -> Lineage:
    """Model -> Trainer -> transform graph, schema, statistics, anomalies, examples; plus
    its evaluation/blessing (the given blessing, else the newest).

    Args:
      model: a Model artifact.
      blessing: the ModelBlessing to report (default: the newest Evaluator output for the model).
      with_metrics: read TFMA metrics files (False: Evaluation.metrics stays None).
      out: a Lineage to fill (default: a new one); its model..examples fields are set.
    """
    out = out if out is not None else Lineage()
    out.model = model_summary(graph, model)
    trainer = graph.producer(model)
    evaluator = graph.producer(blessing) if blessing is not None else None
    if evaluator is None:
        evaluators = [(e, b) for e in graph.consumers(model, "model")
                      for b in graph.outputs_of_type(e, "ModelBlessing")]
        if evaluators:
            evaluator, blessing = evaluators[-1]
    if evaluator is not None and graph.type_of(evaluator) == MANUAL_BLESSING_TYPE:
        # A manual blessing (`conveyor bless`): the evaluation shown is the one it overrode.
        overridden = graph.input(evaluator, "overridden_blessing")
        evaluator = graph.producer(overridden) if overridden is not None else None
    if blessing is not None:
        out.blessing = blessing_summary(graph, blessing)
    if evaluator is not None:
        out.evaluation = evaluation_of(graph, evaluator, with_metrics)
    if trainer is None:
        return out
    out.spans = spans_used(graph, trainer, evaluator)
    transform_graph = graph.input(trainer, "transform_graph")
    schema = graph.input(trainer, "schema")
    examples = graph.input(trainer, "examples")
    if transform_graph is not None:
        transform = graph.producer(transform_graph)
        code = user_code(exec_properties(transform) if transform else {}, "preprocessing_fn")
        out.transform_graph = TransformGraphSummary(**artifact_ref(graph, transform_graph).ref_fields(),
                                                    module_path=code.module_path,
                                                    module_fingerprint=code.module_fingerprint)
    statistics = anomalies = None
    if schema is not None:
        out.schema = schema_summary(graph, schema)
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
        out.statistics = statistics_summary(graph, statistics)
    if anomalies is not None:
        out.anomalies = anomalies_summary(graph, anomalies)
    if examples is not None:
        out.examples = examples_summary(graph, examples, statistics)
    return out


def lineage_of_version(store, model_name: str, version: Optional[str] = None,
                       with_metrics: bool = True) -> Lineage:
    """`conveyor lineage --model NAME [--version V]`: a pushed version back to its data.

    Args:
      store: an MLMD MetadataStore.
      model_name: the model (= pipeline) name.
      version: "3", "v3", or None/""/"latest" for the newest pushed version.
      with_metrics: read the TFMA metrics of the evaluation.
    Raises:
      LineageError: unknown model, nothing pushed, unknown version, or no Pusher input model.
    """
    graph = Graph(store)
    pushed = pushed_models(graph, model_name)
    if not pushed:
        raise LineageError(f"model '{model_name}' has no pushed versions yet "
                           "(no run produced a blessed model that was pushed)")
    if version in (None, "", "latest"):
        chosen = pushed[-1]
    else:
        matches = [v for v in pushed if str(v.version) == str(version).lstrip("v")]
        if not matches:
            raise LineageError(f"no pushed version {version} of model {model_name}; pushed versions: "
                               + ", ".join(str(v.version) for v in pushed))
        chosen = matches[-1]
    if chosen.model is None:
        raise LineageError(f"version {chosen.version} of model {model_name}: MLMD has no Pusher input model for "
                           f"PushedModel artifact {chosen.artifact.id}")
    out = Lineage(model_name=model_name, version=str(chosen.version),
                  pushed_versions=[str(v.version) for v in pushed],
                  pushed=PushedSummary(**artifact_ref(graph, chosen.artifact).ref_fields(),
                                       destination=chosen.destination))
    blessing = graph.input(chosen.pusher, "model_blessing") if chosen.pusher else None
    lineage_of_model(graph, chosen.model, blessing, with_metrics, out=out)
    infra = graph.input(chosen.pusher, "infra_blessing") if chosen.pusher else None
    out.infra_blessing = infra_summary(graph, infra)
    out.edge_exports = edge_exports_summary(graph, edge_exports_of(graph, chosen.artifact, model_name,
                                                                   chosen.version))
    return out


def edge_exports_of(graph: Graph, pushed: mlmd_pb2.Artifact, model_name: str,
                    version: int) -> Optional[mlmd_pb2.Artifact]:
    """The EdgeExports artifact holding the exports of version `version` of `model_name`, or None.

    The run that pushed a version is not always the one that exported it: after a run was
    killed during its EdgeExporter, or after `conveyor bless`, a later run exports the version
    already served (its own PushedModel then records "already serving"). So: the newest
    EdgeExports of that version and model that published exports, else the newest one made
    from this PushedModel (which says why there are none).
    """
    made_here = [a for e in graph.consumers(pushed, "pushed_model")
                 for a in graph.outputs_of_type(e, EDGE_EXPORTS_TYPE)]
    if EDGE_EXPORTS_TYPE not in graph.artifact_type.values():
        return None
    with_exports = []
    for a in graph.store.get_artifacts_by_type(EDGE_EXPORTS_TYPE):
        p = props(a)
        destination = str(p.get("destination") or "")
        if (p.get("exports") not in (None, "", "[]") and str(p.get("pushed_version")) == str(version)
                and os.path.basename(os.path.dirname(destination.rstrip("/"))) == model_name):
            with_exports.append(a)
    if with_exports:
        return max(with_exports, key=lambda a: a.id)
    return max(made_here, key=lambda a: a.id) if made_here else None


# forward: from examples ------------------------------------------------------------------

def find_examples(graph: Graph, uri: str) -> mlmd_pb2.Artifact:
    """An Examples artifact by its URI, or the newest one ingested from that input folder.

    Raises:
      LineageError: neither exists in the store.
    """
    candidates = [os.path.abspath(uri), uri.rstrip("/"), uri]
    for u in dict.fromkeys(candidates):
        found = [a for a in graph.store.get_artifacts_by_uri(u) if graph.type_of(a) == "Examples"]
        if found:
            return found[-1]
    matches = []
    if "Examples" in graph.artifact_type.values():
        for a in graph.store.get_artifacts_by_type("Examples"):
            gen = graph.producer(a)
            if gen and exec_properties(gen).get("input_base") in candidates:
                matches.append(a)
    if matches:
        return sorted(matches, key=lambda a: a.id)[-1]
    raise LineageError(f"no Examples artifact with URI {uri} (nor examples ingested from that folder) "
                       "in the metadata store")


@dataclasses.dataclass
class TrainedModel(ModelSummary):
    """A model trained on given examples (`conveyor lineage --from-examples`).

    Fields (besides ModelSummary's):
      model_name: the pipeline (model) name.
      blessed: whether an Evaluator blessed it (None: never evaluated).
      pushed_versions: versions under which it was pushed (strings, ascending).
      served: whether it was pushed at all.
      serving_latest: whether its newest pushed version is the model's newest.
    """
    model_name: str = ""
    blessed: Optional[bool] = None
    pushed_versions: List[str] = dataclasses.field(default_factory=list)
    served: bool = False
    serving_latest: bool = False


@dataclasses.dataclass
class ModelsFromExamples(Record):
    """`conveyor lineage --from-examples URI`. Fields: examples: the Examples artifact;
    models: the models trained on it (one per Model artifact, oldest Trainer first)."""
    examples: Optional[ExamplesSummary] = None
    models: List[TrainedModel] = dataclasses.field(default_factory=list)


def models_from_examples(store, uri: str) -> ModelsFromExamples:
    """`conveyor lineage --from-examples URI`: which models trained on the data, which are served.

    Args:
      uri: an Examples artifact URI, or an ExampleGen input folder (its newest ingestion).
    Raises:
      LineageError: no such examples.
    """
    graph = Graph(store)
    examples = find_examples(graph, uri)
    out = ModelsFromExamples(examples=examples_summary(graph, examples))
    for trainer in graph.consumers(examples, "examples"):
        models = graph.outputs(trainer).get("model")
        if not models:
            continue
        model = models[0]
        if any(m.artifact_id == model.id for m in out.models):
            continue  # a cached Trainer rerun links the same model again
        pipeline = graph.pipeline_of(trainer)
        blessings = [props(b).get("blessed") == 1 for evaluator in graph.consumers(model, "model")
                     for b in graph.outputs_of_type(evaluator, "ModelBlessing")]
        pushed = pushed_models(graph, pipeline)
        versions = [str(v.version) for v in pushed if v.model is not None and v.model.id == model.id]
        summary = model_summary(graph, model)
        out.models.append(TrainedModel(
            **{f.name: getattr(summary, f.name) for f in dataclasses.fields(ModelSummary)},
            model_name=pipeline, blessed=any(blessings) if blessings else None,
            pushed_versions=versions, served=bool(versions),
            serving_latest=bool(versions) and bool(pushed) and versions[-1] == str(pushed[-1].version)))
    return out

