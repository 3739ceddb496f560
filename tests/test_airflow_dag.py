"""The Airflow DAG file loads in the real Airflow 2.10 (SQLite metadata DB) with the local DAG."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AIRFLOW = os.path.join(os.path.dirname(sys.executable), "airflow")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, digits_dir):
    tmp = tmp_path_factory.mktemp("airflow")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(os.path.join(ROOT, "pipelines", "airflow_dag.py"), dags / "conveyor_dags.py")
    config = tmp / "image.json"
    config.write_text(json.dumps({"kind": "image", "data": digits_dir, "schedule": "@hourly",
                                  "retries": 3, "start_date": "2026-02-01"}))
    env = dict(os.environ, AIRFLOW_HOME=str(tmp / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags), PYTHONPATH=ROOT,
               CONVEYOR_IMAGE_CONFIG=str(config), CONVEYOR_HOME=str(tmp / "conveyor_home"))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env, str(dags)


PROBE = """
import json, sys
from airflow.models import DagBag
from conveyor.config import load_config
from pipelines.pipeline import create_pipeline
import os
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "schedule": str(dag.schedule_interval), "catchup": dag.catchup,
        "start": dag.start_date.isoformat(), "retries": [t.retries for t in dag.tasks]}
print("RESULT" + json.dumps(out))
"""


def test_dagbag_has_both_pipelines_with_the_local_dag(airflow_env, digits_dir):
    env, dags = airflow_env
    run = subprocess.run([sys.executable, "-c", PROBE, dags], env=env, capture_output=True,
                         text=True, timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["errors"] == {}
    assert set(result["dags"]) == {"image_classifier", "text_classifier"}

    from conveyor.config import load_config
    from pipelines.pipeline import create_pipeline
    config = load_config("image")
    config.data = digits_dir
    expected = {c.id: sorted(u.id for u in c.upstream_nodes) for c in create_pipeline(config).components}
    image = result["dags"]["image_classifier"]
    assert image["tasks"] == expected
    assert image["schedule"] == "@hourly" and image["catchup"] is False
    assert image["start"].startswith("2026-02-01") and set(image["retries"]) == {3}
    text = result["dags"]["text_classifier"]   # defaults: daily, no catchup
    assert text["schedule"] == "@daily" and text["catchup"] is False
    assert "TextExampleGen" in text["tasks"] and text["tasks"]["ServingPusher"]
