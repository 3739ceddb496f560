"""Model builders from the course material. Each takes the transformed feature and returns a
compiled Keras model whose output is class probabilities (softmax, or sigmoid for binary text).

Every builder returns a compiled keras.Model (Adam at `learning_rate`; sparse categorical
cross-entropy, or binary cross-entropy for the one-unit sigmoid head of two-class text models)
whose input is named after the transformed feature it reads (modules/features.py).

Keras here is tf_keras (Keras 2, what TFX 1.16 itself trains with): Keras 3's model.fit does
not run under tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585; with Keras
3.12 it fails building the model from a distributed batch and reducing the metrics), which
distribution "multi_worker" needs (modules/distribution.py).
"""
import tf_keras as keras
from tf_keras import layers, regularizers

from modules import features as F
from modules.settings import ModuleSettings


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


def build(settings: ModuleSettings, num_classes: int) -> keras.Model:
    """The compiled model named by settings.model, its input named after input_feature().

    Raises KeyError for a model name that is not in modules.settings.MODELS (Config refuses
    those at load time)."""
    lr = settings.learning_rate
    name = settings.model
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
    return {"mlp": F.IMAGE, "cnn": F.IMAGE, "multihot": F.MULTI_HOT, "tfidf": F.TFIDF}.get(settings.model, F.TOKENS)
