"""Pusher that writes TF Serving's layout with sequential versions: <base>/<name>/1, 2, 3 ...

TFX's Pusher names versions by Unix time and copies in place; Conveyor needs 1, 2, 3
(TF Serving serves the highest), an atomic appearance (copy to a hidden temp dir, then
rename, so a polling server never sees half a model; a temp dir left by a killed push is
deleted by the next push), no second push of a model that is already the latest version
(a cached rerun re-blesses the same model), and an updated models.config next to the
model folders.
"""
import dataclasses
import fcntl
import json
import os
import shutil
import time
from typing import Optional

from absl import logging
from tfx.components.pusher import executor as tfx_executor
from tfx.components.pusher.component import Pusher
from tfx.components.util import model_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from serving.model_config import (MODELS_CONFIG, clear_release, read_models_config, release_labels,
                                  set_release, update_model)
from serving.model_manager import version_dirs

PUSH_RECORD = os.path.join("assets.extra", "conveyor_push.json")
CANARY_KEY = "canary"  # custom_config {"canary": true}: publish as the canary (see publish)
TMP_PREFIX = ".tmp-"  # never a number, so servers and version_dirs() ignore it
# Fault-injection tests only (tests/test_faults.py): seconds to sleep after the new version
# is complete in its temp dir and before the rename, giving the test a deterministic
# moment to SIGKILL the run in the middle of a push. Unset in normal use.
PAUSE_ENV = "CONVEYOR_TEST_PAUSE_BEFORE_PUBLISH_SECONDS"


def _push_record(version_dir: str) -> dict:
    """The push record of a version folder ({} when it has none)."""
    try:
        with open(os.path.join(version_dir, PUSH_RECORD), encoding="utf-8") as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def remove_stale_temp_dirs(base: str) -> None:
    """Deletes temp dirs of pushes that were killed before their rename.

    Only called under the push lock: no live pusher of this model can own one then.
    """
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.startswith(TMP_PREFIX) and os.path.isdir(path):
            logging.warning("Removing %s, left by an interrupted push", path)
            shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Published:
    """The outcome of `publish`.

    Fields:
      version: the version now serving the model (new, or the existing latest one).
      destination: that version's folder, <base>/<version>.
      already_serving: True when the model already was the latest version (nothing copied).
    """
    version: int
    destination: str
    already_serving: bool


def _stable_version(base: str, latest: Optional[int]) -> Optional[int]:
    """The version a canary push keeps serving: the model's `stable` label in models.config,
    else its newest version (what the default policy serves); None before the first push."""
    path = os.path.join(os.path.dirname(base), MODELS_CONFIG)
    if os.path.exists(path):
        for entry in read_models_config(path).model_config_list.config:
            if entry.name == os.path.basename(base) and release_labels(entry)[0] is not None:
                return release_labels(entry)[0]
    return latest


