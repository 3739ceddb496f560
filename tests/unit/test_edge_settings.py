"""Edge-export settings and how their outcome is worded (no conversion runs here; see
tests/components/test_edge_text.py and tests/e2e/test_edge_exports.py)."""
import pytest

from conveyor.metadata.artifacts import EdgeExportRecord, EdgeExportsSummary
from conveyor.run_summary import RunSummary
from pipelines.config import ConfigError, load_config


def test_edge_exports_default_to_none_and_take_a_subset(tmp_path):
    config = load_config("image")
    assert (config.edge_exports, config.edge_max_accuracy_drop) == ([], 0.01)
    path = tmp_path / "c.yaml"
    path.write_text("evaluation: {edge_exports: [tfjs, tflite_int8], edge_max_accuracy_drop: 0.02}\n")
    config = load_config("image", str(path))
    assert (config.edge_exports, config.edge_max_accuracy_drop) == (["tfjs", "tflite_int8"], 0.02)
    assert config.edge_model_dir.endswith("/edge/image_classifier")


@pytest.mark.parametrize("text, message", [
    ("edge_exports: [tflite_fp16]\n", "key 'edge_exports': unknown export\\(s\\) 'tflite_fp16': expected each of tflite_float16, tflite_dynamic, "
                                      "tflite_int8, tfjs at most once, got \\['tflite_fp16'\\]"),
    ("edge_exports: [tfjs, tfjs]\n", "key 'edge_exports': expected each of .* at most once"),
    ("edge_max_accuracy_drop: 2\n", "edge_max_accuracy_drop"),
])
def test_bad_edge_settings_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config("image", str(path))
    assert "\n" not in str(e.value)


def test_models_without_an_edge_contract_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("edge_exports: [tflite_int8]\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: key 'edge_exports': edge exports exist for "
                                          r"the models mlp, cnn, multihot, embedding, conv1d, not for 'tfidf' "
                                          r"\(the default model\)"):
        load_config("text", str(path))
    with pytest.raises(ConfigError, match=r"not for 'bilstm' \(command line\)"):
        load_config("text", str(path), {"model": "bilstm"})
    assert load_config("text", str(path), {"model": "multihot"}).edge_exports == ["tflite_int8"]


def test_the_run_summary_says_which_exports_were_pushed_and_why_not():
    edge = EdgeExportsSummary(version="3", destination="/h/edge/m/3", reference_accuracy=0.9, eval_examples=200,
                              exports=[EdgeExportRecord("tflite_float16", True, 0.9, 0.0, 40960, 0.5, ""),
                                       EdgeExportRecord("tflite_int8", False, 0.85, -0.05, 20480, 0.25,
                                                        "accuracy 0.8500 is 0.0500 below the SavedModel's 0.9000",
                                                        "integer-only ops"),
                                       EdgeExportRecord("tfjs", False, reason="tfjs: converter not found")])
    table = RunSummary("m", "r1", [], edge=edge).table()
    assert "Edge exports -> /h/edge/m/3 (SavedModel accuracy 0.9000 on 200 eval examples):" in table
    assert "    tflite_float16: pushed, accuracy 0.9000 (+0.0000), 40.0 KB, 0.50 ms" in table
    assert ("    tflite_int8: NOT pushed, accuracy 0.8500 (-0.0500), 20.0 KB, 0.25 ms (integer-only ops): "
            "accuracy 0.8500 is "
            "0.0500 below the SavedModel's 0.9000") in table
    assert "    tfjs: NOT pushed: tfjs: converter not found" in table
