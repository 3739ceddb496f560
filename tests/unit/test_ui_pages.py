"""`conveyor ui` pages on an MLMD store written by hand (tests/support/mlmd_records): every
string from MLMD and models.config is escaped, the live versions follow models.config's
policy, the pages are read-only. The browser tests on real runs are in tests/e2e/test_lineage.py."""
import os

from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.ui import create_app, live_versions
from serving.model_config import write_models_config
from tests.support import mlmd_records as rec

EVIL = "<b>x<b>"


def _home(tmp_path):
    home = str(tmp_path / "home")
    store = rec.sqlite_store(os.path.join(home, "metadata.sqlite"))
    for i, run_name in enumerate((f"r1-{EVIL}", "r2")):
        run = rec.run_context(store, run_name)
        examples = rec.artifact(store, "Examples", f"/data/{EVIL}/{i}")
        rec.execution(store, "p", run, "ImageExampleGen", outputs=[(examples, ["examples", 0])],
                      input_base=f"/data/{EVIL}{i}")
        rec.execution(store, "p", run, "Trainer", inputs=[(examples, ["examples", 0])],
                      state=pb.Execution.COMPLETE if i == 0 else pb.Execution.FAILED)
    return home


def test_pages_escape_mlmd_strings(tmp_path):
    client = create_app(_home(tmp_path)).test_client()
    runs = client.get("/")
    text = runs.get_data(as_text=True)
    assert runs.status_code == 200 and EVIL not in text and "r1-&lt;b&gt;x&lt;b&gt;" in text
    assert text.index('data-run="r2"') < text.index('data-run="r1-')  # newest first
    assert ">failed<" in text  # the second run's Trainer failed
    compare = client.get("/compare", query_string={"pipeline": "p", "a": "1", "b": "2"})
    text = compare.get_data(as_text=True)
    assert compare.status_code == 200 and EVIL not in text
    assert "/data/&lt;b&gt;x&lt;b&gt;0" in text and "/data/&lt;b&gt;x&lt;b&gt;1" in text
    missing = client.get("/models/nothing/1")
    assert missing.status_code == 404 and "no model &#39;nothing&#39;" in missing.get_data(as_text=True)
    assert client.post("/").status_code == 405  # read-only: GET pages only
    assert client.get("/serving").status_code == 200


def test_live_versions_follow_models_config(tmp_path):
    home = str(tmp_path)
    serving = os.path.join(home, "serving")
    for v in ("1", "2", "10"):
        os.makedirs(os.path.join(serving, "m", v))
    write_models_config(os.path.join(serving, "models.config"), {"m": os.path.join(serving, "m")})
    assert live_versions(home)["m"].versions == ["10"]  # TF Serving's default: the latest version
    with open(os.path.join(serving, "models.config"), "w") as f:
        f.write('model_config_list { config { name: "m" base_path: "%s" model_platform: "tensorflow" '
                'model_version_policy { specific { versions: 1 versions: 2 } } version_labels { key: "stable" '
                'value: 1 } } }' % os.path.join(serving, "m"))
    live = live_versions(home)["m"]
    assert (live.versions, live.labels, live.policy) == (["2", "1"], {"stable": "1"}, "specific")
    assert live_versions(str(tmp_path / "nothing")) == {}


def test_compare_highlights_exactly_the_rows_that_differ(tmp_path):
    import re
    client = create_app(_home(tmp_path)).test_client()
    text = client.get("/compare", query_string={"pipeline": "p", "a": "1", "b": "2"}).get_data(as_text=True)
    changed = re.findall(r'<tr class="changed" data-key="([^"]+)"', text)
    assert changed == ["state:Trainer", "config:ImageExampleGen.input_base"]  # neither run blessed nor pushed
    assert "None" not in text


