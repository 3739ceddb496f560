"""A text run with ML Metadata on a real MariaDB server over TCP (one throwaway server for this
module; tests/support/mariadb.py), starting from a database that does not exist yet, and the
read side on it: `conveyor runs`, `lineage`, `report`, `monitor` and the dashboard with --config."""
import csv
import json
import os
import secrets
import time

import numpy as np

import pytest
import yaml

from pipelines.config import load_config
from tests.support.helpers import SHARED_DATA, TEXT_REVIEWS, pushed_first_run, run_cli
from tests.support.mariadb import PASSWORD_ENV, running_mariadb

NAME = "text_classifier"
DATABASE = "conveyor_text"
IMDB_CSV = os.path.join(SHARED_DATA, "imdb", "imdb_reviews_2500.csv")

pytestmark = pytest.mark.skipif(not os.path.exists(IMDB_CSV), reason=f"{IMDB_CSV} not available")


def _reviews(target: str) -> str:
    with open(IMDB_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:TEXT_REVIEWS]
    os.makedirs(target)
    with open(os.path.join(target, "reviews.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows((r["review"], r["sentiment"]) for r in rows)
    return target


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mysql_text")
    password = "pw-" + secrets.token_hex(12)
    env = {PASSWORD_ENV: password}
    with running_mariadb(str(root / "mariadb")) as server:
        server.add_user(password)
        home = str(root / "home")
        metadata = server.metadata(DATABASE, via="tcp")
        stdout = pushed_first_run("text", _reviews(str(root / "reviews")), home, settings={"metadata": metadata},
                                  env=env)
        config = os.path.join(home, "read-config.yaml")
        with open(config, "w", encoding="utf-8") as f:
            yaml.safe_dump({"kind": "text", "home": home, "metadata": metadata}, f)
        yield {"server": server, "home": home, "stdout": stdout, "config": config, "env": env,
               "password": password, "metadata": metadata}


def test_first_run_on_a_new_database_records_everything_there(text_run):
    assert f"MLMD MySQL database '{DATABASE}' at 127.0.0.1:{text_run['server'].port}" in text_run["stdout"]
    assert not os.path.exists(os.path.join(text_run["home"], "metadata.sqlite"))
    assert text_run["server"].sql(f"SHOW DATABASES LIKE '{DATABASE}'").strip() == DATABASE
    status, out, err = run_cli("runs", "--config", text_run["config"], "--json", env=text_run["env"])
    assert status == 0, err
    [run] = json.loads(out)
    assert run["pipeline"] == NAME and run["pushed_version"] == "1" and run["blessed"] is True
    assert {n["state"] for n in run["nodes"]} == {"complete"}, run["nodes"]


def test_lineage_and_report_read_the_mysql_store(text_run, tmp_path):
    status, out, err = run_cli("lineage", "--model", NAME, "--config", text_run["config"], "--json",
                               env=text_run["env"])
    assert status == 0, err
    lineage = json.loads(out)
    assert lineage["version"] == "1" and lineage["examples"]["example_count"] == TEXT_REVIEWS
    assert lineage["model"]["hyperparameters"]["kind"] == "text"
    report = tmp_path / "report.html"
    status, _, err = run_cli("report", "--config", text_run["config"], "--out", str(report), env=text_run["env"])
    assert status == 0, err
    assert lineage["pushed"]["run_id"] in report.read_text(encoding="utf-8")


def test_dashboard_reads_the_mysql_store(text_run, monkeypatch):
    from conveyor.ui import create_app
    monkeypatch.setenv(PASSWORD_ENV, text_run["password"])
    config = load_config("text", text_run["config"])
    client = create_app(config.home_dir, metadata=config.metadata).test_client()
    runs = client.get("/")
    assert runs.status_code == 200 and NAME in runs.get_data(as_text=True)
    models = client.get("/models")
    assert models.status_code == 200 and 'data-version="1"' in models.get_data(as_text=True)


def test_a_wrong_password_is_one_line_naming_the_database(text_run):
    status, _, err = run_cli("runs", "--config", text_run["config"], env={PASSWORD_ENV: "wrong"})
    assert status == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"conveyor runs: cannot open the ML Metadata store, MySQL database '{DATABASE}' at "
                           f"127.0.0.1:{text_run['server'].port} (user conveyor): "), line
    assert "Access denied for user 'conveyor'" in line and "(MySQL error 1045)" in line, line
    assert "wrong" not in line


def test_monitor_reads_the_offline_accuracy_from_the_mysql_store(text_run):
    from conveyor.feedback import FeedbackLog
    from conveyor.pictures import ACCURACY_NAMES
    from serving import contract
    from serving.predictor import PredictionEvent
    from serving.traffic import new_request_id
    home = text_run["home"]
    log = FeedbackLog(os.path.join(home, "feedback"))
    labels = []
    for i in range(40):   # 30 of 40 answered right: online accuracy 0.75
        request_id = new_request_id()
        log.record(PredictionEvent(request_id, NAME, 1, "", "serving_default", "",
                                   {contract.SERVING_INPUT["text"]: np.array([f"review {i}".encode()], dtype=object)},
                                   {"class_names": np.array([[b"positive"]]), "probabilities": np.array([[0.9, 0.1]])},
                                   time.time()))
        labels.append({"request_id": request_id, "label": "positive" if i < 30 else "negative"})
    status, answer = log.submit(NAME, {}, json.dumps(labels).encode())
    assert status == 200 and answer["accepted"] == 40, answer
    log.close()
    status, lineage_out, err = run_cli("lineage", "--model", NAME, "--config", text_run["config"], "--json",
                                       env=text_run["env"])
    assert status == 0, err
    offline = json.loads(lineage_out)["evaluation"]["candidate"]
    status, out, err = run_cli("monitor", "--model", NAME, "--config", text_run["config"], "--json",
                               env=text_run["env"])
    assert status in (0, 1), err
    [version] = json.loads(out)["versions"]
    accuracy = next(offline[k] for k in ACCURACY_NAMES if offline.get(k) is not None)
    assert version["n"] == 40 and version["accuracy"] == 0.75
    assert version["offline_accuracy"] == pytest.approx(accuracy), (version, offline)
    # Without the config (so without the MySQL store) there is no offline figure to compare.
    status, out, err = run_cli("monitor", "--model", NAME, "--home", home, "--json")
    assert status in (0, 1), err
    assert json.loads(out)["versions"][0]["offline_accuracy"] is None
