"""The Evaluator executor on a tiny imbalanced two-class eval split (190 "common", 10 "rare"),
with hand-made SavedModels of the served-model contract: TFMA's metrics, the blessing rules
as TFMA thresholds, and what each rule saw on the ModelBlessing.

Two executor runs, shared by the assertions (a module-scoped fixture):
  * the `score` model alone (first run, no baseline): accuracy 0.96 beats the 0.95 majority
    rate, but it finds 2 of the 10 rare examples (recall 0.2);
  * the `noise` model against the baseline `score`: its AUC drops far more than the AUC
    rule's max_drop, its accuracy less than the accuracy rule's.
A third, on four classes with hesitant probabilities (the top class often below 0.5),
checks per-class precision, recall and F1 and their averages against scikit-learn's on the
argmax predictions.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.blessing_rules import parse_rules
from components.evaluator import BASELINE, BaselineEvaluator, EvaluatorInputError, metrics_specs
from serving import contract

CLASSES = ["common", "rare"]
RARE_SCORES = [0.3 + 0.07 * j for j in range(10)]  # 0.30 .. 0.93; 2 of them above 0.8


def _example(label: int, score: float, noise: float) -> bytes:
    feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "label_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[CLASSES[label].encode()])),
               "score": tf.train.Feature(float_list=tf.train.FloatList(value=[score])),
               "noise": tf.train.Feature(float_list=tf.train.FloatList(value=[noise]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_examples(uri: str) -> None:
    rng = np.random.default_rng(0)
    records = [_example(0, float(s), float(n)) for s, n in zip(rng.uniform(0, 0.35, 190), rng.uniform(0, 1, 190))]
    # `noise` ranks the rare class only a little above chance.
    records += [_example(1, s, float(n)) for s, n in zip(RARE_SCORES, rng.uniform(0.3, 1, 10))]
    os.makedirs(os.path.join(uri, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(uri, "Split-eval", "data.gz"), options="GZIP") as writer:
        for record in records:
            writer.write(record)


class _ScoreModel(tf.Module):
    """P(rare) = sigmoid(10 * (feature - 0.8)): predicts "rare" only for feature > 0.8 (a gentle
    slope, so TFMA's AUC buckets of 1e-4 keep the ranking)."""

    def __init__(self, feature: str):
        super().__init__()
        self.feature = feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        x = tf.io.parse_example(examples, {self.feature: tf.io.FixedLenFeature([], tf.float32)})[self.feature]
        rare = tf.sigmoid(10.0 * (x - 0.8))
        probabilities = tf.stack([1.0 - rare, rare], axis=1)
        class_ids = tf.argmax(probabilities, axis=1)
        return {contract.PROBABILITIES: probabilities, contract.CLASS_IDS: class_ids,
                contract.CLASS_NAMES: tf.gather(tf.constant(CLASSES), class_ids)}


def _model(root: str, feature: str):
    from tfx.types import standard_artifacts
    module = _ScoreModel(feature)
    model = standard_artifacts.Model()
    model.uri = os.path.join(root, f"model_{feature}")
    tf.saved_model.save(module, os.path.join(model.uri, "Format-Serving"),
                        signatures={contract.EXAMPLES_SIGNATURE: module.serve_examples})
    return model


def _evaluate(root: str, name: str, examples, model, baseline, rules):
    """Runs the BaselineEvaluator's executor the way TFX does; returns (blessing, evaluation)."""
    from google.protobuf import message
    from tfx.types import Channel, standard_artifacts
    from tfx.utils import proto_utils
    component = BaselineEvaluator(examples=Channel(type=standard_artifacts.Examples),
                                  model=Channel(type=standard_artifacts.Model),
                                  baseline_model=Channel(type=standard_artifacts.Model), rules=parse_rules(rules))
    exec_properties = {k: proto_utils.proto_to_json(v) if isinstance(v, message.Message) else v
                       for k, v in component.exec_properties.items()}
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = os.path.join(root, name, "evaluation"), os.path.join(root, name, "blessing")
    inputs = {"examples": [examples], "model": [model]}
    if baseline is not None:
        inputs["baseline_model"] = [baseline]
    executor = component.executor_spec.executor_class()
    executor.Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]}, exec_properties)
    return blessing, evaluation


