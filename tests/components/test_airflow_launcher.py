"""pipelines/airflow_launcher.py on a real ML Metadata store (SQLite) with real TFX components
run by the launcher the way an AirflowDagRunner task runs them: a try that fails part way is
retried in the same run (same component_run context) and succeeds from an empty output
folder; TFX's own launcher cannot retry it; a task whose component finished in the run
already (cleared in Airflow, or killed after MLMD recorded it) does not run it again."""
import os

import pytest
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import data_types, metadata
from tfx.orchestration.launcher.in_process_component_launcher import InProcessComponentLauncher
from tfx.types import standard_artifacts

from pipelines.airflow_launcher import RetryingLauncher

FAIL_ONCE = "CONVEYOR_TEST_FAIL_ONCE"   # a file: while it exists, Copy fails (and deletes it)


@component
def Produce(model: OutputArtifact[standard_artifacts.Model]):
    with open(os.path.join(model.uri, "weights.txt"), "w") as f:
        f.write("w")


@component
def Copy(model: InputArtifact[standard_artifacts.Model], copy: OutputArtifact[standard_artifacts.Model]):
    """Writes part.txt, then fails once if FAIL_ONCE's file exists, then writes the copy."""
    with open(os.path.join(copy.uri, "part.txt"), "a") as f:
        f.write("x")
    marker = os.environ.get(FAIL_ONCE, "")
    if os.path.exists(marker):
        os.remove(marker)
        raise RuntimeError("this try dies part way")
    with open(os.path.join(model.uri, "weights.txt")) as src, open(os.path.join(copy.uri, "weights.txt"), "w") as dst:
        dst.write(src.read())


@component
def Compare(model: InputArtifact[standard_artifacts.Model], baseline_model: InputArtifact[standard_artifacts.Model],
            evaluation: OutputArtifact[standard_artifacts.ModelEvaluation]):
    with open(os.path.join(evaluation.uri, "same.txt"), "w") as f:
        f.write(str(model.uri == baseline_model.uri))


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """(connection config, root, producer, copier, fail_next); the producer ran in run-1."""
    config = metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite"))
    producer = Produce()
    copier = Copy(model=producer.outputs["model"])
    marker = tmp_path / "fail-once"
    monkeypatch.setenv(FAIL_ONCE, str(marker))
    launch(InProcessComponentLauncher, config, tmp_path, producer)
    return config, tmp_path, producer, copier, lambda: marker.write_text("")


def launch(launcher_class, connection_config, root, node, run_id="run-1", cache=False):
    pipeline_info = data_types.PipelineInfo(pipeline_name="p", pipeline_root=str(root / "pipeline"),
                                            run_id=run_id)
    launcher = launcher_class.create(
        component=node, pipeline_info=pipeline_info,
        driver_args=data_types.DriverArgs(enable_cache=cache),
        metadata_connection=metadata.Metadata(connection_config),
        beam_pipeline_args=[], additional_pipeline_args={})
    return launcher.launch()


def copy_executions(connection_config):
    """[(id, TFX state, number of INPUT events)] of Copy's executions."""
    with metadata.Metadata(connection_config) as m:
        out = []
        for e in sorted(m.store.get_executions(), key=lambda e: e.id):
            if e.properties["component_id"].string_value == "Copy":
                events = m.store.get_events_by_execution_ids([e.id])
                out.append((e.id, e.properties["state"].string_value,
                            sum(ev.type == mlmd_pb2.Event.INPUT for ev in events)))
        return out


def test_a_failed_try_is_retried_from_an_empty_output_folder(pipeline):
    config, root, producer, copier, fail_next = pipeline
    fail_next()
    with pytest.raises(RuntimeError, match="dies part way"):
        launch(RetryingLauncher, config, root, copier)
    [(first, state, inputs)] = copy_executions(config)
    assert (state, inputs) == ("new", 1)

    info = launch(RetryingLauncher, config, root, copier)   # Airflow's retry: the same run
    assert info.execution_id == first
    assert copy_executions(config) == [(first, "complete", 1)]   # no second INPUT event
    [copy] = info.output_dict["copy"]
    assert sorted(os.listdir(copy.uri)) == ["part.txt", "weights.txt"]
    assert open(os.path.join(copy.uri, "part.txt")).read() == "x"   # the failed try's "x" is gone


