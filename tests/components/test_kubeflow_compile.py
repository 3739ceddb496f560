"""Kubeflow/Vertex: both pipelines compile to KFP v2 specs with the same DAG as the local runner."""
import json
import os

import pytest

from pipelines.config import load_config

IMAGE = "registry.example.com/conveyor:1.2"
ROOT = "gs://conveyor-bucket/pipelines"
RESOLVER = "latest_blessed_model"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from kubeflow.runner import compile_all
    out = str(tmp_path_factory.mktemp("kfp"))
    paths = compile_all(out, image=IMAGE, pipeline_root=ROOT,
                        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    return {kind: path for kind, path in zip(("image", "text"), paths)}


def _expected_dag(kind):
    """Component ids and upstream ids of the pipeline the local runner executes."""
    from pipelines.pipeline import create_pipeline
    config = load_config(kind, overrides={"data": "/nonexistent",
                                          "input_pattern": "*/*" if kind == "image" else "*.csv"})
    return {c.id: {u.id for u in c.upstream_nodes} for c in create_pipeline(config).components}


@pytest.mark.parametrize("kind", ["image", "text"])
def test_compiled_spec_matches_local_dag(compiled, kind):
    path = compiled[kind]
    assert os.path.basename(path) == f"{kind}_classifier.json"
    assert os.path.isfile(path[:-len("json")] + "yaml")  # plain pipeline spec for kfp.Client / the UI
    job = json.load(open(path))
    spec = job["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == f"{kind}-classifier"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"{ROOT}/{kind}_classifier"
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]

    def task_id(component_id):  # KFP splits the Resolver into one task per channel
        return f"{RESOLVER}-model-resolver" if component_id == RESOLVER else component_id

    expected = _expected_dag(kind)
    assert f"{RESOLVER}-model-resolver" in tasks and f"{RESOLVER}-model-blessing-resolver" in tasks
    for component_id, upstream in expected.items():
        if component_id == RESOLVER:
            continue
        task = tasks[component_id]
        assert set(task.get("dependentTasks", [])) == {task_id(u) for u in upstream}, component_id
        assert executors[f"{component_id}_executor"]["container"]["image"] == IMAGE, component_id

    # Inputs and outputs of every component are wired as in the local DAG.
    wiring = {"StatisticsGen": ["examples"], "Transform": ["examples", "schema"],
              "Trainer": ["examples", "schema", "transform_graph"],
              "BaselineEvaluator": ["baseline_model", "examples", "model"],
              "ConveyorInfraValidator": ["examples", "model"],
              "ServingPusher": ["infra_blessing", "model", "model_blessing"]}
    for component_id, inputs in wiring.items():
        assert sorted(tasks[component_id]["inputs"]["artifacts"]) == inputs, component_id
    outputs = {name: set(c.get("outputDefinitions", {}).get("artifacts", {}))
               for name, c in spec["components"].items()}
    assert "examples" in outputs[tasks[f"{kind.capitalize()}ExampleGen"]["componentRef"]["name"]]
    assert "model" in outputs[tasks["Trainer"]["componentRef"]["name"]]
    assert "blessing" in outputs[tasks["BaselineEvaluator"]["componentRef"]["name"]]
    assert "pushed_model" in outputs[tasks["ServingPusher"]["componentRef"]["name"]]

    # Transform/Trainer load code from the repo installed in the image, not a local file.
    text = json.dumps(spec)
    assert "--direct_num_workers=2" in text and "--direct_running_mode=in_memory" not in text
    assert "modules.preprocessing.preprocessing_fn" in text and "modules.trainer.run_fn" in text


def test_cli_compile_writes_one_spec_per_pipeline(tmp_path, capsys):
    from conveyor.cli import main
    out = tmp_path / "specs"
    assert main(["compile", "kubeflow", "--out", str(out), "--image", IMAGE,
                 "--pipeline-root", "s3://other/root"]) == 0
    assert sorted(os.listdir(out)) == ["image_classifier.json", "image_classifier.yaml",
                                       "text_classifier.json", "text_classifier.yaml"]
    job = json.load(open(out / "text_classifier.json"))
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "s3://other/root/text_classifier"
    assert str(out / "image_classifier.json") in capsys.readouterr().out


def test_vertex_worker_pools_reach_the_trainer(tmp_path):
    """VertexTraining becomes the custom_config of TFX's Vertex Trainer extension: one chief
    pool and replica_count - 1 workers, each on the machine type and the image; run_fn gets
    the multi_worker settings (the extension passes custom_config on to it)."""
    from kubeflow.runner import VertexTraining, compile_pipeline
    from modules.settings import ModuleSettings
    config = load_config("image", overrides={"distribution": "multi_worker"})
    path = compile_pipeline(config, str(tmp_path), image=IMAGE, pipeline_root=ROOT,
                            vertex_training=VertexTraining("my-project", "europe-west4", 3, "n1-standard-8"))
    spec = json.load(open(path))["pipelineSpec"]
    trainer = spec["root"]["dag"]["tasks"]["Trainer"]
    container = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert container["args"][:2] == ["--executor_class_path",
                                     "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"]
    custom_config = json.loads(
        trainer["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]["stringValue"])
    assert custom_config["ai_platform_enable_vertex"] is True
    assert custom_config["ai_platform_vertex_region"] == "europe-west4"
    training = custom_config["ai_platform_training_args"]
    assert training["project"] == "my-project"
    pool = {"machine_spec": {"machine_type": "n1-standard-8"}, "container_spec": {"image_uri": IMAGE}}
    assert training["job_spec"]["worker_pool_specs"] == [{**pool, "replica_count": 1}, {**pool, "replica_count": 2}]
    settings = ModuleSettings.from_custom_config(custom_config)
    assert settings.distribution == "multi_worker"
    # The other steps stay where they were.
    assert spec["deploymentSpec"]["executors"]["Transform_executor"]["container"]["image"] == IMAGE


def test_vertex_replicas_need_multi_worker(tmp_path):
    from kubeflow.runner import VertexTraining, compile_pipeline
    with pytest.raises(ValueError, match="3 replicas needs distribution: multi_worker, got 'none'"):
        compile_pipeline(load_config("image"), str(tmp_path), vertex_training=VertexTraining("p", "r", 3))


def test_next_day_evaluation_is_refused_with_the_reason(tmp_path):
    from kubeflow.runner import compile_pipeline
    with pytest.raises(ValueError, match="eval_span: next .* runs on the local runner"):
        compile_pipeline(load_config("image", overrides={"eval_span": "next"}), str(tmp_path))