def test_manual_blessing_row_and_version_name_their_runs(tmp_path):
    from conveyor.metadata.store import MANUAL_BLESSING_TYPE
    home = str(tmp_path / "home")
    store = rec.sqlite_store(os.path.join(home, "metadata.sqlite"))
    trained = rec.run_context(store, "r1")
    model = rec.artifact(store, "Model", "/m/1")
    rec.execution(store, "p", trained, "Trainer", outputs=[(model, ["model", 0])])
    bless_run = rec.run_context(store, "r2", blesses_run="r1")
    blessing = rec.artifact(store, "ModelBlessing", "/b/1", blessed=1, manual=1, blessed_by="eve", reason="why")
    pushed = rec.artifact(store, "PushedModel", "/p/1", pushed=1, pushed_version="1")
    execution = pb.Execution(type_id=store.put_execution_type(pb.ExecutionType(name=MANUAL_BLESSING_TYPE)),
                             last_known_state=pb.Execution.COMPLETE)
    for key, value in (("blesses_run", "r1"), ("blessed_by", "eve"), ("reason", "eval split was shuffled")):
        execution.custom_properties[key].string_value = value
    store.put_execution(execution, [(model, rec.event(pb.Event.INPUT, ["model", 0])),
                                    (blessing, rec.event(pb.Event.OUTPUT, ["blessing", 0])),
                                    (blessing, rec.event(pb.Event.INPUT, ["model_blessing", 0])),
                                    (pushed, rec.event(pb.Event.OUTPUT, ["pushed_model", 0]))],
                        [rec.context(store, "pipeline", "p"), bless_run])
    client = create_app(home).test_client()
    runs = client.get("/").get_data(as_text=True)
    assert "manual blessing of run r1 by eve: eval split was shuffled" in runs
    models = client.get("/models").get_data(as_text=True)
    row = models[models.index('data-version="1"'):]
    assert "<code>r1</code>" in row and "blessed manually by run" in row and "<code>r2</code>" in row
    page = client.get("/models/p")
    assert page.status_code == 302 and page.headers["Location"].endswith("/models#model-p")
    assert 'id="model-p"' in models


def test_errors_use_the_dashboard_page_and_an_empty_home_shows_runs(tmp_path):
    from conveyor.ui import startup_warning
    client = create_app(_home(tmp_path)).test_client()
    assert client.get("/report").status_code == 200  # the only pipeline's latest run
    for url in ("/report?pipeline=p&run=99", "/report?pipeline=nope", "/models/nothing", "/no/such/page"):
        page = client.get(url)
        text = page.get_data(as_text=True)
        assert page.status_code == 404 and 'id="error"' in text and "<nav>" in text, url
    assert client.get("/models/p").status_code == 404  # p pushed nothing
    empty = create_app(str(tmp_path / "nothing")).test_client().get("/")
    assert empty.status_code == 200 and "No runs yet: run a pipeline first" in empty.get_data(as_text=True)
    assert "warning: no " in startup_warning(str(tmp_path / "nothing")) and startup_warning(_home(tmp_path)) is None


def test_compare_of_a_rerun_says_it_repeats(tmp_path):
    from pipelines.preflight import REPEATS_PROPERTY, UNCHANGED_TYPE
    home = _home(tmp_path)
    store = rec.sqlite_store(os.path.join(home, "metadata.sqlite"))
    execution = pb.Execution(type_id=store.put_execution_type(pb.ExecutionType(name=UNCHANGED_TYPE)),
                             last_known_state=pb.Execution.COMPLETE)
    execution.custom_properties[REPEATS_PROPERTY].string_value = "r2"
    store.put_execution(execution, [], [rec.context(store, "pipeline", "p"),
                                        rec.run_context(store, "r3", **{REPEATS_PROPERTY: "r2"})])
    text = create_app(home).test_client().get(
        "/compare", query_string={"pipeline": "p", "a": "r2", "b": "r3"}).get_data(as_text=True)
    assert "B repeats A: no differences" in text and 'id="diff"' not in text and "not run" not in text
