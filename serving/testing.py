"""Test support: tiny untrained SavedModels with exactly the served-model contract
(serving/contract.py), as TF Serving keeps such helpers in test_util/.

Used by the serving tests and by bench/serving.py when no pushed models are given.
Both models are deterministic so tests can assert on answers:
  * image: mean colour of the decoded PNG/JPEG -> classes "red", "green", "blue";
  * text: counts of the words "good", "bad", "meh" -> "positive", "negative", "neutral".
"""
import os
import shutil
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from serving import warmup
from serving.contract import (CLASS_IDS, CLASS_NAMES, DEFAULT_SIGNATURE, EXAMPLES_INPUT,
                              EXAMPLES_SIGNATURE, PROBABILITIES, SERVING_INPUT)
from serving.model_config import register_model

IMAGE_CLASSES = ["red", "green", "blue"]
TEXT_CLASSES = ["positive", "negative", "neutral"]
TEXT_WORDS = ["good", "bad", "meh"]


class _Classifier(tf.Module):
    """Shared head: logits -> probabilities / class_ids / class_names, plus both signatures."""

    input_key = ""
    example_key = ""

    def __init__(self, class_names: Sequence[str], scale: float):
        super().__init__()
        self.class_names = tf.constant(list(class_names))
        self.dense = tf.Variable(np.eye(len(class_names), dtype=np.float32) * scale)
        self.bias = tf.Variable(np.zeros(len(class_names), dtype=np.float32))

    def features(self, values: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _outputs(self, values: tf.Tensor):
        logits = tf.matmul(self.features(values), self.dense) + self.bias
        class_ids = tf.argmax(logits, axis=1)
        return {PROBABILITIES: tf.nn.softmax(logits),
                CLASS_IDS: class_ids,
                CLASS_NAMES: tf.gather(self.class_names, class_ids)}

    def signatures(self):
        default = tf.function(lambda x: self._outputs(x), input_signature=[
            tf.TensorSpec([None], tf.string, name=self.input_key)])

        def from_examples(examples):
            parsed = tf.io.parse_example(
                examples, {self.example_key: tf.io.FixedLenFeature([], tf.string)})
            return self._outputs(parsed[self.example_key])

        examples = tf.function(from_examples, input_signature=[
            tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
        return {DEFAULT_SIGNATURE: default.get_concrete_function(),
                EXAMPLES_SIGNATURE: examples.get_concrete_function()}


class _ImageClassifier(_Classifier):
    input_key = SERVING_INPUT["image"]
    example_key = "image_raw"  # the training feature name (modules/features.py IMAGE_RAW)

    def features(self, values):
        def mean_colour(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [8, 8])
            return tf.reduce_mean(image, axis=[0, 1])

        return tf.map_fn(mean_colour, values, fn_output_signature=tf.TensorSpec([3], tf.float32))


class _TextClassifier(_Classifier):
    input_key = SERVING_INPUT["text"]
    example_key = "text"

    def features(self, values):
        tokens = tf.strings.split(tf.strings.lower(values))
        counts = [tf.reduce_sum(tf.cast(tf.equal(tokens, w), tf.float32), axis=1) for w in TEXT_WORDS]
        return tf.stack(counts, axis=1)


def save_model(path: str, kind: str, class_names: Sequence[str] = ()) -> str:
    """Exports an 'image' or 'text' model to `path` (one version directory)."""
    if kind == "image":
        module = _ImageClassifier(class_names or IMAGE_CLASSES, scale=10.0)
    elif kind == "text":
        module = _TextClassifier(class_names or TEXT_CLASSES, scale=2.0)
    else:
        raise ValueError(f"kind must be 'image' or 'text', not {kind!r}")
    tf.saved_model.save(module, path, signatures=module.signatures())
    return path


def solid_png(rgb: Sequence[int], size: int = 4) -> bytes:
    """A size x size PNG of one RGB colour."""
    image = np.zeros((size, size, 3), dtype=np.uint8) + np.array(rgb, dtype=np.uint8)
    return tf.io.encode_png(image).numpy()


def serialized_example(key: str, value: bytes) -> bytes:
    """A serialized tf.Example with one bytes feature."""
    feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def build_home(home: str, versions: Sequence[int] = (1,), with_warmup: bool = True) -> List[str]:
    """HOME/serving/{image,text}/<version> plus models.config, as the Pusher lays them out."""
    serving_dir = os.path.join(home, "serving")
    paths = []
    for kind in ("image", "text"):
        first = None
        for version in versions:
            path = os.path.join(serving_dir, kind, str(version))
            if first is None:
                first = save_model(path, kind)
                if with_warmup:
                    sample = ({"images": [solid_png((255, 0, 0))]} if kind == "image"
                              else {"text": [b"good stuff"]})
                    warmup.write_warmup_requests(first, [sample], model_name=kind)
            else:
                shutil.copytree(first, path)
            paths.append(path)
        register_model(serving_dir, kind)
    return paths
