import pytest

from pipelines.config import Config, ConfigError, load_config


def test_defaults_per_kind():
    image = load_config("image")
    assert (image.name, image.model) == ("image_classifier", "cnn")
    text = load_config("text")
    assert (text.name, text.model) == ("text_classifier", "tfidf")


def test_file_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_steps: 10\nmodel: mlp\naccuracy_floor: 0.7\n")
    config = load_config("image", str(path), {"train_steps": 20, "name": None})
    assert (config.train_steps, config.model, config.accuracy_floor) == (20, "mlp", 0.7)


@pytest.mark.parametrize("text, message", [
    ("trian_steps: 10\n", "unknown key 'trian_steps'"),
    ("train_steps: ten\n", "key 'train_steps': expected an integer"),
    ("model: resnet\n", "key 'model': expected one of mlp, cnn"),
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


def _load(tmp_path, text, overrides=None, kind="image"):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(kind, str(path), overrides), str(path)


def test_flat_and_grouped_keys_give_the_same_config(tmp_path):
    flat, _ = _load(tmp_path, "train_steps: 100\ndata: /d\naccuracy_floor: 0.7\ndrift_threshold: 0.3\n"
                              "retries: 3\n")
    grouped, _ = _load(tmp_path, "training: {train_steps: 100}\ningest: {data: /d}\n"
                                 "evaluation: {accuracy_floor: 0.7}\nserving: {drift_threshold: 0.3}\n"
                                 "orchestration: {retries: 3}\n")
    assert flat == grouped
    assert (grouped.train_steps, grouped.training.train_steps) == (100, 100)
    assert (grouped.data, grouped.ingest.data, grouped.retries) == ("/d", "/d", 3)
    assert grouped.epochs == 5  # the group's other settings keep their defaults
    mixed, _ = _load(tmp_path, "train_steps: 100\ntraining: {epochs: 2}\n")
    assert (mixed.train_steps, mixed.epochs) == (100, 2)


def test_a_key_given_flat_and_grouped_is_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, "train_steps: 10\ntraining:\n  train_steps: 20\n")
    message = str(error.value)
    assert message.startswith(f"config file {tmp_path / 'c.yaml'}: ")
    assert "'train_steps' is given both as 'train_steps' and as 'training.train_steps'" in message


def test_flags_override_the_file_flat_or_grouped(tmp_path):
    config, _ = _load(tmp_path, "training: {train_steps: 10, epochs: 2}\ningest: {data: /file}\n",
                      {"train_steps": 20, "data": None, "ingest": {"eval_percent": 30}})
    assert (config.train_steps, config.epochs, config.data, config.eval_percent) == (20, 2, "/file", 30)


@pytest.mark.parametrize("text, message", [
    ("warm_start: 1\n", "key 'warm_start': expected true or false, got 1"),
    ("train_steps: '100'\n", "key 'train_steps': expected an integer, got '100'"),
    ("training: {epochs: true}\n", "key 'epochs': expected an integer, got True"),
    ("class_names: [cat, 1]\n", "key 'class_names': expected a list of strings, got ['cat', 1]"),
    ("beam_args: --x\n", "key 'beam_args': expected a list of strings, got '--x'"),
    ("learning_rate: true\n", "key 'learning_rate': expected a number, got True"),
    ("data: 5\n", "key 'data': expected a string, got 5"),
    ("training: 5\n", "key 'training': expected a mapping of key: value, got 5"),
])
def test_wrong_types_name_file_key_value_and_expectation(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    assert str(error.value) == f"config file {tmp_path / 'c.yaml'}: {message}"


def test_a_bad_flag_names_the_command_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, "train_steps: 10\n", {"epochs": "3"})
    assert str(error.value) == "command line: key 'epochs': expected an integer, got '3'"


def test_an_image_size_too_small_for_the_cnn_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'image_size': model cnn needs images of at least "
                                          r"10x10 .* got 8; raise image_size or use model mlp"):
        _load(tmp_path, "image_size: 8\n")
    assert _load(tmp_path, "image_size: 8\nmodel: mlp\n")[0].image_size == 8
    assert _load(tmp_path, "image_size: 10\n")[0].image_size == 10


def test_an_integer_is_a_number(tmp_path):
    config, _ = _load(tmp_path, "learning_rate: 1\nevaluation: {accuracy_floor: 1}\n")
    assert (config.learning_rate, config.accuracy_floor) == (1.0, 1.0)
    assert isinstance(config.learning_rate, float)


