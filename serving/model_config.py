"""Read and write TF Serving's models.config (ModelServerConfig in protobuf text format).

The Pusher rewrites this file after every push so that real TF Serving
(`--model_config_file=.../models.config`) and Conveyor's own server see the same models.
"""
import os
import tempfile
from typing import Dict, List, Optional

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


def register_model(serving_dir: str, name: str) -> str:
    """Adds (or refreshes) `name` in serving_dir/models.config; returns the config path.

    Base paths are absolute so that the file works wherever the server is started;
    the deploy manifests mount HOME/serving at the same path inside the container.
    """
    path = os.path.join(serving_dir, MODELS_CONFIG)
    current = read_models_config(path) if os.path.exists(path) else None
    models = {c.name: c.base_path for c in (current.model_config_list.config if current else [])}
    models[name] = os.path.abspath(os.path.join(serving_dir, name))
    write_models_config(path, models, keep=current)
    return path
