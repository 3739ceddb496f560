"""`conveyor bless --run RUN --reason "..." [--by NAME]`: push a model the Evaluator did not bless.

A person decides the model of a run is good enough although a threshold said no. The
command pushes that run's model as the next serving version with the Pusher's atomic copy
(components/pusher.py `publish`) and records the decision in MLMD the way the DAG records
its own (see conveyor/metadata/store.py ACTION_TYPES):

  execution conveyor.ManualBlessing  inputs  model, evaluation, overridden_blessing, infra_blessing
                                     output  blessing: ModelBlessing blessed=1, current_model_id,
                                             manual=1, blessed_by, reason, overrides_blessing_id
  execution conveyor.ManualPush      inputs  model, model_blessing, infra_blessing
                                     output  pushed_model: PushedModel pushed=1, pushed_version

both in the pipeline's context and a new pipeline_run context. TFX's LatestBlessedModelStrategy
reads every LIVE ModelBlessing output of an execution in the pipeline context and takes the
highest Model id whose blessing has `blessed` == 1 (its `current_model_id`), so from now on
the blessed model is the baseline of later runs (and the base model of a warm start).

Refused, with one line and nothing changed: a failed (or missing) infra validation (a
manual blessing never overrides it), a model the Evaluator blessed already, a run without
an evaluation, and a model older than the latest blessed one (the resolver would keep
the newer one as baseline while the older one is served).
"""
import dataclasses
import datetime
import getpass
import os
import sys
import time
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from conveyor.history_cli import CONFIG_HELP
from conveyor.metadata.runs import default_pipeline, resolve_run, run_executions
from conveyor.metadata.store import (MANUAL_BLESSING_TYPE, MANUAL_PUSH_TYPE, Graph, LineageError, home_dir, props,
                                     store_location)
from pipelines import metadata_connection
from pipelines.config import ConfigError, MySQLMetadata
from pipelines.local_runner import ConveyorError, home_lock, output_to_log
from pipelines.preflight import latest_blessed_model_id

SERVING_MODEL_DIR = "Format-Serving"  # where TFX's Trainer writes the SavedModel (tfx/utils/path_utils.py)


class BlessError(LineageError):
    """The blessing is refused; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Blessed:
    """A manual blessing and its push.

    Fields:
      pipeline, run_id: the model (pipeline) name and the run whose model was blessed.
      model_id: the Model artifact's MLMD id.
      blessing_id: the new (manual) ModelBlessing's MLMD id.
      version, destination: the serving version pushed and its folder.
      by, reason: who blessed it and why.
    """
    pipeline: str
    run_id: str
    model_id: int
    blessing_id: int
    version: int
    destination: str
    by: str
    reason: str


def _store(home: str, metadata: Optional[MySQLMetadata] = None) -> metadata_store.MetadataStore:
    """A read-write store on the HOME's MLMD (metadata_connection); never creates one."""
    if not metadata_connection.store_exists(home, metadata):
        raise BlessError(f"no metadata store at {metadata_connection.sqlite_path(home)}: run a pipeline "
                         "first or pass --home (or --config naming a MySQL metadata store)")
    return metadata_connection.connect(home, metadata)


def _event(artifact: mlmd_pb2.Artifact, kind, key: str):
    event = mlmd_pb2.Event(type=kind)
    event.path.steps.add().key = key
    event.path.steps.add().index = 0
    return artifact, event


def _artifact(store, type_name: str, uri: str, **custom) -> mlmd_pb2.Artifact:
    type_id = store.put_artifact_type(mlmd_pb2.ArtifactType(name=type_name), can_add_fields=True)
    artifact = mlmd_pb2.Artifact(type_id=type_id, uri=uri, state=mlmd_pb2.Artifact.LIVE)
    for key, value in custom.items():
        if isinstance(value, int):
            artifact.custom_properties[key].int_value = value
        else:
            artifact.custom_properties[key].string_value = str(value)
    return artifact


def _execution(store, type_name: str, **custom) -> mlmd_pb2.Execution:
    type_id = store.put_execution_type(mlmd_pb2.ExecutionType(name=type_name))
    execution = mlmd_pb2.Execution(type_id=type_id, last_known_state=mlmd_pb2.Execution.COMPLETE)
    for key, value in custom.items():
        execution.custom_properties[key].string_value = str(value)
    return execution


@dataclasses.dataclass
class Candidate:
    """A run whose model `conveyor bless` may push (what `check` found).

    Fields:
      store, graph: the read-write store and a Graph on it.
      pipeline: the pipeline (model) name; run: the run's context.
      model: the Model the Evaluator judged; verdict: its NOT-blessed ModelBlessing.
      evaluation: its ModelEvaluation (None if it recorded none); infra: the passed InfraBlessing.
    """
    store: metadata_store.MetadataStore
    graph: Graph
    pipeline: str
    run: mlmd_pb2.Context
    model: mlmd_pb2.Artifact
    verdict: mlmd_pb2.Artifact
    evaluation: Optional[mlmd_pb2.Artifact]
    infra: mlmd_pb2.Artifact


