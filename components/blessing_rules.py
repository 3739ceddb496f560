"""Blessing rules: a metric, an optional slice and bounds the candidate model must meet.

A rule reads like the config that states it:

    {metric: recall, slice: fraud, min: 0.9}         recall of class "fraud" >= 0.9
    {metric: accuracy, slice: label_name=cat, min: 0.8}   accuracy on the examples labelled cat
    {metric: auc, max_drop: 0.01}                    macro AUC at most 0.01 below the baseline's
    {metric: accuracy, min: majority}                accuracy above the eval split's majority-class rate

The Evaluator (components/evaluator.py) turns every rule into a TFMA threshold, so the verdict
is TFMA's own validation result; this module is the rule vocabulary and its checks, pure
Python so that loading a config does not import TensorFlow.

Per-class metrics are computed per class k of the `probabilities` output (TFMA
BinarizationOptions.class_ids): precision, recall and f1 count k as predicted when it is the
top-1 (argmax) class, as sklearn's classification_report does (with two classes: when its
probability is above 0.5); auc, auc_pr and calibration rank or sum k's probability against
the rest. Without a class slice they are the macro average (unweighted mean over classes);
weighted_* weight each class by its label count.
"""
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from modules import features as F

MAJORITY = "majority"  # `min: majority`: just above the eval split's majority-class rate
# Strictly better than always answering the majority class.
MAJORITY_MARGIN = 1e-6
# Features a `feature=value` slice may name: what Conveyor's ExampleGens write for every example.
SLICE_FEATURES = (F.LABEL_NAME, F.LABEL)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """One metric a rule may name.

    Fields:
      tfma_class: the TFMA (or Keras, for accuracy) metric class name in the MetricConfig.
      key: the name TFMA stores its value under (tfma.metrics.MetricKey.name).
      per_class: True: computed per class (a class slice selects one) and, without a class
        slice, as TFMA's macro average; False: one value per slice.
      unit_range: the value is a rate in 0..1 (bounds must be too).
      comparable: a `max_drop` against the baseline makes sense (higher is better).
      needs_class: a rule must name a class (no meaningful average).
      weighted: the label-frequency weighted average over classes of a top-1 per-class
        metric (components/evaluator.py WeightedAverage).
    """
    tfma_class: str
    key: str
    per_class: bool = False
    unit_range: bool = True
    comparable: bool = True
    needs_class: bool = False
    weighted: bool = False


METRICS: Dict[str, MetricInfo] = {
    "accuracy": MetricInfo("SparseCategoricalAccuracy", "sparse_categorical_accuracy"),
    "example_count": MetricInfo("ExampleCount", "example_count", unit_range=False, comparable=False),
    "precision": MetricInfo("Precision", "precision", per_class=True),
    "recall": MetricInfo("Recall", "recall", per_class=True),
    "f1": MetricInfo("F1Score", "f1_score", per_class=True),
    "auc": MetricInfo("AUC", "auc", per_class=True),
    "auc_pr": MetricInfo("AUCPrecisionRecall", "auc_precision_recall", per_class=True),
    "weighted_precision": MetricInfo("Precision", "weighted_precision", weighted=True),
    "weighted_recall": MetricInfo("Recall", "weighted_recall", weighted=True),
    "weighted_f1": MetricInfo("F1Score", "weighted_f1_score", weighted=True),
    # sum(probabilities) / sum(labels) of a class: 1.0 = calibrated; no 0..1 range, no "better".
    "calibration": MetricInfo("Calibration", "calibration", per_class=True, unit_range=False,
                              comparable=False, needs_class=True),
}
PER_CLASS = [name for name, info in METRICS.items() if info.per_class]
WEIGHTED = [name for name, info in METRICS.items() if info.weighted]


