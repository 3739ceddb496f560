"""Model builders from the course material. Each takes the transformed feature and returns a
compiled Keras model whose output is class probabilities (softmax, or sigmoid for binary text).

Every builder returns a compiled keras.Model (Adam at `learning_rate`; sparse categorical
cross-entropy, or binary cross-entropy for the one-unit sigmoid head of two-class text models)
whose input is named after the transformed feature it reads (modules/features.py).

Keras here is tf_keras (Keras 2, what TFX 1.16 itself trains with): Keras 3's model.fit does
not run under tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585; with Keras
3.12 it fails building the model from a distributed batch and reducing the metrics), which
distribution "multi_worker" needs (modules/distribution.py).

The `transfer` model puts a new head on a keras.applications backbone (Keras's transfer
learning guide, https://keras.io/guides/transfer_learning/): the backbone is called with
training=False, so its BatchNorm layers stay in inference mode in both phases (frozen, then
with its top layers unfrozen), and the Trainer (modules/trainer.py) trains the head first.
Augmentation (`augment`) is a separate front model used for fitting only (training_model):
the model that is exported never contains it.
"""
from typing import Callable, Optional, Tuple

import tensorflow as tf
import tf_keras as keras
from tf_keras import layers, regularizers

from modules import features as F
from modules.settings import IMAGENET_WEIGHTS, NO_WEIGHTS, ModuleSettings


class BackboneWeightsError(ValueError):
    """The transfer model's backbone weights cannot be had; one sentence says what to do."""


def _compile(model: keras.Model, binary: bool, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _head(num_classes: int):
    """Binary text models use one sigmoid unit (course: IMDB); everything else softmax."""
    return layers.Dense(1, activation="sigmoid") if num_classes == 2 else \
        layers.Dense(num_classes, activation="softmax")


def mlp(image_shape, num_classes: int, learning_rate: float) -> keras.Model:
    """Flatten -> Dense 128 relu -> softmax. Input float32 [N, *image_shape] in [0, 1];
    output float32 [N, num_classes]."""
    inputs = keras.Input(shape=image_shape, name=F.IMAGE)
    x = layers.Flatten()(inputs)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return _compile(keras.Model(inputs, outputs, name="mlp"), False, learning_rate)


def cnn(image_shape, num_classes: int, learning_rate: float) -> keras.Model:
    """Conv 32 -> pool -> Conv 64 -> pool -> dropout 0.5 -> softmax. Input float32
    [N, size, size, channels] in [0, 1]; output float32 [N, num_classes]."""
    inputs = keras.Input(shape=image_shape, name=F.IMAGE)
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return _compile(keras.Model(inputs, outputs, name="cnn"), False, learning_rate)


# The tfidf model multiplies its unit-norm input rows by TFIDF_INPUT_SCALE: Adam moves each
# weight by about learning_rate per step, and on unit-norm rows the default 0.001 needed far
# more than the tests' 120 steps (measured on 2,000 IMDB reviews: 0.75 held-out accuracy after
# 120 steps unscaled, 0.84 scaled; 0.85 after 2,000 steps either way). TFIDF_L2 is the L2 weight
# on the kernel, added to the mean loss: with the scale, the same penalty as sklearn's
# LogisticRegression at C ~ 12 on 1,440 reviews; the model is then a regularised logistic
# regression whose optimum more steps approach rather than overfit (bench/results/text_models.md).
TFIDF_INPUT_SCALE = 10.0
TFIDF_L2 = 3e-3


def tfidf(width: int, num_classes: int, learning_rate: float) -> keras.Model:
    """Linear (logistic / softmax regression) with an L2 penalty on TF-IDF of words and word
    pairs. Input float32 [N, width] (rows of unit L2 norm, modules/preprocessing.tfidf_ngrams);
    output float32 [N, 1] (sigmoid, two classes) or [N, num_classes] (softmax)."""
    inputs = keras.Input(shape=(width,), name=F.TFIDF)
    x = layers.Rescaling(TFIDF_INPUT_SCALE)(inputs)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    outputs = layers.Dense(units, activation=activation, kernel_initializer="zeros",
                           kernel_regularizer=regularizers.l2(TFIDF_L2))(x)
    return _compile(keras.Model(inputs, outputs, name="tfidf"), num_classes == 2, learning_rate)


def multihot(width: int, num_classes: int, learning_rate: float) -> keras.Model:
    """Dense 16-16 on a bag of words. Input float32 [N, width] of 0/1; output float32
    [N, 1] (sigmoid, two classes) or [N, num_classes] (softmax)."""
    inputs = keras.Input(shape=(width,), name=F.MULTI_HOT)
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="multihot"),
                    num_classes == 2, learning_rate)


def embedding(vocab_ids: int, max_tokens: int, num_classes: int, learning_rate: float) -> keras.Model:
    """Embedding 16 (id 0 masked) -> average pooling -> Dense 16. Input int64 [N, max_tokens]
    token ids < vocab_ids; output as `multihot`."""
    inputs = keras.Input(shape=(max_tokens,), name=F.TOKENS, dtype="int64")
    x = layers.Embedding(vocab_ids, 16, mask_zero=True)(inputs)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(16, activation="relu")(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="embedding"),
                    num_classes == 2, learning_rate)


