"""Loads, versions and unloads SavedModels the way TF Serving's ServerCore does.

TF Serving is a C++ binary, so locally we re-implement the parts Conveyor relies on:
file-system polling of each model's base path, `model_version_policy`
(latest / specific / all), `version_labels`, warmup replay and the
GetModelStatus view of every version's state.

Switching versions is atomic: a new version is loaded and warmed up before it is
published, and an old one is only removed from the routing table afterwards, so a
request never finds a model without a servable during a switch. Requests already
holding an old Servable keep running on it.

One deliberate difference from TF Serving: a version directory that fails to load
is skipped when applying the version policy, so a corrupt newest version leaves the
previous one serving instead of leaving the model with nothing (TF Serving unloads
the old version once it stops being aspired).
"""
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import warmup
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import ServingError

log = logging.getLogger("conveyor.serving")

_State = get_model_status_pb2.ModelVersionStatus.State


class Servable:
    """One loaded version of one model: the SavedModel plus its SignatureDefs.

    The SignatureDefs are read from saved_model.pb rather than reconstructed from
    the loaded functions so that metadata (tensor names, shapes, method_name) is
    byte-for-byte what TF Serving would report for the same directory.
    """

    def __init__(self, name: str, version: int, path: str):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        self._loaded = tf.saved_model.load(path)
        self._functions = dict(self._loaded.signatures)

    def signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef for `signature_name`; FAILED_PRECONDITION like TF Serving's Predict."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self._functions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def run(self, signature_name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs a signature on numpy inputs after checking names and dtypes against it."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature(name)
        expected = set(signature.inputs)
        sent = set(inputs)
        if sent != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({sorted(sent)}) != len({sorted(expected)}). "
                f"Sent extra: {sorted(sent - expected)}. "
                f"Missing but required: {sorted(expected - sent)}.")
        tensors = {}
        for key, value in inputs.items():
            dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            try:
                tensors[key] = tf.convert_to_tensor(value, dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Input '{key}' is not a valid {dtype.name} tensor: {e}") from e
        try:
            outputs = self._functions[name](**tensors)
        except tf.errors.OpError as e:
            raise ServingError(grpc.StatusCode(_grpc_code(e.error_code)), e.message) from e
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        return {key: value.numpy() for key, value in outputs.items()}


def _grpc_code(tf_code: int) -> Tuple[int, str]:
    """TF error codes are the canonical codes; grpc.StatusCode values are (int, name) pairs."""
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


def _read_signature_defs(path: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb):
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Could not find SavedModel .pb at supplied export directory path: {path}")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"SavedModel at {path} has no MetaGraphDef with tag 'serve'")


@dataclass
class VersionStatus:
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class _Model:
    """Mutable per-model bookkeeping; only the polling thread writes it (under the lock)."""

    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.config = config
        self.servables: Dict[int, Servable] = {}
        self.status: Dict[int, VersionStatus] = {}
        self.failed: Dict[int, tuple] = {}  # version -> directory fingerprint at failure
        self.warned_missing_base_path = False


def _dir_fingerprint(path: str) -> tuple:
    """Changes when files in the version dir change, so a fixed corrupt dir is retried."""
    stamps = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stamps.append((os.path.join(root, name), os.stat(os.path.join(root, name)).st_mtime_ns))
            except OSError:
                pass
    return tuple(sorted(stamps))


def versions_on_disk(base_path: str) -> List[int]:
    """Integer-named subdirectories; anything else (e.g. the pusher's '.tmp-3') is ignored."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(base_path, n)))


def aspired_versions(policy: model_server_config_pb2.ModelConfig, candidates: List[int]) -> List[int]:
    """Applies a model's model_version_policy (default: latest 1) to the loadable versions."""
    which = policy.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(candidates)
    if which == "specific":
        wanted = set(policy.model_version_policy.specific.versions)
        return sorted(v for v in candidates if v in wanted)
    num = 1
    if which == "latest" and policy.model_version_policy.latest.num_versions > 0:
        num = policy.model_version_policy.latest.num_versions
    return sorted(candidates)[-num:]


class ModelManager:
    """Keeps the served versions of every configured model in line with the file system."""

    def __init__(self, configs: List[model_server_config_pb2.ModelConfig],
                 poll_wait_seconds: float = 1.0,
                 config_loader: Optional[Callable[[], List[model_server_config_pb2.ModelConfig]]] = None,
                 config_poll_wait_seconds: float = 0.0):
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
        self._poll_wait_seconds = poll_wait_seconds
        self._config_loader = config_loader
        self._config_poll_wait_seconds = config_poll_wait_seconds
        self._last_config_load = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reconcile_lock = threading.Lock()
        self.apply_config(configs)

    # ---- configuration and polling -------------------------------------------------
    def apply_config(self, configs: List[model_server_config_pb2.ModelConfig]) -> None:
        """Replaces the set of models (ReloadConfig / models.config change) and reconciles."""
        for config in configs:
            if config.model_platform not in ("", "tensorflow"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Model {config.name}: unsupported model_platform "
                                   f"'{config.model_platform}' (only 'tensorflow')")
        names = [c.name for c in configs]
        if len(names) != len(set(names)):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Duplicate model names in config: {sorted(names)}")
        with self._reconcile_lock:
            with self._lock:
                for config in configs:
                    if config.name in self._models:
                        self._models[config.name].config = config
                    else:
                        self._models[config.name] = _Model(config)
                removed = [n for n in self._models if n not in names]
                for name in removed:
                    for version in list(self._models[name].servables):
                        log.info("Unloading servable version {name: %s version: %d} "
                                 "(model removed from config)", name, version)
                    del self._models[name]
            self._reconcile_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_wait_seconds):
            try:
                self._maybe_reload_config()
                with self._reconcile_lock:
                    self._reconcile_all()
            except Exception:  # keep polling: one bad pass must not stop future loads
                log.exception("File system poll failed")

    def _maybe_reload_config(self) -> None:
        if not self._config_loader or self._config_poll_wait_seconds <= 0:
            return
        if time.monotonic() - self._last_config_load < self._config_poll_wait_seconds:
            return
        self._last_config_load = time.monotonic()
        try:
            configs = self._config_loader()
        except Exception as e:  # a half-written or bad config keeps the previous one serving
            log.error("Keeping the current model config: %s", e)
            return
        current = {n: m.config for n, m in self._models.items()}
        if {c.name: c for c in configs} != current:
            log.info("Model config changed; now serving models %s", sorted(c.name for c in configs))
            self.apply_config(configs)

    def _reconcile_all(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._reconcile(model)

    def _reconcile(self, model: _Model) -> None:
        config = model.config
        if not os.path.isdir(config.base_path):
            if not model.warned_missing_base_path:
                log.warning("File system source: base path %s for model %s doesn't exist",
                            config.base_path, config.name)
                model.warned_missing_base_path = True
            on_disk = []
        else:
            model.warned_missing_base_path = False
            on_disk = versions_on_disk(config.base_path)
        for version in list(model.failed):
            if version not in on_disk:
                del model.failed[version]
            elif _dir_fingerprint(self._version_path(config, version)) != model.failed[version]:
                log.info("Version %d of model %s changed on disk; retrying", version, config.name)
                del model.failed[version]
        while True:  # a failed load removes a candidate, so this ends
            candidates = [v for v in on_disk if v not in model.failed]
            keep = aspired_versions(config, candidates)
            to_load = [v for v in keep if v not in model.servables]
            if not to_load:
                break
            for version in to_load:
                self._load(model, version)
        for version in sorted(model.servables):
            if version not in keep:
                with self._lock:
                    del model.servables[version]
                    model.status[version] = VersionStatus(_State.END)
                log.info("Unloaded servable version {name: %s version: %d}", config.name, version)

    @staticmethod
    def _version_path(config: model_server_config_pb2.ModelConfig, version: int) -> str:
        return os.path.join(config.base_path, str(version))

    def _load(self, model: _Model, version: int) -> None:
        name = model.config.name
        path = self._version_path(model.config, version)
        with self._lock:
            model.status[version] = VersionStatus(_State.LOADING)
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        start = time.monotonic()
        try:
            servable = Servable(name, version, path)
            replayed = warmup.replay_warmup_requests(path, servable.run)
        except Exception as e:  # any failure (corrupt files, bad warmup) skips this version
            code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
            message = e.message if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
            log.error("Loading servable version {name: %s version: %d} failed; skipping %s: %s",
                      name, version, path, message)
            with self._lock:
                model.status[version] = VersionStatus(_State.END, code, message)
            model.failed[version] = _dir_fingerprint(path)
            return
        with self._lock:
            model.servables[version] = servable
            model.status[version] = VersionStatus(_State.AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs "
                 "(%d warmup requests)", name, version, time.monotonic() - start, replayed)

    # ---- request-time lookups -------------------------------------------------------
    def model_names(self) -> List[str]:
        with self._lock:
            return sorted(self._models)

    def loaded_versions(self, name: str) -> List[int]:
        with self._lock:
            model = self._models.get(name)
            return sorted(model.servables) if model else []

    def resolve_label(self, name: str, label: str) -> int:
        with self._lock:
            model = self._models.get(name)
            labels = dict(model.config.version_labels) if model else {}
        if label not in labels:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label}")
        return labels[label]

    def get_servable(self, name: str, version: Optional[int] = None,
                     label: Optional[str] = None) -> Servable:
        """The servable a request addresses: a label, a version, or the latest loaded one."""
        if label:
            version = self.resolve_label(name, label)
        with self._lock:
            model = self._models.get(name)
            servables = model.servables if model else {}
            if version is None:
                if servables:
                    return servables[max(servables)]
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            if version in servables:
                return servables[version]
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: Specific({name}, {version})")

    def model_status(self, name: str, version: Optional[int] = None,
                     label: Optional[str] = None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusResponse with TF Serving's messages; versions newest first."""
        if label:
            version = self.resolve_label(name, label)
        with self._lock:
            model = self._models.get(name)
            statuses = dict(model.status) if model else {}
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        if version is not None:
            if version not in statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            statuses = {version: statuses[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(statuses, reverse=True):
            entry = response.model_version_status.add()
            entry.version = v
            entry.state = statuses[v].state
            entry.status.error_code = statuses[v].error_code.value[0]
            entry.status.error_message = statuses[v].error_message
        return response
