"""Trainer's run_fn for both kinds: train on the raw examples through the Transform graph,
then export a SavedModel whose signatures take what clients have (image bytes / raw text).

The Trainer reads the *raw* examples (Transform does not materialise transformed copies):
they go through the same TFT graph that serving uses (once, into memory, when the split
fits `trainer_cache_mb`), so there is one code path for train and serve, and the class
names travel from ExampleGen's artifact (label_names.json next to the splits) into the model.

With ModuleSettings.distribution other than "none" the model is built, compiled and trained
under a tf.distribute strategy (modules/distribution.py); batch_size is the global batch (each
of the N replicas computes batch_size / N examples per step) and train_steps the number of
optimisation steps, so a distributed run takes the same steps over the same examples as a
single process.

A `transfer` model trains in two phases over the same `epochs` (training_phases): the new
head with the backbone frozen, then, with fine_tune_layers, the backbone's top layers as
well at fine_tune_learning_rate. Both write to the same TensorBoard logs, epochs numbered
on, with the phase as the `transfer_phase` scalar (the run report reads it).
"""
import dataclasses
import math
import os
import time
from typing import List, Optional

import absl.logging
import tf_keras as keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from modules import distribution, models
from modules.datasets import ALL, FIT, VALIDATION, count_part, count_records, dataset, read_label_names
from modules.export import export, warmup_inputs, write_model_settings
from modules.settings import NO_WEIGHTS, TRANSFER_PHASE_LOG, ModuleSettings
from modules.training_schema import save_training_schema
from serving import contract
from serving.warmup import write_warmup_requests


def warm_start(model: keras.Model, base_model: Optional[str], settings: ModuleSettings, num_classes: int,
               tf_transform_output: tft.TFTransformOutput) -> str:
    """Copies the base model's Keras weights into `model`; returns '' if it did, else why not.

    The exported SavedModel's variables are a checkpoint of ServingModule, whose `model` is the
    Keras model, so a Checkpoint(model=...) restores it layer by layer; another model type,
    input size or class count fails the restore. It goes into a fresh copy first, so a failed
    restore leaves `model` untouched and the optimizer settings stay this run's. Transform
    vocabularies (text) must be identical too: old weights on re-numbered tokens are noise.
    """
    if not base_model:
        return "no blessed model yet"
    assets = os.path.join(tf_transform_output.transform_savedmodel_dir, "assets")
    for name in tf.io.gfile.listdir(assets) if tf.io.gfile.isdir(assets) else []:
        base_asset = os.path.join(base_model, "assets", name)
        if not tf.io.gfile.exists(base_asset) or \
                _read_bytes(base_asset) != _read_bytes(os.path.join(assets, name)):
            return f"this run's Transform vocabulary '{name}' differs from the base model's"
    # The same settings, weights file included: the copy's frozen layers are the model's, so
    # get_weights() lists the variables in the same order.
    copy = models.build(settings, num_classes)
    try:
        status = tf.train.Checkpoint(model=copy).read(os.path.join(base_model, "variables", "variables"))
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        return f"the base model's architecture differs ({str(e).strip().splitlines()[0]})"
    model.set_weights(copy.get_weights())
    return ""


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


class ThroughputLogger(keras.callbacks.Callback):
    """Logs each epoch's training throughput (examples/s) and adds it to the epoch's logs as
    `examples_per_second`, which the TensorBoard callback after it then records.

    Args:
      batch_size: examples per training step, the global batch under a strategy
        (throughput = steps * batch_size / seconds: all workers together).
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self._started = 0.0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        rate = self._batches * self.batch_size / seconds if seconds > 0 else 0.0
        if logs is not None:
            logs["examples_per_second"] = rate
        absl.logging.info("Epoch %d: %d steps in %.1f s, %.0f training examples/s",
                          epoch + 1, self._batches, seconds, rate)


class PhaseLogger(keras.callbacks.Callback):
    """Adds TRANSFER_PHASE_LOG (0: head with the backbone frozen, 1: fine-tuning) to each
    epoch's logs, which the TensorBoard callback after it then records.

    Args:
      phase: 0 or 1.
    """

    def __init__(self, phase: int):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[TRANSFER_PHASE_LOG] = float(self.phase)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One model.fit of run_fn.

    Attributes:
      name: "train" (every model but transfer), "head" or "fine_tune".
      epochs: epochs of this phase (EarlyStopping may end it sooner).
      learning_rate: Adam learning rate of this phase.
      fine_tune_layers: backbone layers unfrozen before it (0: none).
    """
    name: str
    epochs: int
    learning_rate: float
    fine_tune_layers: int = 0


