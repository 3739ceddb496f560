"""How run_fn spreads training over devices and processes (ModuleSettings.distribution).

* "none": TensorFlow's default strategy, one process, one device.
* "mirrored": tf.distribute.MirroredStrategy over every device of the Trainer's machine
  (one CPU here; GPUs where there are some).
* "multi_worker": tf.distribute.MultiWorkerMirroredStrategy over the cluster in TF_CONFIG
  (set by Vertex AI Training, Kubeflow's TFJob or by hand). Every worker runs run_fn; the
  chief writes the SavedModel and the TensorBoard logs, the others write to temporary
  directories they remove (https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras,
  "Model saving and loading").

A lost worker must not hang the others: a collective that waits longer than
`collective_timeout_seconds` fails (tf.distribute.experimental.CommunicationOptions), a killed
peer usually fails the next collective at once (its connection is reset), and run_fn turns
either into DistributedTrainingError, so the Trainer fails and nothing downstream runs.
"""
import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf

from modules.settings import ModuleSettings

TF_CONFIG = "TF_CONFIG"

# What a lost or unreachable peer raises in a collective (gRPC reset -> Unavailable; the
# collective timeout -> DeadlineExceeded; the coordination service's heartbeat -> Aborted /
# Cancelled / Internal on the survivors).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
               tf.errors.CancelledError, tf.errors.InternalError)


class DistributedTrainingError(RuntimeError):
    """A multi-worker run lost a worker (or could not reach one); the message says which
    collective failed and that nothing was exported."""


def peer_error_reason(message: str) -> str:
    """The informative line of a TensorFlow error raised by a failed collective (which
    peer, and how it was found out), at most 300 characters."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for key in ("aborted by", "heartbeat", "Connection reset", "failed to connect", "Deadline", "timed out"):
        for line in lines:
            if key in line:
                return line[:300]
    return (lines[-1] if lines else "no message")[:300]


def strategy_for(settings: ModuleSettings) -> tf.distribute.Strategy:
    """The tf.distribute strategy of settings.distribution.

    Must run before the process executes any other TensorFlow op when distribution is
    "multi_worker" (the strategy starts this worker's gRPC server; it then waits until every
    worker of TF_CONFIG has started).

    Args:
      settings: distribution ("none" | "mirrored" | "multi_worker") and
        collective_timeout_seconds (multi_worker; 0 = none).
    Returns:
      the strategy; `num_replicas_in_sync` is the number of model replicas across workers.
    Raises:
      ValueError: an unknown distribution, or "multi_worker" whose TF_CONFIG is not JSON.
    """
    if settings.distribution == "none":
        return tf.distribute.get_strategy()
    if settings.distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if settings.distribution == "multi_worker":
        try:
            tf_config = json.loads(os.environ.get(TF_CONFIG) or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"{TF_CONFIG} is not JSON ({e}); expected "
                             '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') \
                from None
        if not (isinstance(tf_config, dict) and tf_config.get("cluster")):
            # A warning from our code reaches the terminal of `conveyor run`.
            logging.warning("distribution: multi_worker without a cluster in %s trains as one worker; "
                            "each worker needs its own Trainer process with TF_CONFIG (README, "
                            "'Scaling training')", TF_CONFIG)
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=settings.collective_timeout_seconds or None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"distribution {settings.distribution!r}: expected none, mirrored or multi_worker")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that writes the model and the logs: the only process outside
    multi_worker; in a cluster the "chief" task, or worker 0 when there is no chief (the rule
    of TF's multi-worker tutorial; Vertex AI names worker pool 0 "chief")."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


def output_dir(path: str, chief: bool) -> str:
    """`path` for the chief; a fresh local temporary directory for the other workers, whose
    copies of the logs and the SavedModel nobody reads (remove it with `discard`)."""
    return path if chief else tempfile.mkdtemp(prefix="conveyor-worker-")


def discard(path: str, chief: bool) -> None:
    """Removes a non-chief worker's temporary output directory (a no-op for the chief)."""
    if not chief:
        shutil.rmtree(path, ignore_errors=True)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns when every worker has called it: an all-reduce of one number. Non-chief
    workers end only after the chief has written everything, so the Trainer executor's check
    for the SavedModel holds on every worker (shared storage)."""
    if strategy.num_replicas_in_sync > 1:
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Examples each replica computes per step: the global batch split evenly.

    Raises:
      ValueError: the global batch does not divide by the number of replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"batch_size {global_batch_size} (the global batch) does not divide over "
                         f"{replicas} replicas; use a multiple of {replicas}")
    return global_batch_size // replicas
