"""The distribution settings: Config (flat or under `training`) -> ModuleSettings -> run_fn."""
import pytest

from modules.settings import ModuleSettings, ModuleSettingsError
from pipelines.config import Config, ConfigError, load_config


def test_default_is_one_process():
    config = Config()
    assert config.distribution == config.training.distribution == "none"
    assert config.collective_timeout_seconds == 600.0
    settings = config.module_settings()
    assert (settings.distribution, settings.collective_timeout_seconds) == ("none", 600.0)


@pytest.mark.parametrize("values", [
    {"distribution": "multi_worker", "collective_timeout_seconds": 30},
    {"training": {"distribution": "multi_worker", "collective_timeout_seconds": 30.0}},
])
def test_flat_or_grouped_reach_the_module_settings(values):
    settings = Config(**values).module_settings()
    assert settings.distribution == "multi_worker"
    assert settings.collective_timeout_seconds == 30.0
    assert ModuleSettings.from_custom_config(settings.to_custom_config()) == settings


def test_replace_switches_distribution():
    config = Config().replace(distribution="mirrored")
    assert config.training.distribution == "mirrored"


@pytest.mark.parametrize("values, message", [
    ({"distribution": "horovod"}, "key 'distribution': expected one of none, mirrored, multi_worker, "
                                  "got 'horovod'"),
    ({"collective_timeout_seconds": -1}, "key 'collective_timeout_seconds': expected >= 0, got -1"),
    ({"collective_timeout_seconds": "10"}, "key 'collective_timeout_seconds': expected a number, got '10'"),
])
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(ConfigError) as error:
        Config(**values)
    assert message in str(error.value)


def test_config_file_names_the_setting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  distribution: multi-worker\n")
    with pytest.raises(ConfigError, match="'distribution': expected one of none, mirrored, multi_worker"):
        load_config("image", str(path))


def test_cloud_trainer_keys_are_ignored_other_unknown_keys_are_not():
    """TFX's Vertex Trainer extension passes its ai_platform_* keys on to run_fn."""
    custom_config = {**Config(distribution="multi_worker").module_settings().to_custom_config(),
                     "ai_platform_training_args": {"project": "p"}, "ai_platform_enable_vertex": True,
                     "ai_platform_vertex_region": "europe-west4"}
    assert ModuleSettings.from_custom_config(custom_config).distribution == "multi_worker"
    with pytest.raises(ModuleSettingsError, match="unknown key"):
        ModuleSettings.from_custom_config({**custom_config, "workers": 2})
