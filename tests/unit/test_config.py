import pytest

from pipelines.config import ConfigError, load_config


def test_defaults_per_kind():
    image = load_config("image")
    assert (image.name, image.model) == ("image_classifier", "cnn")
    text = load_config("text")
    assert (text.name, text.model) == ("text_classifier", "multihot")


def test_file_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_steps: 10\nmodel: mlp\naccuracy_floor: 0.7\n")
    config = load_config("image", str(path), {"train_steps": 20, "name": None})
    assert (config.train_steps, config.model, config.accuracy_floor) == (20, "mlp", 0.7)


@pytest.mark.parametrize("text, message", [
    ("trian_steps: 10\n", "unknown key 'trian_steps'"),
    ("train_steps: ten\n", "key 'train_steps': expected an integer"),
    ("model: resnet\n", "config key 'model': expected one of mlp, cnn"),
    ("eval_percent: 0\n", "'eval_percent': expected 1..99"),
    ("- a\n- b\n", "expected a mapping"),
    ("kind: text\n", "kind is 'text' but the command runs 'image'"),
    ("skip_bad_images: 1\n", "expected true or false"),
    ("infra_server: docker\n", "'infra_server': expected one of in_process, subprocess"),
    ("trainer_cache_mb: -1\n", "'trainer_cache_mb': expected >= 0"),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config("image", str(path))
    assert message in str(error.value)


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config("image", str(tmp_path / "nope.yaml"))
