"""Blessing rules: parsing and validation at config load and the default rule set
(components/blessing_rules.py, pipelines/config.py); their TFMA thresholds are tested in
tests/components/test_evaluator.py."""
import pytest

from components.blessing_rules import MAJORITY, Rule, RuleError, check_classes, default_rules, parse_rules
from pipelines.config import ConfigError, load_config


def _load(tmp_path, text: str, overrides=None):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config("text", str(path), overrides)


def test_rules_from_a_config_file(tmp_path):
    config = _load(tmp_path, "class_names: [ok, fraud]\nevaluation:\n  blessing:\n"
                             "    - {metric: recall, slice: fraud, min: 0.9}\n"
                             "    - {metric: auc, max_drop: 0.01}\n"
                             "    - {metric: accuracy, slice: label_name=ok, min: 0.5, max: 1}\n"
                             "    - {metric: accuracy, min: majority}\n")
    rules = config.blessing_rules()
    assert rules == [Rule("recall", "fraud", min=0.9), Rule("auc", max_drop=0.01),
                     Rule("accuracy", "label_name=ok", min=0.5, max=1.0), Rule("accuracy", min=MAJORITY)]
    assert [r.text() for r in rules] == ["recall[fraud] >= 0.9", "auc (macro) drop vs baseline <= 0.01",
                                         "accuracy on label_name=ok >= 0.5, <= 1",
                                         "accuracy > majority-class rate"]
    assert rules[0].class_name == "fraud" and rules[2].feature_slice == {"label_name": "ok"}
    # The rules survive a validated copy, and a flat key works as well as the group.
    assert config.replace(train_steps=5).blessing_rules() == rules
    flat = load_config("text", overrides={"blessing": [{"metric": "f1", "min": 0.7}]})
    assert flat.blessing_rules() == [Rule("f1", min=0.7)]


def test_default_rules_are_todays_accuracy_rules(tmp_path):
    config = _load(tmp_path, "accuracy_floor: 0.7\nregression_tolerance: 0.02\n")
    assert config.blessing is None
    assert config.blessing_rules() == default_rules(0.7, 0.02) == [
        Rule("accuracy", min=0.7), Rule("accuracy", min=MAJORITY), Rule("accuracy", max_drop=0.02)]


@pytest.mark.parametrize("rules, message", [
    ("[{metric: recal, min: 0.9}]", "blessing rule 1: unknown metric 'recal' (metrics: accuracy, example_count, "
                                    "precision, recall, f1, auc, auc_pr, weighted_precision"),
    ("[{metric: auc, min: 0.8}, {metric: recall, slice: 'colour=red', min: 0.5}]",
     "blessing rule 2 (recall): slice 'colour=red' names an unknown feature (slice features: label_name, label)"),
    ("[{metric: recall, slice: dog, min: 0.5}]", "slice 'dog' is not a class of ingest.class_names (classes: ok, fraud)"),
    ("[{metric: accuracy, slice: fraud, min: 0.5}]", "accuracy has no per-class value"),
    ("[{metric: recall, min: 1.5}]", "'min' must be within 0..1 (recall is a rate), got 1.5"),
    ("[{metric: recall, min: '0.5'}]", "'min' must be a number, got '0.5'"),
    ("[{metric: recall, min: 0.9, max: 0.5}]", "min 0.9 is above max 0.5"),
    ("[{metric: recall}]", "give at least one of min, max, max_drop"),
    ("[{metric: recall, max_drop: -0.1}]", "'max_drop' must be within 0..1"),
    ("[{metric: calibration, max_drop: 0.1, slice: fraud}]", "max_drop needs a metric where higher is better"),
    ("[{metric: calibration, min: 0.9}]", "calibration is per class; give the class as slice (e.g. slice: <class>)"),
    ("[{metric: recall, min: majority}]", "use it with metric: accuracy"),
    ("[{metric: recall, slice: label_name=fraud, min: 0.5}]",
     "slice 'label_name=fraud' holds one class, so an average over classes is not defined there; "
     "for that class's recall use {metric: recall, slice: fraud}"),
    ("[{metric: weighted_f1, slice: label=1, min: 0.5}]", "use {metric: f1, slice: <class>}"),
    ("[{metric: recall, minimum: 0.9}]", "unknown key 'minimum' (keys: metric, slice, min, max, max_drop)"),
    ("[]", "an empty rule list would bless any model"),
    ("{metric: recall}", "expected a list of rules"),
])
def test_bad_rules_are_refused_at_load_with_the_valid_choices(tmp_path, rules, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, f"class_names: [ok, fraud]\nblessing: {rules}\n")
    assert message in str(error.value)
    assert str(error.value).startswith("config file ") and "\n" not in str(error.value)


def test_default_rule_settings_next_to_blessing_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="key 'accuracy_floor' sets a default blessing rule, but 'blessing'"):
        _load(tmp_path, "accuracy_floor: 0.8\nblessing: [{metric: auc, min: 0.7}]\n")
    with pytest.raises(ConfigError, match="^command line: key 'regression_tolerance' sets a default"):
        _load(tmp_path, "blessing: [{metric: auc, min: 0.7}]\n", {"regression_tolerance": 0.1})


def test_classes_are_checked_when_known():
    rules = parse_rules([{"metric": "recall", "slice": "fraud", "min": 0.9}])  # classes unknown yet: accepted
    check_classes(rules, ["fraud", "ok"])
    with pytest.raises(RuleError, match=r"slice 'fraud' is not a class of the eval data \(classes: neg, pos\)"):
        check_classes(rules, ["neg", "pos"])
