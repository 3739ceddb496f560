"""Pre-flight check: is this run's input exactly the input of the last run? Then run nothing.

An unchanged rerun through TFX still re-executes every consumer of the latest-blessed
Resolver (the gate, the Evaluator comparing the model with itself, a warm-starting
Trainer), several seconds for a result known in advance. Before importing TFX, the runner
computes the fingerprint of everything a run's outcome depends on (`run_inputs`) and
compares it with the one recorded on the last run's `pipeline_run` context. When they are
equal, that run completed and its infra validation passed (a failed one is measured again:
`infra_remeasure`), it records a no-op rerun in MLMD (an execution of type
UNCHANGED_TYPE in a new `pipeline_run` context, `repeats_run` naming the run it repeats)
and stops.

"Unchanged" means all of these are equal (RunInputs' fields):
  data          every file under the ExampleGen's input folder: relative path, size and
                mtime (TFX's ExampleGen driver fingerprints the matching files by the same
                size/mtime facts, tfx/utils/io_utils.py generate_fingerprint; any change
                under the folder, a new {SPAN} folder included, counts)
  config        the Config, without the settings a local run does not read (`serving`:
                drift/request logs; Airflow's schedule, start_date, retries, retry delay, catchup); a
                transfer model's backbone_weights file by its sha256
  user_code     modules_fingerprint(), the sha256 of modules/*.py
  pipeline_code sha256 of the pipeline code (components/, pipelines/, serving/, data/)
  schema        sha256 of the curated schema file, "none" without one
  packages      Python's and PACKAGES' versions (the TFX stack, Keras, Pillow, numpy, ...)
  baseline      MLMD id of the latest blessed model (what the Resolver will return)
  served        the newest version folder under serving/<name>/ and the model it holds

This module imports neither TensorFlow nor TFX, only ml_metadata (well under a second).
"""
import dataclasses
import datetime
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
from typing import Dict, List, Optional

from modules.settings import modules_fingerprint
from pipelines import metadata_connection
from pipelines.beam import PROJECT_ROOT
from pipelines.config import Config

SCHEMAS = os.path.join(PROJECT_ROOT, "schemas")
# The execution type of a no-op rerun (read by conveyor/metadata to show it in `conveyor runs`).
UNCHANGED_TYPE = "conveyor.UnchangedRerun"
# Custom properties on a run's pipeline_run context.
FINGERPRINT_PROPERTY = "conveyor_inputs_fingerprint"
INPUTS_PROPERTY = "conveyor_inputs"
REPEATS_PROPERTY = "repeats_run"
# The infra validator's exec property that only enters TFX's cache key (its REMEASURE_KEY).
INFRA_REMEASURE_PROPERTY = "remeasure"
REMEASURE_AFTER_FAILURE = "after-infra-blessing-"  # + the failed InfraBlessing's id
# Distributions whose version can change a run's result: the TFX stack, and what modules/
# and components/ compute with (Keras 2 trains the models, Pillow decodes images at
# ingestion, numpy/pyarrow/tfx-bsl/tensorflow-metadata carry the data and statistics,
# protobuf the artifacts' payloads).
PACKAGES = ("tfx", "tensorflow", "tensorflow-transform", "tensorflow-data-validation",
            "tensorflow-model-analysis", "ml-metadata", "apache-beam", "tensorflow-serving-api",
            "tf-keras", "pillow", "numpy", "protobuf", "pyarrow", "tfx-bsl", "tensorflow-metadata")
PIPELINE_CODE = ("components", "pipelines", "serving", "data")
# Settings a local run does not read (drift/request logging, Airflow scheduling).
_NOT_RUN_INPUTS = {"serving": None, "orchestration": ("schedule", "start_date", "retries", "retry_delay_seconds", "catchup")}


def curated_schema(config: Config) -> Optional[str]:
    """schemas/<name>.pbtxt in the repo, or HOME/schemas/<name>.pbtxt saved by an earlier run."""
    for folder in (SCHEMAS, os.path.join(config.home_dir, "schemas")):
        path = os.path.join(folder, f"{config.name}.pbtxt")
        if os.path.exists(path):
            return path
    return None