def conv1d(vocab_ids: int, max_tokens: int, num_classes: int, learning_rate: float) -> keras.Model:
    """Embedding 32 -> Conv1D 32x7 -> max pooling -> dropout 0.5. Input int64 [N, max_tokens];
    output as `multihot`."""
    inputs = keras.Input(shape=(max_tokens,), name=F.TOKENS, dtype="int64")
    x = layers.Embedding(vocab_ids, 32)(inputs)
    x = layers.Conv1D(32, 7, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dropout(0.5)(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="conv1d"),
                    num_classes == 2, learning_rate)


def bilstm(vocab_ids: int, max_tokens: int, num_classes: int, learning_rate: float) -> keras.Model:
    """The course's IMDB RNN: Embedding 64 (id 0 masked) -> Bidirectional LSTM 64 -> Dense 64
    relu -> head. Input int64 [N, max_tokens] token ids < vocab_ids; output as `multihot`."""
    inputs = keras.Input(shape=(max_tokens,), name=F.TOKENS, dtype="int64")
    x = layers.Embedding(vocab_ids, 64, mask_zero=True)(inputs)
    x = layers.Bidirectional(layers.LSTM(64))(x)
    x = layers.Dense(64, activation="relu")(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="bilstm"),
                    num_classes == 2, learning_rate)


def _application(backbone: str) -> Tuple[Callable[..., keras.Model], Callable]:
    """(keras.applications constructor, its preprocess_input) of a modules.settings.BACKBONES name."""
    applications = keras.applications
    return {"mobilenet_v2": (applications.MobileNetV2, applications.mobilenet_v2.preprocess_input),
            "vgg16": (applications.VGG16, applications.vgg16.preprocess_input),
            "efficientnet_b0": (applications.EfficientNetB0, applications.efficientnet.preprocess_input)}[backbone]


def backbone_model(backbone: str, image_size: int, weights: str) -> keras.Model:
    """A keras.applications backbone without its top.

    Args:
      backbone: one of modules.settings.BACKBONES.
      image_size: input side in pixels (>= modules.settings.BACKBONE_MIN_IMAGE_SIZE).
      weights: IMAGENET_WEIGHTS (downloaded into Keras's cache, ~/.keras/models, unless
        already there), NO_WEIGHTS (random initialisation) or the path of a Keras weights
        file of this backbone without its top: a legacy .h5 (as published for
        keras.applications) or a .weights.h5 (`conveyor export-backbone`).
    Returns:
      The uncompiled backbone: input float32 [N, image_size, image_size, 3] as its
      preprocess_input returns it; output its last feature map [N, h, w, channels].
    Raises:
      BackboneWeightsError: imagenet weights that cannot be downloaded (no internet), a path
        that does not exist or holds weights of another architecture.
    """
    constructor, _ = _application(backbone)
    shape = (image_size, image_size, 3)
    if weights == NO_WEIGHTS:
        return constructor(include_top=False, weights=None, input_shape=shape)
    if weights == IMAGENET_WEIGHTS:
        try:
            return constructor(include_top=False, weights=IMAGENET_WEIGHTS, input_shape=shape)
        except Exception as e:  # tf_keras' get_file raises a bare Exception("URL fetch failure ...")
            if "URL fetch failure" not in str(e):
                raise
            raise BackboneWeightsError(
                f"backbone_weights imagenet: the {backbone} ImageNet weights are not in Keras's cache and "
                f"cannot be downloaded ({_first_line(e)}); without internet set backbone_weights to the "
                "path of a local weights file (README \"Transfer learning\")") from None
    if not tf.io.gfile.exists(weights):
        raise BackboneWeightsError(f"backbone_weights {weights}: no such file; expected {IMAGENET_WEIGHTS}, "
                                   f"{NO_WEIGHTS} or a Keras weights file of {backbone} without its top")
    model = constructor(include_top=False, weights=None, input_shape=shape)
    try:
        model.load_weights(weights)
    except (ValueError, OSError, KeyError, tf.errors.OpError) as e:
        raise BackboneWeightsError(f"backbone_weights {weights}: not the weights of {backbone} without its top "
                                   f"({_first_line(e)})") from None
    return model


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# BatchNorm momentum of a backbone trained from scratch (backbone_weights "none"). The
# applications' 0.999 (MobileNetV2, EfficientNet) suits ImageNet-length training: after the
# few hundred steps of a Conveyor run the moving averages have moved a quarter of the way
# from their initial 0 / 1 (1 - 0.999**300 = 0.26), and the model, which serves and is
# evaluated with them, answers at chance (bench/transfer.py measured 0.20 on 5 classes after
# 300 steps). At 0.9 they follow the batches within ~50 steps.
SCRATCH_BATCH_NORM_MOMENTUM = 0.9


