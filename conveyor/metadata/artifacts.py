"""Artifact contents: statistics, anomalies, schema, TFMA metrics, examples and blessings.

Files are read from the URIs MLMD records, through TFX/TFDV/TFMA's own readers.
"""
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.metadata.store import Graph, Record, exec_properties, iso_time, json_field, props
from modules.features import LABEL_NAME

ACCURACY = "sparse_categorical_accuracy"
BASELINE_MODEL_NAME = "baseline"  # TFMA's model_name of the baseline (tfma.BASELINE_KEY)


@dataclasses.dataclass
class ArtifactRef(Record):
    """Where an artifact is and who made it.

    Fields:
      artifact_id: MLMD artifact id.
      type: artifact type name (e.g. "Model", "ExampleStatistics").
      uri: the artifact's folder.
      created: creation time, local ISO 8601 (seconds).
      run_id: run context name of the producing execution (None: no producer).
      execution_id: MLMD id of the producing execution (None: no producer).
    """
    artifact_id: int = 0
    type: str = ""
    uri: str = ""
    created: str = ""
    run_id: Optional[str] = None
    execution_id: Optional[int] = None

    def ref_fields(self) -> Dict[str, Any]:
        """The ArtifactRef fields only, as keyword arguments for a subclass."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ArtifactRef)}


def artifact_ref(graph: Graph, artifact: Optional[mlmd_pb2.Artifact]) -> Optional[ArtifactRef]:
    """The ArtifactRef of an MLMD artifact (None for None)."""
    if artifact is None:
        return None
    producer = graph.producer(artifact)
    return ArtifactRef(artifact_id=artifact.id, type=graph.type_of(artifact), uri=artifact.uri,
                       created=iso_time(artifact.create_time_since_epoch),
                       run_id=graph.run_of(producer) if producer else None,
                       execution_id=producer.id if producer else None)


def split_names(artifact: mlmd_pb2.Artifact) -> List[str]:
    """The artifact's split names (TFX's JSON `split_names` property); [] if absent or bad."""
    raw = props(artifact).get("split_names")
    try:
        return list(json.loads(raw)) if raw else []
    except ValueError:
        return []


# statistics ----------------------------------------------------------------------------

@dataclasses.dataclass
class SplitStatistics(Record):
    """One split of StatisticsGen's output.

    Fields:
      num_examples: number of examples in the split.
      labels: label name -> number of examples (the LABEL_NAME feature's histogram), sorted by name.
      error: why the split's statistics could not be read (then the other fields are unset).
    """
    num_examples: Optional[int] = None
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)
    error: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """{"error": ...} for an unreadable split, else {"num_examples", "labels"}."""
        if self.error is not None:
            return {"error": self.error}
        return {"num_examples": self.num_examples, "labels": dict(self.labels)}


@dataclasses.dataclass
class StatisticsSummary(ArtifactRef):
    """An ExampleStatistics artifact: per split, example count and label distribution.

    Fields (besides ArtifactRef's):
      splits: split name ("train", "eval") -> SplitStatistics, in the artifact's split order.
    """
    splits: Dict[str, SplitStatistics] = dataclasses.field(default_factory=dict)


def load_split_statistics(graph: Graph, statistics: mlmd_pb2.Artifact, split: str):
    """One split's statistics as a `DatasetFeatureStatisticsList` proto (TFX's own reader).

    Raises:
      whatever TFX's stats_artifact_utils.load_statistics raises for a missing/corrupt file.
    """
    from tfx.components.statistics_gen import stats_artifact_utils
    return stats_artifact_utils.load_statistics(graph.tfx_artifact(statistics), split).proto()


def statistics_summary(graph: Graph, statistics: mlmd_pb2.Artifact) -> StatisticsSummary:
    """Per split: example count and label distribution, from StatisticsGen's FeatureStats.

    An unreadable split is reported in its SplitStatistics.error, not raised.
    """
    splits: Dict[str, SplitStatistics] = {}
    for split in split_names(statistics):
        try:
            proto = load_split_statistics(graph, statistics, split)
        except Exception as e:  # noqa: BLE001 - a missing/corrupt file is reported, not fatal
            splits[split] = SplitStatistics(error=str(e))
            continue
        dataset = proto.datasets[0]
        labels: Dict[str, int] = {}
        for feature in dataset.features:
            name = feature.path.step[-1] if feature.path.step else feature.name
            if name == LABEL_NAME and feature.HasField("string_stats"):
                buckets = feature.string_stats.rank_histogram.buckets
                labels = {b.label: int(b.sample_count) for b in buckets} or {
                    v.value: int(v.frequency) for v in feature.string_stats.top_values}
        splits[split] = SplitStatistics(num_examples=int(dataset.num_examples), labels=dict(sorted(labels.items())))
    return StatisticsSummary(**artifact_ref(graph, statistics).ref_fields(), splits=splits)


# anomalies -----------------------------------------------------------------------------

@dataclasses.dataclass
class AnomaliesSummary(ArtifactRef):
    """An ExampleAnomalies artifact (ExampleValidator's verdict against the schema).

    Fields (besides ArtifactRef's):
      splits: split name -> one line per anomaly ("feature 'x': <short> - <description>").
      count: total number of anomalies over all splits.
    """
    splits: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    count: int = 0


def anomalies_summary(graph: Graph, anomalies: mlmd_pb2.Artifact) -> AnomaliesSummary:
    """The anomalies of each split, read from Split-<split>/SchemaDiff.pb (a missing file = none)."""
    from tensorflow_data_validation.utils import anomalies_util
    splits: Dict[str, List[str]] = {}
    for split in split_names(anomalies):
        path = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        found: List[str] = []
        if os.path.exists(path):
            result = anomalies_util.load_anomalies_binary(path)
            for feature, info in sorted(result.anomaly_info.items()):
                found.append(f"feature '{feature}': {info.short_description} - {info.description}")
            if result.HasField("dataset_anomaly_info"):
                info = result.dataset_anomaly_info
                found.append(f"dataset: {info.short_description} - {info.description}")
        splits[split] = found
    return AnomaliesSummary(**artifact_ref(graph, anomalies).ref_fields(), splits=splits,
                            count=sum(len(v) for v in splits.values()))


# schema --------------------------------------------------------------------------------

@dataclasses.dataclass
class FeatureSchema(Record):
    """One feature of a schema; optional fields are present only when the schema sets them.

    Fields:
      type: "BYTES" | "INT" | "FLOAT" (tensorflow_metadata FeatureType name).
      min_fraction: presence.min_fraction, 0..1 (6 decimals).
      min_count: presence.min_count.
      shape: fixed shape, one size per dimension.
      int_domain: [min, max] of an int domain.
      domain: the values of the feature's string domain (sorted), or the domain's name if undefined.
    """
    type: str = ""
    min_fraction: Optional[float] = json_field(omit_if_none=True)
    min_count: Optional[int] = json_field(omit_if_none=True)
    shape: Optional[List[int]] = json_field(omit_if_none=True)
    int_domain: Optional[List[int]] = json_field(omit_if_none=True)
    domain: Any = json_field(omit_if_none=True)


@dataclasses.dataclass
class SchemaSummary(ArtifactRef):
    """A Schema artifact's features. Fields (besides ArtifactRef's): features: name -> FeatureSchema."""
    features: Dict[str, FeatureSchema] = dataclasses.field(default_factory=dict)


def schema_summary(graph: Graph, schema: mlmd_pb2.Artifact) -> SchemaSummary:
    """Features of a Schema artifact (schema.pbtxt): type, presence, shape, domain; none if the file is missing."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    path = os.path.join(schema.uri, "schema.pbtxt")
    features: Dict[str, FeatureSchema] = {}
    if os.path.exists(path):
        # What tfdv.load_schema_text does, without importing TFDV (and TensorFlow) for it.
        with open(path, encoding="utf-8") as f:
            proto = text_format.Parse(f.read(), schema_pb2.Schema())
        for f in proto.feature:
            entry = FeatureSchema(type=schema_pb2.FeatureType.Name(f.type))
            if f.HasField("presence"):
                entry.min_fraction = round(f.presence.min_fraction, 6)
                entry.min_count = int(f.presence.min_count)
            if f.HasField("shape"):
                entry.shape = [int(d.size) for d in f.shape.dim]
            if f.HasField("int_domain"):
                entry.int_domain = [int(f.int_domain.min), int(f.int_domain.max)]
            if f.HasField("domain"):
                domain = next((d for d in proto.string_domain if d.name == f.domain), None)
                entry.domain = sorted(domain.value) if domain else f.domain
            features[f.name] = entry
    return SchemaSummary(**artifact_ref(graph, schema).ref_fields(), features=features)


# TFMA metrics --------------------------------------------------------------------------

@dataclasses.dataclass
class EvaluationMetrics(Record):
    """TFMA metrics of a ModelEvaluation artifact (components/evaluator.py's metrics specs).

    Fields:
      candidate: overall metric name -> value of the candidate model: example_count (a
        count), sparse_categorical_accuracy, macro averages as macro_<name> (macro_precision,
        macro_recall, macro_f1_score, macro_auc, macro_auc_precision_recall), label-frequency
        weighted averages as weighted_precision, weighted_recall, weighted_f1_score (all 0..1).
      baseline: the same for the baseline model (empty without a baseline).
      per_label: label name -> {"candidate": accuracy, "baseline": accuracy} on that label's
        slice (0..1; a key is absent when that model has no value), sorted by label.
      failures: one sentence per failed TFMA threshold, e.g.
        "recall[rare] = 0.2000 fails threshold >= 0.9000".
      per_class: class name -> {"candidate": {metric: value}, "baseline": {...}}: TFMA's
        top-1 precision, recall, f1_score, one-vs-rest auc, auc_precision_recall (0..1) and
        calibration (sum of probabilities / positives; 1 = calibrated). Class names come from
        the Examples (class_names), else "class <id>".
      error: why the metrics could not be read (then the other fields are empty).
    """
    candidate: Dict[str, float] = dataclasses.field(default_factory=dict)
    baseline: Dict[str, float] = dataclasses.field(default_factory=dict)
    per_label: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    failures: List[str] = dataclasses.field(default_factory=list)
    per_class: Dict[str, Dict[str, Dict[str, float]]] = dataclasses.field(default_factory=dict)
    error: Optional[str] = json_field(omit_if_none=True)


def _slice_value(key) -> str:
    return key.bytes_value.decode() if key.HasField("bytes_value") else str(key.int64_value)


def metric_label(key, class_names: Optional[List[str]] = None) -> Tuple[str, Optional[str]]:
    """(metric name, class name or None) of a TFMA MetricKey proto: macro averages are
    "macro_<name>" (evaluations written by TFMA's weighted_macro_average, before
    components/evaluator.py's WeightedAverage, mark the weighted_* averages macro too)."""
    name = key.name
    if key.sub_key.HasField("class_id"):
        class_id = key.sub_key.class_id.value
        names = class_names or []
        return name, names[class_id] if class_id < len(names) else f"class {class_id}"
    if key.HasField("aggregation_type") and not name.startswith("weighted_"):
        return f"macro_{name}", None
    return name, None


def threshold_text(threshold) -> str:
    """A tfma MetricThreshold as text: ">= 0.5000", "<= 1.2000", ">= 0.5000 and <= 0.9000"
    (value) or "change >= -0.0100" (vs baseline)."""
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        parts = [f"{op} {getattr(bounds, f).value:.4f}" for op, f in ((">=", "lower_bound"), ("<=", "upper_bound"))
                 if bounds.HasField(f)]
        return " and ".join(parts)
    return f"change >= {threshold.change_threshold.absolute.value:+.4f}"


def evaluation_metrics(evaluation_uri: str, class_names: Optional[List[str]] = None) -> EvaluationMetrics:
    """TFMA metrics and threshold failures of a ModelEvaluation at `evaluation_uri`.

    Args:
      evaluation_uri: the ModelEvaluation artifact's folder.
      class_names: the Examples' class names in label-index order, to name per-class metrics.
    Returns:
      the EvaluationMetrics. Unreadable metrics are reported in `error`, not raised; a
      missing validation result leaves `failures` empty.
    """
    import tensorflow_model_analysis as tfma
    out = EvaluationMetrics()
    try:
        loaded = list(tfma.load_metrics(evaluation_uri))
    except Exception as e:  # noqa: BLE001
        out.error = f"cannot read metrics: {e}"
        return out
    for metrics in loaded:
        slice_key = {s.column: _slice_value(s) for s in metrics.slice_key.single_slice_keys}
        for kv in metrics.metric_keys_and_values:
            if kv.key.is_diff or not kv.value.HasField("double_value") or kv.key.sub_key.HasField("top_k"):
                continue
            value = kv.value.double_value.value
            who = "baseline" if kv.key.model_name == BASELINE_MODEL_NAME else "candidate"
            name, class_name = metric_label(kv.key, class_names)
            if not slice_key and class_name is not None:
                out.per_class.setdefault(class_name, {}).setdefault(who, {})[name] = value
            elif not slice_key:
                getattr(out, who)[name] = value
            elif kv.key.name == ACCURACY and LABEL_NAME in slice_key:
                out.per_label.setdefault(slice_key[LABEL_NAME], {})[who] = value
    out.per_label = {label: {who: v[who] for who in ("candidate", "baseline") if who in v}
                     for label, v in sorted(out.per_label.items())}
    order = {name: i for i, name in enumerate(class_names or [])}
    out.per_class = {c: {who: dict(sorted(v[who].items())) for who in ("candidate", "baseline") if who in v}
                     for c, v in sorted(out.per_class.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))}
    try:
        validation = tfma.load_validation_result(evaluation_uri)
    except Exception:  # noqa: BLE001
        return out
    for per_slice in validation.metric_validations_per_slice:
        where = ", ".join(f"{k.column}={_slice_value(k)}" for k in per_slice.slice_key.single_slice_keys)
        for failure in per_slice.failures:
            name, class_name = metric_label(failure.metric_key, class_names)
            value = (f"{failure.metric_value.double_value.value:.4f}" if failure.HasField("metric_value")
                     else "not found")
            out.failures.append(
                f"{f'[{where}] ' if where else ''}{name}{f'[{class_name}]' if class_name else ''}"
                f"{' (change vs baseline)' if failure.metric_key.is_diff else ''}"
                f" = {value} fails threshold {threshold_text(failure.metric_threshold)}")
    for spec in validation.missing_slices:
        where = ", ".join(f"{k}={v}" for k, v in sorted(spec.feature_values.items())) or "all examples"
        out.failures.append(f"[{where}] slice has no eval examples")
    return out


# examples ------------------------------------------------------------------------------

@dataclasses.dataclass
class ExamplesSummary(ArtifactRef):
    """An Examples artifact and the ExampleGen execution that ingested it.

    Fields (besides ArtifactRef's):
      node: the ExampleGen node id (None: no producer).
      input_base: the input data folder.
      input_pattern: the glob (under input_base) of the first split config.
      span, version: TFX span/version of the ingested data.
      input_fingerprint: TFX's fingerprint of the input files.
      example_count, skipped_count: examples written / bad inputs skipped (Conveyor's ExampleGens).
      label_names: class names, in label-index order.
      splits: split names of the artifact.
      split_counts: split -> number of examples, from the StatisticsGen that read it ({} if none).
    """
    node: Optional[str] = None
    input_base: Optional[str] = None
    input_pattern: Optional[str] = None
    span: Optional[int] = None
    version: Optional[int] = None
    input_fingerprint: Optional[str] = None
    example_count: Optional[int] = None
    skipped_count: Optional[int] = None
    label_names: Any = None
    splits: List[str] = dataclasses.field(default_factory=list)
    split_counts: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)


