"""ModuleSettings: the typed contract between the pipeline and the user code in modules/.

TFX hands Transform's preprocessing_fn and the Trainer's run_fn a plain `custom_config`
dict (it must be JSON for MLMD and for KFP). The pipeline builds a ModuleSettings from the
validated Config and serialises it with `to_custom_config()`; the user code reads it back with
`from_custom_config()`, which refuses missing or unknown keys, so a renamed field fails when
the pipeline is built or at the start of the component, not deep in training.

This file imports neither TensorFlow nor TFX: the config layer reads the model names here.
"""
import dataclasses
import glob
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Tuple

IMAGE_MODELS = ("mlp", "cnn", "transfer")
# How run_fn spreads training (modules/distribution.py): one process, all local devices
# (MirroredStrategy), or the workers of the TF_CONFIG cluster (MultiWorkerMirroredStrategy).
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
TEXT_MODELS = ("tfidf", "multihot", "embedding", "conv1d", "bilstm")
MODELS = {"image": IMAGE_MODELS, "text": TEXT_MODELS}
# The smallest image_size the cnn takes (modules/models.cnn): two valid 3x3 convolutions, each
# followed by a 2x2 pooling, need a side s with (s - 2) // 2 - 2 >= 2, i.e. s >= 10.
CNN_MIN_IMAGE_SIZE = 10

# The keras.applications backbones of the `transfer` image model (modules/models.transfer).
BACKBONES = ("mobilenet_v2", "vgg16", "efficientnet_b0")
# Each backbone's smallest image side: tf_keras/src/applications/{mobilenet_v2,vgg16,
# efficientnet}.py build without their top only from inputs that pass
# imagenet_utils.obtain_input_shape(..., min_size=32).
BACKBONE_MIN_IMAGE_SIZE = {"mobilenet_v2": 32, "vgg16": 32, "efficientnet_b0": 32}
# Layers of each backbone without its top, its input layer not counted (len(model.layers) - 1
# of the tf_keras 2.16 applications; tests/components/test_transfer.py checks): the most
# `fine_tune_layers` can unfreeze. (With imagenet weights EfficientNetB0 has one more, a
# weightless Rescaling near its input.)
BACKBONE_LAYERS = {"mobilenet_v2": 153, "vgg16": 18, "efficientnet_b0": 236}
# backbone_weights values that are not a file path.
IMAGENET_WEIGHTS, NO_WEIGHTS = "imagenet", "none"

# Training-time augmentation of image models (modules/models.augmentation: the tf_keras
# Random* preprocessing layers) and the strength each takes when the config names it alone:
# flip: which flips (RandomFlip's mode); rotation: largest turn as a fraction of a full
# circle (RandomRotation's factor); zoom: largest zoom in or out as a fraction of the side
# (RandomZoom's height_factor); contrast: largest contrast change as a fraction
# (RandomContrast's factor). The defaults are the course's (RandomRotation(0.1), RandomZoom(0.1)).
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
AUGMENT_DEFAULTS = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.2}
# The per-epoch scalar the Trainer adds to a transfer model's TensorBoard logs: 0 while the
# head trains with the backbone frozen, 1 while the backbone's top layers fine-tune.
TRANSFER_PHASE_LOG = "transfer_phase"

# Keys TFX's Vertex/AI Platform Trainer extension adds to the Trainer's custom_config
# (tfx/extensions/google_cloud_ai_platform/constants.py, trainer/executor.py); its executor
# passes the whole custom_config on to run_fn, so they are not ModuleSettings fields.
CLOUD_TRAINER_KEY_PREFIX = "ai_platform_"

# custom_config key holding modules_fingerprint(): TFX's cache key covers exec properties, so
# edited user code re-runs Transform and Trainer instead of reusing their outputs.
MODULES_FINGERPRINT_KEY = "modules_sha256"

MODULES_DIR = os.path.dirname(os.path.abspath(__file__))

# Inside an exported model directory (the Trainer writes it, the Pusher copies it): the
# ModuleSettings and class count the model was built with (read_model_settings), so a tool
# can rebuild the Keras model and restore its variables (`conveyor export-backbone`).
MODEL_SETTINGS_FILE = os.path.join("assets.extra", "conveyor_model.json")


class ModuleSettingsError(ValueError):
    """custom_config does not hold the ModuleSettings fields; the message names them."""


