"""Training/serving drift of the served model (`conveyor drift`, see drift_cli.py).

1. MLMD gives the served version (the latest pushed) and, through its lineage, the
   statistics of the data it was trained on (StatisticsGen's output, train split) and its
   kind (the Trainer's custom_config); nothing is read from folder names.
2. TFDV computes statistics over the requests the server logged for that version
   (HOME/request_logs/<model>/<version>/requests-*.tfrecord, see serving/request_log.py).
3. tfdv.validate_statistics compares them with the training statistics: the schema the
   model trained with (its assets.extra/conveyor_schema.pbtxt, else the Schema artifact),
   in the SERVING environment (no labels), with a Jensen-Shannon drift comparator on each
   profile feature (threshold `drift_threshold` of the config). Schema violations of the
   requests (e.g. images of another size) are reported too.

The record is written to HOME/drift/<model>-<version>.json (temp file + rename), which the
run report shows.
"""
import dataclasses
import datetime
import json
import os
from typing import Any, Dict, List, Optional

from conveyor.metadata.artifacts import load_split_statistics
from conveyor.metadata.lineage import lineage_of_version
from conveyor.metadata.store import Graph, LineageError, Record, json_field, open_store
from pipelines.config import MySQLMetadata, load_config

DRIFT_DIR = "drift"
SERVING = "SERVING"
TRAINING = "TRAINING"


class DriftError(RuntimeError):
    """Nothing to compare; the message says what is missing."""


class NotEnoughRequests(DriftError):
    """Fewer logged requests than the minimum sample: no verdict either way."""


def count_records(files: List[str]) -> int:
    """The number of records in TFRecord `files`, each file read to its end.

    Args:
      files: TFRecord paths (uncompressed, as the request logger writes them).
    Returns:
      The total record count (0 when every file is empty).
    Raises:
      DriftError: a file vanished, cannot be read or is corrupt; the message names it.
    """
    import tensorflow as tf

    total = 0
    for path in files:
        try:
            total += sum(1 for _ in tf.data.TFRecordDataset(path))
        except (tf.errors.OpError, OSError) as e:
            reason = " ".join(str(getattr(e, "message", e)).split())
            raise DriftError(f"cannot read the request log {path}: {reason}") from e
    return total


@dataclasses.dataclass
class DriftAnomaly(Record):
    """One TFDV anomaly of the logged requests.

    Fields: feature: the feature name ("(dataset)" for dataset-level anomalies);
    anomaly: TFDV's short description; description: TFDV's full description.
    """
    feature: str = ""
    anomaly: str = ""
    description: str = ""