def examples_summary(graph: Graph, examples: mlmd_pb2.Artifact,
                     statistics: Optional[mlmd_pb2.Artifact] = None) -> ExamplesSummary:
    """An Examples artifact, its ExampleGen's input, and per-split counts from `statistics`
    (default: the output of the first StatisticsGen that read these examples)."""
    p = props(examples)
    gen = graph.producer(examples)
    gen_props = exec_properties(gen) if gen else {}
    splits_cfg = ((gen_props.get("input_config") or {}).get("splits") or [{}])
    out = ExamplesSummary(**artifact_ref(graph, examples).ref_fields(),
                          node=graph.node_of(gen) if gen else None,
                          input_base=gen_props.get("input_base"),
                          input_pattern=splits_cfg[0].get("pattern") if splits_cfg else None,
                          span=p.get("span"), version=p.get("version"),
                          input_fingerprint=p.get("input_fingerprint"),
                          example_count=p.get("example_count"), skipped_count=p.get("skipped_count"),
                          label_names=p.get("label_names"), splits=split_names(examples))
    if statistics is None:
        for e in graph.consumers(examples, "examples"):
            if graph.type_of(e).endswith("StatisticsGen"):
                stats = graph.outputs(e).get("statistics")
                if stats:
                    statistics = stats[0]
                    break
    if statistics is not None:
        summary = statistics_summary(graph, statistics)
        out.split_counts = {s: v.num_examples for s, v in summary.splits.items()}
    return out


