"""SavedModels that are not Conveyor's own, built with TF's public APIs, for the TF Serving
fidelity tests (tests/serving/test_serving_tf_models.py).

Each builder writes one version directory and returns its path. All models compute
y = 2 * x + 1 (or a classification derived from it) so tests can assert exact answers:

  * tf1_graph_model: a TF1 graph export (tf.compat.v1.saved_model.Builder) with
      - `serving_default` (predict): input `x` float [-1, 1] -> output `y` float [-1, 1];
      - `classify_x` (classify): input `inputs` (serialized tf.Examples with float feature `x`)
        -> `classes` string [-1, 2] ("neg", "pos") and `scores` float [-1, 2];
      - `regress_x` (regress): input `inputs` -> `outputs` float [-1, 1] = 2x + 1;
  * tf2_module_model: a tf.Module with an unknown-rank `TensorSpec(None)` signature
    (`serving_default`: `x` -> `y`) and a second signature `classify` with TF2's predict
    method name that has TF Serving's classify shape (input `inputs`, outputs `classes`,
    `scores`), which TF Serving 2.16 classifies (the method-name check is off by default);
  * keras_export_model: a Keras `model.export()` (one Dense unit fixed to y = 2x + 1);
  * tflite_model: `model.tflite` converted with tf.lite.TFLiteConverter.from_saved_model from
    a fixed-shape [1, 1] tf.Module (from_keras_model aborts the process with this Keras).
"""
import os
import tempfile

import numpy as np
import tensorflow as tf


def example(x: float) -> bytes:
    """A serialized tf.Example with the float feature `x`."""
    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def tf1_graph_model(path: str) -> str:
    v1 = tf.compat.v1
    utils = v1.saved_model.utils
    signature_def_utils = v1.saved_model.signature_def_utils
    constants = v1.saved_model.signature_constants
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
        w = v1.get_variable("w", initializer=tf.constant(2.0))
        y = tf.add(x * w, 1.0, name="y")  # element-wise: a [3] tensor fed as sent works too
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        parsed = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        value = tf.add(parsed["x"] * w, 1.0, name="regression")
        batch = tf.shape(value)[0]
        classes = tf.tile(tf.constant([["neg", "pos"]]), tf.stack([batch, 1]), name="classes")
        positive = tf.sigmoid(value)
        scores = tf.concat([1.0 - positive, positive], axis=1, name="scores")
        predict = signature_def_utils.predict_signature_def({"x": x}, {"y": y})
        classify = signature_def_utils.build_signature_def(
            inputs={constants.CLASSIFY_INPUTS: utils.build_tensor_info(serialized)},
            outputs={constants.CLASSIFY_OUTPUT_CLASSES: utils.build_tensor_info(classes),
                     constants.CLASSIFY_OUTPUT_SCORES: utils.build_tensor_info(scores)},
            method_name=constants.CLASSIFY_METHOD_NAME)
        regress = signature_def_utils.regression_signature_def(serialized, value)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": predict, "classify_x": classify,
                                   "regress_x": regress})
            builder.save()
    return path


class _Module(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * self.w + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        positive = tf.sigmoid(parsed["x"] * self.w + 1.0)
        batch = tf.shape(positive)[0]
        return {"classes": tf.tile(tf.constant([["neg", "pos"]]), tf.stack([batch, 1])),
                "scores": tf.concat([1.0 - positive, positive], axis=1)}


def tf2_module_model(path: str) -> str:
    module = _Module()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "classify": module.classify})
    return path


def keras_export_model(path: str) -> str:
    import keras

    inputs = keras.Input(shape=(1,), name="x")
    dense = keras.layers.Dense(1, name="y")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[2.0]], np.float32), np.array([1.0], np.float32)])
    model.export(path)
    return path


class _Fixed(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 1], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * 2.0 + 1.0}


def tflite_model(path: str) -> str:
    """<path>/model.tflite (and no saved_model.pb), as TF Serving's TFLite test data."""
    module = _Fixed()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        data = converter.convert()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.tflite"), "wb") as f:
        f.write(data)
    return path
