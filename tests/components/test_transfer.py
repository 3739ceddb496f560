"""The transfer model end to end on a real Transform graph, without network: a MobileNetV2
backbone's weights are saved in the test (random initialisation, the same file format as the
keras.applications downloads), run_fn trains from them and exports once (the head, with
augmentation, then fine-tuning), `conveyor export-backbone` writes the backbone of the pushed
version back out, and the version serves over REST.

Images: 32x32 grey, class "top" bright in the upper half, class "bottom" in the lower half.
"""
import dataclasses
import io
import json
import os
import urllib.request

import numpy as np
import pytest
import requests
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from modules import models
from modules.settings import BACKBONE_LAYERS, TRANSFER_PHASE_LOG, ModuleSettings

NAME = "transfer_model"
SIZE = 32
FINE_TUNE_LAYERS = 10
SETTINGS = ModuleSettings(kind="image", name=NAME, model="transfer", image_size=SIZE, channels=1, batch_size=8,
                          epochs=2, head_epochs=2, learning_rate=0.01, validation_percent=0,
                          backbone="mobilenet_v2", backbone_weights="none")
# Ops that draw random numbers (tf.raw_ops names); the tf_keras Random* layers use the
# stateless and stateful ones, ImageProjectiveTransformV3 does their rotation/zoom.
RANDOM_OPS = ("RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
              "StatelessRandomUniformV2", "StatelessRandomUniformIntV2", "StatelessRandomNormalV2",
              "StatelessRandomUniform", "StatelessRandomUniformInt", "StatelessRandomNormal",
              "StatelessTruncatedNormalV2", "StatelessRandomGetKeyCounter", "StatelessRandomGetKeyCounterAlg",
              "StatefulUniform", "StatefulUniformInt", "StatefulStandardNormalV2", "RngReadAndSkip",
              "RandomShuffle", "ImageProjectiveTransformV3", "ImageProjectiveTransformV2")