RARE_RULES = [{"metric": "accuracy", "min": 0.5}, {"metric": "accuracy", "min": "majority"},
              {"metric": "accuracy", "max_drop": 0.01},
              {"metric": "recall", "slice": "rare", "min": 0.9},
              {"metric": "accuracy", "slice": "label_name=rare", "min": 0.5},
              {"metric": "precision", "slice": "rare", "min": 0.9}]
AUC_RULES = [{"metric": "auc", "max_drop": 0.01}, {"metric": "accuracy", "max_drop": 0.25}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root folder, Examples, the `score` model, the `noise` model)."""
    from tfx.types import standard_artifacts
    root = str(tmp_path_factory.mktemp("evaluator"))
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "examples")
    examples.split_names = json.dumps(["eval"])
    examples.set_json_value_custom_property("label_names", CLASSES)
    _write_examples(examples.uri)
    return root, examples, _model(root, "score"), _model(root, "noise")


@pytest.fixture(scope="module")
def runs(data):
    root, examples, good, noisy = data
    return {"rare": _evaluate(root, "rare", examples, good, None, RARE_RULES),
            "regressed": _evaluate(root, "regressed", examples, noisy, good, AUC_RULES)}


def test_a_class_the_data_lacks_stops_the_evaluator_naming_the_classes(data):
    root, examples, good, _ = data
    with pytest.raises(EvaluatorInputError, match=r"^blessing rule 1 \(recall\): slice 'fraud' is not a class "
                                                  r"of the eval data \(classes: common, rare\)$"):
        _evaluate(root, "unknown_class", examples, good, None, [{"metric": "recall", "slice": "fraud", "min": 0.9}])


def _rules(blessing):
    return {r["rule"]: r for r in blessing.get_json_value_custom_property("rules")}


def test_model_ignoring_the_rare_class_beats_majority_but_fails_recall_rule(runs):
    blessing, _ = runs["rare"]
    rules = _rules(blessing)
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_float_custom_property("majority_baseline") == pytest.approx(0.95)
    assert blessing.get_float_custom_property("accuracy_floor") == 0.5
    # The default accuracy rules alone would bless it.
    assert rules["accuracy >= 0.5"]["passed"] and rules["accuracy > majority-class rate"]["passed"]
    assert rules["accuracy > majority-class rate"]["candidate"] == pytest.approx(0.96)
    assert rules["accuracy > majority-class rate"]["bound"] == pytest.approx(0.95, abs=1e-5)
    drop = rules["accuracy drop vs baseline <= 0.01"]
    assert drop["passed"] is None and "no blessed baseline" in drop["note"]
    recall = rules["recall[rare] >= 0.9"]
    assert recall["passed"] is False and recall["candidate"] == pytest.approx(0.2) and recall["note"] == "failed"
    # It is right whenever it says "rare": the precision rule passes.
    assert rules["precision[rare] >= 0.9"]["passed"] and rules["precision[rare] >= 0.9"]["candidate"] == 1.0


def test_rule_on_a_slice(runs):
    blessing, _ = runs["rare"]
    sliced = _rules(blessing)["accuracy on label_name=rare >= 0.5"]
    assert sliced["passed"] is False and sliced["candidate"] == pytest.approx(0.2)


def test_auc_regression_rule_against_the_blessed_baseline(runs):
    blessing, _ = runs["regressed"]
    rules = _rules(blessing)
    auc, accuracy = rules["auc (macro) drop vs baseline <= 0.01"], rules["accuracy drop vs baseline <= 0.25"]
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_int_custom_property("has_baseline_model") == 1
    assert auc["passed"] is False and auc["baseline"] > 0.95 and auc["candidate"] < auc["baseline"] - 0.1
    assert accuracy["passed"] is True and accuracy["baseline"] == pytest.approx(0.96)
    assert accuracy["baseline"] - 0.25 < accuracy["candidate"] < accuracy["baseline"] - 0.1


def test_metrics_are_tfmas_per_class_macro_weighted_and_calibration(runs):
    import tensorflow_model_analysis as tfma
    _, evaluation = runs["rare"]
    overall = next(m for m in tfma.load_metrics(evaluation.uri) if not m.slice_key.single_slice_keys)
    names = {(kv.key.name, kv.key.sub_key.class_id.value if kv.key.sub_key.HasField("class_id") else None,
              kv.key.HasField("aggregation_type")) for kv in overall.metric_keys_and_values}
    for name in ("precision", "recall", "f1_score", "auc", "auc_precision_recall", "calibration"):
        assert {(name, 0, False), (name, 1, False)} <= names, name
    for name in ("precision", "recall", "f1_score", "auc", "auc_precision_recall"):
        assert (name, None, True) in names, name
    for name in ("weighted_precision", "weighted_recall", "weighted_f1_score"):
        assert (name, None, False) in names, name
    value = {(kv.key.name, kv.key.sub_key.class_id.value if kv.key.sub_key.HasField("class_id") else None):
             kv.value.double_value.value for kv in overall.metric_keys_and_values}
    # recall: common 190/190, rare 2/10 -> macro 0.6, weighted by label frequency 0.96.
    assert value["recall", None] == pytest.approx(0.6) and value["weighted_recall", None] == pytest.approx(0.96)
    plots = [kv for p in tfma.load_plots(evaluation.uri) if not p.slice_key.single_slice_keys
             for kv in p.plot_keys_and_values]
    assert any(kv.key.name == "multi_class_confusion_matrix_plot" for kv in plots)
    # TFMA stores the calibration plot unnamed, as histogram buckets, one per class.
    assert {kv.key.sub_key.class_id.value for kv in plots if kv.value.HasField("calibration_histogram_buckets")
            and kv.value.calibration_histogram_buckets.buckets} == {0, 1}


def test_rules_become_tfma_thresholds_on_exactly_their_metric_key():
    import tensorflow_model_analysis as tfma

    rules = parse_rules([{"metric": "recall", "slice": "fraud", "min": 0.9},
                         {"metric": "auc", "max_drop": 0.01},
                         {"metric": "accuracy", "min": "majority"},
                         {"metric": "weighted_f1", "max": 0.99},
                         {"metric": "accuracy", "slice": "label_name=ok", "min": 0.5}])
    specs = metrics_specs(rules, ["ok", "fraud"], majority=0.95)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(specs)
    summary = {}
    for key, entries in thresholds.items():
        for slice_spec, threshold in entries:
            summary[(key.name, key.sub_key.class_id if key.sub_key else None, bool(key.aggregation_type),
                     key.is_diff, tuple(slice_spec.feature_values.items()))] = threshold
    assert set(summary) == {("recall", 1, False, False, ()), ("auc", None, True, True, ()),
                            ("sparse_categorical_accuracy", None, False, False, ()),
                            ("weighted_f1_score", None, False, False, ()),
                            ("sparse_categorical_accuracy", None, False, False, (("label_name", "ok"),))}
    assert summary["recall", 1, False, False, ()].lower_bound.value == 0.9
    assert summary["auc", None, True, True, ()].absolute.value == -0.01
    assert summary["sparse_categorical_accuracy", None, False, False, ()].lower_bound.value == pytest.approx(0.950001)
    assert summary["weighted_f1_score", None, False, False, ()].upper_bound.value == 0.99
    assert summary["sparse_categorical_accuracy", None, False, False, (("label_name", "ok"),)].lower_bound.value == 0.5


# Four classes, hesitant probabilities -------------------------------------------------------

FOUR = ["w", "x", "y", "z"]


class _PassThroughModel(tf.Module):
    """Serves the example's `p` feature (4 floats summing to 1) as its probabilities."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        probabilities = tf.io.parse_example(examples, {"p": tf.io.FixedLenFeature([4], tf.float32)})["p"]
        class_ids = tf.argmax(probabilities, axis=1)
        return {contract.PROBABILITIES: probabilities, contract.CLASS_IDS: class_ids,
                contract.CLASS_NAMES: tf.gather(tf.constant(FOUR), class_ids)}