@dataclasses.dataclass
class DriftRecord(Record):
    """One drift check of a served model version (`conveyor drift --json` prints to_json()).

    Fields:
      model, version: the served model and version ("1", ...).
      kind: "image" | "text".
      checked_at: when the check ran, local ISO 8601 (seconds).
      requests: logged requests compared; request_files: how many log files held them.
      training_examples: examples in the training statistics (train split).
      training_statistics: URI of the training ExampleStatistics artifact.
      schema: the schema file the requests were validated against.
      threshold: the Jensen-Shannon divergence threshold (0..1].
      js_divergence: profile feature -> Jensen-Shannon divergence (0..1, 6 decimals).
      drift: whether any anomaly was found.
      anomalies: the anomalies (drift and schema violations), sorted by feature.
      path: the JSON file the record was written to (not part of the file itself; None
        for a record read back with read_drift).
    """
    model: str = ""
    version: str = ""
    kind: str = ""
    checked_at: str = ""
    requests: int = 0
    request_files: int = 0
    training_examples: int = 0
    training_statistics: str = ""
    schema: str = ""
    threshold: float = 0.0
    js_divergence: Dict[str, float] = dataclasses.field(default_factory=dict)
    drift: bool = False
    anomalies: List[DriftAnomaly] = dataclasses.field(default_factory=list)
    path: Optional[str] = json_field(omit_if_none=True)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "DriftRecord":
        """A record from its JSON form (unknown keys ignored, missing ones defaulted)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["anomalies"] = [DriftAnomaly(**{k: v for k, v in a.items() if k in ("feature", "anomaly", "description")})
                               for a in data.get("anomalies") or [] if isinstance(a, dict)]
        return cls(**values)


def drift_path(home: str, model: str, version: str) -> str:
    """HOME/drift/<model>-<version>.json: where the drift record of a served version is kept."""
    return os.path.join(home, DRIFT_DIR, f"{model}-{version}.json")


def _load_schema(served_dir: Optional[str], schema_uri: Optional[str]):
    import tensorflow_data_validation as tfdv
    from modules.training_schema import BASELINE_SCHEMA_FILE, drop_free_value_domains
    for path in ([os.path.join(served_dir, BASELINE_SCHEMA_FILE)] if served_dir else []) + \
            ([os.path.join(schema_uri, "schema.pbtxt")] if schema_uri else []):
        if os.path.isfile(path):
            # Served texts / images are new values: no inferred value domain applies to them.
            return drop_free_value_domains(tfdv.load_schema_text(path)), path
    raise DriftError(f"no schema found for the served model (looked in {served_dir} and {schema_uri})")


def drift_schema(schema, kind: str, threshold: float):
    """The training schema with a SERVING environment (labels are not served) and a
    Jensen-Shannon drift comparator on each profile feature of the kind.

    Args:
      schema: a tensorflow_metadata Schema proto (not modified).
      kind: "image" | "text" (selects modules.features.PROFILE_FEATURES).
      threshold: Jensen-Shannon divergence threshold, (0, 1].
    Returns:
      a new Schema proto.
    """
    from modules import features as F
    out = type(schema)()
    out.CopyFrom(schema)
    del out.default_environment[:]
    out.default_environment.extend([TRAINING, SERVING])
    for feature in out.feature:
        if feature.name in (F.LABEL, F.LABEL_NAME):
            del feature.not_in_environment[:]
            feature.not_in_environment.append(SERVING)
        if feature.name in F.PROFILE_FEATURES[kind]:
            feature.drift_comparator.jensen_shannon_divergence.threshold = threshold
    return out


def served_version(home: str, model: str) -> Optional[str]:
    """The version `conveyor serve --home HOME` gives most traffic while a release is managed
    (canary, promote, rollback): the `stable` label in HOME/serving/models.config, else the
    highest of the versions its policy pins; None when neither is set (the latest pushed
    version is served) or the file is missing or unreadable."""
    from serving.model_config import MODELS_CONFIG, read_models_config, release_labels

    path = os.path.join(home, "serving", MODELS_CONFIG)
    try:
        config = read_models_config(path)
    except Exception:  # noqa: BLE001 - no usable file: the latest pushed version is served
        return None
    for entry in config.model_config_list.config:
        if entry.name == model:
            stable, _ = release_labels(entry)
            pinned = list(entry.model_version_policy.specific.versions)
            if stable is not None:
                return str(stable)
            return str(max(pinned)) if pinned else None
    return None


def check_drift(home: str, model: str, threshold: Optional[float] = None,
                config_path: Optional[str] = None, log_dir: Optional[str] = None,
                min_requests: Optional[int] = None,
                metadata: Optional[MySQLMetadata] = None, version: Optional[str] = None) -> DriftRecord:
    """Computes and records the drift of the served (latest pushed) version of `model`.

    Args:
      home: Conveyor HOME (holds metadata.sqlite, request_logs/, drift/).
      model: the model (pipeline) name.
      threshold: Jensen-Shannon threshold in (0, 1]; None = the kind's config drift_threshold.
      config_path: YAML/JSON config read for the default threshold.
      log_dir: request logs folder (default HOME/request_logs); logs are <log_dir>/<model>/<version>/.
      min_requests: the minimum sample, >= 1; None = the config's drift_min_requests (200).
        Jensen-Shannon divergence over a handful of requests is noise (one normal request
        scored 1.0, five 0.47), so a smaller sample gives no verdict.
      metadata: the MySQL store of ML Metadata (None: HOME/metadata.sqlite).
      version: the pushed version to check; None = the served one (served_version), else
        the latest pushed.
    Returns:
      the DriftRecord, also written to drift_path(home, model, version); its `path` says where.
    Raises:
      NotEnoughRequests: fewer than `min_requests` logged requests were read (nothing written).
      DriftError: no store/pushed version, no training statistics or kind in MLMD, no logged
        requests, a log file that vanished or cannot be read, zero examples read, or no
        schema. "No drift" is never the answer on zero examples.
      ConfigError: the config file is invalid, or the MySQL store cannot be reached
        (MetadataConnectionError).
    """
    home = os.path.abspath(home)
    try:  # before TFDV's (TensorFlow's) import: a missing or unreachable store answers at once
        store = open_store(home, metadata=metadata)
        info = lineage_of_version(store, model, version or served_version(home, model), with_metrics=False)
    except LineageError as e:
        raise DriftError(str(e)) from e
    import tensorflow_data_validation as tfdv

    from conveyor.request_log import LOG_DIR_NAME, log_files
    version = info.version
    hyperparameters = info.model.hyperparameters if info.model else None
    kind = hyperparameters.get("kind") if isinstance(hyperparameters, dict) else None
    if kind not in ("image", "text") or info.statistics is None:
        raise DriftError(f"MLMD has no training statistics / kind for version {version} of {model}")
    if threshold is None or min_requests is None:
        config = load_config(kind, config_path)
        threshold = config.drift_threshold if threshold is None else threshold
        min_requests = config.drift_min_requests if min_requests is None else min_requests

    graph = Graph(store)
    statistics = graph.artifact(info.statistics.artifact_id)
    try:
        training = load_split_statistics(graph, statistics, "train")
    except Exception as e:  # noqa: BLE001 - TF raises NotFoundError/DataLossError for moved or bad files
        reason = " ".join(str(e).split())[:300]
        raise DriftError(f"cannot read the training statistics of {model} version {info.version} "
                         f"({statistics.uri}): {reason}") from e

    folder = os.path.join(os.path.abspath(log_dir) if log_dir else os.path.join(home, LOG_DIR_NAME),
                          model, version)
    files = log_files(folder)
    if not files:
        raise DriftError(f"no logged requests of {model} version {version} in {folder}; serve it with "
                         "--request_log_rate > 0 (conveyor serve --home ... --request_log_rate 0.1)")
    logged = count_records(files)
    if logged == 0:
        raise DriftError(f"0 requests read from the {len(files)} request log file(s) of {model} "
                         f"version {version} in {folder} (every file is empty)")
    if logged < min_requests:
        raise NotEnoughRequests(
            f"not enough requests: {logged} logged request(s) of {model} version {version} in "
            f"{folder}, need at least {min_requests} (drift_min_requests) for a drift verdict")
    try:
        serving = tfdv.generate_statistics_from_tfrecord(
            data_location=os.path.join(folder, "requests-*.tfrecord"),
            stats_options=tfdv.StatsOptions())
    except Exception as e:  # noqa: BLE001 - Beam wraps I/O errors in its own types
        reason = " ".join(str(e).split())[:300]
        raise DriftError(f"cannot read the request logs in {folder}: {reason}") from e
    read = int(serving.datasets[0].num_examples) if serving.datasets else 0
    if read < min_requests:  # files moved or truncated between the count and TFDV's read
        raise NotEnoughRequests(
            f"not enough requests: TFDV read {read} of the {logged} logged request(s) of {model} "
            f"version {version} in {folder} (files moved or changed?), need at least {min_requests}")
    schema, schema_path = _load_schema(info.pushed.destination if info.pushed else None,
                                       info.schema.uri if info.schema else None)
    anomalies = tfdv.validate_statistics(serving, drift_schema(schema, kind, threshold), environment=SERVING,
                                         previous_statistics=training)

    divergence = {}
    for skew in anomalies.drift_skew_info:
        name = skew.path.step[-1] if skew.path.step else ""
        for m in skew.drift_measurements:
            divergence[name] = round(float(m.value), 6)
    found: List[DriftAnomaly] = []
    for feature, anomaly in sorted(anomalies.anomaly_info.items()):
        found.append(DriftAnomaly(feature, anomaly.short_description, anomaly.description))
    if anomalies.HasField("dataset_anomaly_info"):
        found.append(DriftAnomaly("(dataset)", anomalies.dataset_anomaly_info.short_description,
                                  anomalies.dataset_anomaly_info.description))
    record = DriftRecord(model=model, version=version, kind=kind,
                         checked_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         requests=read, request_files=len(files),
                         training_examples=int(training.datasets[0].num_examples),
                         training_statistics=statistics.uri, schema=schema_path,
                         threshold=threshold, js_divergence=divergence, drift=bool(found), anomalies=found)
    path = drift_path(home, model, version)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record.to_json(), f, indent=1)
    os.replace(tmp, path)
    record.path = path
    return record


def read_drift(home: str, model: str, version: str) -> Optional[DriftRecord]:
    """The last drift record of a served version, or None (no file, or not a JSON object)."""
    try:
        with open(drift_path(home, model, version), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return DriftRecord.from_json(data) if isinstance(data, dict) else None
