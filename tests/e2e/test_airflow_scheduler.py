"""The Conveyor image DAG under a real Airflow scheduler, as a team runs it in production:

  - Airflow 2.10's `airflow scheduler` with the LocalExecutor (tasks run in parallel worker
    processes), Airflow's own metadata DB on PostgreSQL (Debian's postgresql, a throwaway
    cluster: tests/support/postgres.py);
  - ML Metadata on MariaDB (tests/support/mariadb.py), the password read from an environment
    variable named in the config;
  - the DAG triggered by `airflow dags trigger` on tiny data; while the Trainer task trains,
    its task process is killed (SIGKILL): Airflow retries it and the DAG run succeeds.

Afterwards: Airflow's task instances (BaselineEvaluator and ConveyorInfraValidator overlapped in time; the
Trainer took two tries), the pushed version on disk (only complete versions), MLMD on MySQL
(one pushed model, produced by the completed Trainer execution, the killed one never
completed) and `conveyor runs` / `conveyor lineage` reading that store.
"""
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.helpers import subset_digits
from tests.support.mariadb import PASSWORD_ENV, dump, running_mariadb
from tests.support.postgres import running_postgres

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AIRFLOW = os.path.join(os.path.dirname(sys.executable), "airflow")
DAG_ID = "image_classifier"
RUN_ID = "conveyor_scheduler_test"
DATABASE = "conveyor_airflow"
# Enough steps that the Trainer is still training when the test kills it (it kills as soon
# as the task log says training started) and short enough for the retry.
TRAIN_STEPS = 300


