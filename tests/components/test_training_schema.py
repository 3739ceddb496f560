"""The training schema and the gate's reading of it: free-value features (text, image bytes)
never carry a value domain, whatever one run's statistics suggested (issue 13, case 1)."""
import os

import pandas as pd
import tensorflow_data_validation as tfdv
from tfx.types import standard_artifacts

from components.example_validator import read_baseline_schema, schema_classes
from modules.training_schema import BASELINE_SCHEMA_FILE, tighten_schema


def _statistics(texts, labels):
    frame = pd.DataFrame({"text": texts, "label_name": labels, "text_alpha_ratio": [0.9] * len(texts)})
    return tfdv.generate_statistics_from_dataframe(frame)


FIRST = _statistics([f"review number {i} was fine" for i in range(40)], ["pos", "neg"] * 20)
LATER = _statistics([f"another text {i}, quite new" for i in range(40)], ["neg", "pos"] * 20)


def _text_anomalies(schema):
    anomalies = tfdv.validate_statistics(LATER, schema)
    return {name: info.description for name, info in anomalies.anomaly_info.items()}


def test_inferred_schema_has_a_text_domain_that_refuses_new_texts():
    schema = tfdv.infer_schema(FIRST)  # what SchemaGen writes: the premise of the fix
    assert any(d.name == "text" for d in schema.string_domain)
    assert "text" in _text_anomalies(schema)


def test_tightened_schema_has_no_text_domain_and_keeps_the_classes():
    schema = tighten_schema(tfdv.infer_schema(FIRST), FIRST.datasets[0], ["neg", "pos"])
    text = next(f for f in schema.feature if f.name == "text")
    assert not text.HasField("domain") and not text.HasField("string_domain")
    assert [d.name for d in schema.string_domain] == ["label_name"]
    assert schema_classes(schema) == ["neg", "pos"]
    assert _text_anomalies(schema) == {}


def test_gate_drops_the_text_domain_of_a_model_exported_before_the_fix(tmp_path):
    """An existing HOME: the blessed model's schema was saved with the inferred text domain."""
    legacy = tfdv.infer_schema(FIRST)  # tighten_schema as it was: the domain kept
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    path = os.path.join(model.uri, "Format-Serving", BASELINE_SCHEMA_FILE)
    os.makedirs(os.path.dirname(path))
    tfdv.write_schema_text(legacy, path)
    schema = read_baseline_schema(model)
    assert _text_anomalies(schema) == {}
    assert schema_classes(schema) == ["neg", "pos"]  # a new or missing class still stops a run
    new_class = _statistics(["x y"] * 4, ["pos", "neg", "neutral", "pos"])
    assert "label_name" in tfdv.validate_statistics(new_class, schema).anomaly_info
