"""Read and write TF Serving's models.config (ModelServerConfig in protobuf text format).

The Pusher rewrites this file after every push so that real TF Serving
(`--model_config_file=.../models.config`) and Conveyor's own server see the same models.

Canary releases are expressed in TF Serving's own terms, so real TF Serving serves them
too: a `model_version_policy { specific { versions: S versions: C } }` keeps both versions
loaded (the default policy, latest 1, would unload S), and the version labels `stable` = S
and `canary` = C name them (TF Serving only accepts labels on AVAILABLE versions,
model_servers/server_core.cc UpdateModelVersionLabelMap, hence the two-step write of
`canary_release`). Every rewrite is one atomic rename under a lock file, and servers pick it
up by polling (--model_config_file_poll_wait_seconds).
"""
import contextlib
import fcntl
import os
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG = "models.config"


class ModelConfigError(ValueError):
    """models.config could not be parsed; the message names the file and the problem."""


def read_models_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads a models.config file (--model_config_file).

    Args:
      path: a ModelServerConfig in protobuf text format, UTF-8.
    Returns:
      The parsed ModelServerConfig (`model_config_list` or `custom_model_config`, unchecked).
    Raises:
      ModelConfigError: the file is missing, unreadable, not UTF-8 or not a valid
        ModelServerConfig; the one-line message names the file.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), config)
    except FileNotFoundError as e:
        raise ModelConfigError(f"{path}: no such model config file") from e
    except OSError as e:
        raise ModelConfigError(f"{path}: cannot read the model config file: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ModelConfigError(f"{path}: not UTF-8 text (byte {e.start}): not a ModelServerConfig") from e
    except text_format.ParseError as e:
        raise ModelConfigError(f"{path}: not a valid ModelServerConfig: {e}") from e
    return config


def write_models_config(path: str, models: Dict[str, str],
                        keep: Optional[model_server_config_pb2.ModelServerConfig] = None) -> None:
    """Writes models.config listing `models` ({name: base_path}), atomically.

    Entries already in `keep` retain their version policy and labels; new ones get
    TF Serving's default policy (serve the latest version).
    """
    existing = {}
    if keep is not None:
        existing = {c.name: c for c in keep.model_config_list.config}
    config = model_server_config_pb2.ModelServerConfig()
    for name in sorted(models):
        entry = config.model_config_list.config.add()
        if name in existing:
            entry.CopyFrom(existing[name])
        entry.name = name
        entry.base_path = models[name]
        entry.model_platform = "tensorflow"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".models.config.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    os.replace(tmp, path)


STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
_LOCK_FILE = ".models.config.lock"


class ReleaseError(ValueError):
    """A promote/rollback that has nothing to act on; the message names the model."""


@contextlib.contextmanager
def _locked(serving_dir: str) -> Iterator[None]:
    """One writer of serving_dir/models.config at a time (pushes, promote, rollback)."""
    os.makedirs(serving_dir, exist_ok=True)
    with open(os.path.join(serving_dir, _LOCK_FILE), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def update_model(serving_dir: str, name: str,
                 edit: Callable[[model_server_config_pb2.ModelConfig], None] = lambda entry: None
                 ) -> model_server_config_pb2.ModelConfig:
    """Adds (or refreshes) `name` in serving_dir/models.config and applies `edit` to its entry,
    as one atomic rewrite under the config's lock file.

    Args:
      serving_dir: the folder of models.config and the model folders (HOME/serving).
      name: the model; its base path is serving_dir/name, absolute (the file works wherever
        the server is started; the deploy manifests mount HOME/serving at the same path).
      edit: changes the entry in place (policy, labels); it may raise to abort the rewrite.
    Returns:
      The entry as written.
    Raises:
      ModelConfigError: the existing file cannot be parsed (it is left as it is).
      Whatever `edit` raises (nothing is written then).
    """
    path = os.path.join(serving_dir, MODELS_CONFIG)
    with _locked(serving_dir):
        current = read_models_config(path) if os.path.exists(path) else None
        models = {c.name: c.base_path for c in (current.model_config_list.config if current else [])}
        models[name] = os.path.abspath(os.path.join(serving_dir, name))
        keep = model_server_config_pb2.ModelServerConfig()
        if current is not None:
            keep.CopyFrom(current)
        entry = next((c for c in keep.model_config_list.config if c.name == name), None)
        if entry is None:
            entry = keep.model_config_list.config.add(name=name)
        edit(entry)
        write_models_config(path, models, keep=keep)
        return entry


def register_model(serving_dir: str, name: str) -> str:
    """Adds (or refreshes) `name` in serving_dir/models.config; returns the config path.
    The entry keeps its version policy and labels (see update_model)."""
    update_model(serving_dir, name)
    return os.path.join(serving_dir, MODELS_CONFIG)


def release_labels(entry: model_server_config_pb2.ModelConfig) -> Tuple[Optional[int], Optional[int]]:
    """(stable version, canary version) of a models.config entry; None where a label is absent."""
    labels = entry.version_labels
    return labels.get(STABLE_LABEL), labels.get(CANARY_LABEL)


def set_release(entry: model_server_config_pb2.ModelConfig, stable: int,
                canary: Optional[int] = None, also_load: Tuple[int, ...] = ()) -> None:
    """Makes `entry` serve `stable` (label `stable`) and `canary` (label `canary`, when given):
    a specific version policy of exactly those versions (plus `also_load`, unlabelled), other
    labels kept."""
    versions = sorted({stable, *([canary] if canary is not None else []), *also_load})
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(versions)
    _drop_label(entry, CANARY_LABEL)
    entry.version_labels[STABLE_LABEL] = stable
    if canary is not None:
        entry.version_labels[CANARY_LABEL] = canary


def clear_release(entry: model_server_config_pb2.ModelConfig) -> None:
    """Ends a release on `entry`: TF Serving's default policy (latest version) and no
    `stable`/`canary` labels, when it had a `stable` label (a policy written by hand, without
    Conveyor's labels, is kept)."""
    if STABLE_LABEL not in entry.version_labels:
        return
    entry.ClearField("model_version_policy")
    _drop_label(entry, STABLE_LABEL)
    _drop_label(entry, CANARY_LABEL)


def _drop_label(entry: model_server_config_pb2.ModelConfig, label: str) -> None:
    if label in entry.version_labels:
        del entry.version_labels[label]


def promote_canary(serving_dir: str, name: str) -> Tuple[int, int]:
    """`conveyor promote`: the canary becomes the only (stable) version; the old stable unloads.

    Returns:
      (old stable version, promoted version).
    Raises:
      ReleaseError: `name` is not in models.config or has no canary.
    """
    return _end_release(serving_dir, name, promote=True)


def rollback_canary(serving_dir: str, name: str) -> Tuple[int, int]:
    """`conveyor rollback`: the canary leaves serving; the stable version stays the only one.

    Returns:
      (stable version kept, canary version removed).
    Raises:
      ReleaseError: `name` is not in models.config or has no canary.
    """
    return _end_release(serving_dir, name, promote=False)


def _end_release(serving_dir: str, name: str, promote: bool) -> Tuple[int, int]:
    path = os.path.join(serving_dir, MODELS_CONFIG)
    if not os.path.exists(path) or name not in {
            c.name for c in read_models_config(path).model_config_list.config}:
        raise ReleaseError(f"model {name} is not in {path}")
    found: List[Tuple[int, int]] = []

    def edit(entry: model_server_config_pb2.ModelConfig) -> None:
        stable, canary = release_labels(entry)
        if canary is None or stable is None:
            raise ReleaseError(f"model {name} has no canary in {path} (labels: "
                               f"{dict(entry.version_labels) or 'none'})")
        set_release(entry, canary if promote else stable)
        found.append((stable, canary))

    update_model(serving_dir, name, edit)
    return found[0]
