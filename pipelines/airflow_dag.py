"""Airflow DAGs `image_classifier` and `text_classifier` (TFX AirflowDagRunner).

Copy (or symlink) this file into the Airflow dags folder; the Airflow workers need this repo
installed (`pip install -e /path/to/conveyor`) or on PYTHONPATH. Settings come from the
environment (see pipelines/env_config.py):

  CONVEYOR_IMAGE_CONFIG / CONVEYOR_TEXT_CONFIG  YAML/JSON config of each pipeline
  CONVEYOR_CONFIG                               config for both (when the above are unset)
  CONVEYOR_HOME                                 overrides `home` (metadata.sqlite, serving/)

With `metadata:` set to a MySQL connection in the config, the variable its `password_env`
names must be set wherever the file is executed (scheduler, workers): the connection is
built from it there (pipelines/metadata_connection.py) and never written into the config.

Schedule, start date, retries, retry delay and catchup come from the config (default @daily,
no catchup; `schedule: null` = run only when triggered).
Importing TFX takes longer than Airflow's default 30 s DAG import timeout: raise
AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT (and the scheduler's dag_file_processor_timeout), and
AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL above the time a parse takes (README
"Airflow on PostgreSQL": otherwise one killed task uses up several retries).
Components run with pipelines/airflow_launcher.py's RetryingLauncher (retries work).
"""
import datetime

from pipelines.env_config import config_from_env


def build_dag(kind: str):
    """The Airflow DAG of the `kind` pipeline ("image" or "text"), configured from the
    environment (pipelines/env_config.py): one task per TFX component. Raises ConfigError."""
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from pipelines.airflow_launcher import RetryingLauncher
    from pipelines.pipeline import create_pipeline

    config = config_from_env(kind)
    dag_config = {
        "schedule_interval": config.schedule,
        "start_date": datetime.datetime.fromisoformat(config.start_date),
        "catchup": config.catchup,
        # One DAG run at a time: runs share HOME (pipeline root, serving/) and each run's
        # Evaluator judges against the model the run before it blessed.
        "max_active_runs": 1,
        "default_args": {"retries": config.retries,
                         "retry_delay": datetime.timedelta(seconds=config.retry_delay_seconds)},
    }
    # RetryingLauncher: TFX's own launcher cannot run a retried task (pipelines/airflow_launcher.py).
    runner_config = AirflowPipelineConfig(airflow_dag_config=dag_config,
                                          supported_launcher_classes=[RetryingLauncher])
    return AirflowDagRunner(runner_config).run(create_pipeline(config))


# Module-level DAG objects: Airflow's DagBag collects globals that are DAGs.
image_classifier = build_dag("image")
text_classifier = build_dag("text")
