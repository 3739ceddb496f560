"""TFX's Evaluator with Conveyor's metrics and blessing rules (components/blessing_rules.py).

Every run computes, with TFMA's own metric classes on the model's `probabilities` output
against the int64 `label`:
  * ExampleCount, SparseCategoricalAccuracy and MultiClassConfusionMatrixPlot;
  * per class (TFMA BinarizationOptions.class_ids): Precision, Recall and F1Score of the
    top-1 prediction (class k counts as predicted when it is the argmax, as in sklearn's
    classification_report; see TopOnePrecision), and one-vs-rest on the class's probability
    AUC (ROC) and AUCPrecisionRecall (1000 thresholds) and Calibration, plus a
    CalibrationPlot for two classes;
  * their macro averages (AggregationOptions.macro_average) and the label-frequency weighted
    averages of precision, recall and F1 (weighted_precision, weighted_recall and
    weighted_f1_score, see WeightedAverage);
on all eval examples and per `label_name` (and any `feature=value` slice a rule names).

The class count is only known once ExampleGen has run, and so is the majority-class rate a
`min: majority` rule needs, so the executor reads both from the Examples artifact, writes
the metrics specs and one TFMA threshold per rule into the EvalConfig, and hands it to
TFX's Evaluator: the blessing is TFMA's validation result. Afterwards it records on the
ModelBlessing what each rule saw (`rules`: rule, candidate, baseline, passed, note), the
`majority_baseline`, `accuracy_floor` (the first plain accuracy `min`) and
`has_baseline_model` (0/1). It also writes the candidate's most confident mistakes on the
eval split beside the metrics (components/mistakes.py), recorded on the ModelEvaluation.
"""
import collections
import functools
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import aggregation as tfma_aggregation
from tfx.components.evaluator import executor as tfx_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, channel, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, path_utils, proto_utils

from components.blessing_rules import (MAJORITY, MAJORITY_MARGIN, METRICS, Rule, RuleError, check_classes,
                                       parse_rules)
from components import mistakes
from components.errors import ComponentError
from modules import features as F
from modules.splits import read_split_examples, split_pattern
from serving import contract

RULES_KEY = "blessing_rules"
LABEL_NAMES_FILE = "label_names.json"  # written by components/labelled_example_gen.py
BASELINE = tfma.BASELINE_KEY  # TFMA's model_name of the baseline once one is given
# The metrics every run computes (besides the rules' own): TFMA class names.
PER_CLASS = ("Precision", "Recall", "F1Score", "AUC", "AUCPrecisionRecall")
WEIGHTED = ("weighted_precision", "weighted_recall", "weighted_f1")


class EvaluatorInputError(ComponentError, ValueError):
    """The eval split or a blessing rule cannot be evaluated; the message says which and why."""


def majority_class_rate(examples_uri: str, split: str = "eval") -> float:
    """Share of the commonest label in a split of an Examples artifact.

    Args:
      examples_uri: the Examples artifact's uri (GZIP TFRecords under Split-<split>/).
      split: the split to count.
    Returns:
      The commonest int64 `label`'s count over the split's example count, in (0, 1].
    Raises:
      EvaluatorInputError: the split has no examples.
    """
    pattern = split_pattern(examples_uri, split)
    counts = collections.Counter(example.features.feature[F.LABEL].int64_list.value[0]
                                 for example in read_split_examples(pattern))
    total = sum(counts.values())
    if not total:
        raise EvaluatorInputError(f"{pattern}: the eval split has no examples to evaluate on")
    return max(counts.values()) / total