def airflow_cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def query(server, sql: str, *params):
    with contextlib.closing(server.connect("airflow")) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def wait_for(what: str, check, timeout: float, scheduler, log_path, interval=0.5):
    """Polls `check()` until it returns something truthy; fails naming `what` (with the
    scheduler's log) on timeout or when the scheduler died."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if scheduler.poll() is not None:
            pytest.fail(f"airflow scheduler exited ({scheduler.returncode}) while waiting for {what}: "
                        f"{open(log_path).read()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {open(log_path).read()[-4000:]}")
        time.sleep(interval)


def task_log(airflow_home, task_id: str, attempt: int) -> str:
    """Airflow 2.10's task log file of one try (default log_filename_template)."""
    path = os.path.join(airflow_home, "logs", f"dag_id={DAG_ID}", f"run_id={RUN_ID}", f"task_id={task_id}",
                        f"attempt={attempt}.log")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, digits_dir):
    tmp = tmp_path_factory.mktemp("airflow_scheduler")
    password = "pw-" + secrets.token_hex(12)
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(os.path.join(ROOT, "pipelines", "airflow_dag.py"), dags / "conveyor_dags.py")
    data = subset_digits(digits_dir, str(tmp / "digits"), per_class=20)
    airflow_home = str(tmp / "airflow_home")
    home = str(tmp / "conveyor_home")
    with running_postgres() as postgres, running_mariadb(str(tmp / "mariadb")) as mariadb:
        postgres.create_database("airflow")
        mariadb.add_user(password)
        config = tmp / "image.json"
        # The text DAG in the same file: triggered only, so the scheduler does not start it.
        text_config = tmp / "text.json"
        text_config.write_text(json.dumps({"kind": "text", "schedule": None}))
        config.write_text(json.dumps({
            "kind": "image", "data": data, "schedule": None, "retries": 2, "retry_delay_seconds": 1,
            "start_date": "2026-02-01", "train_steps": TRAIN_STEPS, "eval_steps": 5,
            # Latency is judged by the infra validator's own tests; here tasks share 2 cores.
            "infra_p99_budget_ms": 10000, "metadata": mariadb.metadata(DATABASE, via="tcp")}))
        env = dict(
            os.environ, AIRFLOW_HOME=airflow_home, PYTHONPATH=ROOT, CONVEYOR_IMAGE_CONFIG=str(config),
            CONVEYOR_TEXT_CONFIG=str(text_config),
            CONVEYOR_HOME=home, **{PASSWORD_ENV: password},
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.sqlalchemy_url("airflow"),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags), AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False", AIRFLOW__CORE__PARALLELISM="4",
            # Importing TFX takes longer than the default 30 s on a busy machine; the DAG file
            # does not change, so it is parsed once, not every 30 s.
            AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600", AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT="600",
            AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="3600",
            # The README's setting: the killed try is failed by one zombie callback, not one per
            # 10 s until a (TFX-importing) parse of the DAG file processes the first.
            AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL="120")
        started = time.time()
        airflow_cli(env, "db", "migrate", timeout=600)
        timings = {"db_migrate_s": time.time() - started}

        log_path = str(tmp / "scheduler.log")
        with open(log_path, "w") as log:
            # --skip-serve-logs: no log server on Airflow's fixed port 8793 (parallel test runs).
            scheduler = subprocess.Popen([AIRFLOW, "scheduler", "--skip-serve-logs"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            started = time.time()
            wait_for("the scheduler to parse the DAG file",
                     lambda: query(postgres, "SELECT 1 FROM serialized_dag WHERE dag_id = %s", DAG_ID),
                     600, scheduler, log_path, interval=1)
            timings["dag_parsed_s"] = time.time() - started
            started = time.time()
            airflow_cli(env, "dags", "trigger", DAG_ID, "--run-id", RUN_ID)

            # Kill the Trainer's task process once its log says training started.
            wait_for("the Trainer to start training", lambda: "Training: " in task_log(airflow_home, "Trainer", 1),
                     900, scheduler, log_path, interval=0.2)
            [(pid, state)] = query(postgres, "SELECT pid, state FROM task_instance WHERE dag_id = %s AND "
                                   "run_id = %s AND task_id = 'Trainer'", DAG_ID, RUN_ID)
            assert state == "running" and pid, (pid, state)
            os.kill(pid, signal.SIGKILL)
            killed = {"pid": pid, "after_s": time.time() - started}

            [[dag_state]] = wait_for(
                "the DAG run to end",
                lambda: query(postgres, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s AND "
                              "state IN ('success', 'failed')", DAG_ID, RUN_ID),
                1500, scheduler, log_path, interval=2)
            timings["dag_run_s"] = time.time() - started
        finally:
            scheduler.send_signal(signal.SIGTERM)
            try:
                scheduler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait()

        tasks = {row[0]: row[1:] for row in query(
            postgres, "SELECT task_id, state, try_number, start_date, end_date FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s", DAG_ID, RUN_ID)}
        airflow_dump = postgres.dump("airflow")
        read_env = {**os.environ, PASSWORD_ENV: password}
        read = ["--config", str(config), "--home", home]
        runs = subprocess.run([sys.executable, "-m", "conveyor.cli", "runs", "--name", DAG_ID, "--json", *read],
                              capture_output=True, text=True, timeout=300, env=read_env)
        lineage = subprocess.run([sys.executable, "-m", "conveyor.cli", "lineage", "--model", DAG_ID, "--json",
                                  *read], capture_output=True, text=True, timeout=300, env=read_env)
        print(json.dumps({k: round(v, 1) for k, v in timings.items()}), killed)
        yield {"dag_state": dag_state, "tasks": tasks, "killed": killed, "home": home, "password": password,
               "airflow_home": airflow_home, "airflow_dump": airflow_dump, "mlmd_dump": dump(mariadb, DATABASE),
               "runs": runs, "lineage": lineage, "mariadb": mariadb, "config": config, "log": log_path}


def test_the_dag_run_succeeds_with_every_task_done(scheduled):
    assert scheduled["dag_state"] == "success", open(scheduled["log"]).read()[-4000:]
    states = {task: row[0] for task, row in scheduled["tasks"].items()}
    assert set(states.values()) == {"success"}, states
    assert {"ImageExampleGen", "Transform", "Trainer", "BaselineEvaluator", "ConveyorInfraValidator",
            "ServingPusher"} <= set(states)


def test_the_killed_trainer_task_was_retried(scheduled):
    state, tries, _, _ = scheduled["tasks"]["Trainer"]
    assert state == "success" and tries == 2, scheduled["tasks"]["Trainer"]
    first = task_log(scheduled["airflow_home"], "Trainer", 1)
    # The first try was killed while it trained: SIGKILL's status, and not all epochs logged.
    assert "Task exited with return code -9" in first, first[-3000:]
    epochs = int(re.search(r"Training: (\d+) epochs", first).group(1))
    assert f"Epoch {epochs}: " not in first, first[-3000:]
    second = task_log(scheduled["airflow_home"], "Trainer", 2)
    assert "retrying execution" in second and f"Epoch {epochs}: " in second, second[-3000:]
    others = {task: row[1] for task, row in scheduled["tasks"].items() if task != "Trainer"}
    assert set(others.values()) == {1}, others


def test_evaluator_and_infra_validator_ran_in_parallel(scheduled):
    _, _, eval_start, eval_end = scheduled["tasks"]["BaselineEvaluator"]
    _, _, infra_start, infra_end = scheduled["tasks"]["ConveyorInfraValidator"]
    assert max(eval_start, infra_start) < min(eval_end, infra_end), scheduled["tasks"]


def test_only_the_complete_version_is_pushed(scheduled):
    serving = os.path.join(scheduled["home"], "serving", DAG_ID)
    # The push lock, and no hidden .tmp- copy (components/pusher.py publishes by rename).
    assert sorted(os.listdir(serving)) == [".push.lock", "1"], os.listdir(serving)
    assert os.path.isfile(os.path.join(serving, "1", "saved_model.pb"))
    assert os.path.isdir(os.path.join(serving, "1", "variables"))


def test_mlmd_on_mysql_has_the_pushed_model_and_its_lineage(scheduled):
    runs, lineage = scheduled["runs"], scheduled["lineage"]
    assert runs.returncode == 0, runs.stderr[-3000:]
    [record] = json.loads(runs.stdout)
    # The AirflowDagRunner names its run context PIPELINE.RUN_ID.
    assert record["run_id"] == f"{DAG_ID}.{RUN_ID}" and str(record["pushed_version"]) == "1", record
    # One Trainer execution in the run: the retry reused the killed try's, and completed it.
    [trainer] = [n for n in record["nodes"] if n["node"] == "Trainer"]
    assert trainer["state"] == "complete", trainer
    assert lineage.returncode == 0, lineage.stderr[-3000:]
    chain = json.loads(lineage.stdout)
    assert chain["version"] == "1" and chain["pushed"]["run_id"] == f"{DAG_ID}.{RUN_ID}", chain
    assert chain["blessing"]["blessed"] is True and chain["evaluation"]["baseline_model"] is None, chain
    assert chain["examples"]["artifact_id"] and chain["model"]["artifact_id"], chain
    assert chain["infra_blessing"]["blessed"] is True, chain


def test_the_password_is_in_no_airflow_row_log_or_mlmd_row(scheduled):
    password = scheduled["password"]
    assert "task_instance" in scheduled["airflow_dump"]
    assert password not in scheduled["airflow_dump"]
    assert password not in scheduled["mlmd_dump"]
    for root in (scheduled["airflow_home"], scheduled["home"]):
        for folder, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    assert password.encode() not in f.read(), os.path.join(folder, name)
