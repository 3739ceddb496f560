"""Issue 23's pure pieces: the --ab_split grammar and draws, monitor statistics, the labels CSV
and export-feedback's rule for classes missing from the feedback."""
import json
import os

import pytest

from conveyor.feedback import ExportError, export_span, join
from conveyor.monitor import two_proportion_test, wilson_interval
from conveyor.production_cli import read_labels_csv
from serving.traffic import SplitError, TrafficSplit, parse_ab_split


def test_ab_split_grammar():
    assert parse_ab_split(["canary=0.1"]) == {"": 0.1}
    assert parse_ab_split(["canary=0.1", "text:canary=0.5"]) == {"": 0.1, "text": 0.5}
    split = TrafficSplit(parse_ab_split(["canary=0.1", "text:canary=0.5"]))
    assert split.share("text") == 0.5 and split.share("image") == 0.1
    assert TrafficSplit({"text": 0.2}).share("image") is None
    for bad in ("canary", "canary=1.5", "stable=0.1", "canary=x", "text:canary=-0.1"):
        with pytest.raises(SplitError, match="expected canary=P or MODEL:canary=P"):
            parse_ab_split([bad])


def test_sticky_draws_are_stable_and_uniform():
    draws = [TrafficSplit.draw("text", f"user-{n}") for n in range(20000)]
    assert draws == [TrafficSplit.draw("text", f"user-{n}") for n in range(20000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    below = sum(d < 0.3 for d in draws)
    sigma = (20000 * 0.3 * 0.7) ** 0.5
    assert abs(below - 6000) < 4 * sigma
    assert TrafficSplit.draw("text", "u") != TrafficSplit.draw("image", "u")  # per model


def test_wilson_interval_and_two_proportion_test_match_hand_computed_values():
    low, high = wilson_interval(8, 10)  # p = 0.8, z = 1.96: (0.4902, 0.9433)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    difference, z, p = two_proportion_test(45, 50, 30, 50)  # pooled 0.75: z = 0.3 / sqrt(0.0075)
    assert difference == pytest.approx(0.3) and z == pytest.approx(3.4641, abs=1e-4)
    assert p == pytest.approx(0.000532, abs=1e-5)
    assert two_proportion_test(10, 10, 5, 5)[1:] == (0.0, 1.0)


def test_labels_csv_names_the_bad_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label,instance\nabc,cat,\ndef,dog,1\n")
    assert read_labels_csv(str(path)) == [{"request_id": "abc", "label": "cat"},
                                          {"request_id": "def", "label": "dog", "instance": 1}]
    path.write_text("request_id,label\nabc,cat\n,dog\n")
    with pytest.raises(ValueError, match=r"labels.csv line 3: empty request_id or label"):
        read_labels_csv(str(path))
    path.write_text("id,label\nabc,cat\n")
    with pytest.raises(ValueError, match="the header must name request_id and label"):
        read_labels_csv(str(path))


def _records(feedback_dir, rows, labels):
    for folder, name, items in (("predictions", "predictions-0000000000001-00000001-1.jsonl", rows),
                                ("labels", "labels-0000000000001-00000001-1.jsonl", labels)):
        os.makedirs(os.path.join(feedback_dir, "text", folder), exist_ok=True)
        with open(os.path.join(feedback_dir, "text", folder, name), "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)


def test_export_merges_missing_classes_from_the_previous_span(tmp_path):
    feedback = str(tmp_path / "feedback")
    rows = [{"request_id": f"r{i}", "version": 1, "arm": "", "time": 10.0 + i,
             "instances": [{"kind": "text", "text": f"great {i}", "predicted": "pos"}]} for i in range(3)]
    _records(feedback, rows, [{"request_id": "r0", "instance": 0, "label": "neg"},
                              {"request_id": "r1", "instance": 0, "label": "pos"},
                              {"request_id": "r0", "instance": 0, "label": "pos"}])  # r0 corrected: latest wins
    joined = join(feedback, "text")
    assert [(p.request_id, p.label, p.correct) for p in joined.labelled] == [("r0", "pos", True), ("r1", "pos", True)]
    assert joined.predictions == 3 and joined.labels == 3 and joined.unmatched_labels == 0
    span1 = tmp_path / "incoming" / "span-1"
    span1.mkdir(parents=True)
    (span1 / "reviews.csv").write_text("review,sentiment\nawful,neg\nlovely,pos\nbad,neg\n")
    result = export_span(feedback, "text", str(tmp_path / "incoming" / "span-2"))
    assert result["examples"] == {"pos": 2} and result["merged"] == {"neg": 2}
    assert result["previous"] == str(span1)
    text = (tmp_path / "incoming" / "span-2" / "feedback.csv").read_text()
    assert text.splitlines() == ["text,label", "great 0,pos", "great 1,pos", "awful,neg", "bad,neg"]
    with pytest.raises(ExportError, match="a span is never overwritten"):
        export_span(feedback, "text", str(tmp_path / "incoming" / "span-2"))
    assert not [n for n in os.listdir(tmp_path / "incoming") if n.startswith(".")]  # no temp folder left
    with pytest.raises(ExportError, match="no labelled predictions of image"):
        export_span(feedback, "image", str(tmp_path / "incoming" / "span-3"))


def test_drift_checks_the_stable_version_while_a_release_is_managed(tmp_path):
    from conveyor.drift import served_version
    from serving.model_config import write_models_config

    home = str(tmp_path)
    assert served_version(home, "text") is None  # no models.config: the latest pushed
    os.makedirs(os.path.join(home, "serving"))
    path = os.path.join(home, "serving", "models.config")
    write_models_config(path, {"text": os.path.join(home, "serving", "text")})
    assert served_version(home, "text") is None  # no release: the latest pushed
    text = open(path, encoding="utf-8").read()
    pinned = text.replace('model_platform: "tensorflow"',
                          'model_platform: "tensorflow"\n    model_version_policy { specific { versions: 1 versions: 2 } }\n'
                          '    version_labels { key: "stable" value: 1 }\n'
                          '    version_labels { key: "canary" value: 2 }')
    assert pinned != text
    with open(path, "w", encoding="utf-8") as f:
        f.write(pinned)
    assert served_version(home, "text") == "1"
    assert served_version(home, "other") is None
