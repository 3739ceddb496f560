"""Compatibility re-export for users' scripts: the MLMD read side lives in conveyor/metadata/
(store, runs, artifacts, lineage, diff). Results are dataclasses now; `.to_json()` gives the
dicts these functions used to return, and `result["key"]` / `result.get("key")` still work. Import from conveyor.metadata in new code."""
from conveyor.metadata.artifacts import (ACCURACY, AnomaliesSummary, ArtifactRef, BlessingSummary,  # noqa: F401
                                         EvaluationMetrics, ExamplesSummary, FeatureSchema, InfraSummary,
                                         SchemaSummary, SplitStatistics, StatisticsSummary, anomalies_summary,
                                         artifact_ref, evaluation_metrics, examples_summary, infra_summary,
                                         schema_summary, split_names, statistics_summary)
from conveyor.metadata.diff import RunDetails, RunDiff, dag_edges, diff_runs, run_details  # noqa: F401
from conveyor.metadata.lineage import (Evaluation, Lineage, ModelSummary, ModelsFromExamples,  # noqa: F401
                                       PushedVersion, TrainedModel, find_examples, lineage_of_model,
                                       lineage_of_version, model_summary, models_from_examples, pushed_models,
                                       versions_of_model)
from conveyor.metadata.runs import (NodeRun, RunRecord, default_pipeline, list_runs, pipeline_nodes,  # noqa: F401
                                    resolve_run, run_contexts, run_executions, run_record)
from conveyor.metadata.store import (NOT_RUN, RUN_CONTEXT_TYPES, Graph, LineageError, UserCode,  # noqa: F401
                                     exec_properties, open_store, props, seconds_of, sqlite_connection_config,
                                     state_name, user_code)
