"""run_fn's distribution pieces on a real Transform graph and GZIP TFRecords: the input
shards of the workers, and MirroredStrategy over two logical CPU devices (a process of its
own: logical devices must be set before TensorFlow starts)."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from modules.settings import ModuleSettings
from tests.support.trainer_workers import REPO

SETTINGS = ModuleSettings(kind="image", name="image_classifier", model="cnn", image_size=12, channels=1,
                          learning_rate=0.01, distribution="mirrored")
EXAMPLES = 21  # odd on purpose: the shards differ by one


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(transform dir, examples dir, file pattern of Split-train) of EXAMPLES images whose
    brightness encodes their index."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from modules.preprocessing import preprocessing_fn

    tmp = tmp_path_factory.mktemp("distribution")
    spec = {"image_raw": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{"image_raw": [_png(10 * i)], "label": [i % 3]} for i in range(EXAMPLES)]
    transform_dir = str(tmp / "transform")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp / "tmp")):
        transform_fn = ((pipeline | beam.Create(rows), metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, SETTINGS.to_custom_config())))
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    metadata_io.write_metadata(metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    folder = tmp / "examples" / "Split-train"
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data.gz"), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for row in rows:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=row["image_raw"])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=row["label"]))})).SerializeToString())
    return transform_dir, str(tmp / "examples"), str(folder / "*")


def _accessor(examples_dir: str):
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts
    examples = standard_artifacts.Examples()
    examples.uri = examples_dir
    examples.split_names = '["train"]'
    return DataAccessor(tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
                        record_batch_factory=None, data_view_decode_fn=None)


# The streamed path shuffles an endless stream (epochs mix), so one pass is checked unshuffled.
@pytest.mark.parametrize("cache_limit_bytes, shuffle", [(1 << 20, True), (0, False)], ids=["cached", "streamed"])
def test_worker_shards_are_disjoint_and_complete(split, cache_limit_bytes, shuffle):
    import tensorflow_transform as tft

    from modules import datasets
    transform_dir, examples_dir, pattern = split
    output, accessor = tft.TFTransformOutput(transform_dir), _accessor(examples_dir)
    shards = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                             num_replicas_in_sync=2)
        data, count = datasets.dataset(pattern, accessor, output, 1, "image", shuffle, cache_limit_bytes, context)
        assert count == EXAMPLES  # the whole split's count, for the steps
        assert data.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        share = EXAMPLES // 2 + (index == 0)
        # One pass over this worker's share: the mean brightness identifies the example.
        seen = [round(float(images.numpy().mean()) * 255 / 10) for images, _ in data.take(share)]
        assert len(set(seen)) == share, seen
        shards.append(set(seen))
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(range(EXAMPLES))


def _mirrored_child(transform_dir: str, examples_dir: str, pattern: str) -> None:
    """In a fresh process: two logical CPUs, MirroredStrategy via strategy_for, training on
    dataset() shards through distribute_datasets_from_function as run_fn does."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tensorflow_transform as tft

    from modules import datasets, distribution, models
    strategy = distribution.strategy_for(SETTINGS)
    output, accessor = tft.TFTransformOutput(transform_dir), _accessor(examples_dir)
    replica_batch = distribution.replica_batch_size(8, strategy)
    data = strategy.distribute_datasets_from_function(
        lambda context: datasets.dataset(pattern, accessor, output, replica_batch, "image", True, 1 << 20, context)[0])
    with strategy.scope():
        model = models.build(SETTINGS, 3)
    history = model.fit(data, epochs=2, steps_per_epoch=5, verbose=0)
    batch = next(iter(data))[0]
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync, "chief": distribution.is_chief(strategy),
        "replica_batch": replica_batch,
        "local_batches": [int(t.shape[0]) for t in strategy.experimental_local_results(batch)],
        "devices": sorted({v.device.split("/")[-1] for v in strategy.experimental_local_results(model.weights[0])}),
        "steps": int(model.optimizer.iterations.numpy()), "losses": history.history["loss"]}))


def test_mirrored_over_two_logical_cpus(split):
    code = f"from tests.components.test_distribution import _mirrored_child; _mirrored_child(*{list(split)!r})"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["chief"]
    # The global batch of 8 is split 4 + 4; the variables live on both devices.
    assert report["replica_batch"] == 4 and report["local_batches"] == [4, 4]
    assert report["devices"] == ["device:CPU:0", "device:CPU:1"]
    assert report["steps"] == 10  # one optimisation step per global batch, as in one process
    assert all(np.isfinite(report["losses"]))


def test_batch_must_divide_over_the_replicas():
    from modules import distribution

    class Three:
        num_replicas_in_sync = 3
    with pytest.raises(ValueError, match="batch_size 64 .* does not divide over 3 replicas; use a multiple of 3"):
        distribution.replica_batch_size(64, Three())


def test_peer_error_reason_names_the_lost_peer():
    from modules.distribution import peer_error_reason
    message = ("Graph execution error:\n\nin user code:\n  File x.py\n{{function_node CollectiveBcastSend}} "
               "Collective ops is aborted by: Error reported from /job:worker/task:1: Task "
               "/job:worker/replica:0/task:1 heartbeat timeout.\n [Op:CollectiveBcastSend]")
    assert "Error reported from /job:worker/task:1" in peer_error_reason(message)
    assert peer_error_reason("one\ntwo") == "two"
