"""Compiles the image and text pipelines to KFP v2 pipeline specs (Kubeflow Pipelines, Vertex AI).

Same DAG as the local runner (pipelines.pipeline.create_pipeline); this only picks the container
image, the pipeline root and the Beam args. The image must have this repo installed (see
kubeflow/Dockerfile and kubeflow/README.md), so Transform/Trainer load their code from the
installed `modules` package instead of a file path on the compiling machine.
"""
import os
from typing import Dict, List, Optional, Sequence

from pipelines.config import Config, load_config

DEFAULT_IMAGE = "conveyor:latest"
# The bucket KFP's bundled MinIO uses; pass gs://... for Vertex, s3://... for S3.
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/conveyor"


def kfp_name(name: str) -> str:
    """A KFP/Vertex pipeline name ([a-z0-9-]) for a model name."""
    return name.lower().replace("_", "-")


def compile_pipeline(config: Config, out_dir: str, image: str = DEFAULT_IMAGE,
                     pipeline_root: str = DEFAULT_PIPELINE_ROOT,
                     beam_args: Optional[Sequence[str]] = None) -> str:
    """Writes OUT_DIR/<name>.json (Vertex PipelineJob) and <name>.yaml (KFP pipeline spec)."""
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    # The data lives on the cluster (config `data`); never look at it from here.
    # Image: class folders; text: CSV tables. Set input_pattern in the config for other layouts.
    config = config.replace(
        data=config.data or f"{pipeline_root.rstrip('/')}/data/{config.kind}",
        input_pattern=config.input_pattern or ("*/*" if config.kind == "image" else "*.csv"),
        beam_args=config.beam_args if beam_args is None else list(beam_args))
    root = f"{pipeline_root.rstrip('/')}/{config.name}"
    # The image has the repo installed: no local setup.py for Beam workers.
    pipeline = create_pipeline(config, pipeline_root=root, worker_setup_file=None)
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
                beam_args: Optional[Sequence[str]] = None) -> List[str]:
    """Compiles the image and the text pipeline; returns the JSON paths."""
    config_paths = config_paths or {}
    return [compile_pipeline(load_config(kind, config_paths.get(kind)), out_dir, image,
                             pipeline_root, beam_args)
            for kind in ("image", "text")]