def class_names_of(examples) -> List[str]:
    """The class names of an Examples artifact, in label-index order (ExampleGen's
    `label_names` property, else its label_names.json).

    Raises:
      EvaluatorInputError: neither is there (not an Examples artifact of Conveyor's ExampleGens).
    """
    if examples.has_custom_property("label_names"):
        return [str(n) for n in examples.get_json_value_custom_property("label_names")]
    path = os.path.join(examples.uri, LABEL_NAMES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return [str(n) for n in json.load(f)]
    except OSError:
        raise EvaluatorInputError(f"{examples.uri}: no class names (no `label_names` property nor "
                                  f"{LABEL_NAMES_FILE}); the Examples must come from Conveyor's ExampleGens") from None


def slicing_spec(rule: Rule) -> tfma.SlicingSpec:
    """The slice a rule's threshold applies to: its `feature=value`, else all eval examples."""
    return tfma.SlicingSpec(feature_values=rule.feature_slice or {})


def base_eval_config(rules: Sequence[Rule]) -> tfma.EvalConfig:
    """The class-independent part of the EvalConfig: the model (its `serving_examples`
    signature, `label` against `probabilities`) and the slices (all examples, per
    label_name, and each `feature=value` slice of a rule). The executor adds the metrics."""
    slices = [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[F.LABEL_NAME])]
    for rule in rules:
        spec = slicing_spec(rule)
        if rule.feature_slice and rule.feature_slice.keys() != {F.LABEL_NAME} and spec not in slices:
            slices.append(spec)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=contract.EXAMPLES_SIGNATURE, label_key=F.LABEL,
                                    prediction_key=contract.PROBABILITIES)],
        slicing_specs=slices)


class _TopOne:
    """Makes a TFMA confusion-matrix metric count class k as predicted when it is the top-1
    (argmax) class, and report the value under the spec's own key.

    TFMA 0.47.1 has top-1 per class (a metric's `top_k=1` and `class_id`, see
    confusion_matrix_metrics.ConfusionMatrixMetricBase), but then keys the value with
    SubKey(class_id, top_k=1), while thresholds (metric_specs.metric_thresholds_from_metrics_specs)
    and macro averages (aggregation.macro_average) look it up under the MetricsSpec's sub key
    SubKey(class_id) alone, so neither would find it. This passes `top_k=1` for the confusion
    matrix and TFMA's own `metric_key` argument for the key; the counting is TFMA's.
    """

    def _metric_computations(self, thresholds=None, num_thresholds=None, top_k=None, class_id=None, name=None,
                             eval_config=None, model_name="", output_name="", sub_key=None, aggregation_type=None,
                             class_weights=None, example_weighted=False, preprocessors=None, **kwargs):
        if top_k is not None or class_id is not None or thresholds is not None or num_thresholds is not None:
            raise ValueError(f"{type(self).__name__} is top-1 per class: give no top_k, class_id or thresholds")
        if sub_key is None or sub_key.class_id is None or sub_key.top_k is not None or sub_key.k is not None:
            raise ValueError(f"{type(self).__name__} needs the class from the MetricsSpec (binarize class_ids "
                             f"or a macro average), got sub key {sub_key}")
        key = tfma.metrics.MetricKey(name=name, model_name=model_name, output_name=output_name, sub_key=sub_key,
                                     aggregation_type=aggregation_type, example_weighted=example_weighted)
        # thresholds=[0.0]: the top-1 value is a probability >= 1/classes > 0 and TFMA sets the
        # others to -inf. TFMA's default for top_k ([-inf], counted from its calibration
        # histogram) counts every example as predicted when class k is never the top-1, which
        # gave recall 1.0 to a class the model never predicts.
        return super()._metric_computations(
            top_k=1, thresholds=[0.0], name=name, eval_config=eval_config, model_name=model_name, output_name=output_name,
            sub_key=sub_key, aggregation_type=aggregation_type, class_weights=class_weights,
            example_weighted=example_weighted, preprocessors=preprocessors, metric_key=key, **kwargs)


class TopOnePrecision(_TopOne, tfma.metrics.Precision):
    """TFMA's Precision of class k (the MetricsSpec's class) where the model predicts k when
    k has the highest probability (ties: one of them, numpy.argpartition's pick): TP / (TP +
    FP), NaN when k is never predicted (TFMA's rule). Key name `precision`, sub key the class."""