def transfer(settings: ModuleSettings, num_classes: int) -> keras.Model:
    """Backbone -> global average pooling -> dropout 0.2 -> softmax, compiled (Adam at
    settings.learning_rate).

    Grey images are repeated into three channels and scaled to the 0..255 pixels the
    backbone's own preprocess_input expects. With weights (imagenet or a file) the backbone
    is frozen, for the head phase, and called with training=False; with backbone_weights
    "none" the whole model trains from scratch, the backbone as any other layer (its
    BatchNorm layers at SCRATCH_BATCH_NORM_MOMENTUM).
    Input float32 [N, size, size, channels] in [0, 1]; output float32 [N, num_classes].

    Raises:
      BackboneWeightsError: see backbone_model.
    """
    size = settings.image_size
    pretrained = settings.backbone_weights != NO_WEIGHTS
    base = backbone_model(settings.backbone, size, settings.backbone_weights)
    base.trainable = not pretrained
    if not pretrained:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BATCH_NORM_MOMENTUM
    _, preprocess_input = _application(settings.backbone)
    inputs = keras.Input(shape=(size, size, settings.channels), name=F.IMAGE)
    x = inputs if settings.channels == 3 else layers.Concatenate(name="grey_to_rgb")([inputs] * 3)
    x = preprocess_input(layers.Rescaling(255.0, name="to_pixel_values")(x))
    # From scratch (no weights) everything trains, BatchNorm statistics included.
    x = base(x, training=False) if pretrained else base(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return _compile(keras.Model(inputs, outputs, name="transfer"), False, settings.learning_rate)


def backbone(model: keras.Model) -> keras.Model:
    """The keras.applications backbone inside a `transfer` model.

    Raises:
      ValueError: `model` holds no nested model (it is not a transfer model).
    """
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"model {model.name} is not a transfer model (no backbone inside)")
    return nested[0]


def unfreeze_top(model: keras.Model, count: int) -> None:
    """Makes the top `count` layers of a transfer model's backbone trainable and the others
    frozen (the head stays trainable). Recompile the model that is fitted afterwards (Keras
    reads `trainable` when it compiles). BatchNorm layers among them keep running in
    inference mode (the backbone is called with training=False): only their scale and offset
    train, not their moving statistics."""
    base = backbone(model)
    base.trainable = True
    for layer in base.layers[:len(base.layers) - count]:
        layer.trainable = False


def compile_image_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """(Re)compiles an image model: Adam at `learning_rate`, sparse categorical cross-entropy."""
    return _compile(model, False, learning_rate)


def augmentation(settings: ModuleSettings) -> Optional[keras.Sequential]:
    """The tf_keras Random* layers of settings.augment, in order; None without augmentation.

    They transform only when called with training=True (model.fit); otherwise they pass
    images through unchanged. Input and output float32 [N, size, size, channels]."""
    if not settings.augment:
        return None
    make = {"flip": layers.RandomFlip, "rotation": layers.RandomRotation, "zoom": layers.RandomZoom,
            "contrast": layers.RandomContrast}
    return keras.Sequential([make[name](strength, name=f"random_{name}") for name, strength in settings.augment],
                            name="augmentation")


def training_model(model: keras.Model, settings: ModuleSettings) -> keras.Model:
    """What model.fit trains: `model` itself, or with settings.augment a compiled
    augmentation -> `model` whose weights are `model`'s, so fitting it trains `model` and
    exporting `model` leaves the augmentation out of the serving graph."""
    augment = augmentation(settings)
    if augment is None:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], name=model.input_names[0])
    fitted = keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_augmented")
    return compile_image_model(fitted, settings.learning_rate)


def build(settings: ModuleSettings, num_classes: int) -> keras.Model:
    """The compiled model named by settings.model, its input named after input_feature().

    Raises KeyError for a model name that is not in modules.settings.MODELS (Config refuses
    those at load time), BackboneWeightsError (transfer, see backbone_model)."""
    lr = settings.learning_rate
    name = settings.model
    if name == "transfer":
        return transfer(settings, num_classes)
    if name in ("mlp", "cnn"):
        shape = (settings.image_size, settings.image_size, settings.channels)
        return (mlp if name == "mlp" else cnn)(shape, num_classes, lr)
    if name == "tfidf":
        return tfidf(settings.ngram_vocab_size, num_classes, lr)
    if name == "multihot":
        return multihot(settings.vocab_ids - 1, num_classes, lr)  # no padding column
    builder = {"embedding": embedding, "conv1d": conv1d, "bilstm": bilstm}[name]
    return builder(settings.vocab_ids, settings.max_tokens, num_classes, lr)


def input_feature(settings: ModuleSettings) -> str:
    """The transformed feature (modules/features.py) the model named by settings.model reads."""
    return {"mlp": F.IMAGE, "cnn": F.IMAGE, "transfer": F.IMAGE, "multihot": F.MULTI_HOT, "tfidf": F.TFIDF}.get(settings.model, F.TOKENS)
