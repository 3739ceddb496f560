"""Builds the Conveyor TFX pipeline from a Config. Runners (local, Airflow, Kubeflow) only
choose how to execute what this returns."""
import dataclasses
from typing import Any, Dict, List, Optional

# The component modules directly, not `tfx.v1`: tfx.v1 also imports tfx.v1.extensions, i.e. the
# Vertex AI client library (google.cloud.aiplatform), about a third of TFX's import time,
# which a local run never uses.
from tfx.components.schema_gen.component import SchemaGen
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.components.statistics_gen.component import StatisticsGen
from tfx.components.trainer.component import Trainer
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import pipeline
from tfx.proto.pusher_pb2 import PushDestination
from tfx.proto.trainer_pb2 import EvalArgs, TrainArgs
from tfx.types import Channel, standard_artifacts

from components.evaluator import BaselineEvaluator
from components.example_validator import GatedExampleValidator
from components.image_example_gen import ImageExampleGen, detect_input_pattern
from components.infra_validator import ConveyorInfraValidator
from components.spans import split_span_path
from components.training_spans import TRAINING_KEY, NextDayTrainingSpans
from components.transform import CheckedTransform
from pipelines.beam import SETUP_FILE, with_worker_setup_file
from pipelines.config import Config
from pipelines.metadata_connection import config_connection
from pipelines.preflight import curated_schema

PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"


def example_gen(config: Config):
    """The ExampleGen of the config's kind; a {SPAN} in --data moves into its input pattern."""
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
                    worker_setup_file: Optional[str] = SETUP_FILE,
                    cloud_training: Optional[Dict[str, Any]] = None,
                    infra_remeasure: Optional[str] = None) -> pipeline.Pipeline:
    """The DAG: ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator (gate) -> Transform
    -> Trainer -> Evaluator (vs latest blessed) + InfraValidator -> Pusher [-> EdgeExporter
    when config.edge_exports names some].

    Transform and Trainer import the user code from the installed `modules` package (the
    same code Beam workers get from setup.py) rather than from module files, which TFX would
    wheel-package at every compile and pip-install into a temporary directory at every
    execution (about 2 s each, three times in Transform). `worker_setup_file` is what Beam
    workers install; None for pipelines compiled to run elsewhere (Kubeflow images have the
    package installed already).

    `cloud_training`: the custom_config keys of TFX's Vertex/AI Platform Trainer extension
    (tfx.extensions.google_cloud_ai_platform: ENABLE_VERTEX_KEY, VERTEX_REGION_KEY,
    TRAINING_ARGS_KEY); with them the Trainer is that extension's, which runs the same run_fn
    as a Vertex AI custom job on the worker pools they name (kubeflow/runner.py builds them).

    `metadata_connection_config`: the MLMD ConnectionConfig; None = the config's `metadata`
    (pipelines/metadata_connection.py: HOME/metadata.sqlite or the MySQL database).

    `infra_remeasure`: the infra validator's cache-key token (pipelines/preflight.py
    `infra_remeasure`: new after a failed verdict, so it measures again); None leaves it out.
    """
    from components.pusher import ServingPusher

    # What Transform and Trainer read, with the user code's sha256. Transform's copy never
    # warm-starts, so toggling warm_start does not re-run Transform.
    settings = dataclasses.replace(config.module_settings(), warm_start=False)
    examples = example_gen(config)
    statistics = StatisticsGen(examples=examples.outputs["examples"])
    schema_file = curated_schema(config)
    if schema_file:
        schema = ImportSchemaGen(schema_file=schema_file)
    else:
        schema = SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=True)
    baseline = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model")
    # Next-day evaluation: Transform and Trainer read earlier spans, the Evaluator the latest.
    training_examples = examples.outputs["examples"]
    training_spans = None
    if config.eval_span == "next":
        # Every run's Examples (a plain Channel is not limited to this run), resolved after
        # this run's ExampleGen.
        training_spans = Resolver(
            strategy_class=NextDayTrainingSpans, config={"train_spans": config.train_spans or 0},
            **{TRAINING_KEY: Channel(type=standard_artifacts.Examples, producer_component_id=examples.id,
                                     output_key="examples")},
        ).with_id("next_day_training_spans")
        training_spans.add_upstream_node(examples)
        training_examples = training_spans.outputs[TRAINING_KEY]
    # The gate also checks the data against the schema the latest blessed model was trained with.
    validator = GatedExampleValidator(statistics=statistics.outputs["statistics"],
                                      schema=schema.outputs["schema"],
                                      baseline_model=baseline.outputs["model"])
    # TFX's Transform, then a check that a text vocabulary is not (nearly) empty.
    transform = CheckedTransform(
        examples=training_examples, schema=schema.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=settings.to_custom_config(), materialize=False,
        # Pre-transform statistics would repeat StatisticsGen's; nothing reads post-transform
        # statistics of decoded pixels / multi-hot vectors, and computing them costs seconds.
        disable_statistics=True).with_id("Transform")
    transform.add_upstream_node(validator)
    trainer_class = Trainer
    if cloud_training:  # imported only here: tfx.extensions pulls in the Vertex AI client library
        from tfx.extensions.google_cloud_ai_platform.trainer.component import Trainer as trainer_class
    trainer = trainer_class(
        run_fn=RUN_FN,
        examples=training_examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        # Warm start: run_fn gets the latest blessed model as fn_args.base_model (none on a first run).
        base_model=baseline.outputs["model"] if config.warm_start else None,
        train_args=TrainArgs(num_steps=config.train_steps),
        eval_args=EvalArgs(num_steps=config.eval_steps),
        custom_config={**dataclasses.replace(settings, warm_start=config.warm_start).to_custom_config(),
                       **(cloud_training or {})})
    evaluator = BaselineEvaluator(
        examples=examples.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], rules=config.blessing_rules())
    infra = ConveyorInfraValidator(
        model=trainer.outputs["model"], examples=examples.outputs["examples"],
        num_requests=config.infra_requests, p99_budget_ms=config.infra_p99_budget_ms,
        model_name=config.name, server=config.infra_server, remeasure=infra_remeasure)
    pusher = ServingPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra.outputs["blessing"],
        push_destination=PushDestination(
            filesystem=PushDestination.Filesystem(base_directory=config.serving_model_dir)),
        custom_config={"canary": True} if config.canary else None)

    components: List = [examples, statistics, schema, validator, transform, trainer, baseline,
                        evaluator, infra, pusher] + ([training_spans] if training_spans else [])
    if config.edge_exports:
        from components.edge_exporter import EdgeExporter
        components.append(EdgeExporter(
            model=trainer.outputs["model"], pushed_model=pusher.outputs["pushed_model"],
            transform_graph=transform.outputs["transform_graph"], examples=examples.outputs["examples"],
            exports=config.edge_exports, max_accuracy_drop=config.edge_max_accuracy_drop,
            base_directory=config.edge_model_dir, settings=settings))
    return pipeline.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root or config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=(config_connection(config) if metadata_connection_config is None
                                    else metadata_connection_config),
        beam_pipeline_args=with_worker_setup_file(config.beam_args, worker_setup_file),
    )