def test_tfx_own_launcher_cannot_retry(pipeline):
    """Why RetryingLauncher exists; when a TFX upgrade makes this fail, drop the workaround."""
    config, root, producer, copier, fail_next = pipeline
    fail_next()
    with pytest.raises(RuntimeError, match="dies part way"):
        launch(InProcessComponentLauncher, config, root, copier)
    with pytest.raises(mlmd_errors.AlreadyExistsError, match="event already exists"):
        launch(InProcessComponentLauncher, config, root, copier)


def test_a_task_whose_component_finished_in_this_run_does_not_run_it_again(pipeline):
    config, root, producer, copier, fail_next = pipeline
    first = launch(RetryingLauncher, config, root, copier)
    [copy] = first.output_dict["copy"]
    fail_next()   # would fail if the executor ran
    again = launch(RetryingLauncher, config, root, copier)   # e.g. the task cleared in Airflow
    assert again.execution_id == first.execution_id
    assert copy_executions(config) == [(first.execution_id, "complete", 1)]
    assert open(os.path.join(copy.uri, "part.txt")).read() == "x"
    assert os.path.exists(os.environ[FAIL_ONCE])   # the executor did not run
    os.remove(os.environ[FAIL_ONCE])
    # A new DAG run runs it again.
    launch(RetryingLauncher, config, root, producer, run_id="run-2")
    third = launch(RetryingLauncher, config, root, copier, run_id="run-2")
    assert third.execution_id != first.execution_id


def test_one_artifact_under_two_input_keys_is_one_event_with_both_paths(pipeline):
    """The Evaluator of a rerun whose Trainer was cached: candidate == latest blessed baseline."""
    config, root, producer, _, _ = pipeline
    compare = Compare(model=producer.outputs["model"], baseline_model=producer.outputs["model"])
    # TFX's own launcher: MLMD refuses the second INPUT event, and TFX then takes that for an
    # existing run context and fails its own assertion.
    with pytest.raises(AssertionError):
        launch(InProcessComponentLauncher, config, root, compare)
    info = launch(RetryingLauncher, config, root, compare)
    [evaluation] = info.output_dict["evaluation"]
    assert open(os.path.join(evaluation.uri, "same.txt")).read() == "True"
    with metadata.Metadata(config) as m:
        inputs = [e for e in m.store.get_events_by_execution_ids([info.execution_id])
                  if e.type == mlmd_pb2.Event.INPUT]
    [event] = inputs
    assert [(s.key or s.index) for s in event.path.steps] == ["model", 0, "baseline_model", 0] or \
        [(s.key or s.index) for s in event.path.steps] == ["baseline_model", 0, "model", 0]


def test_a_retry_runs_again_even_when_another_run_made_a_cache_entry(pipeline):
    """Between two tries of run-1's Copy, run-2 completes a Copy of the same input: the retry
    must not take that cache hit, which would give run-1 two outputs under "copy"."""
    config, root, producer, copier, fail_next = pipeline
    fail_next()
    with pytest.raises(RuntimeError, match="dies part way"):
        launch(RetryingLauncher, config, root, copier, cache=True)
    launch(RetryingLauncher, config, root, producer, run_id="run-2", cache=True)   # cached: the same model
    launch(RetryingLauncher, config, root, copier, run_id="run-2", cache=True)
    retry = launch(RetryingLauncher, config, root, copier, cache=True)
    with metadata.Metadata(config) as m:
        outputs = [e for e in m.store.get_events_by_execution_ids([retry.execution_id])
                   if e.type == mlmd_pb2.Event.OUTPUT]
        state = m.store.get_executions_by_id([retry.execution_id])[0].properties["state"].string_value
    assert len(outputs) == 1 and state == "complete", (outputs, state)