def _pass_through_evaluation(root: str, labels, probabilities, rules):
    """(blessing, evaluation) of the pass-through model on examples with these labels and
    probabilities, evaluated against itself as the baseline."""
    from tfx.types import standard_artifacts
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "examples")
    examples.split_names = json.dumps(["eval"])
    examples.set_json_value_custom_property("label_names", FOUR)
    os.makedirs(os.path.join(examples.uri, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(examples.uri, "Split-eval", "data.gz"), options="GZIP") as writer:
        for label, p in zip(labels, probabilities):
            feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                       "label_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[FOUR[label].encode()])),
                       "p": tf.train.Feature(float_list=tf.train.FloatList(value=p))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    module = _PassThroughModel()
    model = standard_artifacts.Model()
    model.uri = os.path.join(root, "model")
    tf.saved_model.save(module, os.path.join(model.uri, "Format-Serving"),
                        signatures={contract.EXAMPLES_SIGNATURE: module.serve_examples})
    return _evaluate(root, "four", examples, model, model, rules)


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """(blessing, evaluation, labels, probabilities [300, 4] float32) of the pass-through model
    on 300 examples, evaluated against itself as the baseline."""
    rng = np.random.default_rng(1)
    # Dirichlet(1, 1, 1, 1): the top probability is below 0.5 for about half the examples.
    probabilities = rng.dirichlet(np.ones(4), 300).astype(np.float32)
    predicted = probabilities.argmax(axis=1)
    # The label is the argmax 70% of the time, else a class drawn with "z" rare.
    labels = np.where(rng.uniform(size=300) < 0.7, predicted, rng.choice(4, 300, p=[0.4, 0.3, 0.25, 0.05]))
    blessing, evaluation = _pass_through_evaluation(str(tmp_path_factory.mktemp("four")), labels,
                                                    probabilities, FOUR_RULES)
    return blessing, evaluation, labels, probabilities


def test_a_class_never_predicted_has_recall_0_not_1(tmp_path):
    """TFMA's default for top_k counted every example as predicted when the class never is."""
    from sklearn.metrics import recall_score
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(4), 120).astype(np.float32)
    # "z" (class 3) is never the top-1: swap it below the largest other probability.
    top = probabilities[:, :3].argmax(axis=1)
    rows = np.arange(120)
    never = probabilities[:, 3] > probabilities[rows, top]
    probabilities[never, 3], probabilities[never, top[never]] = (probabilities[never, top[never]],
                                                                 probabilities[never, 3].copy())
    predicted = probabilities.argmax(axis=1)
    assert 3 not in predicted
    labels = np.where(rng.uniform(size=120) < 0.8, predicted, 3)  # z has examples, never predicted
    blessing, _ = _pass_through_evaluation(str(tmp_path), labels, probabilities,
                                           [{"metric": "recall", "slice": "z", "min": 0.5},
                                            {"metric": "recall", "min": 0.1}])
    rules = _rules(blessing)
    assert rules["recall[z] >= 0.5"]["candidate"] == 0.0 and rules["recall[z] >= 0.5"]["passed"] is False
    macro = rules["recall (macro) >= 0.1"]["candidate"]
    assert macro == pytest.approx(recall_score(labels, predicted, labels=range(4), average="macro",
                                               zero_division=0), abs=1e-6)