def _png(top: bool, seed: int) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 60, (SIZE, SIZE))
    pixels[:SIZE // 2] += 180 if top else 0
    pixels[SIZE // 2:] += 0 if top else 180
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _example(i: int) -> tf.train.Example:
    data = _png(i % 2 == 0, i)
    feature = {"image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
               "image_height": tf.train.Feature(int64_list=tf.train.Int64List(value=[SIZE])),
               "image_width": tf.train.Feature(int64_list=tf.train.Int64List(value=[SIZE])),
               "image_mean": tf.train.Feature(float_list=tf.train.FloatList(value=[0.3]))}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _write_split(folder, ids) -> str:
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data.gz"), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in ids:
            w.write(_example(i).SerializeToString())
    (folder.parent / "label_names.json").write_text('["top", "bottom"]')
    return str(folder / "*")


def _with(**changes) -> ModuleSettings:
    return dataclasses.replace(SETTINGS, **changes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(tmp, transform dir, train pattern, eval pattern, schema path)."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_metadata.proto.v0 import schema_pb2  # noqa: F401  (schema_utils returns one)
    from google.protobuf import text_format
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from modules.preprocessing import preprocessing_fn

    tmp = tmp_path_factory.mktemp("transfer")
    spec = {"image_raw": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    transform_dir = str(tmp / "transform")
    rows = [{"image_raw": [_png(i % 2 == 0, i)], "label": [i % 2]} for i in range(24)]
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp / "tft")):
        transform_fn = ((pipeline | beam.Create(rows), metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, SETTINGS.to_custom_config())))
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    metadata_io.write_metadata(metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    schema = schema_utils.schema_from_feature_spec({
        **spec, "image_height": tf.io.FixedLenFeature([1], tf.int64),
        "image_width": tf.io.FixedLenFeature([1], tf.int64), "image_mean": tf.io.FixedLenFeature([1], tf.float32)})
    schema_path = tmp / "schema.pbtxt"
    schema_path.write_text(text_format.MessageToString(schema))
    train = _write_split(tmp / "examples" / "Split-train", range(24))
    evaluation = _write_split(tmp / "examples" / "Split-eval", range(24, 32))
    return tmp, transform_dir, train, evaluation, str(schema_path)


@pytest.fixture(scope="module")
def pretrained(data):
    """A MobileNetV2 backbone file in the format of the keras.applications downloads (.h5)."""
    path = str(data[0] / "pretrained.h5")
    keras.utils.set_random_seed(1)
    models.backbone_model("mobilenet_v2", SIZE, "none").save_weights(path)
    return path


def _run_fn(data, settings: ModuleSettings, version: int) -> str:
    """run_fn as TFX's Trainer calls it; the export is put where the Pusher puts a version."""
    from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    from modules.trainer import run_fn
    tmp, transform_dir, train, evaluation, schema_path = data
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp / "examples")
    examples.split_names = '["train", "eval"]'
    accessor = DataAccessor(tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
                            record_batch_factory=None, data_view_decode_fn=None)
    served = str(tmp / "home" / "serving" / NAME / str(version))
    run_dir = str(tmp / f"model_run_{version}")
    run_fn(FnArgs(train_files=[train], eval_files=[evaluation], transform_output=transform_dir,
                  data_accessor=accessor, train_steps=4, eval_steps=2, schema_path=schema_path,
                  serving_model_dir=served, model_run_dir=run_dir, base_model=None,
                  custom_config=settings.to_custom_config()))
    return served


@pytest.fixture(scope="module")
def version(data, pretrained):
    """The pushed version 1: from the weights file, one epoch of the head with every
    augmentation, then one epoch with the top FINE_TUNE_LAYERS backbone layers unfrozen."""
    return _run_fn(data, _with(backbone_weights=pretrained, head_epochs=1, fine_tune_layers=FINE_TUNE_LAYERS,
                               fine_tune_learning_rate=0.01,
                               augment=[["flip", "horizontal"], ["rotation", 0.2], ["zoom", 0.2], ["contrast", 0.3]]),
                   1)


def _export_backbone(home: str, out: str, *flags: str):
    from conveyor.cli import main
    return main(["export-backbone", "--home", home, "--model", NAME, "--out", out, *flags])


def _phases(run_dir: str):
    from conveyor.pictures import training_history
    return [v for _, v in training_history(run_dir)["train"][TRANSFER_PHASE_LOG]]


@pytest.mark.parametrize("backbone", sorted(BACKBONE_LAYERS))
def test_each_backbone_builds_at_its_minimum_size(backbone):
    """modules.settings' layer counts are the applications'; grey input goes through each
    backbone's own preprocess_input into class probabilities. (VGG16's 14.7 M and
    EfficientNetB0's 4 M parameters are only built here, never trained.)"""
    model = models.build(_with(backbone=backbone), 3)
    base = models.backbone(model)
    assert len(base.layers) - 1 == BACKBONE_LAYERS[backbone]
    assert base.trainable  # backbone_weights none: everything trains from scratch
    assert {layer.momentum for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)} \
        <= {models.SCRATCH_BATCH_NORM_MOMENTUM}
    out = model(np.random.rand(2, 32, 32, 1).astype(np.float32), training=False).numpy()
    assert out.shape == (2, 3) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_the_head_phase_trains_the_head_and_fine_tuning_adds_the_top_layers(pretrained):
    """What each phase lets the optimizer change: with weights, only the new head; after
    unfreeze_top(N), also the variables of the backbone's top N layers that are trainable
    at all (BatchNorm moving statistics never are)."""
    model = models.build(_with(backbone_weights=pretrained), 2)
    head = [v.name for v in model.layers[-1].trainable_weights]
    assert [v.name for v in model.trainable_weights] == head
    models.unfreeze_top(model, FINE_TUNE_LAYERS)
    top = models.backbone(model).layers[-FINE_TUNE_LAYERS:]
    expected = {v.name for layer in top for v in layer.weights if "moving_" not in v.name} | set(head)
    assert {v.name for v in model.trainable_weights} == expected and len(expected) > len(head)