@dataclasses.dataclass
class SpansUsed(Record):
    """Which data spans a candidate trained on and was judged on (config `eval_span`).

    Fields:
      trained_on: spans of the Examples the Trainer read, ascending (one per artifact).
      evaluated_on: span of the Examples whose eval split the Evaluator judged (None: no
        Evaluator ran).
      next_day: True when the judged span is not among the trained ones (next-day evaluation:
        the candidate never saw that data).
    """
    trained_on: List[int] = dataclasses.field(default_factory=list)
    evaluated_on: Optional[int] = None
    next_day: bool = False

    def worth_showing(self, requested: Optional[str] = None) -> bool:
        """Whether a person learns anything from the sentence: span inputs, or next-day asked."""
        return self.evaluated_on is not None and (
            requested == "next" or self.next_day or self.evaluated_on != 0 or any(self.trained_on))

    def sentence(self, requested: Optional[str] = None) -> str:
        """One line for a person; `requested` is the config's eval_span ("same"/"next"), if known."""
        trained = ", ".join(str(s) for s in self.trained_on) or "-"
        if self.next_day:
            return (f"next-day evaluation: trained on span{'s' if len(self.trained_on) > 1 else ''} {trained}, "
                    f"evaluated on span {self.evaluated_on} (never trained on)")
        line = f"trained on span {trained}, evaluated on the eval split of span {self.evaluated_on}"
        if requested == "next":
            line += (" (eval_span: next, but no earlier run of this pipeline ingested an earlier span: nothing to"
                     " hold out; earlier span folders on disk count once a run has ingested them)")
        return line


