"""What counts as "unchanged" (pipelines/preflight.py), the terminal/log split of a run
(pipelines/local_runner.py) and the sample a run suggests for `conveyor predict`."""
import logging
import os
import subprocess
import sys

from conveyor.runner import sample_input
from pipelines import preflight
from pipelines.config import Config


def test_data_fingerprint_sees_new_touched_and_resized_files(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(b"x")
    first = preflight.data_fingerprint(str(tmp_path))
    assert preflight.data_fingerprint(str(tmp_path)) == first
    (tmp_path / "0" / "b.png").write_bytes(b"y")
    second = preflight.data_fingerprint(str(tmp_path))
    assert second != first
    os.utime(tmp_path / "0" / "b.png", ns=(1, 1))
    assert preflight.data_fingerprint(str(tmp_path)) not in (first, second)
    assert preflight.data_fingerprint(str(tmp_path / "missing")) == "missing"


def test_data_fingerprint_follows_symlinked_span_folders(tmp_path):
    staged, incoming = tmp_path / "staged", tmp_path / "incoming"
    for span in (1, 2):
        (staged / f"span-{span}" / "0").mkdir(parents=True)
        (staged / f"span-{span}" / "0" / "a.png").write_bytes(b"x" * span)
    incoming.mkdir()
    (incoming / "span-1").symlink_to(staged / "span-1")
    first = preflight.data_fingerprint(str(incoming))
    (incoming / "span-2").symlink_to(staged / "span-2")  # a new span lands as a link
    assert preflight.data_fingerprint(str(incoming)) != first
    (incoming / "span-2" / "0" / "loop").symlink_to(incoming)  # a link cycle ends
    (incoming / "span-2" / "0" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    assert preflight.data_fingerprint(str(incoming)) != first


def test_config_fingerprint_covers_thresholds_not_drift_or_schedule():
    base = Config(kind="image")
    same = preflight.config_fingerprint(base)
    assert preflight.config_fingerprint(base.replace(drift_threshold=0.5, schedule="@hourly")) == same
    assert preflight.config_fingerprint(base.replace(accuracy_floor=0.6)) != same
    assert preflight.config_fingerprint(base.replace(infra_p99_budget_ms=10.0)) != same
    assert preflight.config_fingerprint(base.replace(train_steps=7)) != same


def test_run_inputs_name_what_changed(tmp_path):
    config = Config(kind="image", home=str(tmp_path / "home"), data=str(tmp_path))
    inputs = preflight.run_inputs(config)
    assert inputs.baseline == "None" and inputs.served == "none" and "tfx=" in inputs.packages
    import importlib.metadata
    for name in ("tf-keras", "pillow", "numpy", "protobuf"):  # what the models compute with
        assert f"{name}={importlib.metadata.version(name)}" in inputs.packages.split()
    recorded = dict(inputs.__dict__, data="other")
    assert inputs.changed(recorded) == ["data"]
    assert preflight.run_inputs(config).fingerprint() == inputs.fingerprint()


def test_own_warnings_reach_the_terminal_third_party_ones_do_not():
    import io
    from pipelines.local_runner import OwnWarningsHandler
    terminal = io.StringIO()
    logger = logging.getLogger("test_preflight.own_warnings")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(OwnWarningsHandler(terminal))
    own = logging.LogRecord("absl", logging.WARNING, preflight.__file__.replace("pipelines", "components"), 1,
                            "skipped %d images", (3,), None)
    third = logging.LogRecord("absl", logging.WARNING, logging.__file__, 1, "deprecated", (), None)
    info = logging.LogRecord("absl", logging.INFO, own.pathname, 1, "progress", (), None)
    for record in (own, third, info):
        logger.handle(record)  # as Logger.callHandlers does: WARNING and above only
    assert terminal.getvalue() == "  warning: skipped 3 images\n"


def test_output_to_log_captures_fd2_and_stdout_of_libraries(tmp_path):
    log = tmp_path / "run.log"
    script = (
        "import os, sys, warnings\n"
        "from pipelines.local_runner import output_to_log\n"
        "terminal_out = sys.stdout\n"
        f"with output_to_log({str(log)!r}) as terminal:\n"
        "    os.write(2, b'E external/local_xla cuDNN\\n')\n"
        "    warnings.warn('old python', FutureWarning)\n"
        "    print('Epoch 1/5')\n"
        "    terminal.write('for a person\\n')\n"
        "    terminal_out.write('progress\\n')\n"
        "print('after', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "progress\n"
    assert result.stderr == "for a person\nafter\n"
    text = log.read_text()
    assert "cuDNN" in text and "FutureWarning" in text and "Epoch 1/5" in text


def test_sample_input_is_a_file_or_a_text_of_the_data(tmp_path):
    (tmp_path / "img" / "7").mkdir(parents=True)
    (tmp_path / "img" / "7" / "a b.png").write_bytes(b"x")
    config = Config(kind="image", data=str(tmp_path / "img"))
    assert sample_input(config) == "'" + str(tmp_path / "img" / "7" / "a b.png") + "'"
    (tmp_path / "reviews.csv").write_text("label,review\npos,It's <br />great\n")
    text = Config(kind="text", data=str(tmp_path / "reviews.csv"))
    assert sample_input(text) == "--text 'It'\"'\"'s great'"
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert sample_input(Config(kind="image", data=str(tmp_path / "idx"))) is None


def test_a_failed_infra_verdict_is_measured_again_a_passing_one_stays_cached(tmp_path):
    from tests.support import mlmd_records as rec
    (tmp_path / "data" / "0").mkdir(parents=True)
    config = Config(kind="image", home=str(tmp_path / "home"), data=str(tmp_path / "data"))
    store = rec.sqlite_store(config.metadata_path)
    rec.context(store, "pipeline", config.name)
    inputs = preflight.inputs_before_run(config)
    fingerprint = {preflight.FINGERPRINT_PROPERTY: inputs.fingerprint()}
    model = rec.artifact(store, "Model", "/m/1")
    rec.execution(store, config.name, rec.run_context(store, "r0", **fingerprint), "Trainer",
                  outputs=[(model, ["model", 0])])
    failed = rec.artifact(store, "InfraBlessing", "/i/1", blessed=0, reason="p99 latency 9 ms exceeds 1 ms")
    rec.execution(store, config.name, rec.run_context(store, "r1", **fingerprint), "ConveyorInfraValidator",
                  inputs=[(model, ["model", 0])], outputs=[(failed, ["blessing", 0])])
    assert preflight.latest_infra_verdict(store, config.name).reason == "p99 latency 9 ms exceeds 1 ms"
    # Same inputs as the last run, but its infra verdict failed: run, and measure again.
    assert preflight.check_unchanged(config, inputs) is None
    token = preflight.infra_remeasure(config)
    assert token == f"after-infra-blessing-{failed.id}"
    passed = rec.artifact(store, "InfraBlessing", "/i/2", blessed=1)
    rec.execution(store, config.name, rec.run_context(store, "r2", **fingerprint), "ConveyorInfraValidator",
                  inputs=[(model, ["model", 0])], outputs=[(passed, ["blessing", 0])], remeasure=token)
    # Passed: the next run keeps the token (TFX's cache key, so the pass is reused) and
    # an unchanged rerun is a no-op again.
    assert preflight.infra_remeasure(config) == token
    assert preflight.check_unchanged(config.replace(enable_cache=False), inputs) is None  # every run runs
    unchanged = preflight.check_unchanged(config, inputs)
    assert unchanged is not None and unchanged.repeats_run == "r2"
