"""Helpers shared by test files: real data locations, running an ExampleGen executor,
small first runs. Everything runs for real: Beam DirectRunner, TFT, MLMD on SQLite."""
import os

# The shared datasets (never copied into the repo): $CONVEYOR_SHARED_DATA, else ../shared/data
# beside the clone (bench/pipeline.py looks in the same places).
SHARED_DATA = os.path.abspath(os.environ.get("CONVEYOR_SHARED_DATA")
                              or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))


def run_example_gen(component, output_dir: str):
    """Runs an ExampleGen component's executor the way TFX does; returns the Examples artifact."""
    from google.protobuf import message
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    exec_properties = {}
    for key, value in component.exec_properties.items():
        if isinstance(value, message.Message):
            value = proto_utils.proto_to_json(value)
        exec_properties[key] = value
    examples = standard_artifacts.Examples()
    examples.uri = output_dir
    executor = component.executor_spec.executor_class()
    executor.Do({}, {"examples": [examples]}, exec_properties)
    return examples


def subset_digits(digits_dir: str, target: str, per_class: int) -> str:
    """The first `per_class` real digits of each class, copied as class folders under target."""
    import shutil
    for label in sorted(os.listdir(digits_dir)):
        os.makedirs(os.path.join(target, label))
        for name in sorted(os.listdir(os.path.join(digits_dir, label)))[:per_class]:
            shutil.copy(os.path.join(digits_dir, label, name), os.path.join(target, label, name))
    return target


# A binary text model needs more data and steps than digits to beat the majority rate reliably
# (150 reviews and 30 steps sometimes ended at chance and nothing was pushed).
RUN_STEPS = {"image": ["--train-steps", "30", "--eval-steps", "5"],
             "text": ["--train-steps", "120", "--eval-steps", "5"]}
TEXT_REVIEWS = 500


def pushed_first_run(kind: str, data: str, home: str, settings=None, env=None) -> str:
    """`conveyor run KIND` on small data that must end with version 1 pushed (later cases need it).

    Args:
      settings: more config settings (e.g. a `metadata:` mapping), written to the run's config.
      env: more environment variables of the run (e.g. the MySQL password's).
    Returns:
      the run's stdout.
    """
    import subprocess
    import sys

    import yaml
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "test-config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        # Later cases need version 1 pushed; latency is judged by the infra validator's own
        # tests, not here, where parallel test workers share 2 cores.
        yaml.safe_dump({"infra_p99_budget_ms": 10000, **(settings or {})}, f)
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", kind, "--data", data, "--home", home, "--config", config,
         *RUN_STEPS[kind]],
        capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Pushed: version 1" in result.stdout, result.stdout[-3000:]
    return result.stdout


def run_cli(*args, env=None):
    """`conveyor ARGS` in this process (its imports are paid once per test process).

    Args:
      env: environment variables set for the call only (e.g. a MySQL password's).
    Returns:
      (exit status, stdout, stderr) as strings.
    """
    import contextlib
    import io

    import pytest

    from conveyor import cli
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def read_examples(examples_uri: str, split: str):
    import glob

    import tensorflow as tf
    records = []
    for path in sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))):
        for data in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            records.append(tf.train.Example.FromString(data))
    return records
