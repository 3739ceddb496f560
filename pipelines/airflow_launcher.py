"""The component launcher of Conveyor's Airflow DAGs: TFX's in-process launcher, fixed for
two ways TFX's AirflowDagRunner (TFX 1.16, ML Metadata 1.16) fails a DAG run.

1. A retried task cannot run. The retry's driver finds the component_run context of the
   failed try and reuses that try's execution (tfx/orchestration/metadata.py,
   Metadata.register_execution), but puts the same input events again, which MLMD refuses
   on SQLite and MySQL alike ("Given event already exists", its UniqueEvent key): a Trainer
   process killed mid-run failed the DAG run however many retries it had. The driver also
   keeps the failed try's output folders as they were (tfx/dsl/components/base/
   base_driver.py, _prepare_output_paths, TODO b/158689199), partial files included.
2. An artifact given to one execution under two keys gets two INPUT events, which MLMD
   refuses the same way: the Evaluator of a run whose Trainer was cached (its candidate is
   also the latest blessed baseline) failed every try, so every unchanged DAG run after the
   first blessed push failed.

Here a retry reuses the unfinished execution without putting its recorded input events again
(nor registering its output artifacts again), and the executor starts from empty output
folders; a task whose component finished in this run already does nothing; an artifact under
several keys gets one event with a path per key, as TFX's portable orchestrator records it.
A first try runs exactly as TFX's launcher.
"""
from typing import Any, Dict, List, Optional, Set

import absl.logging
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
from tfx import types
from tfx.dsl.io import fileio
from tfx.orchestration import data_types, metadata
from tfx.orchestration.portable import data_types as portable_data_types
from tfx.orchestration.launcher.in_process_component_launcher import InProcessComponentLauncher


class RetryableMetadata(metadata.Metadata):
    """TFX's MLMD handler whose register_execution accepts a retry of the same component run.

    Attributes:
      retried_execution_id: id of the execution the last register_execution reused (a retry),
        None when it registered a new one.
    """

    def __init__(self, connection_config):
        super().__init__(connection_config)
        self.retried_execution_id: Optional[int] = None

    def register_execution(self, pipeline_info: data_types.PipelineInfo,
                           component_info: data_types.ComponentInfo,
                           contexts: List[mlmd_pb2.Context],
                           exec_properties: Optional[Dict[str, Any]] = None,
                           input_artifacts: Optional[Dict[str, List[types.Artifact]]] = None,
                           ) -> mlmd_pb2.Execution:
        """As TFX's: registers the execution of this component run, linked to `contexts` and
        its component_run context (appended to `contexts`), with an INPUT event per input
        artifact. When the run's latest execution of this component exists and did not
        finish (the earlier try failed or was killed), that execution is reused (state "new"
        again, TFX's choice: same output names and folders) and gets events only for inputs
        it lacks; `retried_execution_id` names it.

        Returns:
          the execution (with its id).
        Raises:
          ml_metadata.errors: what MLMD raises.
        """
        self.retried_execution_id = None
        run_context = self.get_component_run_context(component_info)
        latest = latest_execution(self, run_context)
        if latest is None or finished(latest):
            return super().register_execution(pipeline_info, component_info, contexts,
                                              exec_properties, input_artifacts)
        execution = self._prepare_execution(metadata.EXECUTION_STATE_NEW, exec_properties or {},
                                            pipeline_info, component_info)
        execution.id = latest.id
        recorded = {e.artifact_id for e in self.store.get_events_by_execution_ids([latest.id])
                    if e.type == mlmd_pb2.Event.INPUT}
        pairs = self._artifact_and_event_pairs(artifact_dict=input_artifacts or {},
                                               event_type=mlmd_pb2.Event.INPUT,
                                               registered_artifacts_ids=recorded)
        _, artifact_ids, _ = self.store.put_execution(execution=execution, artifact_and_events=pairs,
                                                      contexts=contexts + [run_context])
        for pair, artifact_id in zip(pairs, artifact_ids):   # (artifact,) or (artifact, event)
            pair[0].id = artifact_id
        contexts.append(run_context)
        self.retried_execution_id = latest.id
        absl.logging.warning("%s: retrying execution %d (the earlier try of this run did not finish)",
                             component_info.component_id, latest.id)
        return execution

    def _artifact_and_event_pairs(self, artifact_dict: Dict[str, List[types.Artifact]],
                                  event_type: int, new_state: Optional[str] = None,
                                  registered_artifacts_ids: Optional[Set[int]] = None) -> List[tuple]:
        """As TFX's, but one event per registered artifact: an artifact under several keys
        (the Evaluator's candidate when it is also the latest blessed baseline, as in a rerun
        whose Trainer was cached) gets one event with a path step pair per key, as TFX's
        portable orchestrator records it (tfx/orchestration/portable/mlmd/event_lib.py).
        TFX's version puts one event per key, which MLMD refuses (one event per artifact,
        execution and type), so such a run failed every try."""
        merged, event_of = [], {}
        for pair in super()._artifact_and_event_pairs(artifact_dict, event_type, new_state,
                                                      registered_artifacts_ids):
            artifact_id = pair[0].id
            if len(pair) == 2 and artifact_id and artifact_id in event_of:
                event_of[artifact_id].path.steps.extend(pair[1].path.steps)
                continue
            if len(pair) == 2 and artifact_id:
                event_of[artifact_id] = pair[1]
            merged.append(pair)
        return merged

    def get_cached_outputs(self, input_artifacts, exec_properties, pipeline_info, component_info):
        """As TFX's, except that a retry never takes cached outputs: its execution already
        has the earlier try's OUTPUT events, and a cache hit would add a second set (two
        artifacts under one key for the steps downstream)."""
        if self.retried_execution_id is not None:
            return None
        return super().get_cached_outputs(input_artifacts, exec_properties, pipeline_info, component_info)

    def update_execution(self, execution: mlmd_pb2.Execution, component_info: data_types.ComponentInfo,
                         input_artifacts: Optional[Dict[str, List[types.Artifact]]] = None,
                         output_artifacts: Optional[Dict[str, List[types.Artifact]]] = None,
                         **kwargs) -> None:
        """As TFX's; for the execution of a retry, new output artifacts take the ids of the
        earlier try's outputs at the same output key and index (same names and folders),
        which MLMD would otherwise refuse as duplicate names."""
        if output_artifacts and execution.id and execution.id == self.retried_execution_id:
            earlier = {(e.path.steps[0].key, e.path.steps[1].index): e.artifact_id
                       for e in self.store.get_events_by_execution_ids([execution.id])
                       if e.type == mlmd_pb2.Event.OUTPUT and len(e.path.steps) == 2}
            for key, artifacts in output_artifacts.items():
                for index, artifact in enumerate(artifacts):
                    if not artifact.id and (key, index) in earlier:
                        artifact.id = earlier[(key, index)]
        super().update_execution(execution, component_info, input_artifacts=input_artifacts,
                                 output_artifacts=output_artifacts, **kwargs)


