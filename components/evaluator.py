"""Evaluator whose accuracy floor also includes the eval split's majority-class baseline.

A TFMA threshold must be a number, but the majority-class rate is only known once
ExampleGen has run, so this executor counts the eval labels, raises the accuracy lower
bound to just above that rate, and hands the adjusted EvalConfig to TFX's Evaluator.
The blessing records accuracy_floor, majority_baseline and the bound that was applied.
"""
import collections

import tensorflow_model_analysis as tfma
from tfx.components.evaluator import executor as tfx_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from modules import features as F
from modules.splits import read_split_examples, split_pattern
from serving import contract

ACCURACY = "sparse_categorical_accuracy"
# Strictly better than always answering the majority class.
MAJORITY_MARGIN = 1e-6


def majority_class_rate(examples_uri: str, split: str = "eval") -> float:
    """Share of the commonest label in a split of an Examples artifact.

    Args:
      examples_uri: the Examples artifact's uri (GZIP TFRecords under Split-<split>/).
      split: the split to count.
    Returns:
      The commonest int64 `label`'s count over the split's example count, in (0, 1].
    Raises:
      ValueError: the split has no examples.
    """
    pattern = split_pattern(examples_uri, split)
    counts = collections.Counter(example.features.feature[F.LABEL].int64_list.value[0]
                                 for example in read_split_examples(pattern))
    total = sum(counts.values())
    if not total:
        raise ValueError(f"{pattern}: the eval split has no examples to evaluate on")
    return max(counts.values()) / total


def eval_config(accuracy_floor: float, regression_tolerance: float) -> tfma.EvalConfig:
    """TFMA EvalConfig: ExampleCount and accuracy overall and per label_name; blessing needs
    overall accuracy >= accuracy_floor (0..1) and no drop below the baseline's minus
    regression_tolerance (the majority-rate check is added by the executor)."""
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=contract.EXAMPLES_SIGNATURE, label_key=F.LABEL,
                                    prediction_key=contract.PROBABILITIES)],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[F.LABEL_NAME])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # Thresholds apply to the overall slice only: per-label accuracy is reported, and
            # a class being harder than the majority rate must not veto a better model.
            tfma.MetricConfig(
                class_name="SparseCategoricalAccuracy",
                per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                    slicing_specs=[tfma.SlicingSpec()],
                    threshold=tfma.MetricThreshold(
                        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_floor}),
                        change_threshold=tfma.GenericChangeThreshold(
                            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                            absolute={"value": -regression_tolerance})))]),
        ])])


class Executor(tfx_executor.Executor):
    """TFX's Evaluator executor with the accuracy lower bound raised above the eval split's
    majority-class rate; the blessing also records `majority_baseline`, `accuracy_floor` (the
    configured bound) and `has_baseline_model` (0/1)."""

    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        majority = majority_class_rate(examples.uri)
        config = tfma.EvalConfig()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.EVAL_CONFIG_KEY], config)
        floor = None
        for spec in config.metrics_specs:
            for metric in spec.metrics:
                if metric.class_name != "SparseCategoricalAccuracy":
                    continue
                for per_slice in metric.per_slice_thresholds:
                    bound = per_slice.threshold.value_threshold.lower_bound
                    floor = bound.value
                    bound.value = max(floor, majority + MAJORITY_MARGIN)
        exec_properties = dict(exec_properties)
        exec_properties[standard_component_specs.EVAL_CONFIG_KEY] = proto_utils.proto_to_json(config)
        super().Do(input_dict, output_dict, exec_properties)
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        blessing.set_float_custom_property("majority_baseline", majority)
        if floor is not None:
            blessing.set_float_custom_property("accuracy_floor", floor)
        blessing.set_int_custom_property(
            "has_baseline_model", int(bool(input_dict.get(standard_component_specs.BASELINE_MODEL_KEY))))


class BaselineEvaluator(Evaluator):
    """TFX's Evaluator whose accuracy floor is at least the majority-class baseline.

    The constructor is TFX's Evaluator's (tfx/components/evaluator/component.py); Conveyor's
    pipeline passes:

    Args:
      examples: channel of ExampleGen's Examples; the eval split is evaluated.
      model: channel of the candidate Model (its `serving_examples` signature is called).
      baseline_model: channel of the latest blessed Model, for the regression threshold;
        an empty channel on a first run.
      eval_config: usually `eval_config(accuracy_floor, regression_tolerance)`; each
        SparseCategoricalAccuracy lower bound in it is raised to just above the eval split's
        majority-class rate when the component runs.
    Outputs:
      `outputs['evaluation']` (ModelEvaluation) and `outputs['blessing']` (ModelBlessing,
      with the custom properties the Executor adds).
    Raises (when the component runs):
      ValueError: the eval split has no examples.
    """
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
