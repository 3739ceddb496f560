"""TFX's own CLI with the local engine: `tfx pipeline create` registers pipelines/tfx_cli_pipeline.py,
`tfx run create` runs it on real digits (MLMD on SQLite, Beam DirectRunner) and pushes a model."""
import json
import os
import subprocess
import sys

from conveyor.run_summary import read_summary
from tests.support.helpers import subset_digits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
TFX = os.path.join(BIN, "tfx")
PIPELINE_FILE = os.path.join(ROOT, "pipelines", "tfx_cli_pipeline.py")


def tiny_digits(digits_dir: str, target: str, per_class: int = 20) -> str:
    """The first `per_class` real digits of each class: enough to train and bless in seconds."""
    return subset_digits(digits_dir, target, per_class)


def tfx(env, *args, timeout=600):
    return subprocess.run([TFX, *args, "--engine", "local"], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_tfx_cli_creates_and_runs_the_pipeline(tmp_path, digits_dir):
    config = tmp_path / "image.yaml"
    config.write_text(f"data: {tiny_digits(digits_dir, str(tmp_path / 'digits'))}\n"
                      "train_steps: 30\neval_steps: 5\n")
    home = tmp_path / "home"
    # The CLI shells out to `pip freeze` and `python <file>`: the venv's, as when it is activated.
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], CONVEYOR_CONFIG=str(config),
               CONVEYOR_HOME=str(home), LOCAL_HOME=str(tmp_path / "tfx_local_home"))

    created = tfx(env, "pipeline", "create", "--pipeline_path", PIPELINE_FILE)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-3000:]
    assert 'Pipeline "image_classifier" created successfully.' in created.stdout
    with open(tmp_path / "tfx_local_home" / "image_classifier" / "pipeline_args.json") as f:
        registered = json.load(f)
    assert registered["pipeline_root"] == str(home / "pipelines" / "image_classifier")
    assert registered["pipeline_dsl_path"] == PIPELINE_FILE
    # Registering only records the pipeline (LocalDagRunner.run is patched): nothing ran yet.
    assert not (home / "metadata.sqlite").exists()

    run = tfx(env, "run", "create", "--pipeline_name", "image_classifier", timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (home / "serving" / "image_classifier" / "1" / "saved_model.pb").is_file()
    summary = read_summary(str(home / "metadata.sqlite"), "image_classifier")
    states = {n.node: n.state for n in summary.nodes}
    assert set(states.values()) == {"complete"}, states
    assert {"ImageExampleGen", "latest_blessed_model", "StatisticsGen", "SchemaGen",
            "GatedExampleValidator", "Transform", "Trainer", "BaselineEvaluator",
            "ConveyorInfraValidator", "ServingPusher"} <= set(states)
    assert summary.blessed is True and summary.pushed_version == "1"


def test_tfx_cli_reports_a_bad_config_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("train_stepz: 30\n")
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], CONVEYOR_CONFIG=str(config),
               CONVEYOR_HOME=str(tmp_path / "home"), LOCAL_HOME=str(tmp_path / "tfx_local_home"))
    created = tfx(env, "pipeline", "create", "--pipeline_path", PIPELINE_FILE)
    assert created.returncode != 0
    assert f"conveyor: config file {config}: unknown key 'train_stepz'" in created.stderr
    assert "Traceback" not in created.stderr