def training_phases(settings: ModuleSettings, epochs: int) -> List[Phase]:
    """How run_fn spends `epochs`: one "train" phase, or for the transfer model from
    pretrained weights a "head" phase of settings.head_epochs and, with
    settings.fine_tune_layers, a "fine_tune" phase of the rest. When train_steps cut
    `epochs` below the configured ones, the head leaves at least one of them to fine-tuning.

    Args:
      settings: model, learning_rate, head_epochs, fine_tune_layers, fine_tune_learning_rate.
      epochs: the epochs run_fn trains (>= 1).
    Returns:
      Phases whose epochs add up to at most `epochs`.
    """
    if settings.model != "transfer" or settings.backbone_weights == NO_WEIGHTS:  # from scratch: one phase
        return [Phase("train", epochs, settings.learning_rate)]
    fine = settings.fine_tune_layers
    head = max(1, min(settings.head_epochs, epochs - 1 if fine else epochs))
    phases = [Phase("head", head, settings.learning_rate)]
    if fine and epochs > head:
        phases.append(Phase("fine_tune", epochs - head, settings.fine_tune_learning_rate, fine))
    elif fine:
        absl.logging.warning("Transfer: %d epoch(s) leave none for fine-tuning; only the head trains", epochs)
    return phases


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What model.fit gets, all from the train split (the eval split is the Evaluator's).

    Attributes:
      fit: endless (feature, label) batches of the fit slice (the whole train split when
        there is no validation slice); a distributed dataset under a strategy.
      validation: endless batches of the validation slice, which EarlyStopping watches;
        None when the train split is too small to hold one out (then no early stopping).
      fit_examples: examples in the fit slice.
      validation_examples: examples in the validation slice (0 without one).
      validation_steps: batches per validation pass (one pass, at most eval_steps); None
        without a validation slice.
    """
    fit: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    fit_examples: int
    validation_examples: int
    validation_steps: Optional[int]


def training_data(fn_args: FnArgs, settings: ModuleSettings, tf_transform_output: tft.TFTransformOutput,
                  strategy: tf.distribute.Strategy) -> TrainingData:
    """The fit and validation data of run_fn, read from fn_args.train_files only.

    About settings.validation_percent % of the train split (modules/datasets.py:
    in_validation_slice) is held out of fitting for EarlyStopping / restore_best_weights, so
    that model selection never sees the eval split the Evaluator blesses on. When either
    slice would be empty (a handful of training examples, or validation_percent 0), the whole
    train split is fitted without a validation slice.

    Args:
      fn_args: TFX's FnArgs (train_files, eval_steps, data_accessor).
      settings: batch_size, trainer_cache_mb, validation_percent, distribution, model.
      tf_transform_output: the Transform graph.
      strategy: the tf.distribute strategy run_fn trains under.
    Returns:
      TrainingData.
    """
    feature = models.input_feature(settings)
    batch = settings.batch_size
    replica_batch = distribution.replica_batch_size(batch, strategy)
    cache_limit = int(settings.trainer_cache_mb) << 20
    pattern = fn_args.train_files[0]
    percent = settings.validation_percent

    def part_of_train(part: str, shuffle: bool):
        if settings.distribution == "none":
            return dataset(pattern, fn_args.data_accessor, tf_transform_output, batch, feature, shuffle,
                           cache_limit, part=part, validation_percent=percent)[0]
        # One input pipeline per worker, each reading its shard in per-replica batches.
        return strategy.distribute_datasets_from_function(
            lambda context: dataset(pattern, fn_args.data_accessor, tf_transform_output, replica_batch,
                                    feature, shuffle, cache_limit, context, part=part,
                                    validation_percent=percent)[0])

    held_out = count_part(pattern, tf_transform_output, VALIDATION, percent) if percent else 0
    total = count_records(pattern)
    if held_out == 0 or held_out == total:
        absl.logging.warning("No validation slice in %d training examples (validation_percent %d): "
                             "fitting all of them for every epoch, without early stopping", total, percent)
        return TrainingData(part_of_train(ALL, True), None, total, 0, None)
    absl.logging.info("Fitting %d training examples; EarlyStopping watches the other %d (%d%% of the "
                      "train split); the eval split is not used in training", total - held_out, held_out, percent)
    steps = max(1, min(fn_args.eval_steps, math.ceil(held_out / batch)))
    return TrainingData(part_of_train(FIT, True), part_of_train(VALIDATION, False), total - held_out, held_out,
                        steps)


def run_fn(fn_args: FnArgs) -> None:
    """TFX Trainer entry point (imported by name from the installed package).

    Under distribution "multi_worker" every worker of the TF_CONFIG cluster runs this with
    the same fn_args; they train one model together and only the chief writes the outputs.

    Args:
      fn_args: TFX's FnArgs. Reads train_files/eval_files (GZIP TFRecords of raw tf.Examples;
        label_names.json beside them), transform_output, schema_path, train_steps,
        eval_steps, base_model (warm start), custom_config (ModuleSettings.to_custom_config()).
    Writes (the chief only):
      fn_args.serving_model_dir: the SavedModel of the served-model contract
        (serving/contract.py) with assets.extra/conveyor_schema.pbtxt (training schema) and
        assets.extra/tf_serving_warmup_requests; fn_args.model_run_dir: TensorBoard logs.
    Raises:
      ModuleSettingsError: custom_config is not a ModuleSettings dict.
      ValueError: batch_size does not divide over the replicas.
      DistributedTrainingError: multi_worker lost a worker; nothing was exported.
    """
    settings = ModuleSettings.from_custom_config(fn_args.custom_config)
    # First: MultiWorkerMirroredStrategy starts this worker's server before any other op runs.
    strategy = distribution.strategy_for(settings)
    chief = distribution.is_chief(strategy)
    if settings.distribution != "none":
        absl.logging.info("Distribution %s: %d replica(s) in sync, this worker is %s",
                          settings.distribution, strategy.num_replicas_in_sync, "the chief" if chief else "not the chief")
    try:
        _train_and_export(fn_args, settings, strategy, chief)
    except distribution.PEER_ERRORS as e:
        if settings.distribution != "multi_worker":
            raise
        raise distribution.DistributedTrainingError(
            f"multi_worker training failed: a worker was lost or unreachable "
            f"({type(e).__name__}: {distribution.peer_error_reason(str(e))}); nothing was exported") from None


def _train_and_export(fn_args: FnArgs, settings: ModuleSettings, strategy: tf.distribute.Strategy,
                      chief: bool) -> None:
    label_names = read_label_names(fn_args.train_files[0])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    data = training_data(fn_args, settings, tf_transform_output, strategy)
    batch = settings.batch_size
    replica_batch = distribution.replica_batch_size(batch, strategy)

    with strategy.scope():
        model = models.build(settings, len(label_names))
        fitted = models.training_model(model, settings)  # with the augmentation, if any
    model.summary(print_fn=absl.logging.info)
    if settings.warm_start:
        why_not = warm_start(model, fn_args.base_model, settings, len(label_names), tf_transform_output)
        if why_not:
            absl.logging.warning("Warm start: training from scratch: %s", why_not)
        else:
            absl.logging.info("Warm start: initialised from the base model %s", fn_args.base_model)

    epochs = max(1, min(settings.epochs, fn_args.train_steps))
    steps = max(1, fn_args.train_steps // epochs)
    run_dir = distribution.output_dir(fn_args.model_run_dir, chief)
    absl.logging.info("Training: %d epochs of %d steps, global batch %d (%d per replica)",
                      epochs, steps, batch, replica_batch)
    done = 0  # epochs trained so far: a later phase numbers its epochs on in the same logs
    for phase in training_phases(settings, epochs):
        if phase.fine_tune_layers:
            with strategy.scope():
                models.unfreeze_top(model, phase.fine_tune_layers)
                models.compile_image_model(fitted, phase.learning_rate)
        if phase.name != "train":
            absl.logging.info("Transfer, %s phase: epochs %d-%d at learning rate %g%s", phase.name, done + 1,
                              done + phase.epochs, phase.learning_rate,
                              f", top {phase.fine_tune_layers} backbone layers unfrozen"
                              if phase.fine_tune_layers else ", backbone frozen")
        callbacks = [ThroughputLogger(batch)]  # before TensorBoard, which then records its figure
        if phase.name != "train":
            callbacks.append(PhaseLogger(0 if phase.name == "head" else 1))
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_dir))
        if data.validation is not None:
            # val_loss is reduced over all replicas, so every worker stops at the same epoch.
            callbacks.insert(0, keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings.early_stopping_patience, restore_best_weights=True))
        history = fitted.fit(data.fit, initial_epoch=done, epochs=done + phase.epochs, steps_per_epoch=steps,
                             validation_data=data.validation, validation_steps=data.validation_steps, verbose=2,
                             callbacks=callbacks)
        done = history.epoch[-1] + 1 if history.epoch else done
    distribution.discard(run_dir, chief)
    # Every worker saves (saving may run collectives); only the chief's copy is kept.
    export_dir = distribution.output_dir(fn_args.serving_model_dir, chief)
    export(model, tf_transform_output, label_names, settings, export_dir)
    distribution.discard(export_dir, chief)
    if chief:
        write_model_settings(fn_args.serving_model_dir, settings, len(label_names))
        save_training_schema(fn_args, label_names, settings.kind)
        # TF Serving (and Conveyor's server) replay these before a version takes traffic.
        write_warmup_requests(fn_args.serving_model_dir,
                              [{contract.SERVING_INPUT[settings.kind]: [value]}
                               for value in warmup_inputs(fn_args.eval_files, settings.kind)],
                              model_name=settings.name)
    distribution.barrier(strategy)