class TopOneRecall(_TopOne, tfma.metrics.Recall):
    """TFMA's Recall of class k, predicted when k has the highest probability: TP / (TP + FN)
    (0 when k is never predicted), NaN when k has no examples. Key name `recall`, sub key the class."""


class TopOneF1Score(_TopOne, tfma.metrics.F1Score):
    """TFMA's F1Score of class k, predicted when k has the highest probability: 2 TP /
    (2 TP + FP + FN), NaN when k is neither predicted nor labelled. Key name `f1_score`,
    sub key the class."""


# The TFMA classes a rule names (components/blessing_rules.METRICS) that are computed top-1.
TOP_ONE = {"Precision": TopOnePrecision, "Recall": TopOneRecall, "F1Score": TopOneF1Score}


def _renamed(source: tfma.metrics.MetricKey, target: tfma.metrics.MetricKey, metrics):
    return {target: metrics[source]}


def _weighted_average_computations(metric: str, class_ids: Sequence[int], name: str, eval_config=None,
                                   model_names=None, output_names=None, example_weighted: bool = False):
    private = "_" + name  # TFMA leaves metrics named "_x" out of its output
    sub_keys = [tfma.metrics.SubKey(class_id=k) for k in class_ids]
    computations = TOP_ONE[metric](name=private).computations(
        eval_config=eval_config, model_names=model_names, output_names=output_names, sub_keys=sub_keys,
        example_weighted=example_weighted)
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            average = tfma_aggregation.weighted_macro_average(
                private, sub_keys, eval_config=eval_config, model_name=model_name, output_name=output_name,
                example_weighted=example_weighted)
            key = tfma.metrics.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                         example_weighted=example_weighted)
            computations += average + [tfma.metrics.DerivedMetricComputation(
                keys=[key], result=functools.partial(_renamed, average[-1].keys[0], key))]
    return computations


class WeightedAverage(tfma.metrics.Metric):
    """The label-frequency weighted average over classes of a top-1 per-class metric:
    TFMA's aggregation.weighted_macro_average (each class weighted by its label count in the
    slice, as sklearn's average="weighted"), keyed as a plain metric `name` (no sub key, no
    aggregation type).

    TFMA 0.47.1's AggregationOptions.weighted_macro_average stores its value under
    AggregationType(macro_average=True) while thresholds look it up under
    AggregationType(weighted_macro_average=True) (aggregation.weighted_macro_average vs
    metric_specs._aggregation_type), so a rule on it would always fail "Metric not found".

    Args:
      metric: "Precision", "Recall" or "F1Score" (a key of TOP_ONE).
      class_ids: the classes to average over (int label indices).
      name: the metric key name, e.g. "weighted_precision".
    """

    def __init__(self, metric: str = "Precision", class_ids: Sequence[int] = (), name: str = ""):
        super().__init__(_weighted_average_computations, metric=metric, class_ids=list(class_ids), name=name)


# TFMA's AUCs default to 10000 thresholds; deriving their confusion matrices per class and
# slice was most of the Evaluator's time on 10 classes (bucket width 0.001 is plenty here).
METRIC_SETTINGS = {"AUC": {"num_thresholds": 1000}, "AUCPrecisionRecall": {"num_thresholds": 1000}}


def _metric(class_name: str, name: Optional[str] = None, thresholds=()) -> tfma.MetricConfig:
    settings = {**METRIC_SETTINGS.get(class_name, {}), **({"name": name} if name else {})}
    top_one = TOP_ONE.get(class_name)
    return tfma.MetricConfig(class_name=top_one.__name__ if top_one else class_name,
                             module=__name__ if top_one else "",
                             config=json.dumps(settings) if settings else "", per_slice_thresholds=list(thresholds))


