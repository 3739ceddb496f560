"""Pusher that writes TF Serving's layout with sequential versions: <base>/<name>/1, 2, 3 ...

TFX's Pusher names versions by Unix time and copies in place; Conveyor needs 1, 2, 3
(TF Serving serves the highest), an atomic appearance (copy to a hidden temp dir, then
rename, so a polling server never sees half a model; a temp dir left by a killed push is
deleted by the next push), no second push of a model that is already the latest version
(a cached rerun re-blesses the same model), and an updated models.config next to the
model folders.
"""
import fcntl
import json
import os
import shutil
import time
from typing import Optional

from absl import logging
from tfx.components.pusher import executor as tfx_executor
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from serving.model_config import register_model
from serving.model_manager import version_dirs

PUSH_RECORD = os.path.join("assets.extra", "conveyor_push.json")
TMP_PREFIX = ".tmp-"  # never a number, so servers and version_dirs() ignore it
# Fault-injection tests only (tests/test_faults.py): seconds to sleep after the new version
# is complete in its temp dir and before the rename, giving the test a deterministic
# moment to SIGKILL the run in the middle of a push. Unset in normal use.
PAUSE_ENV = "CONVEYOR_TEST_PAUSE_BEFORE_PUBLISH_SECONDS"


def _pushed_source(version_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(version_dir, PUSH_RECORD), encoding="utf-8") as f:
            return json.load(f).get("model_uri")
    except (OSError, ValueError):
        return None


def remove_stale_temp_dirs(base: str) -> None:
    """Deletes temp dirs of pushes that were killed before their rename.

    Only called under the push lock: no live pusher of this model can own one then.
    """
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.startswith(TMP_PREFIX) and os.path.isdir(path):
            logging.warning("Removing %s, left by an interrupted push", path)
            shutil.rmtree(path, ignore_errors=True)


class Executor(tfx_executor.Executor):
    """Pushes a blessed model as the next sequential version (see the module docstring)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        pushed = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(pushed)
            pushed.set_string_custom_property("reason", "not blessed")
            return
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        source = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base = destination.filesystem.base_directory
        os.makedirs(base, exist_ok=True)

        # One pusher at a time per model: the version number and the rename must not race.
        with open(os.path.join(base, ".push.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale_temp_dirs(base)
            dirs = version_dirs(base)  # {version: directory name}; names may have leading zeros
            versions = sorted(dirs)
            if versions and _pushed_source(os.path.join(base, dirs[versions[-1]])) == model.uri:
                logging.info("Model %s is already served as version %d; not pushing it again.",
                             model.uri, versions[-1])
                self._MarkNotPushed(pushed)
                pushed.set_string_custom_property("reason", f"already serving as version {versions[-1]}")
                pushed.set_string_custom_property("pushed_version", str(versions[-1]))
                return
            version = (versions[-1] + 1) if versions else 1
            final = os.path.join(base, str(version))
            tmp = os.path.join(base, f"{TMP_PREFIX}{version}-{os.getpid()}")
            try:
                shutil.copytree(source, tmp)
                os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
                with open(os.path.join(tmp, PUSH_RECORD), "w", encoding="utf-8") as f:
                    json.dump({"model_uri": model.uri, "model_id": model.id, "version": version,
                               "pushed_at": time.time()}, f)
                pause = float(os.environ.get(PAUSE_ENV) or 0)
                if pause > 0:
                    logging.warning("%s: pausing %.0fs before publishing %s as %s", PAUSE_ENV, pause, tmp, final)
                    time.sleep(pause)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        config_path = register_model(os.path.dirname(base), os.path.basename(base))
        logging.info("Pushed %s as version %d to %s (models.config: %s)", model.uri, version, final, config_path)
        self._MarkPushed(pushed, pushed_destination=final, pushed_version=str(version))


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
    Outputs:
      `outputs['pushed_model']`: PushedModel, `pushed` 1 with `pushed_version` and
      `pushed_destination`, or `pushed` 0 with a `reason` ("not blessed", or "already
      serving as version N" with that `pushed_version`).
    Raises (when the component runs):
      OSError: the base directory cannot be created or written.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
