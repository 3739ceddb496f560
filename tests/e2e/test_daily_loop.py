"""The daily loop on real digits (LocalDagRunner, SQLite MLMD, Beam DirectRunner): a readable
terminal, an unchanged rerun that runs nothing, a threshold-only change that re-evaluates,
and `conveyor bless` overriding the Evaluator (never a failed infra validation).

One HOME, in order (module-scoped, 20 digits per class):
  A  `conveyor run` as a subprocess, 2 train steps (not blessed), infra p99 budget 0.001 ms
     (infra validation fails): the terminal shows Conveyor's lines and the infra warning only;
  A2 A again, unchanged: not a no-op, the InfraValidator measures again (not TFX's cached
     failed verdict), everything else cached;
  B  thresholds changed only (accuracy floor, infra budget): Trainer cached, Evaluator and
     InfraValidator re-run, infra passes, still not blessed;
  C  B again: nothing runs, a no-op rerun linked to B is recorded;
  bless A (refused: infra failed), bless B (pushed as version 1, manual);
  D  30 train steps: a new model evaluated against B's manually blessed one, pushed as version 2.
"""
import io
import os
import subprocess
import sys
import time

import pytest

from conveyor import runner
from conveyor.bless import BlessError, bless
from conveyor.cli import main
from conveyor.metadata import runs as mlmd_runs
from conveyor.metadata.lineage import lineage_of_version
from conveyor.metadata.store import Graph, open_store, props
from pipelines.config import load_config
from tests.support.helpers import subset_digits

NAME = "image_classifier"
NOISE = ("external/local_xla", "Unable to register", "FutureWarning", "warnings.warn", "INFO:tensorflow",
         "WARNING:tensorflow", "Epoch 1/", "INFO:absl")


def _config(home, data, **changes):
    # A generous infra budget: on a busy machine an in-process p99 can exceed the default 500 ms.
    values = {"home": home, "data": data, "train_steps": 2, "eval_steps": 5, "accuracy_floor": 0.85,
              "infra_p99_budget_ms": 10000}
    values.update(changes)
    return load_config("image", overrides=values)


@pytest.fixture(scope="module")
def loop(tmp_path_factory, digits_dir):
    root = tmp_path_factory.mktemp("loop")
    data = subset_digits(digits_dir, str(root / "digits"), 20)
    home = str(root / "home")
    config_file = root / "a.yaml"
    config_file.write_text("evaluation:\n  accuracy_floor: 0.9\n  infra_p99_budget_ms: 0.001\n")
    a = subprocess.run([sys.executable, "-m", "conveyor.cli", "run", "image", "--data", data, "--home", home,
                        "--config", str(config_file), "--train-steps", "2", "--eval-steps", "5"],
                       capture_output=True, text=True, timeout=900)
    out = {"home": home, "data": data, "a": a}
    a_config = load_config("image", str(config_file), {"home": home, "train_steps": 2, "eval_steps": 5})
    stream = io.StringIO()
    out["a2"] = runner.run(a_config.with_local_data(data), stream=stream)
    out["a2_output"] = stream.getvalue()
    stream = io.StringIO()
    out["b"] = runner.run(_config(home, data), stream=stream)
    out["b_output"] = stream.getvalue()
    executions_before_c = len(open_store(home).get_executions())
    stream = io.StringIO()
    started = time.monotonic()
    out["c"] = runner.run(_config(home, data), stream=stream)
    out["c_seconds"], out["c_output"] = time.monotonic() - started, stream.getvalue()
    out["c_new_executions"] = open_store(home).get_executions()[executions_before_c:]
    return out


def test_terminal_shows_conveyor_and_the_model_warning_only(loop):
    a = loop["a"]
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert "ImageExampleGen              finished in" in a.stdout
    for noise in NOISE:
        assert noise not in a.stdout and noise not in a.stderr, (noise, a.stdout[-2000:], a.stderr[-2000:])
    # A warning about the user's model still reaches the terminal...
    assert "warning: Model failed infra validation" in a.stderr, a.stderr[-2000:]
    # ...and the third-party lines are in the run's log file.
    log = next(line.split("log  ", 1)[1] for line in a.stdout.splitlines() if line.startswith("  log  "))
    with open(log, encoding="utf-8", errors="replace") as f:
        assert "FutureWarning" in f.read()
    assert "Next:" in a.stdout and "nothing is served yet" in a.stdout


def test_an_unchanged_rerun_after_failed_infra_validation_measures_again(loop):
    a2 = loop["a2"]
    graph = Graph(open_store(loop["home"]))
    a, again = mlmd_runs.run_contexts(graph, NAME)[:2]
    assert again.name == a2.run_id and a2.unchanged_since is None
    # The same inputs (the recorded fingerprints agree), so only the failed verdict made it run.
    assert (a.custom_properties["conveyor_inputs_fingerprint"].string_value
            == again.custom_properties["conveyor_inputs_fingerprint"].string_value)
    states = {n.node: n.state for n in a2.nodes}
    for node in ("ImageExampleGen", "Transform", "Trainer", "BaselineEvaluator"):
        assert states[node] == "cached", states
    assert states["ConveyorInfraValidator"] == "complete", states
    assert a2.infra_blessed is False and "measuring it again" in loop["a2_output"]