def rule_threshold(rule: Rule, majority: float) -> tfma.MetricThreshold:
    """The TFMA threshold of a rule: min/max as a GenericValueThreshold (`majority` = the
    majority-class rate + MAJORITY_MARGIN), max_drop as a GenericChangeThreshold."""
    threshold = tfma.MetricThreshold()
    low = majority + MAJORITY_MARGIN if rule.min == MAJORITY else rule.min
    if low is not None:
        threshold.value_threshold.lower_bound.value = low
    if rule.max is not None:
        threshold.value_threshold.upper_bound.value = rule.max
    if rule.max_drop is not None:
        threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -rule.max_drop
    return threshold


def _target(rule: Rule, class_names: Sequence[str]) -> Tuple[str, Optional[int]]:
    """(rule metric, class index or None) — rules with the same target share one MetricConfig."""
    return rule.metric, (class_names.index(rule.class_name) if rule.class_name is not None else None)


def metrics_specs(rules: Sequence[Rule], class_names: Sequence[str], majority: float) -> List[tfma.MetricsSpec]:
    """The MetricsSpecs of a run (see the module docstring) with one threshold per rule.

    A rule's threshold sits on a MetricConfig whose spec yields exactly the rule's metric key
    (TFMA applies a MetricConfig's thresholds to every key its spec produces): accuracy,
    example count and the weighted averages (WeightedAverage) on the plain spec, a class rule
    on a spec binarized to that class only, a per-class metric without class on a
    macro-average spec.

    Args:
      rules: parsed rules whose classes are in class_names (check_classes).
      class_names: the classes in label-index order (>= 2).
      majority: the eval split's majority-class rate (0..1), for `min: majority`.
    Returns:
      the MetricsSpecs, in the order TFMA should compute them.
    """
    ids = list(range(len(class_names)))
    every_class = tfma.BinarizationOptions(class_ids={"values": ids})
    # TFMA needs the classes to average over as weights.
    macro = tfma.AggregationOptions(macro_average=True, class_weights={i: 1.0 for i in ids})
    by_target: Dict[Tuple[str, Optional[int]], List[tfma.PerSliceMetricThreshold]] = collections.defaultdict(list)
    for rule in rules:
        by_target[_target(rule, class_names)].append(tfma.PerSliceMetricThreshold(
            slicing_specs=[slicing_spec(rule)], threshold=rule_threshold(rule, majority)))

    plain = [_metric(METRICS[m].tfma_class, thresholds=by_target.pop((m, None), ()))
             for m in ("example_count", "accuracy")]
    weighted = [tfma.MetricConfig(class_name=WeightedAverage.__name__, module=__name__, config=json.dumps(
        {"metric": METRICS[m].tfma_class, "class_ids": ids, "name": METRICS[m].key}),
        per_slice_thresholds=by_target.pop((m, None), ())) for m in WEIGHTED]
    specs = [
        tfma.MetricsSpec(metrics=plain + weighted + [_metric("MultiClassConfusionMatrixPlot")]),
        tfma.MetricsSpec(metrics=[_metric(c) for c in PER_CLASS], binarize=every_class, aggregate=macro),
        tfma.MetricsSpec(metrics=[_metric("Calibration")] + (
            [_metric("CalibrationPlot")] if len(class_names) == 2 else []), binarize=every_class),
    ]
    for (metric, class_id), thresholds in by_target.items():  # per-class metrics
        config = _metric(METRICS[metric].tfma_class, thresholds=thresholds)
        if class_id is not None:
            specs.append(tfma.MetricsSpec(metrics=[config], binarize=tfma.BinarizationOptions(
                class_ids={"values": [class_id]})))
        else:
            specs.append(tfma.MetricsSpec(metrics=[config], aggregate=macro))
    return specs


# What each rule saw --------------------------------------------------------------------

def _slice_dict(slice_key) -> Dict[str, str]:
    return {s.column: (s.bytes_value.decode() if s.HasField("bytes_value") else
                       str(s.int64_value) if s.HasField("int64_value") else f"{s.float_value:g}")
            for s in slice_key.single_slice_keys}