def spans_used(graph: Graph, trainer: Optional[mlmd_pb2.Execution],
               evaluator: Optional[mlmd_pb2.Execution]) -> Optional[SpansUsed]:
    """The spans of the Trainer's and the Evaluator's `examples` inputs; None without a Trainer."""
    if trainer is None:
        return None
    trained = sorted(int(props(a).get("span") or 0) for a in graph.inputs(trainer).get("examples", []))
    judged = graph.input(evaluator, "examples") if evaluator is not None else None
    evaluated = int(props(judged).get("span") or 0) if judged is not None else None
    return SpansUsed(trained, evaluated, evaluated is not None and evaluated not in trained)


def run_spans(graph: Graph, execution_ids: Dict[str, int]) -> Optional[SpansUsed]:
    """spans_used of one run, from {node id: execution id} of its executions (the Trainer's
    and the BaselineEvaluator's are read)."""
    trainer, evaluator = (graph.executions([execution_ids[node]])[0] if node in execution_ids else None
                          for node in ("Trainer", "BaselineEvaluator"))
    return spans_used(graph, trainer, evaluator)


# blessings -----------------------------------------------------------------------------

@dataclasses.dataclass
class RuleResult(Record):
    """What one blessing rule saw (components/evaluator.py's rule_results).

    Fields:
      rule: the rule as text, e.g. "recall[fraud] >= 0.9", "auc (macro) drop vs baseline <= 0.01".
      metric: the rule's metric (components/blessing_rules.py METRICS).
      slice: its class name or feature=value, None for all eval examples.
      candidate, baseline: the metric's value for each model on that slice (None: not computed,
        or no baseline).
      passed: TFMA's verdict on the rule; None when it was not checked (only max_drop, no
        blessed baseline yet).
      note: "" or why (e.g. "failed", "slice has no eval examples", "max_drop not checked: ...").
      bound: for `min: majority`, the lower bound applied (majority-class rate + margin), else None.
    """
    rule: str = ""
    metric: str = ""
    slice: Optional[str] = None
    candidate: Optional[float] = None
    baseline: Optional[float] = None
    passed: Optional[bool] = None
    note: str = ""
    bound: Optional[float] = json_field(omit_if_none=True)

    @classmethod
    def from_property(cls, value: Dict[str, Any]) -> "RuleResult":
        """From one entry of a ModelBlessing's `rules` property (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})


@dataclasses.dataclass
class BlessingSummary(ArtifactRef):
    """A ModelBlessing: the Evaluator's verdict, or a manual blessing (`conveyor bless`).

    Fields (besides ArtifactRef's):
      blessed: whether the candidate was blessed.
      majority_baseline: majority-class rate on the eval split (0..1), None if not recorded.
      accuracy_floor: the first plain `accuracy min` rule's bound (0..1), None if none.
      rules: every blessing rule with candidate, baseline and verdict, in config order ([]
        for blessings written before rules existed, and for manual blessings).
      manual: True for a manual blessing (then the next fields are set); left out of the
        JSON for the Evaluator's.
      blessed_by, reason: who blessed it and why.
      overrides_blessing_id: the Evaluator's (not blessed) ModelBlessing it overrode.
    """
    blessed: bool = False
    majority_baseline: Optional[float] = None
    accuracy_floor: Optional[float] = None
    rules: List[RuleResult] = dataclasses.field(default_factory=list)
    manual: Optional[bool] = json_field(omit_if_none=True)
    blessed_by: Optional[str] = json_field(omit_if_none=True)
    reason: Optional[str] = json_field(omit_if_none=True)
    overrides_blessing_id: Optional[int] = json_field(omit_if_none=True)

    def blocked_by(self) -> List[RuleResult]:
        """The rules that failed (the first one is what blocked the push)."""
        return [r for r in self.rules if r.passed is False]


def blessing_summary(graph: Graph, blessing: mlmd_pb2.Artifact) -> BlessingSummary:
    """The verdict, reference rates and rule results recorded on a ModelBlessing artifact
    (and, for a manual blessing, who, why and which blessing it overrode)."""
    p = props(blessing)
    manual = p.get("manual") == 1
    return BlessingSummary(**artifact_ref(graph, blessing).ref_fields(), blessed=p.get("blessed") == 1,
                           majority_baseline=p.get("majority_baseline"), accuracy_floor=p.get("accuracy_floor"),
                           rules=[RuleResult.from_property(r) for r in p.get("rules") or []],
                           manual=True if manual else None, blessed_by=p.get("blessed_by") if manual else None,
                           reason=p.get("reason") if manual else None,
                           overrides_blessing_id=p.get("overrides_blessing_id") if manual else None)


def rule_line(rule: RuleResult) -> str:
    """One line for a person: "FAIL  recall[fraud] >= 0.9  candidate 0.2000  baseline -  (failed)"."""
    def fmt(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.4f}"
    verdict = {True: "pass", False: "FAIL", None: "skip"}[rule.passed]
    return (f"{verdict:<4}  {rule.rule}  candidate {fmt(rule.candidate)}  baseline {fmt(rule.baseline)}"
            + (f"  ({rule.note})" if rule.note and rule.note != "failed" else ""))


INFRA_MEASUREMENTS = ("num_requests", "num_failures", "p50_latency_ms", "p99_latency_ms", "p99_budget_ms", "reason")


@dataclasses.dataclass
class InfraSummary(ArtifactRef):
    """An InfraBlessing (InfraValidator's serving check).

    Fields (besides ArtifactRef's):
      blessed: whether the model served and answered within budget.
      measurements: what the validator recorded, keys in INFRA_MEASUREMENTS order (those
        present): num_requests, num_failures (counts), p50_latency_ms, p99_latency_ms,
        p99_budget_ms (milliseconds), reason (text, on failure). Flattened into the JSON
        object. (MLMD's property map has no stable order, so the order is fixed here.)
    """
    blessed: bool = False
    measurements: Dict[str, Any] = json_field(default_factory=dict, json=False)

    def to_json(self) -> Dict[str, Any]:
        """ArtifactRef keys, "blessed", then the measurements' keys."""
        return {**super().to_json(), **self.measurements}

    def note(self) -> str:
        """The reason, else "<n> requests, p99 <ms> ms", else ""."""
        m = self.measurements
        if "reason" in m:
            return m["reason"]
        if "p99_latency_ms" in m:
            return f"{m.get('num_requests', 0)} requests, p99 {m['p99_latency_ms']:.1f} ms"
        return ""


def infra_summary(graph: Graph, blessing: Optional[mlmd_pb2.Artifact]) -> Optional[InfraSummary]:
    """The verdict and measurements of an InfraBlessing artifact (None for None)."""
    if blessing is None:
        return None
    p = props(blessing)
    return InfraSummary(**artifact_ref(graph, blessing).ref_fields(), blessed=p.get("blessed") == 1,
                        measurements={k: p[k] for k in INFRA_MEASUREMENTS if k in p})


# edge exports ------------------------------------------------------------------------------

EDGE_EXPORTS_TYPE = "conveyor.EdgeExports"  # components/edge_exporter.py EdgeExports.TYPE_NAME


@dataclasses.dataclass
class EdgeExportRecord(Record):
    """One edge export of a pushed version (components/edge_exporter.py ExportResult).

    Fields:
      name: tflite_float16, tflite_dynamic, tflite_int8 or tfjs.
      pushed: published under HOME/edge/<name>/<version>/<export>/.
      accuracy, accuracy_delta: eval accuracy (0..1) and accuracy minus the SavedModel's.
      size_bytes: bytes of the model files.
      latency_ms: mean batch-1 prediction time in milliseconds.
      reason: why it was not pushed ("" when pushed).
      detail: conversion note, e.g. "integer-only ops" for tflite_int8 ("" when none).
    """
    name: str = ""
    pushed: bool = False
    accuracy: Optional[float] = None
    accuracy_delta: Optional[float] = None
    size_bytes: Optional[int] = None
    latency_ms: Optional[float] = None
    reason: str = ""
    detail: str = ""

    def line(self) -> str:
        """'tflite_int8: pushed, accuracy 0.9712 (-0.0010), 41.0 KB, 0.55 ms' or '...: NOT pushed: why'."""
        if self.accuracy is None:
            return f"{self.name}: NOT pushed: {self.reason}"
        text = (f"{self.name}: {'pushed' if self.pushed else 'NOT pushed'}, accuracy {self.accuracy:.4f} "
                f"({self.accuracy_delta:+.4f}), {self.size_bytes / 1024:.1f} KB, {self.latency_ms:.2f} ms")
        text += f" ({self.detail})" if self.detail else ""
        return text if self.pushed else f"{text}: {self.reason}"


@dataclasses.dataclass
class EdgeExportsSummary(ArtifactRef):
    """The EdgeExports artifact of a run. Fields (besides ArtifactRef's): version: the
    SavedModel version they were made from; destination: HOME/edge/<name>/<version>;
    reference_accuracy: the SavedModel's accuracy on the same eval examples; eval_examples:
    how many; exports: one EdgeExportRecord each; reason: why nothing was exported (None when
    something was)."""
    version: Optional[str] = None
    destination: Optional[str] = None
    reference_accuracy: Optional[float] = None
    eval_examples: Optional[int] = None
    exports: List[EdgeExportRecord] = dataclasses.field(default_factory=list)
    reason: Optional[str] = None


def edge_exports_summary(graph: Graph, artifact: Optional[mlmd_pb2.Artifact]) -> Optional[EdgeExportsSummary]:
    """The EdgeExportsSummary of an EdgeExports artifact (None for None)."""
    if artifact is None:
        return None
    p = props(artifact)
    try:
        exports = json.loads(p.get("exports") or "[]")
    except ValueError:
        exports = []
    fields = {f.name for f in dataclasses.fields(EdgeExportRecord)}
    return EdgeExportsSummary(**artifact_ref(graph, artifact).ref_fields(), version=p.get("pushed_version"),
                              destination=p.get("destination"), reference_accuracy=p.get("reference_accuracy"),
                              eval_examples=p.get("eval_examples"),
                              exports=[EdgeExportRecord(**{k: v for k, v in e.items() if k in fields})
                                       for e in exports],
                              reason=p.get("reason"))
