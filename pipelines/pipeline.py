"""Builds the Conveyor TFX pipeline from a Config. Runners (local, Airflow, Kubeflow) only
choose how to execute what this returns."""
import glob
import hashlib
import os
from typing import List, Optional

from tfx import v1 as tfx
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import metadata, pipeline
from tfx.proto import example_gen_pb2
from tfx.types import Channel, standard_artifacts

from components.evaluator import BaselineEvaluator, eval_config
from components.example_validator import GatedExampleValidator
from components.image_example_gen import ImageExampleGen, detect_input_pattern
from components.infra_validator import ConveyorInfraValidator
from conveyor.config import Config, split_span_path
# custom_config key holding modules_fingerprint(): TFX's cache key covers exec properties, so
# edited user code re-runs Transform and Trainer instead of reusing their outputs.
from conveyor.lineage import MODULES_FINGERPRINT_KEY
from pipelines.beam import SETUP_FILE, with_worker_setup_file

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(PROJECT_ROOT, "modules")
SCHEMAS = os.path.join(PROJECT_ROOT, "schemas")
PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"


def modules_fingerprint() -> str:
    """sha256 of the user code in modules/ (file names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(MODULES, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


def module_config(config: Config) -> dict:
    """The settings preprocessing_fn and run_fn read (TFX passes them as custom_config)."""
    keys = ("kind", "name", "model", "image_size", "channels", "vocab_size", "oov_buckets", "max_tokens",
            "epochs", "batch_size", "learning_rate", "early_stopping_patience", "trainer_cache_mb")
    return dict({k: getattr(config, k) for k in keys}, **{MODULES_FINGERPRINT_KEY: modules_fingerprint()})


def curated_schema(config: Config) -> Optional[str]:
    """schemas/<name>.pbtxt in the repo, or HOME/schemas/<name>.pbtxt saved by an earlier run."""
    for folder in (SCHEMAS, os.path.join(config.home_dir, "schemas")):
        path = os.path.join(folder, f"{config.name}.pbtxt")
        if os.path.exists(path):
            return path
    return None


def example_gen(config: Config):
    # A {SPAN} in --data moves into the pattern: TFX's driver then ingests the latest span.
    input_base, input_pattern = split_span_path(config.data, config.input_pattern)
    if config.kind == "image":
        pattern = input_pattern or detect_input_pattern(input_base)
        return ImageExampleGen(input_base=input_base, input_pattern=pattern,
                               eval_percent=config.eval_percent,
                               skip_bad_images=config.skip_bad_images,
                               class_names=config.class_names)
    from components.text_example_gen import TextExampleGen
    return TextExampleGen(input_base=input_base, input_pattern=input_pattern,
                          eval_percent=config.eval_percent, skip_bad_rows=config.skip_bad_rows,
                          text_column=config.text_column, label_column=config.label_column,
                          class_names=config.class_names)


def create_pipeline(config: Config, pipeline_root: Optional[str] = None,
                    metadata_connection_config=None,
                    worker_setup_file: Optional[str] = SETUP_FILE) -> pipeline.Pipeline:
    """The DAG: ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator (gate) -> Transform
    -> Trainer -> Evaluator (vs latest blessed) + InfraValidator -> Pusher.

    Transform and Trainer import the user code from the installed `modules` package (the
    same code Beam workers get from setup.py) rather than from module files, which TFX would
    wheel-package at every compile and pip-install into a temporary directory at every
    execution (about 2 s each, three times in Transform). `worker_setup_file` is what Beam
    workers install; None for pipelines compiled to run elsewhere (Kubeflow images have the
    package installed already).
    """
    from components.pusher import ServingPusher

    settings = module_config(config)  # what Transform and Trainer read, with the code's sha256
    examples = example_gen(config)
    statistics = tfx.components.StatisticsGen(examples=examples.outputs["examples"])
    schema_file = curated_schema(config)
    if schema_file:
        schema = tfx.components.ImportSchemaGen(schema_file=schema_file)
    else:
        schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"],
                                          infer_feature_shape=True)
    baseline = tfx.dsl.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model")
    # The gate also checks the data against the schema the latest blessed model was trained with.
    validator = GatedExampleValidator(statistics=statistics.outputs["statistics"],
                                      schema=schema.outputs["schema"],
                                      baseline_model=baseline.outputs["model"])
    transform = tfx.components.Transform(
        examples=examples.outputs["examples"], schema=schema.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=settings, materialize=False,
        # Pre-transform statistics would repeat StatisticsGen's; nothing reads post-transform
        # statistics of decoded pixels / multi-hot vectors, and computing them costs seconds.
        disable_statistics=True)
    transform.add_upstream_node(validator)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=examples.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        # Warm start: run_fn gets the latest blessed model as fn_args.base_model (none on a first run).
        base_model=baseline.outputs["model"] if config.warm_start else None,
        train_args=tfx.proto.TrainArgs(num_steps=config.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config=dict(settings, warm_start=config.warm_start))
    evaluator = BaselineEvaluator(
        examples=examples.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        eval_config=eval_config(config.accuracy_floor, config.regression_tolerance))
    infra = ConveyorInfraValidator(
        model=trainer.outputs["model"], examples=examples.outputs["examples"],
        num_requests=config.infra_requests, p99_budget_ms=config.infra_p99_budget_ms,
        model_name=config.name, server=config.infra_server)
    pusher = ServingPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.serving_model_dir)))

    components: List = [examples, statistics, schema, validator, transform, trainer, baseline,
                        evaluator, infra, pusher]
    return pipeline.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root or config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config
        or metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=with_worker_setup_file(config.beam_args, worker_setup_file),
    )
