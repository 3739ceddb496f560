"""The one configuration object of a Conveyor run: defaults < config file < command-line flags.

Every component reads its settings from here (the pipeline factory hands the relevant parts
to TFX as exec properties / custom_config), so image and text runs share one schema.

The settings are grouped by concern (`ingest`, `training`, `evaluation`, `serving`,
`orchestration`); a file may name a setting flat (`train_steps: 100`) or under its group
(`training: {train_steps: 100}`), and code reads it flat (`config.train_steps`) or grouped
(`config.training.train_steps`). Checks come from the field types (pydantic, strict: YAML's
"3" is not 3 and `true` is not 1) and from the constraints declared on the fields; every
error is one line naming the source, the key, the value and what was expected.
"""
import contextlib
import json
import os
import re
import typing
from typing import (Annotated, Any, Callable, Dict, Iterator, List, Literal, Mapping, Optional,
                    Sequence, Tuple)

import annotated_types
import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator,
                      ValidationInfo, field_validator)
from pydantic_core import PydanticCustomError

from components.blessing_rules import Rule, RuleError, check_classes, default_rules, parse_rules
from components.spans import has_span_spec, split_span_path  # noqa: F401  (re-exported for users)
from data.defaults import default_data
from modules.settings import (AUGMENT_DEFAULTS, AUGMENTATIONS, BACKBONE_LAYERS, BACKBONE_MIN_IMAGE_SIZE, BACKBONES,
                              CNN_MIN_IMAGE_SIZE, DISTRIBUTIONS, FLIP_MODES, IMAGENET_WEIGHTS, MODELS, NO_WEIGHTS,
                              ModuleSettings, file_sha256, modules_fingerprint)
from pipelines.beam import BeamPresetError, preset_from_settings

# components/edge_exporter.py EXPORTS (not imported: that module loads TFX and TensorFlow).
EDGE_EXPORTS = ("tflite_float16", "tflite_dynamic", "tflite_int8", "tfjs")
# Models whose transformed input a client can reproduce from the files written beside the
# exports (components/edge_exporter.py). tfidf's idf weights live only inside the Transform
# graph, and bilstm's LSTM needs TF Select ops or an unrolled copy: neither is exported yet.
EDGE_MODELS = ("mlp", "cnn", "multihot", "embedding", "conv1d")
Kind = Literal["image", "text"]
KINDS = typing.get_args(Kind)
DEFAULT_MODELS = {"image": "cnn", "text": "tfidf"}
DEFAULT_HOME = "conveyor_home"  # relative to the working directory
# Settings of the `transfer` image model only (TrainingConfig).
TRANSFER_KEYS = ("backbone", "backbone_weights", "head_epochs", "fine_tune_layers", "fine_tune_learning_rate")
_AUGMENT_EXPECTED = (f"expected a list of {', '.join(AUGMENTATIONS)}, each at most once, as a name or as "
                     f"{{name: strength}} (flip: {' | '.join(FLIP_MODES)}; rotation, zoom, contrast: a "
                     "number in (0, 1))")


class ConfigError(ValueError):
    """A configuration problem; the message says which key/file and what was expected."""


def _rule(expected: str, ok: Callable[[Any], bool]) -> AfterValidator:
    """A value check whose failure reads "<source>: key 'K': <expected>, got V"."""
    def check(value):
        if not ok(value):
            raise PydanticCustomError("config_rule", expected)
        return value
    return AfterValidator(check)