def test_imagenet_weights_offline_say_to_pass_a_path(tmp_path, monkeypatch):
    """No cached file and no way out (a proxy on a closed port): one sentence naming the fix."""
    monkeypatch.setenv("HOME", str(tmp_path))  # Keras's cache, ~/.keras/models, is empty
    (tmp_path / ".keras").mkdir()  # (else Keras falls back to /tmp/.keras)
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    # urllib.request.urlopen builds its global opener, proxies included, on first use: keep the
    # one built here (with the dead proxy) from serving later tests' loopback requests.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(models.BackboneWeightsError) as error:
        models.backbone_model("mobilenet_v2", 32, "imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("backbone_weights imagenet: the mobilenet_v2 ImageNet weights")
    assert "set backbone_weights to the path of a local weights file" in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = str(tmp_path / "other.h5")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(path)
    with pytest.raises(models.BackboneWeightsError, match=r"^backbone_weights .*other.h5: not the weights of "
                                                          r"mobilenet_v2 without its top \(") as error:
        models.backbone_model("mobilenet_v2", 32, path)
    assert "\n" not in str(error.value)
    with pytest.raises(models.BackboneWeightsError, match="no such file"):
        models.backbone_model("mobilenet_v2", 32, str(tmp_path / "missing.h5"))


def test_augmentation_changes_training_batches_only():
    settings = _with(model="mlp", augment=[["flip", "horizontal"]])
    model = models.build(settings, 2)
    fitted = models.training_model(model, settings)
    assert fitted is not model and "augmentation" in [layer.name for layer in fitted.layers]
    assert models.training_model(model, _with(model="mlp")) is model  # no augment: the model itself
    images = np.zeros((32, SIZE, SIZE, 1), np.float32)
    images[:, :, :4] = 1.0  # bright left edge: a horizontal flip moves it
    augment = models.augmentation(settings)
    assert np.array_equal(augment(images, training=False).numpy(), images)
    outs = augment(images, training=True).numpy()
    flipped = [np.array_equal(out, images[0, :, ::-1]) for out in outs]
    assert any(flipped)  # each image is flipped with probability 1/2: all 32 unflipped is 2**-32
    assert all(f or np.array_equal(out, images[0]) for f, out in zip(flipped, outs))


def test_training_keeps_the_frozen_layers_and_fine_tunes_the_top_ones(version, pretrained, data, capsys):
    """`export-backbone` writes version 1's backbone: below the top FINE_TUNE_LAYERS layers
    exactly the weights file it started from (frozen in both phases); among them the
    trainable weights moved and the BatchNorm moving statistics did not (the backbone runs
    in inference mode). TensorBoard logged one head epoch, then one fine-tuning epoch."""
    out = str(data[0] / "v1.weights.h5")
    assert _export_backbone(str(data[0] / "home"), out, "--version", "v1") == 0
    assert "wrote the mobilenet_v2 backbone of model 'transfer_model' version 1" in capsys.readouterr().out
    assert not [f for f in os.listdir(data[0]) if f.startswith(".tmp-")]  # the temporary file was renamed
    exported = models.backbone_model("mobilenet_v2", SIZE, out)
    original = models.backbone_model("mobilenet_v2", SIZE, pretrained)
    top = {layer.name for layer in original.layers[-FINE_TUNE_LAYERS:]}
    changed = set()
    for before, after in zip(original.layers[1:], exported.layers[1:]):  # [0]: the input
        assert before.name == after.name
        for w_before, w_after in zip(before.weights, after.weights):
            same = np.array_equal(w_before.numpy(), w_after.numpy())
            if before.name not in top or "moving_" in w_before.name:
                assert same, f"{w_before.name} changed outside the fine-tuned layers"
            elif not same:
                changed.add(before.name)
    assert changed and changed <= top
    assert _phases(str(data[0] / "model_run_1")) == [0.0, 1.0]


def _reachable_ops(saved_model_dir: str):
    """The op types of the serving graph: the SavedModel's main graph and every library
    function it calls, directly or through other functions (If/While branches, calls).
    Functions saved only for Keras (layer call traces) are not reachable from it."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    library = {f.signature.name: f for f in graph.library.function}
    ops, seen, pending = set(), set(), list(graph.node)

    def called(node):
        for value in node.attr.values():
            names = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
            yield from (n for n in names if n)
    while pending:
        node = pending.pop()
        ops.add(node.op)
        for name in list(called(node)) + ([node.op] if node.op in library else []):
            if name not in seen and name in library:
                seen.add(name)
                pending.extend(library[name].node_def)
    return ops


def test_augmentation_is_absent_from_the_serving_graph(version, data, tmp_path):
    """Version 1 trained with flip, rotation, zoom and contrast; its serving graph draws no
    random numbers (and over REST the same images get the same answers twice). The check
    itself finds the augmentation in a module that serves through it."""
    assert not _reachable_ops(version) & set(RANDOM_OPS)

    augment = models.augmentation(_with(augment=[["rotation", 0.2]]))
    module = tf.Module()
    module.augment = augment
    module.serve = tf.function(lambda x: {"y": augment(x, training=True)},
                               input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "augmenting"), signatures={"serving_default": module.serve})
    assert _reachable_ops(str(tmp_path / "augmenting")) & set(RANDOM_OPS)


def test_a_transfer_model_serves_over_rest(version):
    """Conveyor's server loads version 1 and answers image bytes with the contract's outputs,
    the same ones when asked twice (no augmentation at serving time)."""
    from serving.net import free_port
    from serving.server import ModelServer, ServerOptions
    from tests.support.serving_harness import b64

    port = free_port()
    server = ModelServer(ServerOptions(model_name=NAME, model_base_path=os.path.dirname(version), port=0,
                                       host="127.0.0.1", rest_api_port=port, file_system_poll_wait_seconds=0))
    server.start()
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{NAME}"
        status = requests.get(url, timeout=30).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        body = {"instances": [b64(_png(True, 7)), b64(_png(False, 8))]}
        answers = [requests.post(f"{url}:predict", json=body, timeout=60) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        predictions = answers[0].json()["predictions"]
        assert [sorted(p) for p in predictions] == [["class_ids", "class_names", "probabilities"]] * 2
        assert all(p["class_names"] in ("top", "bottom") and len(p["probabilities"]) == 2 for p in predictions)
        assert answers[0].json() == answers[1].json()
    finally:
        server.stop()
    recorded = json.loads(open(os.path.join(version, "assets.extra", "conveyor_model.json")).read())
    assert recorded["settings"]["model"] == "transfer" and recorded["num_classes"] == 2
