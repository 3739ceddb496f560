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
import os
from typing import Any, Dict, Mapping

IMAGE_MODELS = ("mlp", "cnn")
# How run_fn spreads training (modules/distribution.py): one process, all local devices
# (MirroredStrategy), or the workers of the TF_CONFIG cluster (MultiWorkerMirroredStrategy).
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
TEXT_MODELS = ("tfidf", "multihot", "embedding", "conv1d", "bilstm")
MODELS = {"image": IMAGE_MODELS, "text": TEXT_MODELS}
# The smallest image_size the cnn takes (modules/models.cnn): two valid 3x3 convolutions, each
# followed by a 2x2 pooling, need a side s with (s - 2) // 2 - 2 >= 2, i.e. s >= 10.
CNN_MIN_IMAGE_SIZE = 10

# Keys TFX's Vertex/AI Platform Trainer extension adds to the Trainer's custom_config
# (tfx/extensions/google_cloud_ai_platform/constants.py, trainer/executor.py); its executor
# passes the whole custom_config on to run_fn, so they are not ModuleSettings fields.
CLOUD_TRAINER_KEY_PREFIX = "ai_platform_"

# custom_config key holding modules_fingerprint(): TFX's cache key covers exec properties, so
# edited user code re-runs Transform and Trainer instead of reusing their outputs.
MODULES_FINGERPRINT_KEY = "modules_sha256"

MODULES_DIR = os.path.dirname(os.path.abspath(__file__))


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
    modules_sha256: str = ""

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
        except TypeError as e:
            raise ModuleSettingsError(f"custom_config does not hold ModuleSettings: {e}") from None


def modules_fingerprint() -> str:
    """sha256 (hex) of the user code in modules/ (file names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(MODULES_DIR, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()