Positive = Annotated[int, Field(gt=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[int, Field(ge=0)]


def _iso_date(value: str) -> bool:
    import datetime
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


class _Settings(BaseModel):
    """Strict types, no unknown keys, read-only once validated."""
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use Config.replace({name}=...) "
                             "for a validated copy")


class IngestConfig(_Settings):
    """What ExampleGen reads and how it splits it (config key `ingest`).

    Attributes:
      data: input folder or file; may contain {SPAN}. None = the offline default data of the kind.
      input_pattern: glob under `data`, may contain {SPAN}; None = detected from the files.
      class_names: names for integer labels (IDX, TFRecord inputs); None = the labels as found.
      eval_percent: share of examples hashed into the eval split, in percent (1..99).
      skip_bad_images: skip unreadable images (recorded on the artifact) instead of stopping.
      skip_bad_rows: skip malformed text rows (recorded on the artifact) instead of stopping.
      text_column: text column of CSV/TSV inputs; None = the first of text|review|sentence.
      label_column: label column of CSV/TSV inputs; None = the first of label|sentiment|class.
    """
    data: Optional[str] = None
    input_pattern: Optional[str] = None
    class_names: Optional[List[str]] = None
    eval_percent: Annotated[int, Field(ge=1, le=99)] = 20
    skip_bad_images: bool = False
    skip_bad_rows: bool = False
    text_column: Optional[str] = None
    label_column: Optional[str] = None


class TrainingConfig(_Settings):
    """Transform and Trainer settings (config key `training`); they reach the user code as
    modules.settings.ModuleSettings.

    Attributes:
      image_size: images are decoded and resized to image_size x image_size pixels (> 0).
      channels: 1 (grey) or 3 (RGB).
      vocab_size: text vocabulary size in tokens, OOV buckets excluded (> 0).
      oov_buckets: hash buckets for tokens outside the vocabulary.
      max_tokens: texts are padded/truncated to this many tokens (> 0).
      ngram_vocab_size: words and word pairs in the vocabulary of the tfidf text model (> 0).
      train_steps: training batches in total, spread over `epochs` (> 0).
      eval_steps: eval batches per evaluation (> 0).
      epochs: Keras epochs; EarlyStopping watches the loss on the validation slice (> 0).
      batch_size: examples per batch (> 0).
      learning_rate: Adam learning rate (> 0).
      early_stopping_patience: epochs without validation-loss improvement before training stops.
      validation_percent: share of the train split, in percent, held out of fitting for
        EarlyStopping (the eval split is never used in training; 0 = no early stopping; 0..50).
      trainer_cache_mb: splits whose transformed (input, label) pairs fit in this many MB are
        transformed once and kept in memory for all epochs; larger ones are transformed batch
        by batch (0: never cache; >= 0).
      warm_start: start from the latest blessed model's weights when its architecture
        matches (else from scratch).
      distribution: how the Trainer spreads training: "none" (one process, one device),
        "mirrored" (all devices of the Trainer's machine, tf.distribute.MirroredStrategy) or
        "multi_worker" (the workers of the TF_CONFIG cluster,
        tf.distribute.MultiWorkerMirroredStrategy). batch_size stays the global batch and
        train_steps the number of optimisation steps (README "Scaling training").
      collective_timeout_seconds: multi_worker only: seconds a cross-worker collective may
        take before the run fails (a lost worker must not hang the survivors); 0 = no limit
        (>= 0).
      backbone: model transfer: the keras.applications backbone, one of mobilenet_v2,
        vgg16, efficientnet_b0 (README "Transfer learning"); image_size must be at least
        its minimum (32).
      backbone_weights: model transfer: "imagenet" (Keras downloads the ImageNet weights
        into ~/.keras/models; needs internet), "none" (random initialisation: the whole model
        trains from scratch, in one phase) or the path
        of a Keras weights file (.h5) of the backbone without its top, e.g. one written by
        `conveyor export-backbone`; relative paths are relative to the working directory.
      head_epochs: model transfer: epochs of the first phase, which trains the new head with
        the backbone frozen; the remaining `epochs - head_epochs` fine-tune. None = all
        epochs without fine-tuning, half of them (rounded up) with it (> 0).
      fine_tune_layers: model transfer: backbone layers, counted from its top, unfrozen
        for the fine-tuning phase (BatchNorm layers stay in inference mode); 0 = no
        fine-tuning (>= 0, at most the backbone's layers).
      fine_tune_learning_rate: model transfer: Adam learning rate of the fine-tuning phase;
        None = learning_rate / 10 (> 0).
      augment: training-time augmentation of image models, applied in this order to
        training batches only (not to the validation slice, evaluation or serving): any
        of flip, rotation, zoom, contrast, each a name (default strength) or
        {name: strength}: flip: horizontal | vertical | horizontal_and_vertical (default
        horizontal); rotation: largest turn as a fraction of a full circle (default 0.1);
        zoom: largest zoom in or out as a fraction of the side (default 0.1); contrast:
        largest contrast change as a fraction (default 0.2); [] = none.
    """
    image_size: Positive = 28
    channels: Annotated[int, _rule("expected 1 (grey) or 3 (RGB)", lambda v: v in (1, 3))] = 1
    vocab_size: Positive = 10000
    oov_buckets: NonNegative = 1
    max_tokens: Positive = 200
    ngram_vocab_size: Positive = 20000
    train_steps: Positive = 2000
    eval_steps: Positive = 50
    epochs: Positive = 5
    batch_size: Positive = 64
    learning_rate: Annotated[float, Field(gt=0)] = 0.001
    early_stopping_patience: NonNegative = 2
    validation_percent: Annotated[int, Field(ge=0, le=50)] = 10
    trainer_cache_mb: Annotated[int, Field(ge=0)] = 2048
    warm_start: bool = False
    distribution: Literal[DISTRIBUTIONS] = "none"
    collective_timeout_seconds: Annotated[float, Field(ge=0)] = 600.0
    backbone: Literal[BACKBONES] = "mobilenet_v2"
    backbone_weights: Annotated[str, _rule(f"expected {IMAGENET_WEIGHTS}, {NO_WEIGHTS} or the path of a Keras "
                                           "weights file", lambda v: bool(v.strip()))] = IMAGENET_WEIGHTS
    head_epochs: Optional[Positive] = None
    fine_tune_layers: NonNegative = 0
    fine_tune_learning_rate: Optional[Annotated[float, Field(gt=0)]] = None
    # Any: a non-list gets the message of _AUGMENT_EXPECTED too, not pydantic's list error.
    augment: Any = Field(default_factory=list)

    @field_validator("augment")
    @classmethod
    def _augmentations(cls, items: Any) -> List[Dict[str, Any]]:
        """Each item as {name: strength} (the defaults filled in), or a config_rule error."""
        if not isinstance(items, (list, tuple)):
            raise PydanticCustomError("config_rule", _AUGMENT_EXPECTED)
        out: List[Dict[str, Any]] = []
        for item in items:
            if isinstance(item, str):
                item = {item: AUGMENT_DEFAULTS.get(item)}
            if not isinstance(item, Mapping) or len(item) != 1:
                raise PydanticCustomError("config_rule", _AUGMENT_EXPECTED)
            (name, strength), = item.items()
            number = isinstance(strength, (int, float)) and not isinstance(strength, bool)
            ok = (strength in FLIP_MODES) if name == "flip" else (
                name in AUGMENTATIONS and number and 0 < strength < 1)
            if not ok or any(name in seen for seen in out):
                raise PydanticCustomError("config_rule", _AUGMENT_EXPECTED)
            out.append({name: strength if name == "flip" else float(strength)})
        return out


class EvaluationConfig(_Settings):
    """Blessing and infra validation (config key `evaluation`). A model is blessed when it
    meets every blessing rule; without `blessing`, the rules are accuracy >= accuracy_floor,
    accuracy > the majority-class rate of the eval split, and no accuracy drop of more than
    regression_tolerance against the latest blessed model. The infra blessing needs every
    request to succeed within the latency budget.

    Attributes:
      accuracy_floor: minimum eval accuracy of the default rules, a fraction (0..1).
      regression_tolerance: allowed accuracy drop of the default rules against the latest
        blessed model, a fraction (>= 0).
      blessing: the blessing rules (components/blessing_rules.py), each a mapping
        {metric, slice?, min?, max?, max_drop?}; None = the default rules above. Checked at
        load: unknown metrics, slice features or (with ingest.class_names) classes are refused
        with the valid ones.
      infra_requests: REST requests sent to the candidate model (> 0).
      infra_p99_budget_ms: p99 latency budget of those requests, in milliseconds.
      infra_server: "in_process" (the server runs inside the validating process, no second
        TensorFlow start-up) or "subprocess" (a fresh `python -m serving.server` process,
        isolated from the pipeline's imports).
      eval_span: which data the Evaluator judges candidate and baseline on. "same": the eval
        split of the span this run ingested, which the candidate trained beside. "next"
        (next-day evaluation, span inputs): Transform and Trainer read only spans ingested
        before the latest one, and the Evaluator judges on the latest span's eval split, data
        the candidate never trained on; with no earlier span the run falls back to "same".
      train_spans: with eval_span "next", train on the last K earlier spans (None: all of them).
      edge_exports: edge exports published after each push, to HOME/edge/<name>/<version>/
        (components/edge_exporter.py): any of tflite_float16, tflite_dynamic, tflite_int8,
        tfjs; [] = none.
      edge_max_accuracy_drop: an edge export whose eval accuracy is lower than the
        SavedModel's by more than this fraction (0..1) is not published.
    """
    accuracy_floor: Share = 0.5
    regression_tolerance: Annotated[float, Field(ge=0)] = 0.01
    blessing: Optional[List[Rule]] = None
    infra_requests: Positive = 50
    infra_p99_budget_ms: Annotated[float, _rule("expected a finite number of milliseconds > 0",
                                                lambda v: 0 < v < float("inf"))] = 500.0
    infra_server: Literal["in_process", "subprocess"] = "in_process"
    eval_span: Literal["same", "next"] = "same"
    train_spans: Optional[Positive] = None
    edge_exports: List[str] = Field(default_factory=list)
    edge_max_accuracy_drop: Share = 0.01

    @field_validator("edge_exports")
    @classmethod
    def _known_exports(cls, exports: List[str]) -> List[str]:
        unknown = [e for e in exports if e not in EDGE_EXPORTS]
        if unknown or len(set(exports)) != len(exports):
            what = f"unknown export(s) {', '.join(map(repr, unknown))}: " if unknown else ""
            raise PydanticCustomError(
                "config_rule", f"{what}expected each of {', '.join(EDGE_EXPORTS)} at most once")
        return exports

    @model_validator(mode="after")
    def _train_spans_need_next_day(self) -> "EvaluationConfig":
        if self.train_spans is not None and self.eval_span != "next":
            raise PydanticCustomError(
                "train_spans", "train_spans applies only with eval_span: next (next-day evaluation)")
        return self

    @field_validator("blessing", mode="before")
    @classmethod
    def _rules(cls, rules: Any) -> Any:
        if rules is None:
            return None
        try:
            return parse_rules(rules)
        except RuleError as e:
            raise PydanticCustomError("blessing_rule", str(e)) from None

    def blessing_rules(self) -> List[Rule]:
        """The configured rules, else the default rules of accuracy_floor/regression_tolerance."""
        return list(self.blessing) if self.blessing is not None else default_rules(
            self.accuracy_floor, self.regression_tolerance)


class ServingConfig(_Settings):
    """Releasing and watching the served model (config key `serving`; read by the Pusher,
    `conveyor serve --config`, `conveyor drift` and `conveyor monitor`).

    Attributes:
      request_log_rate: share of served requests logged to HOME/request_logs (0..1).
      drift_threshold: Jensen-Shannon divergence per profile feature above which a feature
        has drifted (0..1).
      drift_min_requests: fewer logged requests than this is "not enough requests" for
        `conveyor drift` (exit 2), never a verdict (>= 1).
      canary: a blessed push becomes the `canary` version label while the version serving
        before stays `stable` (both loaded); `conveyor promote` / `conveyor rollback` end it.
      ab_split: share of unversioned requests `conveyor serve --config` sends to the
        canary (the rest go to stable); None = no split (TF Serving's rule: the highest
        loaded version answers).
      feedback: `conveyor serve --config` gives every prediction a request id and logs it
        for ground-truth feedback (HOME/feedback).
      monitor_max_drop: `conveyor monitor` flags a version whose online accuracy is below its
        offline eval accuracy by more than this (0..1), with significance.
      monitor_min_feedback: fewer labelled predictions than this per version is "not enough
        feedback" for `conveyor monitor` (>= 1).
    """
    request_log_rate: Share = 0.0
    drift_threshold: Share = 0.2
    drift_min_requests: Positive = 200
    canary: bool = False
    ab_split: Optional[Share] = None
    feedback: bool = False
    monitor_max_drop: Share = 0.05
    monitor_min_feedback: Positive = 30


class OrchestrationConfig(_Settings):
    """How and when the DAG runs (config key `orchestration`).

    Attributes:
      beam_args: Beam pipeline flags. The default is the in-memory DirectRunner with one
        worker: on the demo's small data the multi-processing DirectRunner is several times
        slower (worker start-up; README "Beam").
      beam_preset: a pipelines/beam.py preset (direct = multi-processing with workers =
        cores; flink | spark | dataflow); with `beam_settings` it replaces the default
        beam_args, and beam_args given as well are appended. "" = no preset.
      beam_settings: the preset's settings (e.g. job_endpoint, workers); None = none.
      enable_cache: let TFX reuse outputs of unchanged component runs.
      schedule: Airflow schedule of the generated DAG (cron or @preset); None (null) = no
        schedule, runs only when triggered (`airflow dags trigger`, the UI or the REST API).
      start_date: Airflow start date, YYYY-MM-DD.
      retries: Airflow retries per task (a task whose process fails or is killed runs again).
      retry_delay_seconds: Airflow's wait before a retry, in seconds (its default is 300).
      catchup: let Airflow run the schedule intervals missed since start_date.
    """
    beam_args: List[str] = Field(default_factory=lambda: [
        "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    beam_preset: str = ""
    beam_settings: Optional[Dict[str, Any]] = None
    enable_cache: bool = True
    schedule: Optional[str] = "@daily"
    start_date: Annotated[str, _rule("expected an ISO date YYYY-MM-DD", _iso_date)] = "2026-01-01"
    retries: NonNegative = 1
    retry_delay_seconds: NonNegative = 300
    catchup: bool = False


class MySQLMetadata(_Settings):
    """An ML Metadata store in a MySQL-compatible database (MySQL, MariaDB, Cloud SQL): the
    config key `metadata` as a mapping. `metadata: sqlite` (the default) keeps MLMD in
    HOME/metadata.sqlite instead.

    The password is never part of a config: `password_env` names the environment variable
    that holds it, read when a connection is made (pipelines/metadata_connection.py).

    Attributes:
      host: server name or address; ignored with `socket`.
      port: TCP port of the server (1..65535); ignored with `socket`.
      socket: unix socket of a server on this machine; None = TCP to host:port.
      database: database name. A run creates it (and ML Metadata's tables) when it is
        missing and the user may; read commands never create it.
      user: the MySQL user.
      password_env: NAME of the environment variable holding the user's password; None = the
        user has no password.
    """
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 3306
    socket: Optional[str] = None
    # ML Metadata 1.16's MySQL client sends the name unquoted in CREATE DATABASE / USE
    # (measured: 'mlmd-prod' fails with an SQL syntax error), so only names that need no
    # quoting work: MySQL's unquoted identifiers (ASCII part), at most 64 characters.
    database: Annotated[str, _rule(
        "expected a database name of letters, digits, '_' or '$' (at most 64; ML Metadata does "
        "not quote it)", lambda v: re.fullmatch(r"[A-Za-z0-9_$]{1,64}", v) is not None)]
    user: Annotated[str, _rule("expected a MySQL user name", lambda v: v.strip() != "")]
    password_env: Optional[Annotated[str, _rule(
        "expected the NAME of an environment variable (letters, digits, '_')",
        lambda v: v.replace("_", "").isalnum() and not v[:1].isdigit())]] = None

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "password" in values:
            raise PydanticCustomError(
                "metadata_password", "a password is never written into a config: set password_env to the "
                "name of an environment variable holding it")
        return values

    def where(self) -> str:
        """"MySQL database 'D' at HOST:PORT" (or "at socket PATH"), for messages; no secret."""
        at = f"socket {self.socket}" if self.socket else f"{self.host}:{self.port}"
        return f"MySQL database '{self.database}' at {at} (user {self.user})"


GROUPS: Dict[str, type] = {"ingest": IngestConfig, "training": TrainingConfig,
                           "evaluation": EvaluationConfig, "serving": ServingConfig,
                           "orchestration": OrchestrationConfig}
_GROUP_OF = {key: group for group, cls in GROUPS.items() for key in cls.model_fields}


class Config(_Settings):
    """The validated, immutable settings of one pipeline.

    Build it with `load_config` (file and flags) or `Config(**values)`; change it with
    `replace`, which validates the copy. Every group setting is also readable flat:
    `config.train_steps` is `config.training.train_steps`.

    Args (keyword; each setting flat or under its group, as in a config file):
      kind: "image" or "text".
      name: model name, letters, digits, '_' or '-'; "" = "<kind>_classifier". Names the
        pipeline, the serving folder and the model in models.config.
      home: Conveyor HOME folder (metadata.sqlite, pipelines/, serving/), relative to the
        working directory unless absolute.
      model: architecture, one of modules.settings.MODELS[kind]; "" = cnn (image) /
        tfidf (text).
      metadata: where ML Metadata lives: "sqlite" (HOME/metadata.sqlite, the default) or a
        MySQL connection given as a mapping (MySQLMetadata). Read back as None for SQLite.
      ingest, training, evaluation, serving, orchestration: the groups, as mappings; see
        IngestConfig, TrainingConfig, EvaluationConfig, ServingConfig, OrchestrationConfig.
      **settings: any group setting given flat (e.g. train_steps=100).

    Raises:
      ConfigError: unknown key, a setting given both flat and in its group, a value of the
        wrong type or outside its bounds; the message names the key and what was expected.
      AttributeError: on assigning an attribute (use `replace`).
    """
    kind: Kind = "image"
    name: str = Field("", validate_default=True)
    home: str = DEFAULT_HOME
    model: str = Field("", validate_default=True)
    metadata: Optional[MySQLMetadata] = None
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    def __init__(self, **values: Any) -> None:
        nested = _nest(values, "Config")
        with _config_errors(nested, lambda key: "Config"):
            super().__init__(**nested)

    @field_validator("name")
    @classmethod
    def _name_or_default(cls, name: str, info: ValidationInfo) -> str:
        name = name or f"{info.data.get('kind', 'image')}_classifier"
        if not name.replace("_", "").replace("-", "").isalnum():
            raise PydanticCustomError("config_rule", "use letters, digits, '_' or '-'")
        return name

    @field_validator("metadata", mode="before")
    @classmethod
    def _sqlite_or_mysql(cls, value: Any) -> Any:
        if value is None or value == "sqlite":
            return None
        if not isinstance(value, Mapping):
            # The value is not repeated: a connection URL given here may hold a password.
            raise PydanticCustomError(
                "metadata_rule", "expected sqlite or a MySQL connection as a mapping {host, port | socket, "
                "database, user, password_env}")
        return value

    @field_validator("model")
    @classmethod
    def _model_of_kind(cls, model: str, info: ValidationInfo) -> str:
        if "kind" not in info.data:  # the kind is wrong; that is the error reported
            return model
        models = MODELS[info.data["kind"]]
        model = model or DEFAULT_MODELS[info.data["kind"]]
        if model not in models:
            raise PydanticCustomError("config_rule", f"expected one of {', '.join(models)}")
        return model

    @field_validator("evaluation")
    @classmethod
    def _rule_classes(cls, evaluation: EvaluationConfig, info: ValidationInfo) -> EvaluationConfig:
        ingest = info.data.get("ingest")
        if evaluation.blessing and ingest is not None and ingest.class_names:
            try:
                check_classes(evaluation.blessing, ingest.class_names, "of ingest.class_names")
            except RuleError as e:
                raise PydanticCustomError("blessing_rule", str(e)) from None
        return evaluation

    def blessing_rules(self) -> List[Rule]:
        """The blessing rules the Evaluator checks (see EvaluationConfig.blessing_rules)."""
        return self.evaluation.blessing_rules()

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with `changes` applied.

        Args:
          **changes: settings flat (data=...) or as whole groups (training={...}); a group
            given as a mapping updates only the keys it names.
        Returns:
          a new Config; this one is unchanged.
        Raises:
          ConfigError: as for Config(...).
        """
        return _validated(*_merge([(self.model_dump(), "Config"), (changes, "Config.replace")]))

    def with_local_data(self, data: Optional[str] = None) -> "Config":
        """A copy whose `data` and `home` are absolute paths on this machine.

        Args:
          data: input path overriding the config's `data`; may contain {SPAN}.
        Returns:
          a new Config: data = abspath(data or config.data), or, when both are unset, the
          offline default data of the kind under HOME (data.defaults.default_data, which
          writes it on first use); home = abspath(home); a backbone_weights path made
          absolute.
        """
        data = data or self.data
        weights = self.backbone_weights
        local_weights = {} if weights in (IMAGENET_WEIGHTS, NO_WEIGHTS) else {"backbone_weights": os.path.abspath(weights)}
        return self.replace(data=os.path.abspath(data) if data else default_data(self.kind, self.home),
                            home=self.home_dir, **local_weights)

    # Paths derived from `home`; one place so CLI, runners and tests agree.
    @property
    def home_dir(self) -> str:
        """Absolute HOME folder."""
        return os.path.abspath(self.home)

    @property
    def metadata_path(self) -> str:
        """The MLMD SQLite file, HOME/metadata.sqlite."""
        return os.path.join(self.home_dir, "metadata.sqlite")

    @property
    def pipeline_root(self) -> str:
        """TFX pipeline root, HOME/pipelines/<name>."""
        return os.path.join(self.home_dir, "pipelines", self.name)

    @property
    def serving_dir(self) -> str:
        """The serving models' base folder, HOME/serving."""
        return os.path.join(self.home_dir, "serving")

    @property
    def serving_model_dir(self) -> str:
        """The pushed versions of this model, HOME/serving/<name>."""
        return os.path.join(self.serving_dir, self.name)

    @property
    def edge_model_dir(self) -> str:
        """The edge exports of this model, HOME/edge/<name> (versions as under serving/)."""
        return os.path.join(self.home_dir, "edge", self.name)

    def module_settings(self) -> ModuleSettings:
        """What Transform's preprocessing_fn and the Trainer's run_fn receive (custom_config),
        with the sha256 of the user code so edited code is not served from the cache, and of a
        backbone_weights file found on this machine (a changed file is a new Trainer input).
        head_epochs and fine_tune_learning_rate come resolved (TrainingConfig's defaults)."""
        weights = self.backbone_weights
        weights_sha256 = file_sha256(weights) if self.model == "transfer" and weights not in (
            IMAGENET_WEIGHTS, NO_WEIGHTS) and os.path.isfile(weights) else ""
        head_epochs = self.head_epochs or (
            self.epochs if self.fine_tune_layers == 0 else (self.epochs + 1) // 2)
        return ModuleSettings(
            kind=self.kind, name=self.name, model=self.model, image_size=self.image_size,
            channels=self.channels, vocab_size=self.vocab_size, oov_buckets=self.oov_buckets,
            max_tokens=self.max_tokens, ngram_vocab_size=self.ngram_vocab_size, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, early_stopping_patience=self.early_stopping_patience,
            validation_percent=self.validation_percent, trainer_cache_mb=self.trainer_cache_mb, warm_start=self.warm_start,
            distribution=self.distribution, collective_timeout_seconds=self.collective_timeout_seconds,
            backbone=self.backbone, backbone_weights=weights, backbone_weights_sha256=weights_sha256,
            head_epochs=head_epochs, fine_tune_layers=self.fine_tune_layers,
            fine_tune_learning_rate=self.fine_tune_learning_rate or self.learning_rate / 10,
            augment=tuple((name, strength) for item in self.augment for name, strength in item.items()),
            modules_sha256=modules_fingerprint())


def _flat_property(group: str, key: str) -> property:
    return property(lambda self: getattr(getattr(self, group), key),
                    doc=f"config.{group}.{key} (see {GROUPS[group].__name__}).")


for _key, _group in _GROUP_OF.items():
    setattr(Config, _key, _flat_property(_group, _key))


def _known_keys() -> str:
    return ", ".join(sorted(set(Config.model_fields) | set(_GROUP_OF)))


def _nest(values: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """Flat and grouped keys of one source -> {top-level key: value, group: {key: value}}.

    Raises:
      ConfigError: unknown key, a group that is not a mapping, or a key given both flat and
        in its group.
    """
    nested: Dict[str, Any] = {}

    def put(group: str, key: str, value: Any) -> None:
        settings = nested.setdefault(group, {})
        if key in settings:
            raise ConfigError(f"{source}: key '{key}' is given both as '{key}' and as '{group}.{key}'; "
                              "keep one")
        settings[key] = value

    for key, value in values.items():
        if key in GROUPS:
            if value is None:  # a YAML group whose settings are all commented out
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key '{key}': expected a mapping of key: value, got {value!r}")
            for sub, sub_value in value.items():
                if _GROUP_OF.get(sub) != key:
                    raise ConfigError(f"{source}: unknown key '{key}.{sub}' (known keys of {key}: "
                                      f"{', '.join(sorted(GROUPS[key].model_fields))})")
                put(key, sub, sub_value)
        elif key in _GROUP_OF:
            put(_GROUP_OF[key], key, value)
        elif key in Config.model_fields:
            nested[key] = value
        else:
            raise ConfigError(f"{source}: unknown key '{key}' (known keys: {_known_keys()})")
    return nested


def _strip_optional(annotation: Any) -> Any:
    """Optional[X] -> X, Annotated[X, ...] -> X (the type a value must have)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _bounds_metadata(field: Any) -> Sequence[Any]:
    """A field's bound constraints, also when they sit inside Optional[Annotated[...]]."""
    if field.metadata:
        return field.metadata
    for arg in typing.get_args(field.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            return [m for extra in typing.get_args(arg)[1:]
                    for m in (getattr(extra, "metadata", None) or [extra])]
    return []


def _expected_type(annotation: Any) -> str:
    """What a value of a field's type looks like, in the words of a config file."""
    annotation = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return f"one of {', '.join(map(str, typing.get_args(annotation)))}"
    if origin in (list, List):
        return "a list of strings"
    if origin in (dict, Dict):
        return "a mapping of setting: value"
    return {bool: "true or false", int: "an integer", float: "a number"}.get(annotation, "a string")


def _expected_bounds(metadata: Sequence[Any], annotation: Any) -> str:
    """The bounds declared on a field (annotated_types Gt/Ge/Le), in words."""
    gt = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), None)
    ge = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    le = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    if ge is not None and le is not None:
        return f"{ge:g}..{le:g}"
    if gt == 0 and annotation is int:
        return "a positive number"
    return f"> {gt:g}" if gt is not None else f">= {ge:g}"


_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _describe(error: Dict[str, Any], nested: Mapping[str, Any], source_of: Callable[[str], str]) -> str:
    """One line for a pydantic error: source, key, value, what was expected."""
    loc = error["loc"]
    if loc and loc[0] == "metadata":
        return f"{source_of('metadata')}: {_describe_metadata(error)}"
    if error["type"] == "train_spans":
        return f"{source_of('train_spans')}: {error['msg']}"
    if loc[0] in GROUPS and len(loc) > 1:
        key, field, given = loc[1], GROUPS[loc[0]].model_fields[loc[1]], nested.get(loc[0], {})
    else:
        key, field, given = loc[0], Config.model_fields[loc[0]], nested
    value = given.get(key, error["input"])  # the whole list when one item is wrong
    if error["type"] == "blessing_rule":  # the message names the rule and the valid choices
        return f"{source_of('blessing')}: {error['msg']}"
    if error["type"] == "config_rule":
        return f"{source_of(key)}: key '{key}': {error['msg']}, got {value!r}"
    if error["type"] in _BOUND_ERRORS:
        return (f"{source_of(key)}: key '{key}': expected {_expected_bounds(_bounds_metadata(field), _strip_optional(field.annotation))}"
                f", got {value!r}")
    return f"{source_of(key)}: key '{key}': expected {_expected_type(field.annotation)}, got {value!r}"


def _describe_metadata(error: Dict[str, Any]) -> str:
    """An error under `metadata:`, naming the key; values are shown only for known keys."""
    loc = [str(part) for part in error["loc"]]
    if error["type"] in ("metadata_rule", "metadata_password"):
        return f"key 'metadata': {error['msg']}"
    key = loc[1] if len(loc) > 1 else ""
    if error["type"] == "missing":
        return f"key 'metadata.{key}': missing; a MySQL connection needs database and user"
    if error["type"] == "extra_forbidden" or key not in MySQLMetadata.model_fields:
        return (f"unknown key 'metadata.{key}' (known keys of metadata: "
                f"{', '.join(MySQLMetadata.model_fields)})")
    field = MySQLMetadata.model_fields[key]
    if error["type"] == "config_rule":
        expected = error["msg"]
        if key == "password_env":  # not a variable name: maybe the password itself pasted in
            return f"key 'metadata.{key}': {expected}; the value given is not shown"
    elif error["type"] in _BOUND_ERRORS:
        expected = f"expected {_expected_bounds(_bounds_metadata(field), _strip_optional(field.annotation))}"
    else:
        expected = f"expected {_expected_type(field.annotation)}"
    return f"key 'metadata.{key}': {expected}, got {error['input']!r}"


@contextlib.contextmanager
def _config_errors(nested: Mapping[str, Any], source_of: Callable[[str], str]) -> Iterator[None]:
    """Turns pydantic's ValidationError into a one-line ConfigError (the first error)."""
    try:
        yield
    except ValidationError as e:
        raise ConfigError(_describe(e.errors(include_url=False)[0], nested, source_of)) from None


Layers = Sequence[Tuple[Mapping[str, Any], str]]


def _merge(layers: Layers) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Grouped values of `layers` (values, source), later layers overriding earlier ones key by
    key, and the source of each key."""
    merged: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for values, source in layers:
        for key, value in _nest(values, source).items():
            if key in GROUPS:
                merged.setdefault(key, {}).update(value)
                sources.update(dict.fromkeys(value, source))
            else:
                merged[key] = value
                sources[key] = source
    return merged, sources


def _validated(merged: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
    """The Config of _merge's result; raises ConfigError naming the source of a bad key."""
    config = Config.__new__(Config)
    with _config_errors(merged, lambda key: sources.get(key, "config")):
        # Config.__init__ minus its nesting (done) and its error source ("Config").
        BaseModel.__init__(config, **merged)
    return config


def _read_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start}); expected YAML or JSON") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"config file {path}: not valid YAML{where}: {problem}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path}: not valid JSON: {e}") from None
    loaded = loaded or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping of key: value at the top level")
    return loaded


def load_config(kind: str, path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """The validated Config of a `kind` pipeline: defaults < config file < overrides.

    Args:
      kind: "image" or "text" (the command being run).
      path: optional YAML file, or JSON when it ends in .json; a mapping whose keys are
        settings given flat (`train_steps: 100`) or under their group
        (`training: {train_steps: 100}`).
      overrides: settings from the command line, flat or grouped; None values are ignored
        (flags not given).
    Returns:
      the Config. With a `beam_preset`, its beam_args are the preset's flags followed by the
      beam_args given explicitly.
    Raises:
      ConfigError: unreadable or malformed file, unknown key, a key given both flat and
        grouped in one source, a wrong type (strict: no "3" -> 3, a bool is not an integer;
        an integer is accepted as a number), a value out of bounds, a file whose `kind`
        differs from `kind`, or a bad Beam preset. One line naming the source (file path or
        "command line"), the key, the value and what was expected.
    """
    layers: List[Tuple[Mapping[str, Any], str]] = [({"kind": kind}, "command line")]
    if path:
        loaded = _read_file(path)
        layers.append((loaded, f"config file {path}"))
        if loaded.get("kind", kind) != kind:
            raise ConfigError(f"config file {path}: kind is {loaded['kind']!r} but the command runs {kind!r}")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    layers.append((given, "command line"))
    merged, sources = _merge(layers)
    config = _validated(merged, sources)
    tuned = [key for key in ("accuracy_floor", "regression_tolerance") if key in sources]
    if "blessing" in sources and tuned:
        raise ConfigError(f"{sources[tuned[0]]}: key '{tuned[0]}' sets a default blessing rule, but "
                          f"'blessing' ({sources['blessing']}) replaces the default rules; state it "
                          "as a rule instead, e.g. {metric: accuracy, min: 0.8} or "
                          "{metric: accuracy, max_drop: 0.01}")
    if config.kind == "image" and config.model == "cnn" and config.image_size < CNN_MIN_IMAGE_SIZE:
        raise ConfigError(f"{sources.get('image_size', 'config')}: key 'image_size': model cnn needs images "
                          f"of at least {CNN_MIN_IMAGE_SIZE}x{CNN_MIN_IMAGE_SIZE} (two 3x3 convolutions and "
                          f"two 2x2 poolings), got {config.image_size}; raise image_size or use model mlp")
    _check_transfer(config, sources)
    if config.edge_exports and config.model not in EDGE_MODELS:
        raise ConfigError(f"{sources['edge_exports']}: key 'edge_exports': edge exports exist for the "
                          f"models {', '.join(EDGE_MODELS)}, not for '{config.model}' "
                          f"({sources.get('model', 'the default model')}); choose one of those models "
                          "or leave edge_exports empty")
    if config.beam_preset:
        explicit = config.beam_args if "beam_args" in sources else []
        config = config.replace(beam_args=_preset_beam_args(config, explicit))
    return config


def _check_transfer(config: Config, sources: Mapping[str, str]) -> None:
    """The checks of the transfer model's settings and of `augment` that span several keys.

    Raises:
      ConfigError: image_size below the backbone's minimum, fine_tune_layers above its layer
        count, head_epochs that leave no (or too many) epochs, transfer settings given for
        another model, augment for a text model.
    """
    def source(key: str) -> str:
        return sources.get(key, "config")

    if config.augment and config.kind != "image":
        raise ConfigError(f"{source('augment')}: key 'augment': augmentation applies to image models only; "
                          f"leave it empty for a {config.kind} model")
    if config.model != "transfer":
        given = [key for key in TRANSFER_KEYS if key in sources]
        if given:
            raise ConfigError(f"{sources[given[0]]}: key '{given[0]}' applies to model transfer only, and the "
                              f"model is '{config.model}' ({sources.get('model', 'the default model')}); set "
                              "model: transfer or remove the key")
        return
    backbone, size = config.backbone, BACKBONE_MIN_IMAGE_SIZE[config.backbone]
    if config.image_size < size:
        raise ConfigError(f"{source('image_size')}: key 'image_size': backbone {backbone} needs images of at "
                          f"least {size}x{size} (keras.applications), got {config.image_size}; raise image_size")
    if config.fine_tune_layers > BACKBONE_LAYERS[backbone]:
        raise ConfigError(f"{source('fine_tune_layers')}: key 'fine_tune_layers': backbone {backbone} has "
                          f"{BACKBONE_LAYERS[backbone]} layers, got {config.fine_tune_layers}")
    if config.backbone_weights == NO_WEIGHTS:
        phased = [key for key in ("head_epochs", "fine_tune_layers") if key in sources]
        if phased:
            raise ConfigError(f"{sources[phased[0]]}: key '{phased[0]}': backbone_weights {NO_WEIGHTS} trains the "
                              "whole model from scratch from the first epoch; head_epochs and fine_tune_layers "
                              "apply to pretrained weights (imagenet or a file)")
    if config.fine_tune_layers and config.epochs < 2:
        raise ConfigError(f"{source('fine_tune_layers')}: key 'fine_tune_layers': fine-tuning needs epochs of its "
                          f"own after the head's, so epochs must be at least 2, got {config.epochs}")
    head = config.head_epochs
    if head is None:
        return
    if config.fine_tune_layers and head >= config.epochs:
        raise ConfigError(f"{source('head_epochs')}: key 'head_epochs': fine-tuning runs the epochs after the "
                          f"head's, so head_epochs must be below epochs ({config.epochs}), got {head}")
    if not config.fine_tune_layers and head != config.epochs:
        raise ConfigError(f"{source('head_epochs')}: key 'head_epochs': without fine-tuning (fine_tune_layers 0) "
                          f"the head trains for all {config.epochs} epochs, got {head}; set fine_tune_layers "
                          "or remove head_epochs")


def load_any_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """The Config of a file read by a command that runs no pipeline (runs, lineage, diff,
    report, bless, ui, drift, metadata copy), which reads `home` and `metadata` from it.

    Args:
      path: YAML/JSON config file; its `kind` is used, else image, else text (the first
        that validates).
      overrides: as for load_config (e.g. {"home": --home}).
    Returns:
      the validated Config.
    Raises:
      ConfigError: as for load_config (for a file without `kind`, the image kind's error).
    """
    loaded = _read_file(path)
    kinds = [loaded["kind"]] if isinstance(loaded.get("kind"), str) else list(KINDS)
    first: Optional[ConfigError] = None
    for kind in kinds:
        try:
            return load_config(kind, path, overrides)
        except ConfigError as e:
            first = first or e
    raise first


def _preset_beam_args(config: Config, extra: List[str]) -> List[str]:
    """The preset's Beam args, then the explicitly given beam_args (Beam keeps a flag's last value)."""
    try:
        return preset_from_settings(config.beam_preset, config.beam_settings) + list(extra)
    except BeamPresetError as e:
        raise ConfigError(f"config: {e}") from None