def _matches(key, rule: Rule, class_id: Optional[int]) -> bool:
    """Whether a TFMA MetricKey proto is the value a rule bounds (any model, diff or not)."""
    if key.name != METRICS[rule.metric].key:
        return False
    key_class = key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None
    if key_class != class_id or key.sub_key.HasField("top_k") or key.sub_key.HasField("k"):
        return False
    return key.HasField("aggregation_type") == (METRICS[rule.metric].per_class and class_id is None)


def _same_threshold(a: tfma.MetricThreshold, b: tfma.MetricThreshold, diff: bool) -> bool:
    """The value (diff=False) or change part of two thresholds agree (bounds within 1e-9)."""
    if diff:
        return abs(a.change_threshold.absolute.value - b.change_threshold.absolute.value) < 1e-9
    av, bv = a.value_threshold, b.value_threshold
    return all(av.HasField(f) == bv.HasField(f) and abs(getattr(av, f).value - getattr(bv, f).value) < 1e-9
               for f in ("lower_bound", "upper_bound"))


def rule_results(evaluation_uri: str, rules: Sequence[Rule], class_names: Sequence[str], majority: float,
                 has_baseline: bool) -> List[Dict[str, Any]]:
    """What each rule saw, read back from TFMA's metrics and validation result.

    Args:
      evaluation_uri: the ModelEvaluation written by TFX's Evaluator with metrics_specs(...).
      rules, class_names, majority: as given to metrics_specs.
      has_baseline: a baseline model was evaluated (else max_drop is not checked).
    Returns:
      one dict per rule, in rule order: rule (Rule.text()), metric, slice, bound (the
      resolved lower bound of `min: majority`, else absent), candidate and baseline (the
      metric's value, None if not computed), passed (True/False; None when the rule has only
      max_drop and there is no baseline), note ("" or why: "failed", "metric not found",
      "slice has no eval examples", "max_drop not checked: no blessed baseline yet").
    """
    # (slice, is the baseline) -> [(MetricKey proto, value)]
    values: Dict[Tuple[Any, bool], List[Tuple[Any, float]]] = collections.defaultdict(list)
    for metrics in tfma.load_metrics(evaluation_uri):
        where = tuple(sorted(_slice_dict(metrics.slice_key).items()))
        for kv in metrics.metric_keys_and_values:
            if not kv.key.is_diff and kv.value.HasField("double_value"):
                values[where, kv.key.model_name == BASELINE].append((kv.key, kv.value.double_value.value))
    validation = tfma.load_validation_result(evaluation_uri)
    missing = list(validation.missing_slices)
    out = []
    for rule in rules:
        _, class_id = _target(rule, class_names)
        threshold = rule_threshold(rule, majority)
        where = tuple(sorted((rule.feature_slice or {}).items()))

        def value(of_baseline: bool) -> Optional[float]:
            return next((v for key, v in values.get((where, of_baseline), []) if _matches(key, rule, class_id)), None)

        candidate, baseline = value(False), value(True)
        failed, note = False, ""
        for per_slice in validation.metric_validations_per_slice:
            if tuple(sorted(_slice_dict(per_slice.slice_key).items())) != where:
                continue
            for failure in per_slice.failures:
                if (_matches(failure.metric_key, rule, class_id)
                        and _same_threshold(failure.metric_threshold, threshold, failure.metric_key.is_diff)):
                    failed = True
                    note = note or ("metric not found" if failure.message == "Metric not found." else "failed")
        if slicing_spec(rule) in missing:
            failed, note = True, "slice has no eval examples"
        only_drop = rule.min is None and rule.max is None
        passed: Optional[bool] = not failed
        if rule.max_drop is not None and not has_baseline:
            note = note or "max_drop not checked: no blessed baseline yet"
            passed = None if only_drop else passed
        result = {"rule": rule.text(), "metric": rule.metric, "slice": rule.slice}
        if rule.min == MAJORITY:
            result["bound"] = majority + MAJORITY_MARGIN
        out.append({**result, "candidate": candidate, "baseline": baseline, "passed": passed, "note": note})
    return out


