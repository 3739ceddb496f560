"""The Airflow DAG file in a real Airflow 2.10 (SQLite metadata DB in a temporary AIRFLOW_HOME):
the DagBag has the local run's DAG, and `airflow dags test` runs the image DAG end to end."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tests.support.helpers import subset_digits
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AIRFLOW = os.path.join(os.path.dirname(sys.executable), "airflow")
RESOLVER = "latest_blessed_model"


def tiny_digits(digits_dir: str, target: str, per_class: int = 20) -> str:
    """The first `per_class` real digits of each class: enough to train and bless in seconds."""
    return subset_digits(digits_dir, target, per_class)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, digits_dir):
    tmp = tmp_path_factory.mktemp("airflow")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(os.path.join(ROOT, "pipelines", "airflow_dag.py"), dags / "conveyor_dags.py")
    data = tiny_digits(digits_dir, str(tmp / "digits"))
    config = tmp / "image.json"
    config.write_text(json.dumps({"kind": "image", "data": data, "schedule": "@hourly",
                                  "retries": 3, "start_date": "2026-02-01",
                                  "train_steps": 30, "eval_steps": 5}))
    airflow_home = tmp / "airflow_home"
    airflow_home.mkdir()
    env = dict(os.environ, AIRFLOW_HOME=str(airflow_home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home}/airflow.db",
               # Importing TFX takes longer than the default 30 s on a busy machine.
               AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600",
               PYTHONPATH=ROOT, CONVEYOR_IMAGE_CONFIG=str(config),
               CONVEYOR_HOME=str(tmp / "conveyor_home"))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env, str(dags), tmp


def image_pipeline(data: str):
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline
    config = load_config("image", overrides={"data": data})
    return create_pipeline(config)


PROBE = """
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "schedule": str(dag.schedule_interval), "catchup": dag.catchup,
        "start": dag.start_date.isoformat(), "retries": [t.retries for t in dag.tasks],
        "max_active_runs": dag.max_active_runs}
