"""Loads, versions and unloads models the way TF Serving 2.16's ServerCore does.

TF Serving is a C++ binary, so this re-implements its model management: file-system polling
of each model's base path with its version-directory parsing
(file_system_storage_path_source.cc), `model_version_policy` (latest / specific / all),
`version_labels` (which must name available versions, server_core.cc), load retries
(loader_harness.cc), warmup replay and the GetModelStatus view of every version's state.

Switching versions is atomic: a new version is loaded and warmed up before it is
published, and an old one is only removed from the routing table afterwards, so a
request never finds a model without a servable during a switch. Requests already
holding an old Servable keep running on it.

One deliberate difference from TF Serving: a version directory that fails to load
is skipped when applying the version policy, so a corrupt newest version leaves the
previous one serving instead of leaving the model with nothing (TF Serving unloads
the old version once it stops being aspired). A failed version is tried again whenever
its directory changes, so a version that was still being copied in is never skipped for good.
"""
import ctypes
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import grpc
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import warmup
from serving.errors import ServingError
from serving.model_config import CANARY_LABEL, STABLE_LABEL
from serving.servables import Servable, load_servable

log = logging.getLogger("conveyor.serving")

_State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionStatus:
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class LoadOptions:
    """How versions are loaded (flags of tensorflow_model_server; see serving/server.py).

    max_num_load_retries / load_retry_interval_micros: a failed load is retried this many
    times, this far apart (TF Serving: --max_num_load_retries, default 5, and
    --load_retry_interval_micros, default 60 s); while retrying the version is LOADING.
    """
    max_num_load_retries: int = 0
    load_retry_interval_micros: int = 60_000_000
    enable_model_warmup: bool = True
    prefer_tflite_model: bool = False
    num_tflite_interpreters: int = 1
    session_config: Optional[config_pb2.ConfigProto] = None
    saved_model_tags: Tuple[str, ...] = ("serve",)
    num_request_iterations_for_warmup: int = 1
    allow_version_labels_for_unavailable_models: bool = False


class _Model:
    """Mutable per-model bookkeeping; only the polling thread writes it (under the lock)."""

    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.config = config
        self.servables: Dict[int, Servable] = {}
        self.status: Dict[int, VersionStatus] = {}
        # version -> fingerprint of its directory taken *before* the failed load, so a
        # directory still being copied when it was loaded differs next time and is retried.
        self.failed: Dict[int, tuple] = {}
        self.labels: Dict[str, int] = {}
        self.warned_missing_base_path = False


def _dir_fingerprint(path: str) -> tuple:
    """Changes when any file or directory under `path` is added, removed, resized or touched."""
    stamps = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            stamps.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamps))