class RetryingLauncher(InProcessComponentLauncher):
    """InProcessComponentLauncher with RetryableMetadata; on a retry it empties the output
    artifacts' folders (and removes file outputs) before the executor runs."""

    def __init__(self, *, metadata_connection: metadata.Metadata, **kwargs):
        super().__init__(metadata_connection=RetryableMetadata(metadata_connection.connection_config),
                         **kwargs)

    def launch(self) -> portable_data_types.ExecutionInfo:
        """TFX's launch (driver, executor, publisher), except when this component finished in
        this run already (Airflow retried a task killed after MLMD recorded its outputs, or a
        finished task was cleared): then nothing runs again; downstream tasks read its
        outputs from MLMD. TFX names a run's outputs after the run, so running it again in
        the same run could only fail on duplicate names: a new DAG run runs it again."""
        with self._metadata_connection as m:
            latest = latest_execution(m, m.get_component_run_context(self._component_info))
        if latest is not None and finished(latest):
            absl.logging.warning("%s finished in this run already (execution %d): not run again; trigger a "
                                 "new DAG run to run it again", self._component_info.component_id, latest.id)
            return portable_data_types.ExecutionInfo(execution_id=latest.id)
        return super().launch()

    def _run_executor(self, execution_id: int, input_dict: Dict[str, List[types.Artifact]],
                      output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        if self._metadata_connection.retried_execution_id == execution_id:
            for artifact in (a for artifacts in output_dict.values() for a in artifacts):
                _empty(artifact.uri)
        super()._run_executor(execution_id, input_dict, output_dict, exec_properties)


def latest_execution(handle: metadata.Metadata, run_context: Optional[mlmd_pb2.Context],
                     ) -> Optional[mlmd_pb2.Execution]:
    """The newest execution in a component run's context (TFX's component_run context,
    PIPELINE.RUN_ID.COMPONENT, from get_component_run_context), None before its first try
    (no context yet)."""
    if run_context is None:
        return None
    return max(handle.store.get_executions_by_context(run_context.id), key=lambda e: e.id, default=None)


def finished(execution: mlmd_pb2.Execution) -> bool:
    """Whether TFX recorded `execution` as complete or cached (its outputs are published)."""
    return execution.properties["state"].string_value in metadata.FINAL_EXECUTION_STATES


def _empty(uri: str) -> None:
    """Leaves `uri` an empty folder when it was one, and removes it when it was a file."""
    if fileio.isdir(uri):
        absl.logging.info("Emptying %s, left by the earlier try", uri)
        fileio.rmtree(uri)
        fileio.makedirs(uri)
    elif fileio.exists(uri):
        fileio.remove(uri)
