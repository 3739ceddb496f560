"""The Config of a pipeline built by a runner file that another program executes (an Airflow
dags folder, the `tfx` CLI). Such files take no command-line flags, so the settings come from
the environment:

  CONVEYOR_IMAGE_CONFIG / CONVEYOR_TEXT_CONFIG  YAML/JSON config of that pipeline
  CONVEYOR_CONFIG                               config file used when the above is unset
  CONVEYOR_HOME                                 overrides `home` (metadata.sqlite, serving/)

With `metadata:` set to a MySQL connection in the config, the variable its `password_env`
names must be set wherever the file is executed (scheduler, workers): the connection is
built from it there (pipelines/metadata_connection.py) and never written into the config.
"""
import os

from pipelines.config import Config, load_config


def config_from_env(kind: str) -> Config:
    """The Config of `kind` from the environment variables above; raises ConfigError."""
    path = os.environ.get(f"CONVEYOR_{kind.upper()}_CONFIG") or os.environ.get("CONVEYOR_CONFIG")
    config = load_config(kind, path or None, {"home": os.environ.get("CONVEYOR_HOME") or None})
    # Absolute: the file is executed from another working directory than the config's author's.
    return config.with_local_data()