@pytest.mark.parametrize("text, message", [
    ("train_steps: 0\n", "key 'train_steps': expected a positive number, got 0"),
    ("training: {batch_size: -1}\n", "key 'batch_size': expected a positive number, got -1"),
    ("channels: 2\n", "key 'channels': expected 1 (grey) or 3 (RGB), got 2"),
    ("eval_percent: 100\n", "key 'eval_percent': expected 1..99, got 100"),
    ("accuracy_floor: 1.5\n", "key 'accuracy_floor': expected 0..1, got 1.5"),
    ("serving: {request_log_rate: -0.1}\n", "key 'request_log_rate': expected 0..1, got -0.1"),
    ("drift_threshold: 2\n", "key 'drift_threshold': expected 0..1, got 2"),
    ("regression_tolerance: -0.01\n", "key 'regression_tolerance': expected >= 0, got -0.01"),
    ("learning_rate: 0\n", "key 'learning_rate': expected > 0, got 0"),
    ("name: my model\n", "key 'name': use letters, digits, '_' or '-', got 'my model'"),
    ("model: multihot\n", "key 'model': expected one of mlp, cnn, transfer, got 'multihot'"),
    ("retry_delay_seconds: -1\n", "key 'retry_delay_seconds': expected >= 0, got -1"),
])
def test_out_of_bounds_values_are_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    assert str(error.value) == f"config file {tmp_path / 'c.yaml'}: {message}"


def test_unknown_keys_list_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, "steps: 10\n")
    message = str(error.value)
    assert f"config file {tmp_path / 'c.yaml'}: unknown key 'steps' (known keys: " in message
    known = message.split("known keys: ")[1].rstrip(")").split(", ")
    assert {"train_steps", "data", "beam_args", "training", "ingest"} <= set(known)
    with pytest.raises(ConfigError, match=r"unknown key 'training.data' \(known keys of training: "
                                          r"augment, backbone, backbone_weights, batch_size, channels, .*train_steps"):
        _load(tmp_path, "training: {data: /d}\n")


def test_the_loaded_config_is_immutable_and_replace_validates_a_copy(tmp_path):
    config, _ = _load(tmp_path, "train_steps: 10\n")
    for assign in (lambda: setattr(config, "data", "/elsewhere"),
                   lambda: setattr(config, "train_steps", 5),
                   lambda: setattr(config.training, "train_steps", 5),
                   lambda: setattr(config, "kind", "text")):
        with pytest.raises(AttributeError, match="immutable; use Config.replace"):
            assign()
    assert (config.data, config.train_steps, config.kind) == (None, 10, "image")

    copy = config.replace(data="/elsewhere", training={"epochs": 2})
    assert (copy.data, copy.train_steps, copy.epochs) == ("/elsewhere", 10, 2)
    assert (config.data, config.epochs) == (None, 5)
    with pytest.raises(ConfigError, match="Config.replace: key 'train_steps': expected an integer"):
        config.replace(train_steps="5")
    with pytest.raises(ConfigError, match="key 'train_steps': expected a positive number"):
        config.replace(train_steps=0)


def test_with_local_data_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("text", overrides={"home": "h", "data": "in/span-{SPAN}"})
    local = config.with_local_data()
    assert (local.data, local.home) == (str(tmp_path / "in" / "span-{SPAN}"), str(tmp_path / "h"))
    assert local.with_local_data("other").data == str(tmp_path / "other")
    default = load_config("text", overrides={"home": "h"}).with_local_data()
    assert default.data == str(tmp_path / "h" / "data" / "imdb_small")


def test_a_preset_keeps_its_beam_args_through_replace(tmp_path):
    config, _ = _load(tmp_path, "beam_preset: direct\nbeam_settings: {workers: 3}\n")
    assert config.replace(data="/d").beam_args == config.beam_args


def test_config_built_in_code_takes_flat_or_grouped_keys():
    from pipelines.config import Config
    assert Config(train_steps=5).training == Config(training={"train_steps": 5}).training
    assert Config(kind="text").model == "tfidf"
    with pytest.raises(ConfigError, match="Config: key 'epochs' is given both as 'epochs' and as 'training.epochs'"):
        Config(epochs=1, training={"epochs": 2})


def test_next_day_settings_are_checked_at_load():
    import pytest as _pytest
    from pipelines.config import Config, ConfigError
    assert Config(kind="image", eval_span="next", train_spans=2).train_spans == 2
    for value, message in ((0, "expected a positive number, got 0"), ("2", "expected an integer, got '2'")):
        with _pytest.raises(ConfigError, match=message):
            Config(kind="image", eval_span="next", train_spans=value)
    with _pytest.raises(ConfigError, match="train_spans applies only with eval_span: next"):
        Config(kind="image", train_spans=2)
    with _pytest.raises(ConfigError, match="expected one of same, next"):
        Config(kind="image", eval_span="tomorrow")


def test_a_null_schedule_means_triggered_only(tmp_path):
    config, _ = _load(tmp_path, "orchestration: {schedule: null, retry_delay_seconds: 5}\n")
    assert (config.schedule, config.retry_delay_seconds) == (None, 5)
    assert Config(kind="text").schedule == "@daily"