print("RESULT" + json.dumps(out))
"""


def test_dagbag_has_both_pipelines_with_the_local_dag(airflow_env):
    env, dags, tmp = airflow_env
    run = subprocess.run([sys.executable, "-c", PROBE, dags], env=env, capture_output=True,
                         text=True, timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["errors"] == {}
    assert set(result["dags"]) == {"image_classifier", "text_classifier"}

    expected = {c.id: sorted(u.id for u in c.upstream_nodes)
                for c in image_pipeline(str(tmp / "digits")).components}
    image = result["dags"]["image_classifier"]
    assert image["tasks"] == expected
    assert image["schedule"] == "@hourly" and image["catchup"] is False
    assert image["start"].startswith("2026-02-01") and set(image["retries"]) == {3}
    assert image["max_active_runs"] == 1   # runs share HOME
    text = result["dags"]["text_classifier"]   # defaults: daily, no catchup
    assert text["schedule"] == "@daily" and text["catchup"] is False
    assert "TextExampleGen" in text["tasks"] and text["tasks"]["ServingPusher"]


def mlmd_shape(metadata_path: str, pipeline: str):
    """node id -> (execution type, state, {INPUT/OUTPUT key: artifact type}) of every execution.

    The AirflowDagRunner records runs with TFX's launcher contexts (run, component_run
    `<pipeline>.<run>.<node>`), the LocalDagRunner with pipeline_run and node `<pipeline>.<node>`;
    the node id is the last dotted part of either.
    """
    from conveyor.run_summary import open_store
    store = open_store(metadata_path)
    context_types = {t.id: t.name for t in store.get_context_types()}
    execution_types = {t.id: t.name for t in store.get_execution_types()}
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    pipeline_context = store.get_context_by_type_and_name("pipeline", pipeline)
    shape = {}
    for execution in store.get_executions_by_context(pipeline_context.id):
        node = next(c.name.rsplit(".", 1)[1] for c in store.get_contexts_by_execution(execution.id)
                    if context_types[c.type_id] in ("node", "component_run"))
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: artifact_types[a.type_id]
                     for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        inputs = {e.path.steps[0].key: artifacts[e.artifact_id] for e in events
                  if e.type == mlmd_pb2.Event.INPUT}
        outputs = {e.path.steps[0].key: artifacts[e.artifact_id] for e in events
                   if e.type == mlmd_pb2.Event.OUTPUT}
        assert node not in shape, f"{node} ran twice"
        shape[node] = (execution_types[execution.type_id],
                       mlmd_pb2.Execution.State.Name(execution.last_known_state), inputs, outputs)
    return shape


def expected_first_run_shape(pipeline):
    """What a first local run of `pipeline` records: every node COMPLETE with all its declared
    outputs and its inputs, except what the latest-blessed-model resolver feeds (nothing is
    blessed before the first run)."""
    shape = {}
    for c in pipeline.components:
        if c.id == RESOLVER:
            shape[c.id] = (c.type, "COMPLETE", {}, {})
            continue
        inputs = {k: ch.type_name for k, ch in c.inputs.items()
                  if getattr(ch, "producer_component_id", None) != RESOLVER}
        shape[c.id] = (c.type, "COMPLETE", inputs, {k: ch.type_name for k, ch in c.outputs.items()})
    return shape


def dags_test(env, tmp, date: str) -> str:
    """`airflow dags test image_classifier DATE` (one in-process DAG run); returns its log."""
    log = tmp / f"dags_test_{date}.log"
    with open(log, "w") as out:
        run = subprocess.run([AIRFLOW, "dags", "test", "image_classifier", date], env=env,
                             stdout=out, stderr=subprocess.STDOUT, timeout=900)
    assert run.returncode == 0, log.read_text()[-5000:]
    return log.read_text()


def test_airflow_dags_test_runs_the_image_dag_end_to_end(airflow_env):
    env, _, tmp = airflow_env
    dags_test(env, tmp, "2026-03-01")

    home = tmp / "conveyor_home"
    assert (home / "serving" / "image_classifier" / "1" / "saved_model.pb").is_file()

    # Airflow's own record: one successful task instance per pipeline node.
    pipeline = image_pipeline(str(tmp / "digits"))
    with sqlite3.connect(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"][len("sqlite:///"):]) as db:
        tasks = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ?",
                                ("image_classifier",)).fetchall())
    assert tasks == {c.id: "success" for c in pipeline.components}

    # MLMD: the same nodes, execution types, states and artifact types (keyed by input/output
    # name) as a first local run of the same pipeline definition.
    shape = mlmd_shape(str(home / "metadata.sqlite"), "image_classifier")
    expected = expected_first_run_shape(pipeline)
    # TFX's launcher behind AirflowDagRunner skips the executor of a resolver node and records
    # it as CACHED (the local runner says COMPLETE); it has no artifacts either way.
    assert shape[RESOLVER][1] == "CACHED"
    shape[RESOLVER] = shape[RESOLVER][:1] + ("COMPLETE",) + shape[RESOLVER][2:]
    assert shape == expected

    # The history commands read Airflow's run/component_run contexts like local ones.
    runs = subprocess.run([sys.executable, "-m", "conveyor.cli", "runs", "--home", str(home), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert runs.returncode == 0, runs.stderr[-3000:]
    [record] = json.loads(runs.stdout)
    assert record["pushed_version"] in ("1", 1), record
    assert {n["node"] for n in record["nodes"]} >= {"ImageExampleGen", "Trainer", "ServingPusher"}


def test_an_unchanged_second_dag_run_succeeds_from_the_cache(airflow_env):
    """The second run's Trainer is cached, so its Evaluator's candidate is also the latest
    blessed baseline: one artifact under two input keys, which TFX's own Airflow launcher
    failed on every try (pipelines/airflow_launcher.py)."""
    env, _, tmp = airflow_env
    log = dags_test(env, tmp, "2026-03-02")
    with sqlite3.connect(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"][len("sqlite:///"):]) as db:
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id LIKE ?",
                                 ("image_classifier", "%2026-03-02%")).fetchall())
    assert states and set(states.values()) == {"success"}, (states, log[-3000:])
    home = tmp / "conveyor_home"
    runs = subprocess.run([sys.executable, "-m", "conveyor.cli", "runs", "--home", str(home), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert runs.returncode == 0, runs.stderr[-3000:]
    first, second = json.loads(runs.stdout)
    nodes = {n["node"]: n["state"] for n in second["nodes"]}
    assert nodes["Trainer"] == "cached" and nodes["BaselineEvaluator"] == "complete", nodes
    assert second["pushed_version"] in (None, "1", 1), second   # the same model: version 1 keeps serving
    assert sorted(os.listdir(home / "serving" / "image_classifier")) == [".push.lock", "1"]