FOUR_RULES = [{"metric": "recall", "slice": "x", "min": 0.99}, {"metric": "precision", "max_drop": 0.0},
              {"metric": "weighted_f1", "min": 0.1}, {"metric": "f1", "slice": "z", "max": 1.0},
              {"metric": "accuracy", "slice": "label_name=y", "min": 0.5}]


def test_multi_class_precision_recall_f1_are_top_1_as_in_sklearn(four_classes):
    import tensorflow_model_analysis as tfma
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    blessing, evaluation, labels, probabilities = four_classes
    predicted = probabilities.argmax(axis=1)
    # Hesitant: on many examples no class is above 0.5, so one-vs-rest at 0.5 would differ.
    assert np.mean(np.max(probabilities, axis=1) < 0.5) > 0.3
    overall = next(m for m in tfma.load_metrics(evaluation.uri) if not m.slice_key.single_slice_keys)
    value = {(kv.key.name, kv.key.sub_key.class_id.value if kv.key.sub_key.HasField("class_id") else None,
              kv.key.HasField("aggregation_type")): kv.value.double_value.value
             for kv in overall.metric_keys_and_values if kv.key.model_name != BASELINE and not kv.key.is_diff}
    ours = {"precision": 0, "recall": 1, "f1_score": 2}
    per_class = precision_recall_fscore_support(labels, predicted, labels=range(4), zero_division=0)
    for name, row in ours.items():
        for k in range(4):
            assert value[name, k, False] == pytest.approx(per_class[row][k], abs=1e-6), (name, k)
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        for name, row in ours.items():
            key = (name, None, True) if average == "macro" else (f"weighted_{name}", None, False)
            assert value[key] == pytest.approx(expected[row], abs=1e-6), key
    accuracy = accuracy_score(labels, predicted)
    assert value["sparse_categorical_accuracy", None, False] == pytest.approx(accuracy)
    # Top-1 macro recall is of the order of accuracy (one-vs-rest at 0.5 gave far less), and
    # recall weighted by label frequency is accuracy.
    assert value["recall", None, True] > 0.5 * accuracy
    assert value["weighted_recall", None, False] == pytest.approx(accuracy)

    # The rules see the same values, and the baseline's (the same model) on the per-class keys.
    rules = _rules(blessing)
    recall_x = rules["recall[x] >= 0.99"]
    assert recall_x["passed"] is False and recall_x["note"] == "failed"
    assert recall_x["candidate"] == pytest.approx(per_class[1][1], abs=1e-6) == recall_x["baseline"]
    drop = rules["precision (macro) drop vs baseline <= 0"]
    assert drop["passed"] is True and drop["candidate"] == pytest.approx(value["precision", None, True])
    assert drop["baseline"] == pytest.approx(drop["candidate"])
    assert rules["weighted_f1 >= 0.1"]["passed"] is True
    assert rules["weighted_f1 >= 0.1"]["candidate"] == pytest.approx(value["weighted_f1_score", None, False])
    assert rules["f1[z] <= 1"]["candidate"] == pytest.approx(per_class[2][3], abs=1e-6)
    # Accuracy on the examples labelled y is y's recall.
    on_y = rules["accuracy on label_name=y >= 0.5"]
    assert on_y["passed"] is True and on_y["candidate"] == pytest.approx(per_class[1][2], abs=1e-6)
    assert blessing.get_int_custom_property("blessed") == 0