@dataclasses.dataclass(frozen=True)
class ModuleSettings:
    """What preprocessing_fn and run_fn read.

    Attributes:
      kind: "image" or "text".
      name: model name (the warmup requests and models.config use it).
      model: one of MODELS[kind].
      image_size: images are resized to image_size x image_size pixels.
      channels: 1 (grey) or 3 (RGB).
      vocab_size: most frequent tokens kept in the vocabulary (text).
      oov_buckets: hash buckets for tokens outside the vocabulary (text).
      max_tokens: tokens per text after truncation/padding.
      ngram_vocab_size: words and word pairs kept in the vocabulary of the tfidf model.
      epochs: Keras epochs the train steps are spread over.
      batch_size: examples per training batch.
      learning_rate: Adam learning rate.
      early_stopping_patience: epochs without val_loss improvement before stopping.
      validation_percent: share of the train split (by a hash of each example's raw input)
        held out of fitting for EarlyStopping; the eval split is never seen in training.
      trainer_cache_mb: splits whose transformed pairs fit in this many MB are cached in memory.
      warm_start: start from the base model's weights when it matches.
      distribution: one of DISTRIBUTIONS (README "Scaling training").
      collective_timeout_seconds: multi_worker: a cross-worker collective (gradient
        all-reduce, barrier) that takes longer than this fails the run instead of waiting
        forever for a lost worker; 0 = no limit.
      backbone: transfer model: one of BACKBONES.
      backbone_weights: transfer model: IMAGENET_WEIGHTS (Keras downloads them into its
        cache), NO_WEIGHTS (random initialisation; everything trains from the first epoch,
        in one phase) or the path of a Keras weights file of the
        backbone without its top.
      backbone_weights_sha256: sha256 of the backbone_weights file ("" for imagenet / none,
        or when the file is not on the machine that built the pipeline): a changed file is a
        new Trainer input for TFX's cache.
      head_epochs: transfer model: epochs of the first phase, which trains the new head with
        the backbone frozen (the others fine-tune).
      fine_tune_layers: transfer model: backbone layers (from its top) unfrozen for the
        second phase; 0 = no fine-tuning.
      fine_tune_learning_rate: Adam learning rate of the fine-tuning phase.
      augment: (name, strength) pairs of AUGMENTATIONS applied, in this order, to training
        batches of image models only (never in evaluation or serving).
      modules_sha256: modules_fingerprint() of the code that runs.
    """
    kind: str
    name: str
    model: str
    image_size: int = 28
    channels: int = 1
    vocab_size: int = 10000
    oov_buckets: int = 1
    max_tokens: int = 200
    ngram_vocab_size: int = 20000
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 0.001
    early_stopping_patience: int = 2
    validation_percent: int = 10
    trainer_cache_mb: int = 2048
    warm_start: bool = False
    distribution: str = "none"
    collective_timeout_seconds: float = 600.0
    backbone: str = "mobilenet_v2"
    backbone_weights: str = IMAGENET_WEIGHTS
    backbone_weights_sha256: str = ""
    head_epochs: int = 5
    fine_tune_layers: int = 0
    fine_tune_learning_rate: float = 0.0001
    augment: Tuple[Tuple[str, Any], ...] = ()
    modules_sha256: str = ""

    def __post_init__(self):
        # custom_config is JSON: the pairs come back as lists; kept as tuples so settings
        # stay hashable and compare equal after the round trip.
        object.__setattr__(self, "augment", tuple((str(name), strength) for name, strength in self.augment))

    @property
    def vocab_ids(self) -> int:
        """Token ids a text model embeds: vocabulary + OOV buckets + the padding id 0."""
        return self.vocab_size + self.oov_buckets + 1

    def to_custom_config(self) -> Dict[str, Any]:
        """The JSON-able dict TFX carries as custom_config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_custom_config(cls, custom_config: Mapping[str, Any]) -> "ModuleSettings":
        """Reads custom_config back, ignoring the keys of TFX's cloud Trainer extension
        (CLOUD_TRAINER_KEY_PREFIX). Raises ModuleSettingsError on missing or unknown keys."""
        if isinstance(custom_config, cls):
            return custom_config
        custom_config = {key: value for key, value in custom_config.items()
                         if not key.startswith(CLOUD_TRAINER_KEY_PREFIX)}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - fields)
        if unknown:
            raise ModuleSettingsError(f"custom_config has unknown key(s) {unknown}; "
                                      f"ModuleSettings fields are {sorted(fields)}")
        try:
            return cls(**dict(custom_config))
        except (TypeError, ValueError) as e:
            raise ModuleSettingsError(f"custom_config does not hold ModuleSettings: {e}") from None


def read_model_settings(export_dir: str) -> Tuple[ModuleSettings, int]:
    """The ModuleSettings and class count of an exported model (MODEL_SETTINGS_FILE).

    Raises:
      FileNotFoundError: the export has no MODEL_SETTINGS_FILE (exported by an older Conveyor).
      ModuleSettingsError: the file is not such a record.
    """
    path = os.path.join(export_dir, MODEL_SETTINGS_FILE)
    with open(path, encoding="utf-8") as f:
        try:
            record = json.load(f)
            return ModuleSettings.from_custom_config(record["settings"]), int(record["num_classes"])
        except (ValueError, KeyError, TypeError) as e:
            raise ModuleSettingsError(f"{path}: not a Conveyor model record ({e})") from None


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def modules_fingerprint() -> str:
    """sha256 (hex) of the user code in modules/ (file names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(MODULES_DIR, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()