class Executor(tfx_executor.Executor):
    """TFX's Evaluator executor, given the full EvalConfig of the rules in exec property
    `blessing_rules` (JSON list of rule mappings); see the module docstring for what the
    blessing records.

    Raises (from Do):
      EvaluatorInputError: the eval split is empty, the Examples have no class names, or a
        rule names a class the eval data does not have (the message lists the classes).
    """

    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        class_names = class_names_of(examples)
        try:
            rules = parse_rules(json.loads(exec_properties[RULES_KEY]))
            check_classes(rules, class_names)
        except RuleError as e:
            raise EvaluatorInputError(str(e)) from None
        majority = majority_class_rate(examples.uri)
        config = tfma.EvalConfig()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.EVAL_CONFIG_KEY], config)
        del config.metrics_specs[:]
        config.metrics_specs.extend(metrics_specs(rules, class_names, majority))
        exec_properties = dict(exec_properties)
        exec_properties[standard_component_specs.EVAL_CONFIG_KEY] = proto_utils.proto_to_json(config)
        super().Do(input_dict, output_dict, exec_properties)

        has_baseline = bool(input_dict.get(standard_component_specs.BASELINE_MODEL_KEY))
        evaluation = artifact_utils.get_single_instance(output_dict[standard_component_specs.EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        blessing.set_json_value_custom_property(
            "rules", rule_results(evaluation.uri, rules, class_names, majority, has_baseline))
        blessing.set_float_custom_property("majority_baseline", majority)
        floor = next((r.min for r in rules if r.metric == "accuracy" and r.slice is None
                      and isinstance(r.min, float)), None)
        if floor is not None:
            blessing.set_float_custom_property("accuracy_floor", floor)
        blessing.set_int_custom_property("has_baseline_model", int(has_baseline))
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        mistakes.record(evaluation, mistakes.most_confident_mistakes(model_dir, examples.uri, class_names))


class BlessingEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    """TFX's EvaluatorSpec plus the `blessing_rules` parameter (JSON list of rule mappings)."""
    PARAMETERS = {**standard_component_specs.EvaluatorSpec.PARAMETERS,
                  RULES_KEY: ExecutionParameter(type=str)}


class BaselineEvaluator(Evaluator):
    """TFX's Evaluator that blesses by Conveyor's blessing rules (TFMA thresholds built when
    it runs, once the classes and the majority-class rate are known).

    Args:
      examples: channel of ExampleGen's Examples; the eval split is evaluated.
      model: channel of the candidate Model (its `serving_examples` signature is called).
      baseline_model: channel of the latest blessed Model, for `max_drop` rules; an empty
        channel on a first run.
      rules: the blessing rules (Config.blessing_rules()).
    Outputs:
      `outputs['evaluation']` (ModelEvaluation) and `outputs['blessing']` (ModelBlessing,
      with the custom properties the Executor adds).
    Raises (when the component runs):
      EvaluatorInputError: see Executor.
    """
    SPEC_CLASS = BlessingEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: channel.BaseChannel, model: channel.BaseChannel,
                 baseline_model: Optional[channel.BaseChannel], rules: Sequence[Rule]):
        # TFX's Evaluator.__init__ builds its own EvaluatorSpec; this is that spec plus the rules.
        spec = BlessingEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model,
            eval_config=base_eval_config(rules), example_splits=json_utils.dumps(None),
            fairness_indicator_thresholds=json_utils.dumps(None),
            **{RULES_KEY: json.dumps([r.to_dict() for r in rules])},
            evaluation=channel.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=channel.Channel(type=standard_artifacts.ModelBlessing))
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