def test_most_confident_mistakes_are_recorded_beside_the_metrics(runs):
    from components.mistakes import MISTAKES_COUNT_PROPERTY, MISTAKES_PROPERTY, SCORED_PROPERTY
    _, evaluation = runs["rare"]
    assert evaluation.get_string_custom_property(MISTAKES_PROPERTY) == "mistakes.json"
    with open(os.path.join(evaluation.uri, "mistakes.json")) as f:
        result = json.load(f)
    # The `score` model says "common" for the 8 rare examples scored <= 0.8 and is right on the rest.
    assert (result["scored"], result["wrong"]) == (200, 8)
    assert evaluation.get_int_custom_property(MISTAKES_COUNT_PROPERTY) == 8
    assert evaluation.get_int_custom_property(SCORED_PROPERTY) == 200
    first = result["mistakes"][0]
    assert (first["true"], first["predicted"]) == ("rare", "common")
    # the lowest rare score (0.30) is the most confident wrong answer: P(common) = 1 - sigmoid(10 * (0.3 - 0.8))
    assert first["probability"] == pytest.approx(1 - 1 / (1 + np.exp(5.0)), abs=1e-5)
    assert [m["probability"] for m in result["mistakes"]] == sorted((m["probability"] for m in result["mistakes"]),
                                                                   reverse=True)