def _release_memory() -> None:
    """Collects the unloaded version's graph and session and hands the freed heap back.

    Without malloc_trim glibc keeps the freed pages of every unloaded graph, so the resident
    size grew by ~0.3-0.7 MB per reload although nothing leaked (measured on the text model).
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def parse_version(name: str) -> Optional[int]:
    """The version number of a directory name, or None when it is not one.

    TF Serving parses names with strings::safe_strto64
    (sources/storage_path/file_system_storage_path_source.cc ParseVersionNumber): optional
    surrounding spaces, an optional '-', decimal digits, within int64. So `00000123` is
    version 123, and `.tmp-3` or `v1` are not versions.
    """
    text = name.strip(" \t\n\v\f\r")
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(text)
    return value if -(2 ** 63) <= value < 2 ** 63 else None


def version_dirs(base_path: str) -> Dict[int, str]:
    """{version: directory name} of the version directories under `base_path`.

    On duplicates (`1` and `01`) one directory is kept, the last in name order, with a
    warning, as TF Serving's IndexChildrenByVersion does. Missing base path: {}.
    """
    try:
        names = sorted(os.listdir(base_path))
    except OSError:
        return {}
    found: Dict[int, str] = {}
    for name in names:
        version = parse_version(name)
        if version is None or not os.path.isdir(os.path.join(base_path, name)):
            continue
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded from "
                        "%s, %s will be ignored.", version, name, found[version])
        found[version] = name
    return found


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


# How many removed models keep answering GetModelStatus with their versions' END states.
# TF Serving's ServableStateMonitor never forgets a servable (model_servers/server_core.cc
# keeps one monitor for the server's life); a bound keeps a config that churns through model
# names from growing without limit. The oldest removal is forgotten first.
MAX_REMOVED_MODELS = 256

# on_unload(model name, version) is called after a version leaves the routing table.
UnloadHook = Callable[[str, int], None]


class ModelManager:
    """Keeps the served versions of every configured model in line with the file system.

    Args:
      configs: the ModelConfigs to serve (model_platform "tensorflow" or "tflite").
      poll_wait_seconds: interval between file-system polls (0: poll once, at start).
      config_loader: re-reads the model config file; with config_poll_wait_seconds > 0 it is
        polled, and models added to / removed from it are loaded / unloaded.
      load_options: retries, warmup, TFLite and session options (LoadOptions).
      on_unload: UnloadHook, e.g. to drop the version's metric series.
    Raises:
      ServingError: the configs are invalid, or a version label points at a version that is
        not available (FAILED_PRECONDITION, unless allow_version_labels_for_unavailable_models).
    """

    def __init__(self, configs: List[model_server_config_pb2.ModelConfig],
                 poll_wait_seconds: float = 1.0,
                 config_loader: Optional[Callable[[], List[model_server_config_pb2.ModelConfig]]] = None,
                 config_poll_wait_seconds: float = 0.0,
                 load_options: Optional[LoadOptions] = None,
                 on_unload: Optional[UnloadHook] = None):
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
        # removed model name -> its versions' last states (all END), for model_status
        self._removed: "OrderedDict[str, Dict[int, VersionStatus]]" = OrderedDict()
        self._poll_wait_seconds = poll_wait_seconds
        self._config_loader = config_loader
        self._config_poll_wait_seconds = config_poll_wait_seconds
        self._last_config_load = time.monotonic()
        self._load_options = load_options or LoadOptions()
        self._on_unload = on_unload
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reconcile_lock = threading.Lock()
        self.apply_config(configs)

    # ---- configuration and polling -------------------------------------------------
    def apply_config(self, configs: List[model_server_config_pb2.ModelConfig],
                     require_available: bool = False) -> None:
        """Replaces the set of models (ReloadConfig / models.config change) and reconciles.

        Returns once every aspired version has been loaded or has failed all its retries, as
        TF Serving's ServerCore::ReloadConfig waits for new models. With `require_available`
        (ReloadConfig), a model left without an available version is an error.
        Raises:
          ServingError(INVALID_ARGUMENT): bad platform or a name listed twice ("Illegal to list
            model NAME multiple times in config list", server_core.cc; nothing changes).
          ServingError(FAILED_PRECONDITION): a version label names a version that is not
            available (the models are loaded; the labels of that model keep their old values).
          ServingError(UNKNOWN): "N model(s) did not become available: {...}" when a model of
            the config has no available version (server_core.cc WaitUntilModelsAvailable).
        """
        for config in configs:
            if config.model_platform not in ("", "tensorflow", "tflite"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Model {config.name}: unsupported model_platform "
                                   f"'{config.model_platform}' (only 'tensorflow' or 'tflite')")
        names = [c.name for c in configs]
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:  # server_core.cc ValidateModelConfigList
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Illegal to list model {duplicate} multiple times in config list")
        with self._reconcile_lock:
            with self._lock:
                for config in configs:
                    self._removed.pop(config.name, None)
                    if config.name in self._models:
                        self._models[config.name].config = config
                    else:
                        self._models[config.name] = _Model(config)
                removed = [self._models.pop(n) for n in list(self._models) if n not in names]
                for model in removed:  # in the same lock: a status request sees one or the other
                    self._remember_removed(model)
            for model in removed:
                for version in sorted(model.servables):
                    log.info("Unloading servable version {name: %s version: %d} "
                             "(model removed from config)", model.config.name, version)
                    self._unloaded(model, version)
            self._sync_all()
        if not require_available:
            return
        unavailable = []
        with self._lock:
            for name in names:
                model = self._models[name]
                if not model.servables:
                    failed = sorted(v for v, s in model.status.items() if s.error_message)
                    if failed:
                        for v in failed:
                            unavailable.append(f"{{name: {name} version: {v}}} due to error: "
                                               f"{model.status[v].error_code.name}: "
                                               f"{model.status[v].error_message}")
                    else:
                        unavailable.append(f"{{name: {name}}} no version found under "
                                           f"{model.config.base_path}")
        if unavailable:
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"{len([n for n in names if not self._models[n].servables])} "
                               f"model(s) did not become available: {{"
                               + "".join(f"{{{u}}}, " for u in unavailable) + "}")

    def _remember_removed(self, model: _Model) -> None:
        """Keeps a removed model's version states, every one END (errors kept), for
        model_status; at most MAX_REMOVED_MODELS models, the oldest removal forgotten first.
        The caller holds self._lock."""
        if not model.status:
            return
        self._removed[model.config.name] = {
            v: replace(s, state=_State.END) for v, s in model.status.items()}
        self._removed.move_to_end(model.config.name)
        while len(self._removed) > MAX_REMOVED_MODELS:
            self._removed.popitem(last=False)

    def _update_labels(self) -> None:
        """ServerCore::UpdateModelVersionLabelMap: labels must point at available versions."""
        allow = self._load_options.allow_version_labels_for_unavailable_models
        error = None
        with self._lock:
            for model in self._models.values():
                labels = {}
                for label, version in model.config.version_labels.items():
                    moved = label in model.labels and model.labels[label] != version
                    if version not in model.servables and not (allow and not moved):
                        error = error or ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model "
                            f"{model.config.name}, which is not currently available for inference")
                        labels = None
                        break
                    labels[label] = version
                if labels is not None:
                    model.labels = labels
        if error:
            raise error

    def start(self) -> None:
        """Starts polling (when poll_wait_seconds > 0; 0 means the one poll already done)."""
        if self._poll_wait_seconds > 0:
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
                    self._sync_all()
            except ServingError as e:
                log.error("%s", e.message)
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
            try:
                self.apply_config(configs)
            except ServingError as e:
                log.error("%s", e.message)

    def _sync_all(self) -> None:
        """Loads what the policies want, moves the labels, then unloads what they no longer
        want: a label moving off a version that unloads (`conveyor promote` / `rollback`)
        points at its new, loaded version before the old one leaves, so no request that
        names the label finds it unavailable. The caller holds the reconcile lock."""
        self._reconcile_all(unload=False)
        try:
            self._update_labels()
        finally:
            self._reconcile_all(unload=True)

    def _reconcile_all(self, unload: bool = True) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            if self._stop.is_set():
                return
            self._reconcile(model, unload)

    def _reconcile(self, model: _Model, unload: bool = True) -> None:
        config = model.config
        if not os.path.isdir(config.base_path):
            if not model.warned_missing_base_path:
                log.warning("File system source: base path %s for model %s doesn't exist",
                            config.base_path, config.name)
                model.warned_missing_base_path = True
            dirs: Dict[int, str] = {}
        else:
            model.warned_missing_base_path = False
            dirs = version_dirs(config.base_path)
        for version in list(model.failed):
            if version not in dirs:
                del model.failed[version]
            elif _dir_fingerprint(os.path.join(config.base_path, dirs[version])) != model.failed[version]:
                log.info("Version %d of model %s changed on disk; retrying", version, config.name)
                del model.failed[version]
        while True:  # a failed load removes a candidate, so this ends
            candidates = [v for v in dirs if v not in model.failed]
            keep = aspired_versions(config, candidates)
            to_load = [v for v in keep if v not in model.servables]
            if not to_load or self._stop.is_set():
                break
            for version in to_load:
                self._load(model, version, os.path.join(config.base_path, dirs[version]))
        if not unload:
            return
        for version in sorted(model.servables):
            if version not in keep:
                self._unloaded(model, version)

    def _unloaded(self, model: _Model, version: int) -> None:
        """Drops a version from the routing table; in-flight requests finish on it."""
        with self._lock:
            model.servables.pop(version, None)
            model.status[version] = VersionStatus(_State.END)
        log.info("Unloaded servable version {name: %s version: %d}", model.config.name, version)
        if self._on_unload is not None:
            self._on_unload(model.config.name, version)
        _release_memory()

    def _load(self, model: _Model, version: int, path: str) -> None:
        """Loads (and warms up) one version, retrying as --max_num_load_retries says."""
        name = model.config.name
        options = self._load_options
        with self._lock:
            model.status[version] = VersionStatus(_State.LOADING)
        attempts = 1 + max(0, options.max_num_load_retries)
        for attempt in range(attempts):
            fingerprint = _dir_fingerprint(path)
            log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
            start = time.monotonic()
            try:
                servable = load_servable(
                    name, version, path,
                    prefer_tflite=options.prefer_tflite_model or model.config.model_platform == "tflite",
                    num_tflite_interpreters=options.num_tflite_interpreters,
                    session_config=options.session_config, tags=options.saved_model_tags)
                replayed = 0
                if options.enable_model_warmup:
                    for _ in range(max(1, options.num_request_iterations_for_warmup)):
                        replayed = warmup.replay_warmup_requests(path, servable.run)
            except Exception as e:  # any failure (corrupt files, bad warmup) fails this attempt
                code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
                message = e.message if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
                message = " ".join(message.split())
                if attempt + 1 < attempts:
                    log.warning("Loading servable version {name: %s version: %d} failed (%s); "
                                "retry %d of %d in %.1fs", name, version, message, attempt + 1,
                                attempts - 1, options.load_retry_interval_micros / 1e6)
                    if self._stop.wait(max(0, options.load_retry_interval_micros) / 1e6):
                        return
                    continue
                log.error("Loading servable version {name: %s version: %d} failed; skipping %s: %s",
                          name, version, path, message)
                with self._lock:
                    model.status[version] = VersionStatus(_State.END, code, message)
                model.failed[version] = fingerprint
                return
            with self._lock:
                model.servables[version] = servable
                model.status[version] = VersionStatus(_State.AVAILABLE)
            log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs "
                     "(%d warmup requests)", name, version, time.monotonic() - start, replayed)
            return

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
            labels = dict(model.labels) if model else {}
        if label not in labels:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label}")
        return labels[label]

    def get_servable(self, name: str, version: Optional[int] = None,
                     label: Optional[str] = None) -> Servable:
        """The servable a request addresses: a label, a version, or the latest loaded one.
        A label is resolved and its version looked up under one lock, so a label that moves
        while a version unloads never sends a request to the unloaded one."""
        with self._lock:
            model = self._models.get(name)
            if label:
                labels = model.labels if model else {}
                if label not in labels:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {label}")
                version = labels[label]
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

    def route(self, name: str, canary_share: float, draw: float) -> Tuple[Servable, str]:
        """The servable of an unversioned request under a traffic split (Conveyor extension).

        Args:
          name: the model.
          canary_share: share of unversioned requests for the canary, 0..1.
          draw: this request's number in [0, 1) (random, or the hash of its unit key).
        Returns:
          (servable, arm): when the model's `canary` and `stable` labels both name loaded
          versions, the canary's servable and "canary" if draw < canary_share, else the
          stable one and "stable"; with only a loaded `stable` (a rollback or promote in
          progress or done), stable's servable and ""; otherwise TF Serving's rule (the
          latest loaded version) and "" (no split happened).
        Raises:
          ServingError(NOT_FOUND): the model has no loaded version.
        """
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                canary = model.labels.get(CANARY_LABEL)
                stable = model.labels.get(STABLE_LABEL)
                if canary in model.servables and stable in model.servables:
                    if draw < canary_share:
                        return model.servables[canary], CANARY_LABEL
                    return model.servables[stable], STABLE_LABEL
                if stable in model.servables:
                    return model.servables[stable], ""
        return self.get_servable(name), ""

    def model_status(self, name: str, version: Optional[int] = None,
                     label: Optional[str] = None) -> get_model_status_pb2.GetModelStatusResponse:
        """The GetModelStatus answer for a model, as TF Serving 2.16 gives it.

        Args:
          name: the model name.
          version: one version, or None for all the model's versions.
          label: a version label (resolved first; wins over `version`).
        Returns:
          GetModelStatusResponse, versions newest first. A model removed from the config
          answers with its versions' last states, all END (TF Serving's servable state
          monitor keeps them; see MAX_REMOVED_MODELS).
        Raises:
          ServingError(NOT_FOUND): the model was never configured (or its removal was
            forgotten), or has no such version — TF Serving's messages.
          ServingError(INVALID_ARGUMENT): an unknown label.
        """
        if label:
            version = self.resolve_label(name, label)
        with self._lock:
            model = self._models.get(name)
            statuses = dict(model.status) if model else dict(self._removed.get(name, {}))
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