def test_threshold_only_change_re_evaluates(loop):
    states = {n.node: n.state for n in loop["b"].nodes}
    for node in ("ImageExampleGen", "StatisticsGen", "Transform", "Trainer"):
        assert states[node] == "cached", states
    assert states["BaselineEvaluator"] == "complete" and states["ConveyorInfraValidator"] == "complete", states
    assert loop["b"].infra_blessed is True and loop["b"].blessed is False
    assert f"bless --run {loop['b'].run_id} --reason" in loop["b_output"]  # the hint names the run


def test_unchanged_rerun_executes_nothing(loop):
    c, b = loop["c"], loop["b"]
    assert c.unchanged_since == b.run_id and c.nodes == []
    assert f"nothing changed since run {b.run_id}; nothing served" in loop["c_output"]
    assert [props(e).get("repeats_run") for e in loop["c_new_executions"]] == [b.run_id]
    assert loop["c_seconds"] < 2.0, loop["c_seconds"]
    rows = mlmd_runs.list_runs(open_store(loop["home"]), NAME)
    assert rows[-1].unchanged_since == b.run_id and "Trainer" not in {n.node for n in rows[-1].nodes if n.execution_id}


def test_bless_refuses_a_failed_infra_validation(loop, capsys):
    first = mlmd_runs.run_contexts(Graph(open_store(loop["home"])), NAME)[0].name
    with pytest.raises(BlessError, match="failed infra validation.*never overrides"):
        bless(first, "looks fine to me", home=loop["home"])
    code = main(["bless", "--run", "1", "--reason", "looks fine", "--home", loop["home"]])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "infra validation" in err
    assert not os.path.exists(os.path.join(loop["home"], "serving", NAME, "1"))


@pytest.fixture(scope="module")
def blessed(loop):
    b = bless(loop["b"].run_id, "accuracy is enough for the pilot", by="reviewer", home=loop["home"])
    stream = io.StringIO()
    d = runner.run(_config(loop["home"], loop["data"], train_steps=30), stream=stream)
    return {"bless": b, "d": d, "d_output": stream.getvalue()}


def test_manual_blessing_lineage(loop, blessed):
    b = blessed["bless"]
    assert b.version == 1 and os.path.isfile(os.path.join(b.destination, "saved_model.pb"))
    store = open_store(loop["home"])
    lin = lineage_of_version(store, NAME, "1")
    assert lin.blessing.manual is True and lin.blessing.blessed is True
    assert (lin.blessing.blessed_by, lin.blessing.reason) == ("reviewer", "accuracy is enough for the pilot")
    assert lin.model.artifact_id == b.model_id
    # The evaluation shown is the Evaluator's of run B, which said no.
    graph = Graph(store)
    overridden = graph.artifact(lin.blessing.overrides_blessing_id)
    assert props(overridden)["blessed"] == 0 and lin.evaluation.artifact.run_id == loop["b"].run_id
    assert lin.infra_blessing.blessed is True
    row = next(r for r in mlmd_runs.list_runs(store, NAME) if r.manual_blessing)
    assert row.manual_blessing == {"run_id": loop["b"].run_id, "by": "reviewer",
                                   "reason": "accuracy is enough for the pilot"}
    assert row.blessed is True and row.pushed_version == "1"
    from conveyor.history_cli import format_lineage
    from conveyor.report import render
    assert "BLESSED MANUALLY by reviewer" in format_lineage(lin)
    assert "BLESSED MANUALLY</b> by reviewer" in render(store, NAME, row.run_id)
    assert render(store, NAME, loop["c"].run_id)  # the no-op rerun has a report too


def test_next_run_uses_the_manual_blessing_as_baseline(loop, blessed):
    d, b = blessed["d"], blessed["bless"]
    assert d.node("Trainer").state == "complete"
    graph = Graph(open_store(loop["home"]))
    evaluator = graph.executions([d.node("BaselineEvaluator").execution_id])[0]
    assert graph.input(evaluator, "baseline_model").id == b.model_id
    assert d.blessed is True and d.pushed_version == "2", d.table()
    assert f"conveyor predict --model {NAME} {loop['data']}/0/" in blessed["d_output"]
    assert "report not written" not in blessed["d_output"]


def test_lineage_prints_no_third_party_noise(loop, blessed):
    result = subprocess.run([sys.executable, "-m", "conveyor.cli", "lineage", "--model", NAME, "--home", loop["home"]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "version 2" in result.stdout and result.stderr == "", result.stderr[-3000:]
    with open(os.path.join(loop["home"], "logs", "lineage.log"), encoding="utf-8", errors="replace") as f:
        assert "FutureWarning" in f.read()  # where the start-up noise went
