"""The Trainer as separate worker processes, the way Vertex AI Training runs it: every process
runs TFX's `tfx.scripts.run_executor` with the Trainer's executor, the same input/output
artifacts and exec properties, and its own TF_CONFIG (here: a cluster of 127.0.0.1 ports).

`prepare()` runs the real pipeline up to Transform (ExampleGen, StatisticsGen, SchemaGen, the
gate, Transform under LocalDagRunner) and returns what the Trainer needs. Used by
tests/e2e/test_distributed_training.py and bench/distribute.py.

`python -m tests.support.trainer_workers [--logical-cpus N] <run_executor flags>` is the
process entry: it splits the CPU into N logical devices first (so MirroredStrategy has N
replicas on a one-CPU machine), then runs run_executor.
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER_EXECUTOR = "tfx.components.trainer.executor.GenericExecutor"


@dataclasses.dataclass
class TrainerJob:
    """The Trainer's inputs (artifact dicts) and exec properties of one prepared pipeline."""
    inputs: Dict[str, list]
    exec_properties: Dict[str, Any]
    custom_config: Dict[str, Any]

    def _exec_properties(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        properties = dict(self.exec_properties)
        for key, proto_key in (("train_steps", "train_args"), ("eval_steps", "eval_args")):
            if key in settings:
                properties[proto_key] = json.dumps({"num_steps": settings.pop(key)})
        properties["custom_config"] = json.dumps({**self.custom_config, **settings})
        return properties

    @staticmethod
    def _outputs(model_dir: str) -> Dict[str, list]:
        from tfx.types import standard_artifacts
        model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
        model.uri, model_run.uri = os.path.join(model_dir, "model"), os.path.join(model_dir, "model_run")
        return {"model": [model], "model_run": [model_run]}

    def run_here(self, model_dir: str, **settings) -> str:
        """Runs the Trainer executor in this process; returns the SavedModel directory."""
        from tfx.components.trainer.executor import GenericExecutor
        outputs = self._outputs(model_dir)
        GenericExecutor().Do(self.inputs, outputs, self._exec_properties(settings))
        return serving_dir(model_dir)

    def command(self, model_dir: str, logical_cpus: int = 1, **settings) -> List[str]:
        """The worker command line writing the Model artifact under model_dir/model and the
        ModelRun under model_dir/model_run; `settings` override ModuleSettings fields, and
        train_steps / eval_steps the TrainArgs / EvalArgs."""
        from tfx.types import artifact_utils
        properties = self._exec_properties(dict(settings))
        return [sys.executable, "-m", "tests.support.trainer_workers", "--logical-cpus", str(logical_cpus),
                "--executor_class_path", TRAINER_EXECUTOR,
                "--inputs", artifact_utils.jsonify_artifact_dict(self.inputs),
                "--outputs", artifact_utils.jsonify_artifact_dict(self._outputs(model_dir)),
                "--exec-properties", json.dumps(properties)]


def serving_dir(model_dir: str) -> str:
    """Where the Trainer executor writes the SavedModel (TFX's path_utils.serving_model_dir)."""
    from tfx.utils import path_utils
    return path_utils.serving_model_dir(os.path.join(model_dir, "model"))


def prepare(config) -> TrainerJob:
    """Runs `config`'s pipeline up to Transform; returns the Trainer's job.

    Args:
      config: a pipelines.config.Config with local data and a fresh HOME.
    """
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import proto_utils

    from pipelines.pipeline import create_pipeline

    full = create_pipeline(config)
    dropped = [c for c in full.components if c.id in ("Trainer", "BaselineEvaluator", "ConveyorInfraValidator",
                                                       "ServingPusher")]
    upstream = [c for c in full.components if c not in dropped]
    for component in upstream:
        for node in dropped:
            if node in component.downstream_nodes:
                component.remove_downstream_node(node)
    trainer = next(c for c in dropped if c.id == "Trainer")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name=full.pipeline_info.pipeline_name, pipeline_root=full.pipeline_info.pipeline_root,
        components=upstream, enable_cache=False, metadata_connection_config=full.metadata_connection_config,
        beam_pipeline_args=full.beam_pipeline_args))

    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))
    inputs = {}
    for key, artifact_type in (("examples", standard_artifacts.Examples),
                               ("transform_graph", standard_artifacts.TransformGraph),
                               ("schema", standard_artifacts.Schema)):
        [stored] = store.get_artifacts_by_type(artifact_type.TYPE_NAME)
        artifact = artifact_type()
        artifact.set_mlmd_artifact(stored)
        inputs[key] = [artifact]
    properties = {}
    for key, value in trainer.exec_properties.items():
        if value is None:
            continue
        if hasattr(value, "DESCRIPTOR"):
            value = proto_utils.proto_to_json(value)
        properties[key] = value
    custom_config = properties.pop("custom_config")
    custom_config = json.loads(custom_config) if isinstance(custom_config, str) else dict(custom_config)
    artifact_utils.jsonify_artifact_dict(inputs)  # fails here, not in the workers, if not serialisable
    return TrainerJob(inputs=inputs, exec_properties=properties, custom_config=custom_config)


def free_ports(count: int) -> List[int]:
    """`count` TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: List[int], index: int) -> str:
    """TF_CONFIG of worker `index` of a cluster of 127.0.0.1 workers (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def start(command: List[str], log_path: str, env_extra: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Starts one worker process, stdout+stderr to log_path, this repo first on the path."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), TF_CPP_MIN_LOG_LEVEL="1",
               PYTHONUNBUFFERED="1",  # Keras' epoch lines reach the log as they happen
               **(env_extra or {}))
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def start_workers(job: TrainerJob, model_dir: str, workers: int, log_dir: str, **settings) -> List[subprocess.Popen]:
    """`workers` processes training one model together (distribution multi_worker)."""
    ports = free_ports(workers)
    command = job.command(model_dir, distribution="multi_worker", **settings)
    return [start(command, os.path.join(log_dir, f"worker{i}.log"), {"TF_CONFIG": tf_config(ports, i)})
            for i in range(workers)]


def wait_all(processes: List[subprocess.Popen], timeout: float) -> List[Optional[int]]:
    """Return codes once every process ended, or None for those still running at `timeout`
    seconds (which are then killed)."""
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes.append(None)
    return codes


def _main(argv: List[str]) -> None:
    logical_cpus = 1
    if argv[:1] == ["--logical-cpus"]:
        logical_cpus, argv = int(argv[1]), argv[2:]
    if logical_cpus > 1:
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    from absl import app
    from tfx.scripts import run_executor
    sys.argv = [run_executor.__file__, *argv]
    app.run(run_executor.main, flags_parser=run_executor.parse_flags)


if __name__ == "__main__":
    _main(sys.argv[1:])
