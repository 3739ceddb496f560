"""Model builders from the course material. Each takes the transformed feature and returns a
compiled Keras model whose output is class probabilities (softmax, or sigmoid for binary text)."""
import keras
from keras import layers

from modules import features as F


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
    inputs = keras.Input(shape=image_shape, name=F.IMAGE)
    x = layers.Flatten()(inputs)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return _compile(keras.Model(inputs, outputs, name="mlp"), False, learning_rate)


def cnn(image_shape, num_classes: int, learning_rate: float) -> keras.Model:
    inputs = keras.Input(shape=image_shape, name=F.IMAGE)
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return _compile(keras.Model(inputs, outputs, name="cnn"), False, learning_rate)


def multihot(width: int, num_classes: int, learning_rate: float) -> keras.Model:
    inputs = keras.Input(shape=(width,), name=F.MULTI_HOT)
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="multihot"),
                    num_classes == 2, learning_rate)


def embedding(vocab_ids: int, max_tokens: int, num_classes: int, learning_rate: float) -> keras.Model:
    inputs = keras.Input(shape=(max_tokens,), name=F.TOKENS, dtype="int64")
    x = layers.Embedding(vocab_ids, 16, mask_zero=True)(inputs)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(16, activation="relu")(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="embedding"),
                    num_classes == 2, learning_rate)


def conv1d(vocab_ids: int, max_tokens: int, num_classes: int, learning_rate: float) -> keras.Model:
    inputs = keras.Input(shape=(max_tokens,), name=F.TOKENS, dtype="int64")
    x = layers.Embedding(vocab_ids, 32)(inputs)
    x = layers.Conv1D(32, 7, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dropout(0.5)(x)
    return _compile(keras.Model(inputs, _head(num_classes)(x), name="conv1d"),
                    num_classes == 2, learning_rate)


def build(config: dict, num_classes: int) -> keras.Model:
    """The model named by config['model'], with its input named after the transformed feature."""
    lr = config["learning_rate"]
    name = config["model"]
    if name in ("mlp", "cnn"):
        shape = (config["image_size"], config["image_size"], config["channels"])
        return (mlp if name == "mlp" else cnn)(shape, num_classes, lr)
    vocab_ids = config["vocab_size"] + config["oov_buckets"] + 1  # + padding id 0
    if name == "multihot":
        return multihot(vocab_ids - 1, num_classes, lr)
    builder = {"embedding": embedding, "conv1d": conv1d}[name]
    return builder(vocab_ids, config["max_tokens"], num_classes, lr)


def input_feature(config: dict) -> str:
    return {"mlp": F.IMAGE, "cnn": F.IMAGE, "multihot": F.MULTI_HOT}.get(config["model"], F.TOKENS)
