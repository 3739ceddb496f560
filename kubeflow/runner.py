"""Compiles the image and text pipelines to KFP v2 pipeline specs (Kubeflow Pipelines, Vertex AI).

Same DAG as the local runner (pipelines.pipeline.create_pipeline); this only picks the container
image, the pipeline root and the Beam args. The image must have this repo installed (see
kubeflow/Dockerfile and kubeflow/README.md), so Transform/Trainer load their code from the
installed `modules` package instead of a file path on the compiling machine.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

from pipelines.config import Config, load_config

DEFAULT_IMAGE = "conveyor:latest"
# The bucket KFP's bundled MinIO uses; pass gs://... for Vertex, s3://... for S3.
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/conveyor"


@dataclasses.dataclass(frozen=True)
class VertexTraining:
    """Run the Trainer as a Vertex AI custom job on its own worker pools (TFX's
    tfx.extensions.google_cloud_ai_platform.Trainer) instead of inside the pipeline step.

    Attributes:
      project: Google Cloud project of the custom job.
      region: Vertex AI region, e.g. "europe-west4".
      replica_count: training machines in all (> 0): worker pool 0 is the one chief; the
        other replica_count - 1 form worker pool 1. Vertex AI writes each machine's TF_CONFIG
        (pool 0 as "chief", pool 1 as "worker"); more than one needs distribution
        multi_worker.
      machine_type: Compute Engine machine type of every replica, e.g. "n1-standard-8".
    """
    project: str
    region: str
    replica_count: int = 1
    machine_type: str = "n1-standard-4"

    def custom_config(self, image: str) -> Dict[str, Any]:
        """The extension's Trainer custom_config: a CustomJob whose worker_pool_specs run
        `image` (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec;
        the extension replaces each container's command with TFX's run_executor).

        Raises:
          ValueError: replica_count < 1.
        """
        from tfx import v1 as tfx
        if self.replica_count < 1:
            raise ValueError(f"VertexTraining.replica_count: expected a positive number, got {self.replica_count}")
        pool = {"machine_spec": {"machine_type": self.machine_type}, "container_spec": {"image_uri": image}}
        pools = [{**pool, "replica_count": 1}]
        if self.replica_count > 1:
            pools.append({**pool, "replica_count": self.replica_count - 1})
        cloud = tfx.extensions.google_cloud_ai_platform
        return {cloud.ENABLE_VERTEX_KEY: True, cloud.VERTEX_REGION_KEY: self.region,
                cloud.TRAINING_ARGS_KEY: {"project": self.project,
                                                       "job_spec": {"worker_pool_specs": pools}}}


def kfp_name(name: str) -> str:
    """A KFP/Vertex pipeline name ([a-z0-9-]) for a model name."""
    return name.lower().replace("_", "-")


def compile_pipeline(config: Config, out_dir: str, image: str = DEFAULT_IMAGE,
                     pipeline_root: str = DEFAULT_PIPELINE_ROOT,
                     beam_args: Optional[Sequence[str]] = None,
                     vertex_training: Optional[VertexTraining] = None) -> str:
    """Writes OUT_DIR/<name>.json (Vertex PipelineJob) and <name>.yaml (KFP pipeline spec).

    Args:
      config: the pipeline's Config.
      out_dir: folder for the two files.
      image: container image with this repo installed (every step, and the training pools).
      pipeline_root: gs://, s3:// or minio:// root of the pipeline's artifacts.
      beam_args: Beam flags replacing config.beam_args; None keeps them.
      vertex_training: train on Vertex AI worker pools (VertexTraining); None = the Trainer
        runs in its pipeline step like every other component.
    Returns:
      the path of the JSON file.
    Raises:
      ValueError: vertex_training.replica_count > 1 while config.distribution is not
        multi_worker (the extra machines would each train a model of their own); or
        config.eval_span is "next" (its resolver does not compile for KFP v2).
    """
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    # The data lives on the cluster (config `data`); never look at it from here.
    # Image: class folders; text: CSV tables. Set input_pattern in the config for other layouts.
    config = config.replace(
        data=config.data or f"{pipeline_root.rstrip('/')}/data/{config.kind}",
        input_pattern=config.input_pattern or ("*/*" if config.kind == "image" else "*.csv"),
        beam_args=config.beam_args if beam_args is None else list(beam_args))
    if config.eval_span == "next":
        # KubeflowV2DagRunner compiles only LatestArtifactStrategy / LatestBlessedModelStrategy
        # resolvers (tfx/orchestration/kubeflow/v2/compiler_utils.py); next-day evaluation's
        # span resolver is a strategy of our own.
        raise ValueError("eval_span: next (next-day evaluation) runs on the local runner; Kubeflow/Vertex "
                         "pipelines compile only TFX's built-in resolvers: use eval_span: same there")
    if vertex_training and vertex_training.replica_count > 1 and config.distribution != "multi_worker":
        raise ValueError(f"Vertex training on {vertex_training.replica_count} replicas needs distribution: "
                         f"multi_worker, got {config.distribution!r}")
    root = f"{pipeline_root.rstrip('/')}/{config.name}"
    # The image has the repo installed: no local setup.py for Beam workers.
    # KFP and Vertex record the run in their own MLMD (KFP: the metadata-grpc service on its
    # MySQL database `metadb`; Vertex: Vertex ML Metadata), so the config's `metadata` is not
    # compiled in: an empty ConnectionConfig, and no password is read at compile time.
    from ml_metadata.proto import metadata_store_pb2
    pipeline = create_pipeline(config, pipeline_root=root, worker_setup_file=None,
                               metadata_connection_config=metadata_store_pb2.ConnectionConfig(),
                               cloud_training=vertex_training.custom_config(image) if vertex_training else None)
    # KFP/Vertex names are [a-z0-9][a-z0-9-]*; the model keeps its name (serving dir, signatures).
    pipeline.pipeline_info.pipeline_name = kfp_name(config.name)
    runner_config = tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image)
    for suffix in ("json", "yaml"):
        tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=runner_config, output_dir=out_dir,
            output_filename=f"{config.name}.{suffix}").run(pipeline)
    return os.path.join(out_dir, f"{config.name}.json")


def compile_all(out_dir: str, image: str = DEFAULT_IMAGE,
                pipeline_root: str = DEFAULT_PIPELINE_ROOT,
                config_paths: Optional[Dict[str, str]] = None,
                beam_args: Optional[Sequence[str]] = None,
                vertex_training: Optional[VertexTraining] = None) -> List[str]:
    """Compiles the image and the text pipeline (compile_pipeline's arguments); returns the
    JSON paths."""
    config_paths = config_paths or {}
    return [compile_pipeline(load_config(kind, config_paths.get(kind)), out_dir, image,
                             pipeline_root, beam_args, vertex_training)
            for kind in ("image", "text")]