def check(run: str, home: Optional[str] = None, name: Optional[str] = None,
          metadata: Optional[MySQLMetadata] = None) -> Candidate:
    """Whether run `run`'s model may be blessed by hand; reads MLMD only (no TensorFlow, no
    writes, a fraction of a second).

    Args:
      run: run id, unique prefix or position (1 = oldest, -1 = latest), as `conveyor runs` shows.
      home: Conveyor HOME (default ./conveyor_home); never created.
      name: pipeline (model) name; needed when the store holds several.
      metadata: the config's MySQL store (None: HOME/metadata.sqlite).
    Returns:
      the Candidate.
    Raises:
      BlessError / LineageError: refused (see the module docstring), no store in HOME, or
        an unknown run/pipeline.
      MetadataConnectionError (a ConfigError): the MySQL store cannot be reached.
    """
    store = _store(home_dir(home), metadata)
    graph = Graph(store)
    pipeline = default_pipeline(graph, name)
    context = resolve_run(graph, pipeline, run)
    executions = run_executions(graph, context)
    evaluator, verdict = graph.first_output_of_type(executions, "ModelBlessing")
    if evaluator is None or graph.type_of(evaluator) == MANUAL_BLESSING_TYPE:
        raise BlessError(f"run {context.name} has no evaluation to override (it stopped before the "
                         "Evaluator, or it is not a pipeline run)")
    model = graph.input(evaluator, "model")
    if model is None:
        raise BlessError(f"run {context.name}'s Evaluator recorded no candidate model in MLMD")
    evaluation = (graph.outputs(evaluator).get("evaluation") or [None])[0]
    _, infra = graph.first_output_of_type(executions, "InfraBlessing")
    if infra is None:
        raise BlessError(f"run {context.name} has no infra validation; a model is only blessed by hand "
                         "after it passed infra validation")
    if props(infra).get("blessed") != 1:
        why = props(infra).get("reason", "not blessed")
        raise BlessError(f"run {context.name}'s model failed infra validation ({why}); "
                         "a manual blessing never overrides that")
    if props(verdict).get("blessed") == 1:
        raise BlessError(f"run {context.name}'s model is blessed already (by the Evaluator); nothing to override")
    latest = latest_blessed_model_id(store, pipeline)
    if latest is not None and latest >= model.id:
        what = "is the latest blessed model already" if latest == model.id else \
            f"is older than the latest blessed model (artifact {latest}), which stays the baseline"
        raise BlessError(f"run {context.name}'s model (artifact {model.id}) {what}; not blessing it")
    return Candidate(store=store, graph=graph, pipeline=pipeline, run=context, model=model, verdict=verdict,
                     evaluation=evaluation, infra=infra)


