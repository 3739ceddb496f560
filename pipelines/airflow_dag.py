"""Airflow DAGs `image_classifier` and `text_classifier` (TFX AirflowDagRunner).

Copy (or symlink) this file into the Airflow dags folder; the Airflow workers need this repo
installed (`pip install /path/to/conveyor`) or on PYTHONPATH. Settings from the environment:

  CONVEYOR_IMAGE_CONFIG / CONVEYOR_TEXT_CONFIG  YAML/JSON config of each pipeline
  CONVEYOR_CONFIG                               config for both (when the above are unset)
  CONVEYOR_HOME                                 overrides `home` (metadata.sqlite, serving/)

Schedule, start date, retries and catchup come from the config (default @daily, no catchup).
"""
import datetime
import os

from conveyor.config import load_config


def build_dag(kind: str):
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from conveyor.cli import default_data
    from pipelines.pipeline import create_pipeline

    path = os.environ.get(f"CONVEYOR_{kind.upper()}_CONFIG") or os.environ.get("CONVEYOR_CONFIG")
    config = load_config(kind, path, {"home": os.environ.get("CONVEYOR_HOME")})
    config.data = os.path.abspath(config.data) if config.data else default_data(kind, config.home)
    dag_config = {
        "schedule_interval": config.schedule,
        "start_date": datetime.datetime.fromisoformat(config.start_date),
        "catchup": config.catchup,
        "default_args": {"retries": config.retries},
    }
    return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(
        create_pipeline(config))


# Module-level DAG objects: Airflow's DagBag collects globals that are DAGs.
image_classifier = build_dag("image")
text_classifier = build_dag("text")
