"""ML Metadata on a real MariaDB server (Debian's mariadb-server, one throwaway server for this
module; tests/support/mariadb.py), for the image pipeline, moving from SQLite to MySQL:

  1  a run with MLMD in HOME/metadata.sqlite pushes version 1
  2  `conveyor metadata copy --to mysql://...` copies that store into an empty database
  3  `conveyor lineage` of version 1 reads the same from both stores
  4  the config now names the MySQL database (socket, password from an environment variable)
     and changes train_steps; the run is started from two processes at once: one runs, the
     other is refused by the HOME lock; the run reuses the copied cache entries up to
     Transform and judges its model against the copied blessed model
  5  the same run again is an unchanged rerun answered by the pre-flight check
"""
import json
import os
import secrets
import subprocess
import sys
import time

import pytest
import yaml

from tests.support.helpers import RUN_STEPS, pushed_first_run, run_cli, subset_digits
from tests.support.mariadb import PASSWORD_ENV, dump, running_mariadb

NAME = "image_classifier"
DATABASE = "conveyor_image"


def conveyor(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def read_json(*args, env=None):
    """A read command's --json output, run in this process."""
    status, out, err = run_cli(*args, env=env)
    assert status == 0, out[-3000:] + err[-3000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def history(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("mysql_image")
    password = "pw-" + secrets.token_hex(12)
    env = {PASSWORD_ENV: password}
    with running_mariadb(str(root / "mariadb")) as server:
        server.add_user(password)
        home = str(root / "home")
        data = subset_digits(digits_dir, str(root / "digits"), per_class=20)
        out = {"server": server, "home": home, "password": password, "outputs": []}
        started = time.time()
        out["outputs"].append(pushed_first_run("image", data, home))
        out["sqlite_run_s"] = time.time() - started
        out["lineage_sqlite"] = read_json("lineage", "--model", NAME, "--json", "--home", home)

        started = time.time()
        copied = conveyor("metadata", "copy", "--home", home, "--to", server.url(DATABASE),
                          "--password-env", PASSWORD_ENV, env=env)
        out["copy_s"] = time.time() - started
        out["copy"] = copied
        out["outputs"].append(copied.stdout + copied.stderr)
        config = os.path.join(home, "mysql-config.yaml")
        with open(config, "w", encoding="utf-8") as f:
            # Any accuracy change against the copied baseline is fine here: it must be judged, not beaten.
            yaml.safe_dump({"infra_p99_budget_ms": 10000, "regression_tolerance": 1.0,
                            "metadata": server.metadata(DATABASE)}, f)
        out["config"] = config
        read = ["--config", config, "--home", home]
        out["lineage_mysql_v1"] = read_json("lineage", "--model", NAME, "--version", "1", "--json", *read, env=env)

        # The config changed (train_steps): the run must run. Two processes start it at once.
        command = [sys.executable, "-m", "conveyor.cli", "run", "image", "--data", data, "--home", home,
                   "--config", config, "--train-steps", "31", *RUN_STEPS["image"][2:]]
        started = time.time()
        files = [(open(root / f"run{i}.out", "w+"), open(root / f"run{i}.err", "w+")) for i in range(2)]
        pair = [subprocess.Popen(command, stdout=o, stderr=e, text=True, env={**os.environ, **env})
                for o, e in files]
        out["pair"] = []
        for process, (o, e) in zip(pair, files):
            code = process.wait(timeout=900)
            o.seek(0), e.seek(0)
            out["pair"].append((code, o.read(), e.read()))
        out["mysql_run_s"] = time.time() - started
        out["outputs"] += [o + e for _, o, e in out["pair"]]

        started = time.time()
        again = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
        out["rerun_s"] = time.time() - started
        out["rerun"] = again
        out["outputs"].append(again.stdout + again.stderr)
        out["runs"] = read_json("runs", "--name", NAME, "--json", *read, env=env)
        out["diff"] = read_json("diff", "1", "2", "--name", NAME, "--json", *read, env=env)
        out["lineage_mysql"] = read_json("lineage", "--model", NAME, "--json", *read, env=env)
        out["dump"] = dump(server, DATABASE)
        print({k: round(v, 1) for k, v in out.items() if k.endswith("_s")})
        yield out


def test_copy_reports_what_it_copied(history):
    copied = history["copy"]
    assert copied.returncode == 0, copied.stderr
    line = copied.stdout.splitlines()[0]
    assert f"to MySQL database '{DATABASE}' at 127.0.0.1:" in line and " artifacts, " in line, line
    assert "metadata:\n" in copied.stdout and f"password_env: {PASSWORD_ENV}" in copied.stdout


def test_lineage_after_the_copy_equals_the_sqlite_lineage(history):
    # Same ids, URIs, times, metrics, verdicts: the whole JSON of `conveyor lineage`.
    assert history["lineage_mysql_v1"] == history["lineage_sqlite"]
    assert history["lineage_sqlite"]["version"] == "1"


def test_two_processes_one_home_one_runs_the_other_is_refused(history):
    codes = sorted(code for code, _, _ in history["pair"])
    assert codes == [0, 1], [(c, e[-500:]) for c, _, e in history["pair"]]
    refused = next(err for code, _, err in history["pair"] if code == 1)
    lines = [line for line in refused.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{history['home']} is in use by another conveyor run (pid " in lines[0], refused


def test_first_mysql_run_reuses_the_copied_cache_and_judges_against_the_copied_blessed_model(history):
    ran = next(out for code, out, _ in history["pair"] if code == 0)
    assert "MLMD MySQL database 'conveyor_image' at socket " in ran, ran[-2000:]
    assert "Pushed: version 2" in ran, ran[-3000:]
    assert f"runs --home {history['home']} --config CONFIG" in ran  # the hint names the store's config
    runs = history["runs"]
    copied_run, mysql_run, rerun = runs[0], runs[1], runs[2]
    assert copied_run["run_id"] == history["lineage_sqlite"]["pushed"]["run_id"]
    states = {n["node"]: n["state"] for n in mysql_run["nodes"]}
    # TFX's cache lookups found the copied executions: nothing before the Trainer ran again.
    assert {states[n] for n in ("ImageExampleGen", "StatisticsGen", "SchemaGen", "Transform")} == {"cached"}, states
    assert states["Trainer"] == "complete", states
    lineage = history["lineage_mysql"]
    assert lineage["version"] == "2"
    baseline = lineage["evaluation"]["baseline_model"]
    assert baseline["artifact_id"] == history["lineage_sqlite"]["model"]["artifact_id"]
    assert baseline["pushed_versions"] == ["1"]
    # The data side of the lineage is the copied one.
    assert lineage["examples"]["artifact_id"] == history["lineage_sqlite"]["examples"]["artifact_id"]
    assert rerun["run_id"] not in (copied_run["run_id"], mysql_run["run_id"])


def test_diff_on_mysql_compares_the_copied_run_with_the_mysql_run(history):
    changes = history["diff"]["config"]
    assert any(c["node"] == "Trainer" and c["key"].startswith("train_args") and "30" in json.dumps(c["a"])
               and "31" in json.dumps(c["b"]) for c in changes), changes


def test_unchanged_rerun_is_answered_by_the_preflight_check(history):
    again = history["rerun"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing changed since run" in again.stdout and "served version 2 unchanged" in again.stdout, again.stdout


def test_the_password_is_in_no_file_log_output_or_mlmd_row(history):
    password = history["password"].encode()
    for folder, _, names in os.walk(history["home"]):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                assert password not in f.read(), os.path.join(folder, name)
    for output in history["outputs"]:
        assert history["password"] not in output
    assert history["password"] not in history["dump"]
    # TFX's LocalDagRunner logs its connection config: the run log has it with the password hidden.
    logs = os.path.join(history["home"], "logs")
    text = "".join(open(os.path.join(logs, n), encoding="utf-8", errors="replace").read()
                   for n in os.listdir(logs) if n.startswith(NAME))
    assert 'password: "***"' in text