def bless(run: str, reason: str, by: Optional[str] = None, home: Optional[str] = None,
          name: Optional[str] = None, canary: bool = False,
          metadata: Optional[MySQLMetadata] = None) -> Blessed:
    """Blesses run `run`'s model by hand, pushes it as the next version and records both.

    Args:
      run: run id, unique prefix or position (1 = oldest, -1 = latest), as `conveyor runs` shows.
      reason: why (required, non-empty; recorded in MLMD).
      by: who (default: the OS user).
      home: Conveyor HOME (default ./conveyor_home), never created. Hold its run lock
        (pipelines.local_runner.home_lock) around the call, as `conveyor bless` does.
      name: pipeline (model) name; needed when the store holds several.
      canary: push it as the `canary` version, the serving one staying `stable`
        (components/pusher.publish).
      metadata: the config's MySQL store (None: HOME/metadata.sqlite).
    Returns:
      the Blessed record.
    Raises:
      BlessError / LineageError: refused (see `check`); nothing is pushed or recorded then.
      OSError: the push failed (nothing recorded).
    """
    if not reason or not reason.strip():
        raise BlessError("give the reason for blessing by hand with --reason \"...\"")
    by = by or getpass.getuser()
    home = home_dir(home)
    found = check(run, home, name, metadata)
    from components.pusher import publish  # imports TFX: only once the blessing is allowed
    store, graph, pipeline, context = found.store, found.graph, found.pipeline, found.run
    model, verdict, evaluation, infra = found.model, found.verdict, found.evaluation, found.infra
    published = publish(os.path.join(model.uri, SERVING_MODEL_DIR), os.path.join(home, "serving", pipeline),
                        model.uri, model.id, canary=canary)
    stamp = datetime.datetime.now()
    run_id = stamp.isoformat()
    root = os.path.join(home, "pipelines", pipeline, "conveyor_bless", stamp.strftime("%Y%m%d-%H%M%S-%f"))
    blessing_uri, pushed_uri = os.path.join(root, "blessing"), os.path.join(root, "pushed_model")
    os.makedirs(blessing_uri)
    os.makedirs(pushed_uri)
    with open(os.path.join(blessing_uri, "BLESSED"), "w", encoding="utf-8"):
        pass  # TFX's Evaluator writes the same marker file
    pipeline_context = graph.pipeline_context(pipeline)
    run_type = store.get_context_type("pipeline_run")
    run_context = mlmd_pb2.Context(type_id=run_type.id, name=run_id)
    run_context.custom_properties["conveyor_action"].string_value = "manual_blessing"
    run_context.custom_properties["blesses_run"].string_value = context.name
    [run_context.id] = store.put_contexts([run_context])
    manual = _artifact(store, "ModelBlessing", blessing_uri, blessed=1, current_model=model.uri,
                       current_model_id=model.id, manual=1, blessed_by=by, reason=reason,
                       blessed_at=stamp.astimezone().isoformat(timespec="seconds"),
                       overrides_blessing_id=verdict.id)
    blessing_exec = _execution(store, MANUAL_BLESSING_TYPE, blessed_by=by, reason=reason, blesses_run=context.name,
                               overrides_blessing_id=verdict.id)
    inputs = [_event(model, mlmd_pb2.Event.INPUT, "model"), _event(verdict, mlmd_pb2.Event.INPUT, "overridden_blessing"),
              _event(infra, mlmd_pb2.Event.INPUT, "infra_blessing")]
    if evaluation is not None:
        inputs.append(_event(evaluation, mlmd_pb2.Event.INPUT, "evaluation"))
    _, artifact_ids, _ = store.put_execution(  # ids of every artifact given, the new blessing last
        blessing_exec, inputs + [_event(manual, mlmd_pb2.Event.OUTPUT, "blessing")],
        [pipeline_context, run_context])
    manual.id = blessing_id = artifact_ids[-1]
    pushed = _artifact(store, "PushedModel", pushed_uri, pushed=1, pushed_version=str(published.version),
                       pushed_destination=published.destination)
    push_exec = _execution(store, MANUAL_PUSH_TYPE, pushed_version=published.version)
    store.put_execution(push_exec, [_event(model, mlmd_pb2.Event.INPUT, "model"),
                                    _event(manual, mlmd_pb2.Event.INPUT, "model_blessing"),
                                    _event(infra, mlmd_pb2.Event.INPUT, "infra_blessing"),
                                    _event(pushed, mlmd_pb2.Event.OUTPUT, "pushed_model")],
                        [pipeline_context, run_context])
    return Blessed(pipeline=pipeline, run_id=context.name, model_id=model.id, blessing_id=blessing_id,
                   version=published.version, destination=published.destination, by=by, reason=reason)


def add_command(sub) -> None:
    """Adds `bless` to an argparse subparsers object."""
    p = sub.add_parser("bless", help="push a run's model although the Evaluator did not bless it, "
                                     "recording who and why (never after a failed infra validation)")
    p.add_argument("--run", required=True, help="run id, unique prefix, or position (-1 = latest), as in `conveyor runs`")
    p.add_argument("--reason", required=True, help="why the model is blessed by hand (recorded in MLMD)")
    p.add_argument("--by", help="who blesses it (default: the OS user)")
    p.add_argument("--home", help="Conveyor HOME (default ./conveyor_home)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--name", help="pipeline (model) name, needed when the HOME has several")
    p.add_argument("--canary", action="store_true",
                   help="push it as the `canary` version while the serving one stays `stable`")


def cmd_bless(args) -> int:
    """`conveyor bless`: 0 when blessed and pushed, 1 (one line on stderr) when refused, 2
    for a bad --config or an unreachable MySQL store.

    The checks read MLMD only and answer at once; a HOME without a metadata store is
    refused without creating anything. TensorFlow's start-up output during the push goes to
    HOME/logs/bless-<time>.log."""
    try:
        where = store_location(args.home, args.config)
        home, metadata = where.home, where.metadata
        if not args.reason.strip():
            raise BlessError("give the reason for blessing by hand with --reason \"...\"")
        _store(home, metadata)  # refuses a HOME without a store before the lock creates anything
        with home_lock(home):
            check(args.run, home, args.name, metadata)
            log_dir = os.path.join(home, "logs")
            os.makedirs(log_dir, exist_ok=True)
            with output_to_log(os.path.join(log_dir, f"bless-{time.strftime('%Y%m%d-%H%M%S')}.log")):
                b = bless(args.run, args.reason, args.by, home, args.name, canary=args.canary,
                          metadata=metadata)
    except ConfigError as e:
        print(f"conveyor bless: {e}", file=sys.stderr)
        return 2
    except (LineageError, ConveyorError) as e:
        print(f"conveyor bless: {e}", file=sys.stderr)
        return 1
    print(f"Blessed run {b.run_id}'s model (artifact {b.model_id}) by hand: {b.by}: {b.reason}\n"
          f"  Pushed: version {b.version} -> {b.destination}\n"
          f"  It is now the latest blessed model: later runs compare against it.")
    return 0