class RuleError(ValueError):
    """A blessing rule that cannot be used; the message names the rule and lists the valid choices."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One blessing rule (see the module docstring).

    Fields:
      metric: a key of METRICS.
      slice: None (all eval examples), a class name (per-class metrics) or "feature=value"
        with feature in SLICE_FEATURES.
      min, max: absolute bounds on the candidate's value (min may be MAJORITY for accuracy).
      max_drop: the candidate may be at most this much below the baseline model (>= 0);
        not checked when there is no blessed baseline yet.
    """
    metric: str
    slice: Optional[str] = None
    min: Union[float, str, None] = None
    max: Optional[float] = None
    max_drop: Optional[float] = None

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]

    @property
    def feature_slice(self) -> Optional[Dict[str, str]]:
        """{feature: value} of a `feature=value` slice, else None."""
        if self.slice and "=" in self.slice:
            feature, value = self.slice.split("=", 1)
            if feature in SLICE_FEATURES:
                return {feature: value}
        return None

    @property
    def class_name(self) -> Optional[str]:
        """The class a class slice names, else None."""
        return self.slice if self.slice and self.feature_slice is None else None

    def text(self) -> str:
        """The rule in one line, e.g. "recall[fraud] >= 0.9", "auc (macro) drop <= 0.01"."""
        name = self.metric
        if self.class_name is not None:
            name += f"[{self.class_name}]"
        elif self.info.per_class:
            name += " (macro)"
        if self.feature_slice is not None:
            name += f" on {self.slice}"
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}" if self.min != MAJORITY else "> majority-class rate")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        if self.max_drop is not None:
            parts.append(f"drop vs baseline <= {self.max_drop:g}")
        return f"{name} {', '.join(parts)}"

    def to_dict(self) -> Dict[str, Any]:
        """The rule as in a config file (unset keys left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_KEYS = tuple(f.name for f in dataclasses.fields(Rule))


def _number(rule: Mapping[str, Any], key: str, where: str) -> Optional[float]:
    value = rule.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"{where}: '{key}' must be a number, got {value!r}")
    return float(value)


def parse_rule(rule: Any, number: int, class_names: Optional[Sequence[str]] = None) -> Rule:
    """Checks one rule as written in a config and returns it.

    Args:
      rule: a mapping with `metric` and optional `slice`, `min`, `max`, `max_drop`, or a Rule.
      number: its 1-based position in the list, for messages.
      class_names: the known class names; None = not known yet (then a class slice is checked
        when the Evaluator runs, see check_classes).
    Returns:
      the Rule.
    Raises:
      RuleError: not a mapping, an unknown key or metric (the message lists the valid ones),
        a slice naming an unknown feature or class, no bound, a bound of the wrong type or
        outside 0..1 for a rate, min > max, max_drop < 0, max_drop on a metric without
        "better", `min: majority` on a metric other than accuracy, a class slice on a metric
        without per-class values, calibration without a class, or an average over classes
        (a per-class metric without class, weighted_*) on a `feature=value` slice (the slice
        features are the label, so such a slice holds one class).
    """
    if isinstance(rule, Rule):
        rule = rule.to_dict()
    where = f"blessing rule {number}"
    if not isinstance(rule, Mapping):
        raise RuleError(f"{where}: expected a mapping such as {{metric: recall, slice: <class>, min: 0.9}}, "
                        f"got {rule!r}")
    unknown = sorted(set(rule) - set(_KEYS))
    if unknown:
        raise RuleError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(_KEYS)})")
    metric = rule.get("metric")
    if metric not in METRICS:
        raise RuleError(f"{where}: unknown metric {metric!r} (metrics: {', '.join(METRICS)})")
    where = f"{where} ({metric})"
    info = METRICS[metric]
    slice_ = rule.get("slice")
    if slice_ is not None and (not isinstance(slice_, str) or not slice_):
        raise RuleError(f"{where}: 'slice' must be a class name or feature=value, got {slice_!r}")
    low = MAJORITY if rule.get("min") == MAJORITY else _number(rule, "min", where)
    high, drop = _number(rule, "max", where), _number(rule, "max_drop", where)
    parsed = Rule(metric=metric, slice=slice_, min=low, max=high, max_drop=drop)
    if low is None and high is None and drop is None:
        raise RuleError(f"{where}: give at least one of min, max, max_drop")
    if low == MAJORITY and metric != "accuracy":
        raise RuleError(f"{where}: min: {MAJORITY} is an accuracy (the majority-class rate); "
                        "use it with metric: accuracy")
    if info.unit_range:
        for key, value in (("min", low), ("max", high), ("max_drop", drop)):
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise RuleError(f"{where}: '{key}' must be within 0..1 ({metric} is a rate), got {value:g}")
    if isinstance(low, float) and high is not None and low > high:
        raise RuleError(f"{where}: min {low:g} is above max {high:g}")
    if drop is not None and drop < 0:
        raise RuleError(f"{where}: 'max_drop' must be >= 0, got {drop:g}")
    if drop is not None and not info.comparable:
        raise RuleError(f"{where}: max_drop needs a metric where higher is better; "
                        f"not {metric} (use min/max)")
    if slice_ is not None and "=" in slice_ and parsed.feature_slice is None:
        raise RuleError(f"{where}: slice {slice_!r} names an unknown feature "
                        f"(slice features: {', '.join(SLICE_FEATURES)})")
    if parsed.feature_slice is not None and (info.per_class or info.weighted):
        # The slice features are the label: a slice holds one class, whose value is the rule's
        # class slice; the other classes have no examples there and TFMA's averages are NaN.
        feature, value = next(iter(parsed.feature_slice.items()))
        one = value if feature == F.LABEL_NAME else "<class>"
        per_class = metric.replace("weighted_", "")
        raise RuleError(f"{where}: slice {slice_!r} holds one class, so an average over classes is not defined "
                        f"there; for that class's {per_class} use {{metric: {per_class}, slice: {one}}}")
    if parsed.class_name is not None:
        if not info.per_class:
            raise RuleError(f"{where}: {metric} has no per-class value, so slice {slice_!r} must be "
                            f"feature=value (features: {', '.join(SLICE_FEATURES)}); per-class "
                            f"metrics: {', '.join(PER_CLASS)}")
        if class_names is not None and slice_ not in class_names:
            raise RuleError(f"{where}: slice {slice_!r} is not a class (classes: {', '.join(class_names)})")
    elif info.needs_class:
        raise RuleError(f"{where}: {metric} is per class; give the class as slice "
                        f"(e.g. slice: {class_names[0] if class_names else '<class>'})")
    return parsed


def parse_rules(rules: Sequence[Any], class_names: Optional[Sequence[str]] = None) -> List[Rule]:
    """parse_rule for each rule of a list (numbered from 1).

    Raises:
      RuleError: the first bad rule (see parse_rule); an empty list (nothing would be checked).
    """
    if not isinstance(rules, (list, tuple)):
        raise RuleError(f"blessing: expected a list of rules such as [{{metric: accuracy, min: 0.8}}], got {rules!r}")
    if not rules:
        raise RuleError("blessing: an empty rule list would bless any model; give at least one rule "
                        "or leave `blessing` out for the default rules")
    return [parse_rule(rule, i, class_names) for i, rule in enumerate(rules, 1)]


def check_classes(rules: Sequence[Rule], class_names: Sequence[str], where: str = "of the eval data") -> None:
    """Raises RuleError for the first rule whose class slice is not in `class_names`; the
    message says the classes are `where` (e.g. "of the eval data") and lists them."""
    for i, rule in enumerate(rules, 1):
        if rule.class_name is not None and rule.class_name not in class_names:
            raise RuleError(f"blessing rule {i} ({rule.metric}): slice {rule.class_name!r} is not a class "
                            f"{where} (classes: {', '.join(class_names)})")


def default_rules(accuracy_floor: float, regression_tolerance: float) -> List[Rule]:
    """The rules used when a config sets no `blessing`: accuracy >= accuracy_floor (0..1),
    above the majority-class rate, and at most regression_tolerance below the baseline's."""
    return [Rule("accuracy", min=accuracy_floor), Rule("accuracy", min=MAJORITY),
            Rule("accuracy", max_drop=regression_tolerance)]