def _sha256_files(paths: List[str], root: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


def _files_under(folder: str) -> List[str]:
    """Every file under `folder`, through symlinked folders (span folders are often links),
    each real folder once (a link cycle ends)."""
    seen = set()
    files = []
    for parent, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        files.extend(os.path.join(parent, name) for name in names)
    return files


def data_fingerprint(input_base: str) -> str:
    """sha256 over (relative path, size, mtime in ns) of every file under `input_base`
    (or of that one file); "missing" when it does not exist."""
    if not os.path.exists(input_base):
        return "missing"
    digest = hashlib.sha256(os.path.abspath(input_base).encode() + b"\0")
    files = [input_base] if os.path.isfile(input_base) else _files_under(input_base)
    for path in sorted(files):
        try:
            st = os.stat(path)
            seen = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a dangling link: ExampleGen names it; here it is just part of the state
            seen = "unreadable"
        digest.update(f"{os.path.relpath(path, input_base)}\0{seen}\0".encode())
    return digest.hexdigest()


def config_fingerprint(config: Config) -> str:
    """sha256 of the Config's JSON without the settings a local run does not read, with the
    sha256 of a transfer model's backbone_weights file (the same path may hold new weights)."""
    values = config.model_dump(mode="json")
    if config.model == "transfer":
        values["backbone_weights_sha256"] = config.module_settings().backbone_weights_sha256
    for group, keys in _NOT_RUN_INPUTS.items():
        if keys is None:
            values.pop(group, None)
        else:
            for key in keys:
                values.get(group, {}).pop(key, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def package_versions() -> str:
    """"python=3.10.x tfx=1.16.0 tensorflow=2.16.2 ..." (installed distributions)."""
    versions = [f"python={platform.python_version()}"]
    for name in PACKAGES:
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=none")
    return " ".join(versions)


def served_version(config: Config) -> Optional[int]:
    """The newest version folder under serving/<name>/ (what a server serves), None if none.
    (serving.model_manager.version_dirs reads the same folders but imports TensorFlow.)"""
    base = config.serving_model_dir
    try:
        return max((int(n) for n in os.listdir(base) if n.isdigit() and os.path.isdir(os.path.join(base, n))),
                   default=None)
    except OSError:
        return None


def _served(config: Config) -> str:
    """"<version>:<source model uri>" of the served version, "none" without one."""
    version = served_version(config)
    if version is None:
        return "none"
    path = os.path.join(config.serving_model_dir, str(version), "assets.extra", "conveyor_push.json")
    try:
        with open(path, encoding="utf-8") as f:
            source = json.load(f).get("model_uri")
    except (OSError, ValueError):
        source = None
    return f"{version}:{source}"


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """Everything a run's outcome depends on (see the module docstring); each field a
    sha256 hex digest or a short description. Two runs with equal RunInputs give the same
    result."""
    data: str
    config: str
    user_code: str
    pipeline_code: str
    schema: str
    packages: str
    baseline: str
    served: str

    def fingerprint(self) -> str:
        """sha256 (hex) of all fields."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()

    def changed(self, recorded: Dict[str, str]) -> List[str]:
        """Names of the fields that differ from a recorded `dataclasses.asdict` (all if unknown)."""
        return [k for k, v in dataclasses.asdict(self).items() if recorded.get(k) != v]


def _store(config: Config):
    """A read-write store on the config's MLMD (metadata_connection; raises
    MetadataConnectionError when it cannot be reached)."""
    return metadata_connection.connect_config(config)


def _pipeline_store(config: Config):
    """(store, the pipeline's MLMD context), or None when there is no store yet or no such pipeline."""
    if not metadata_connection.store_exists(config.home_dir, config.metadata):
        return None
    store = _store(config)
    pipeline = store.get_context_by_type_and_name("pipeline", config.name)
    return (store, pipeline) if pipeline is not None else None


def latest_blessed_model_id(store, pipeline: str) -> Optional[int]:
    """The Model id TFX's LatestBlessedModelStrategy would resolve for `pipeline`.

    Mirrors tfx/dsl/input_resolution/strategies/latest_blessed_model_strategy.py over the
    channels Conveyor's Resolver declares (Model / ModelBlessing outputs of any execution in
    the pipeline context, LIVE only, tfx/orchestration/portable/input_resolution/
    channel_resolver.py): the highest Model id named by the `current_model_id` of a
    ModelBlessing with `blessed` == 1. None when there is none.
    """
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    context = store.get_context_by_type_and_name("pipeline", pipeline)
    if context is None:
        return None
    types = {t.id: t.name for t in store.get_artifact_types()}
    models, blessed = set(), set()
    for a in store.get_artifacts_by_context(context.id):
        if a.state != mlmd_pb2.Artifact.LIVE:
            continue
        if types.get(a.type_id) == "Model":
            models.add(a.id)
        elif types.get(a.type_id) == "ModelBlessing" and a.custom_properties["blessed"].int_value == 1:
            blessed.add(a.custom_properties["current_model_id"].int_value)
    return max(models & blessed, default=None)


@dataclasses.dataclass(frozen=True)
class InfraVerdict:
    """The newest infra validation of a pipeline.

    Fields:
      blessed: its InfraBlessing's `blessed` == 1.
      reason: why not blessed ("" when blessed or not recorded).
      blessing_id: the InfraBlessing's MLMD id.
      remeasure: the `remeasure` exec property of the execution that produced (or, cached,
        re-emitted) it; None when it had none.
    """
    blessed: bool
    reason: str
    blessing_id: int
    remeasure: Optional[str]


def latest_infra_verdict(store, pipeline: str) -> Optional[InfraVerdict]:
    """The InfraBlessing of the pipeline's newest execution with one as output (the infra
    validator's, cached ones included: they link the verdict they reuse as their output),
    or None when the pipeline has none."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    context = store.get_context_by_type_and_name("pipeline", pipeline)
    if context is None:
        return None
    types = {t.id: t.name for t in store.get_artifact_types()}
    blessings = {a.id: a for a in store.get_artifacts_by_context(context.id)
                 if types.get(a.type_id) == "InfraBlessing"}
    if not blessings:
        return None
    events = [e for e in store.get_events_by_artifact_ids(list(blessings))
              if e.type == mlmd_pb2.Event.OUTPUT]
    artifact_of = {e.execution_id: e.artifact_id for e in events}
    executions = store.get_executions_by_id(list(artifact_of))
    if not executions:
        return None
    newest = max(executions, key=lambda e: (e.create_time_since_epoch, e.id))
    blessing = blessings[artifact_of[newest.id]]
    marks, run = blessing.custom_properties, newest.custom_properties
    return InfraVerdict(blessed="blessed" in marks and marks["blessed"].int_value == 1,
                        reason=marks["reason"].string_value if "reason" in marks else "",
                        blessing_id=blessing.id,
                        remeasure=run[INFRA_REMEASURE_PROPERTY].string_value
                        if INFRA_REMEASURE_PROPERTY in run else None)


def infra_remeasure(config: Config) -> Optional[str]:
    """The `remeasure` token for this run's infra validator (components/infra_validator).

    TFX's cache would hand an unchanged model its earlier verdict, also a failed one, and
    a p99 measured under load deserves a second measurement. After a failed verdict the
    token names that verdict ("after-infra-blessing-<id>"), new for every failure, so the
    validator measures again; after a passing one it is that verdict's own token (None at
    first), so TFX's cache key, and the passing verdict, stay the same.

    Returns:
      the token, or None (no store, no infra validation yet, or the last one passed without one).
    """
    found = _pipeline_store(config)
    verdict = latest_infra_verdict(found[0], config.name) if found is not None else None
    if verdict is None:
        return None
    return verdict.remeasure if verdict.blessed else f"{REMEASURE_AFTER_FAILURE}{verdict.blessing_id}"


def run_inputs(config: Config, store=None) -> RunInputs:
    """The RunInputs of a run of `config` now (store: the HOME's MLMD, None before any run)."""
    from components.spans import split_span_path
    input_base, _ = split_span_path(config.data, config.input_pattern)
    schema = curated_schema(config)
    code = [p for folder in PIPELINE_CODE
            for p in glob.glob(os.path.join(PROJECT_ROOT, folder, "**", "*.py"), recursive=True)]
    baseline = latest_blessed_model_id(store, config.name) if store is not None else None
    return RunInputs(data=data_fingerprint(input_base), config=config_fingerprint(config),
                     user_code=modules_fingerprint(), pipeline_code=_sha256_files(code, PROJECT_ROOT),
                     schema=_sha256_files([schema], os.path.dirname(schema)) if schema else "none",
                     packages=package_versions(), baseline=str(baseline), served=_served(config))


@dataclasses.dataclass(frozen=True)
class Unchanged:
    """A rerun that executed nothing.

    Fields:
      run_id: the new (no-op) run's id.
      repeats_run: the run it repeats (whose results stand).
      served_version: the newest version under serving/<name>/ ("" when none).
    """
    run_id: str
    repeats_run: str
    served_version: str


def _run_contexts(store, pipeline_context_id: int):
    """pipeline_run contexts of the pipeline's executions, newest first."""
    run_type = store.get_context_type("pipeline_run")
    runs = {}
    for e in store.get_executions_by_context(pipeline_context_id):
        for c in store.get_contexts_by_execution(e.id):
            if c.type_id == run_type.id:
                runs[c.id] = c
    return sorted(runs.values(), key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def _is_pipeline_run(run) -> bool:
    """A run of the DAG (not a no-op rerun or a `conveyor bless`)."""
    return REPEATS_PROPERTY not in run.custom_properties and "conveyor_action" not in run.custom_properties


def check_unchanged(config: Config, inputs: RunInputs) -> Optional[Unchanged]:
    """Records a no-op rerun and returns it when nothing changed since the last run.

    "Nothing changed": `inputs` (inputs_before_run(config)) has the fingerprint recorded
    (record_run_inputs) on the pipeline's newest DAG run, every execution of that run is
    COMPLETE or CACHED, and the newest infra verdict passed. Call under the HOME lock.

    Returns:
      the Unchanged run recorded in MLMD, or None (the pipeline must run): caching is off
      (`enable_cache: false`), no store yet, no earlier run, or something differs.
    """
    if not config.enable_cache:  # whoever turned caching off wants every run to run
        return None
    found = _pipeline_store(config)
    if found is None:
        return None
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    store, pipeline = found
    fingerprint = inputs.fingerprint()
    last = next((c for c in _run_contexts(store, pipeline.id) if _is_pipeline_run(c)), None)
    if last is None or FINGERPRINT_PROPERTY not in last.custom_properties:
        return None
    if last.custom_properties[FINGERPRINT_PROPERTY].string_value != fingerprint:
        return None
    done = (mlmd_pb2.Execution.COMPLETE, mlmd_pb2.Execution.CACHED)
    if any(e.last_known_state not in done for e in store.get_executions_by_context(last.id)):
        return None
    infra = latest_infra_verdict(store, config.name)
    if infra is not None and not infra.blessed:  # measure again (see infra_remeasure)
        return None
    served = inputs.served.split(":", 1)[0] if inputs.served != "none" else ""
    execution_type = mlmd_pb2.ExecutionType(name=UNCHANGED_TYPE)
    execution = mlmd_pb2.Execution(type_id=store.put_execution_type(execution_type),
                                   last_known_state=mlmd_pb2.Execution.COMPLETE)
    run_id = datetime.datetime.now().isoformat()  # the form of LocalDagRunner's run ids
    for key, value in ((REPEATS_PROPERTY, last.name), (FINGERPRINT_PROPERTY, fingerprint),
                       ("served_version", served)):
        execution.custom_properties[key].string_value = value
    run = mlmd_pb2.Context(type_id=store.get_context_type("pipeline_run").id, name=run_id)
    run.custom_properties[REPEATS_PROPERTY].string_value = last.name
    store.put_execution(execution, [], [pipeline, run])
    return Unchanged(run_id=run_id, repeats_run=last.name, served_version=served)


def record_run_inputs(config: Config, before: RunInputs, since_ms: int) -> Optional[str]:
    """Records the inputs of the DAG run that started at or after `since_ms` (ms since the
    epoch) on its pipeline_run context, for the next run's check_unchanged.

    Args:
      before: run_inputs() taken before the run started (the data, config and code it read).
        `baseline` and `served` are read again now: the run's own blessing and push are
        what an identical next run would start from.
    Returns:
      the run id, or None when MLMD has no such run.
    """
    found = _pipeline_store(config)
    if found is None:
        return None
    store, pipeline = found
    runs = [c for c in _run_contexts(store, pipeline.id)
            if c.create_time_since_epoch >= since_ms and _is_pipeline_run(c)]
    if not runs:
        return None
    after = run_inputs(config, store)
    inputs = dataclasses.replace(before, baseline=after.baseline, served=after.served)
    run = runs[0]
    run.custom_properties[FINGERPRINT_PROPERTY].string_value = inputs.fingerprint()
    run.custom_properties[INPUTS_PROPERTY].string_value = json.dumps(dataclasses.asdict(inputs))
    store.put_contexts([run])
    return run.name


def record_failure(config: Config, since_ms: int, message: str) -> List[int]:
    """Records why a run failed on its FAILED executions, in TFX's own place for it: the
    `__execution_result__` custom property (ExecutionResult JSON; tfx/orchestration/portable/
    mlmd/execution_lib.py set_execution_result). TFX's in-process launcher records nothing
    when a Python executor raises, and it deletes the failed execution's output folders, so
    without this the reason (e.g. the gate's anomalies) is only in the run's log.

    Args:
      since_ms: the run's start (ms since the epoch); executions of runs started earlier are left alone.
      message: one line or a few: the user error (e.g. DataValidationError's text).
    Returns:
      the ids of the executions updated (those that had no execution result yet).
    """
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2
    found = _pipeline_store(config)
    if found is None:
        return []
    store, pipeline = found
    runs = [c for c in _run_contexts(store, pipeline.id) if c.create_time_since_epoch >= since_ms]
    updated = []
    for run in runs:
        for e in store.get_executions_by_context(run.id):
            if e.last_known_state == mlmd_pb2.Execution.FAILED and "__execution_result__" not in e.custom_properties:
                execution_lib.set_execution_result(
                    execution_result_pb2.ExecutionResult(code=2, result_message=message), e)  # 2: UNKNOWN
                store.put_executions([e])
                updated.append(e.id)
    return updated


def inputs_before_run(config: Config) -> RunInputs:
    """run_inputs() against the config's MLMD as it is now (none before the first run).

    Raises:
      MetadataConnectionError: a MySQL store cannot be reached (before anything runs).
    """
    exists = metadata_connection.store_exists(config.home_dir, config.metadata)
    return run_inputs(config, _store(config) if exists else None)
