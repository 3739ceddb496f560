"""deploy/: what can be checked without Docker. The compose file parses as YAML with the
services and volumes the README names, wired to each other (Airflow on the postgres service,
Conveyor's MLMD on the mysql service, one HOME volume at one path, no password in a file);
the Conveyor configs it uses load, compile to KFP without the MLMD connection, and make an
Airflow DagBag with both DAGs."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from pipelines.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
IN_CONTAINER = "/conveyor"  # where deploy/Dockerfile puts the repo


@pytest.fixture(scope="module")
def compose():
    with open(os.path.join(DEPLOY, "docker-compose.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _configs(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    return {kind: os.path.join(DEPLOY, os.path.relpath(env[f"CONVEYOR_{kind.upper()}_CONFIG"],
                                                       os.path.join(IN_CONTAINER, "deploy")))
            for kind in ("image", "text")}


def test_compose_services_and_volumes(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "mysql", "airflow-init", "airflow-scheduler", "airflow-webserver",
                             "tfserving"}
    assert set(compose["volumes"]) == {"postgres_data", "mysql_data", "conveyor_home"}
    for name in ("airflow-scheduler", "airflow-webserver", "tfserving"):
        assert any(v.startswith("conveyor_home:/conveyor_home") for v in services[name]["volumes"]), name
    scheduler = services["airflow-scheduler"]
    assert scheduler["command"] == "airflow scheduler"
    env = scheduler["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert re.fullmatch(r"postgresql\+psycopg2://airflow:\$\{AIRFLOW_DB_PASSWORD[^}]*\}@postgres:5432/airflow",
                        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "airflow"
    assert services["postgres"]["image"] == "postgres:15"  # the version tests/support/postgres.py runs
    # One webserver secret for all Airflow containers, or the UI cannot read task logs from
    # the scheduler's log server (403); both keys come from the compose environment.
    assert env["AIRFLOW__WEBSERVER__SECRET_KEY"].startswith("${AIRFLOW_SECRET_KEY")
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY")
    assert services["airflow-webserver"]["environment"] == env
    assert scheduler["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert "--model_config_file=/conveyor_home/serving/models.config" in services["tfserving"]["command"]
    # A killed task is failed once (zombie detection slower than a parse of the DAG file), the
    # DAGs run when deployed, and MLMD's MySQL client can log in (no caching_sha2_password).
    assert int(env["AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL"]) >= 60
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
    assert "--default-authentication-plugin=mysql_native_password" in services["mysql"]["command"]
    # A failed migration fails airflow-init (the scheduler then does not start).
    assert "|| true" not in services["airflow-init"]["command"]
    # Every password is a ${VARIABLE} of the compose environment.
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key and key != "MYSQL_RANDOM_ROOT_PASSWORD":
                assert str(value).startswith("${"), key


def test_conveyor_configs_point_at_the_compose_services(compose):
    services = compose["services"]
    mysql = services["mysql"]["environment"]
    env = services["airflow-scheduler"]["environment"]
    for kind, path in _configs(compose).items():
        config = load_config(kind, path)
        m = config.metadata
        assert (m.host, m.port, m.database, m.user) == ("mysql", 3306, mysql["MYSQL_DATABASE"], mysql["MYSQL_USER"])
        assert env[m.password_env] == "${MLMD_PASSWORD:?set MLMD_PASSWORD}"
        assert mysql["MYSQL_PASSWORD"].startswith("${MLMD_PASSWORD")
        assert config.home == "/conveyor_home" and config.data.startswith("/conveyor_data/")


def test_kfp_compile_leaves_the_mlmd_connection_to_kfp(compose, tmp_path, monkeypatch):
    from kubeflow.runner import compile_pipeline
    monkeypatch.delenv("CONVEYOR_MLMD_PASSWORD", raising=False)  # not needed to compile
    config = load_config("image", _configs(compose)["image"])
    path = compile_pipeline(config, str(tmp_path), pipeline_root="gs://bucket/conveyor")
    text = open(path, encoding="utf-8").read()
    job = json.loads(text)
    assert "ServingPusher" in job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "CONVEYOR_MLMD_PASSWORD" not in text and "mysql" not in text.lower()


PROBE = """
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
print("RESULT" + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                             "dags": {d: sorted(t.task_id for t in dag.tasks) for d, dag in bag.dags.items()}}))
"""


def test_airflow_imports_both_dags_with_the_deploy_configs(compose, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    os.symlink(os.path.join(ROOT, "pipelines", "airflow_dag.py"), dags / "conveyor_dags.py")
    configs = _configs(compose)
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600", PYTHONPATH=ROOT,
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db",
               CONVEYOR_IMAGE_CONFIG=configs["image"], CONVEYOR_TEXT_CONFIG=configs["text"],
               CONVEYOR_HOME=str(tmp_path / "home"), CONVEYOR_MLMD_PASSWORD="not-used-to-parse")
    run = subprocess.run([sys.executable, "-c", PROBE, str(dags)], env=env, capture_output=True, text=True,
                         timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["errors"] == {}
    assert set(result["dags"]) == {"image_classifier", "text_classifier"}
    assert "ServingPusher" in result["dags"]["image_classifier"]


def test_the_image_build_context_leaves_out_environments_and_homes():
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", ".tools", "conveyor_home", ".git"} <= ignored
