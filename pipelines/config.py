"""The one configuration object of a Conveyor run: defaults < config file < command-line flags.

Every component reads its settings from here (the pipeline factory hands the relevant parts
to TFX as exec properties / custom_config), so image and text runs share one schema.
"""
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import yaml

from components.spans import has_span_spec, split_span_path  # noqa: F401  (re-exported for users)
from modules.settings import IMAGE_MODELS, TEXT_MODELS, ModuleSettings, modules_fingerprint
from pipelines.beam import BeamPresetError, preset_from_settings

KINDS = ("image", "text")


class ConfigError(ValueError):
    """A configuration problem; the message says which key/file and what was expected."""


@dataclasses.dataclass
class Config:
    kind: str = "image"
    name: str = ""                      # model name; defaults to image_classifier / text_classifier
    home: str = "conveyor_home"
    data: Optional[str] = None          # None = the offline default data set of the kind
    input_pattern: Optional[str] = None  # glob under `data`, may contain {SPAN}; None = detect
    model: str = ""                     # defaults to cnn / multihot
    class_names: Optional[List[str]] = None  # names for integer labels (IDX, TFRecord inputs)

    # ExampleGen
    eval_percent: int = 20              # share of examples hashed into the eval split
    skip_bad_images: bool = False
    skip_bad_rows: bool = False
    text_column: Optional[str] = None   # default: first of text|review|sentence
    label_column: Optional[str] = None  # default: first of label|sentiment|class

    # Transform
    image_size: int = 28
    channels: int = 1
    vocab_size: int = 10000
    oov_buckets: int = 1
    max_tokens: int = 200

    # Trainer
    train_steps: int = 2000
    eval_steps: int = 50
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 0.001
    early_stopping_patience: int = 2
    # Splits whose transformed (input, label) pairs fit in this many MB are transformed once
    # and kept in memory for all epochs; larger ones are transformed batch by batch (0: never cache).
    trainer_cache_mb: int = 2048
    # Start from the latest blessed model's weights when its architecture matches (else from scratch).
    warm_start: bool = False

    # Evaluator: blessing = accuracy >= floor AND > majority-class baseline AND
    # no regression beyond `regression_tolerance` against the latest blessed model.
    accuracy_floor: float = 0.5
    regression_tolerance: float = 0.01

    # Infra validation
    infra_requests: int = 50
    infra_p99_budget_ms: float = 500.0
    # in_process: the server runs inside the validating process (no second TensorFlow start-up);
    # subprocess: a fresh `python -m serving.server` process, isolated from the pipeline's imports.
    infra_server: str = "in_process"

    # Drift between training and serving data (conveyor serve --config / conveyor drift)
    request_log_rate: float = 0.0       # share of served requests logged to HOME/request_logs
    drift_threshold: float = 0.2        # Jensen-Shannon divergence per profile feature

    # Orchestration
    # Default Beam: in-memory DirectRunner, one worker -- on the demo's small data the
    # multi-processing DirectRunner is several times slower (worker start-up; README "Beam").
    beam_args: List[str] = dataclasses.field(default_factory=lambda: [
        "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    # A pipelines/beam.py preset (direct = multi-processing, workers = cores; flink | spark |
    # dataflow) with its settings replaces that default; beam_args given as well are appended.
    beam_preset: str = ""
    beam_settings: Optional[Dict[str, Any]] = None
    enable_cache: bool = True
    schedule: str = "@daily"
    start_date: str = "2026-01-01"
    retries: int = 1
    catchup: bool = False

    def __post_init__(self):
        if not self.name:
            self.name = f"{self.kind}_classifier"
        if not self.model:
            self.model = "cnn" if self.kind == "image" else "multihot"

    # Paths derived from `home`; one place so CLI, runners and tests agree.
    @property
    def home_dir(self) -> str:
        return os.path.abspath(self.home)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.home_dir, "metadata.sqlite")

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home_dir, "pipelines", self.name)

    @property
    def serving_dir(self) -> str:
        return os.path.join(self.home_dir, "serving")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.serving_dir, self.name)

    def validate(self) -> "Config":
        _check_choice("kind", self.kind, KINDS)
        models = IMAGE_MODELS if self.kind == "image" else TEXT_MODELS
        _check_choice("model", self.model, models)
        _check_choice("infra_server", self.infra_server, ("in_process", "subprocess"))
        positive = ("image_size", "channels", "vocab_size", "max_tokens", "train_steps",
                    "eval_steps", "epochs", "batch_size", "infra_requests")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key '{key}': expected a positive number, got {getattr(self, key)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"config key 'channels': expected 1 (grey) or 3 (RGB), got {self.channels}")
        if not 1 <= self.eval_percent <= 99:
            raise ConfigError(f"config key 'eval_percent': expected 1..99, got {self.eval_percent}")
        if not 0.0 <= self.accuracy_floor <= 1.0:
            raise ConfigError(f"config key 'accuracy_floor': expected 0..1, got {self.accuracy_floor}")
        for key in ("request_log_rate", "drift_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key '{key}': expected 0..1, got {getattr(self, key)}")
        if self.trainer_cache_mb < 0:
            raise ConfigError(f"config key 'trainer_cache_mb': expected >= 0, got {self.trainer_cache_mb}")
        if self.regression_tolerance < 0:
            raise ConfigError(f"config key 'regression_tolerance': expected >= 0, got {self.regression_tolerance}")
        if self.learning_rate <= 0:
            raise ConfigError(f"config key 'learning_rate': expected > 0, got {self.learning_rate}")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"config key 'name': use letters, digits, '_' or '-', got {self.name!r}")
        return self

    def module_settings(self) -> ModuleSettings:
        """What Transform's preprocessing_fn and the Trainer's run_fn receive (custom_config),
        with the sha256 of the user code so edited code is not served from the cache."""
        return ModuleSettings(
            kind=self.kind, name=self.name, model=self.model, image_size=self.image_size,
            channels=self.channels, vocab_size=self.vocab_size, oov_buckets=self.oov_buckets,
            max_tokens=self.max_tokens, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, early_stopping_patience=self.early_stopping_patience,
            trainer_cache_mb=self.trainer_cache_mb, warm_start=self.warm_start,
            modules_sha256=modules_fingerprint())


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': expected one of {', '.join(choices)}, got {value!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Checks a value against the field's declared type; YAML/JSON give us the basic types."""
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:
        default = _FIELDS[key].default_factory()
    expected = type(default) if default is not None else None
    if value is None:
        return None
    if key in ("class_names", "beam_args"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: key '{key}': expected a list of strings, got {value!r}")
        return value
    if key == "beam_settings":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}': expected a mapping of setting: value, got {value!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}': expected true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}': expected an integer, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}': expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: key '{key}': expected a string, got {value!r}")
    return value


def load_config(kind: str, path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Builds the validated Config for `kind` from an optional YAML/JSON file and flag overrides."""
    values: Dict[str, Any] = {"kind": kind}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except OSError as e:
            raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from e
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"config file {path}: not valid YAML/JSON: {e}") from e
        loaded = loaded or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of key: value at the top level")
        for key, value in loaded.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown key '{key}' "
                                  f"(known keys: {', '.join(sorted(_FIELDS))})")
            values[key] = _coerce(key, value, f"config file {path}")
        if values["kind"] != kind:
            raise ConfigError(f"config file {path}: kind is {values['kind']!r} but the command runs {kind!r}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    config = Config(**values).validate()
    if config.beam_preset:
        config.beam_args = _preset_beam_args(config, values.get("beam_args") or [])
    return config


def _preset_beam_args(config: Config, extra: List[str]) -> List[str]:
    """The preset's Beam args, then the explicitly given beam_args (Beam keeps a flag's last value)."""
    try:
        return preset_from_settings(config.beam_preset, config.beam_settings) + list(extra)
    except BeamPresetError as e:
        raise ConfigError(f"config: {e}") from None