def publish(source: str, base: str, model_uri: str, model_id: int, canary: bool = False,
            pushed_uri: Optional[str] = None) -> Published:
    """Publishes a SavedModel as the next sequential version under `base` (see the module
    docstring): under `base`/.push.lock, copy to a hidden temp folder, record the source in
    assets.extra/conveyor_push.json, rename to <base>/<n+1>, then rewrite models.config in
    the parent of `base`. Used by the Pusher and by `conveyor bless`.

    A canary push (serving/model_config.py) keeps the version serving before it loaded as
    `stable`: models.config first gets a specific version policy of {stable, new} with only
    the `stable` label (so no poll ever unloads stable when the new directory appears), then
    the rename, then the `canary` label on the new version. A push that replaces a live
    canary unloads the old canary. A normal push ends a release (TF Serving's default policy
    again, `stable`/`canary` labels removed). The first push of a model has no stable
    version to keep: it is a normal push.

    Args:
      source: the SavedModel folder (a Model artifact's Format-Serving folder).
      base: the model's base path, <serving models dir>/<model name>.
      model_uri, model_id: the Model artifact's uri and MLMD id (recorded with the version;
        a model whose uri the latest version already records is not pushed again).
      canary: publish as the canary (see above).
      pushed_uri: the Pusher's PushedModel uri, recorded with the version. When the latest
        version records this same uri, model uri and model id, it was published by an
        earlier try of this very Pusher execution that was killed before ML Metadata
        recorded it (an Airflow retry reuses the execution and its output uri):
        models.config is brought up to date and the version is returned as this push's
        (already_serving False).
    Returns:
      the Published version.
    Raises:
      OSError: the copy, the rename or models.config failed (no partial version is left).
      ModelConfigError: the existing models.config cannot be parsed.
    """
    serving_dir, name = os.path.dirname(base), os.path.basename(base)
    os.makedirs(base, exist_ok=True)
    # One pusher at a time per model: the version number and the rename must not race.
    with open(os.path.join(base, ".push.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_temp_dirs(base)
        dirs = version_dirs(base)  # {version: directory name}; names may have leading zeros
        versions = sorted(dirs)
        latest = _push_record(os.path.join(base, dirs[versions[-1]])) if versions else {}
        own = bool(pushed_uri) and (latest.get("pushed_uri"), latest.get("model_uri"), latest.get("model_id")) == \
            (pushed_uri, model_uri, model_id)
        if latest.get("model_uri") == model_uri and not own:
            logging.info("Model %s is already served as version %d; not pushing it again.", model_uri, versions[-1])
            return Published(versions[-1], os.path.join(base, dirs[versions[-1]]), True)
        if own:
            version = versions[-1]
            stable = _stable_version(base, versions[-2] if len(versions) > 1 else None) if canary else None
            logging.warning("Version %d was published by an earlier try of this push; finishing it", version)
            return _announce(serving_dir, name, model_uri, version, os.path.join(base, dirs[version]), stable)
        version = (versions[-1] + 1) if versions else 1
        stable = _stable_version(base, versions[-1] if versions else None) if canary else None
        final = os.path.join(base, str(version))
        tmp = os.path.join(base, f"{TMP_PREFIX}{version}-{os.getpid()}")
        try:
            if stable is not None:
                update_model(serving_dir, name, lambda entry: set_release(entry, stable, also_load=(version,)))
            shutil.copytree(source, tmp)
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with open(os.path.join(tmp, PUSH_RECORD), "w", encoding="utf-8") as f:
                json.dump({"model_uri": model_uri, "model_id": model_id, "version": version,
                           "pushed_uri": pushed_uri, "pushed_at": time.time()}, f)
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                logging.warning("%s: pausing %.0fs before publishing %s as %s", PAUSE_ENV, pause, tmp, final)
                time.sleep(pause)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _announce(serving_dir, name, model_uri, version, final, stable)


def _announce(serving_dir: str, name: str, model_uri: str, version: int, final: str,
              stable: Optional[int]) -> Published:
    """The last step of a push, after the rename: models.config names the new version the
    canary beside `stable`, or (stable None) ends any release. Idempotent."""
    if stable is not None:
        update_model(serving_dir, name, lambda entry: set_release(entry, stable, canary=version))
        logging.info("Pushed %s as canary version %d to %s; version %d stays stable", model_uri, version,
                     final, stable)
    else:
        update_model(serving_dir, name, clear_release)
        logging.info("Pushed %s as version %d to %s (models.config: %s)", model_uri, version, final,
                     os.path.join(serving_dir, MODELS_CONFIG))
    return Published(version, final, False)


NOT_BLESSED = "not blessed"  # by the Evaluator (TFX's wording; older Pushers wrote it for both verdicts)
INFRA_FAILED = "infra validation failed"


def not_pushed_reason(input_dict) -> str:
    """Why TFX's CheckBlessing refused the push, from the verdicts it read.

    Args:
      input_dict: the Pusher's inputs; `model_blessing` and `infra_blessing` (one artifact
        each, either may be absent) are read with tfx.components.util.model_utils.
    Returns:
      NOT_BLESSED (the Evaluator said no), INFRA_FAILED (the infra validator said no), or
      both joined by "; ".
    """
    reasons = []
    for key, blessed, reason in ((standard_component_specs.MODEL_BLESSING_KEY, model_utils.is_model_blessed,
                                  NOT_BLESSED),
                                 (standard_component_specs.INFRA_BLESSING_KEY, model_utils.is_infra_validated,
                                  INFRA_FAILED)):
        if input_dict.get(key) and not blessed(artifact_utils.get_single_instance(input_dict[key])):
            reasons.append(reason)
    return "; ".join(reasons) or NOT_BLESSED


class Executor(tfx_executor.Executor):
    """Pushes a blessed model as the next sequential version (see the module docstring)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        pushed = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(pushed)
            pushed.set_string_custom_property("reason", not_pushed_reason(input_dict))
            return
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        custom = json.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        published = publish(self.GetModelPath(input_dict), destination.filesystem.base_directory,
                            model.uri, model.id, canary=bool(custom.get(CANARY_KEY)), pushed_uri=pushed.uri)
        if published.already_serving:
            self._MarkNotPushed(pushed)
            pushed.set_string_custom_property("reason", f"already serving as version {published.version}")
            pushed.set_string_custom_property("pushed_version", str(published.version))
            return
        self._MarkPushed(pushed, pushed_destination=published.destination, pushed_version=str(published.version))


class ServingPusher(Pusher):
    """TFX's Pusher writing TF Serving's layout with sequential versions 1, 2, 3 ...

    The constructor is TFX's Pusher's (tfx/components/pusher/component.py); Conveyor's
    pipeline passes:

    Args:
      model: channel of the Model to push (its Format-Serving SavedModel is copied).
      model_blessing: channel of the Evaluator's ModelBlessing; not blessed: no push.
      infra_blessing: channel of ConveyorInfraValidator's InfraBlessing; not blessed: no push.
      push_destination: a PushDestination whose `filesystem.base_directory` is the model's
        base path, <serving models dir>/<model name>; its parent gets models.config.
      custom_config: {"canary": true} publishes a canary release (see `publish`).
    Outputs:
      `outputs['pushed_model']`: PushedModel, `pushed` 1 with `pushed_version` and
      `pushed_destination`, or `pushed` 0 with a `reason` ("not blessed" by the Evaluator,
      "infra validation failed", both joined by "; " (`not_pushed_reason`), or "already
      serving as version N" with that `pushed_version`).
    Raises (when the component runs):
      OSError: the base directory cannot be created or written.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
