import pytest

from conveyor.config import ConfigError, load_config


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


def test_user_code_fingerprint_reaches_transform_and_trainer(tmp_path, monkeypatch, digits_dir):
    """Edited user code changes Transform's and Trainer's exec properties, hence TFX's cache key."""
    import json
    import shutil

    from pipelines import pipeline as factory
    config = load_config("image", overrides={"home": str(tmp_path / "home")})
    config.data = digits_dir
    modules = tmp_path / "modules"
    shutil.copytree(factory.MODULES, modules, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(factory, "MODULES", str(modules))

    def fingerprints():
        components = {c.id: c for c in factory.create_pipeline(config).components}
        props = [components[name].exec_properties for name in ("Transform", "Trainer")]
        assert props[0]["preprocessing_fn"] == factory.PREPROCESSING_FN and not props[0]["module_file"]
        assert props[1]["run_fn"] == factory.RUN_FN and not props[1]["module_file"]
        return [json.loads(p["custom_config"])[factory.MODULES_FINGERPRINT_KEY] for p in props]

    before = fingerprints()
    assert before[0] == before[1] == factory.modules_fingerprint()
    assert fingerprints() == before  # unchanged code: same key, cache hits
    with open(modules / "models.py", "a") as f:
        f.write("\n# an edit\n")
    after = fingerprints()
    assert after[0] == after[1] != before[0]
