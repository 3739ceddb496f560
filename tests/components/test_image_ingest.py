"""ImageExampleGen on every input layout, through its real executor and Beam."""
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.image_example_gen import ImageExampleGen, detect_input_pattern
from components.labelled_example_gen import IngestError
from data.idx import write_idx
from modules.features import IMAGE_HEIGHT, IMAGE_MEAN, IMAGE_WIDTH, profile_image
from tests.support.helpers import SHARED_DATA, read_examples, run_example_gen


def _png(value: int, size=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _class_tree(root, counts):
    for name, count in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(_png(i * 7 % 256))
    return str(root)


def _ingest(data_dir, out, **kwargs):
    component = ImageExampleGen(input_base=data_dir, input_pattern=detect_input_pattern(data_dir), **kwargs)
    return run_example_gen(component, str(out))


def test_class_folders_of_real_digits(digits_dir, tmp_path):
    examples = _ingest(digits_dir, tmp_path / "out")
    train, evaluation = read_examples(examples.uri, "train"), read_examples(examples.uri, "eval")
    assert len(train) + len(evaluation) == 1797
    assert 0.12 < len(evaluation) / 1797 < 0.28  # 20% by hash
    names = json.loads((tmp_path / "out" / "label_names.json").read_text())
    assert names == [str(d) for d in range(10)]
    first = train[0].features.feature
    label = first["label"].int64_list.value[0]
    assert names[label] == first["label_name"].bytes_list.value[0].decode()
    image = tf.io.decode_png(first["image_raw"].bytes_list.value[0])
    assert image.shape == (8, 8, 1)


def test_split_is_stable_across_runs(tmp_path):
    data = _class_tree(tmp_path / "data", {"a": 20, "b": 20})
    first = _ingest(data, tmp_path / "one")
    second = _ingest(data, tmp_path / "two")
    key = lambda e: e.SerializeToString(deterministic=True)  # noqa: E731
    assert sorted(map(key, read_examples(first.uri, "eval"))) == sorted(map(key, read_examples(second.uri, "eval")))


def test_class_names_are_sorted_folder_names(tmp_path):
    data = _class_tree(tmp_path / "data", {"zebra": 20, "ant": 20, "moose": 20})
    examples = _ingest(data, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == ["ant", "moose", "zebra"]
    for example in read_examples(examples.uri, "train") + read_examples(examples.uri, "eval"):
        f = example.features.feature
        assert ["ant", "moose", "zebra"][f["label"].int64_list.value[0]] == f["label_name"].bytes_list.value[0].decode()


def test_idx_files_with_class_names(tmp_path):
    data = tmp_path / "idx"
    data.mkdir()
    images = np.random.RandomState(0).randint(0, 255, (30, 28, 28)).astype(np.uint8)
    labels = np.arange(30) % 3
    write_idx(str(data / "train-images-idx3-ubyte.gz"), images)
    write_idx(str(data / "train-labels-idx1-ubyte.gz"), labels)
    examples = _ingest(str(data), tmp_path / "out", class_names=["cat", "dog", "bird"])
    records = read_examples(examples.uri, "train") + read_examples(examples.uri, "eval")
    assert len(records) == 30
    # Configured names keep their order: id = position = the IDX label.
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == ["cat", "dog", "bird"]
    for r in records:
        f = r.features.feature
        assert ["cat", "dog", "bird"][f["label"].int64_list.value[0]] == f["label_name"].bytes_list.value[0].decode()
    pixels = {tf.io.decode_png(r.features.feature["image_raw"].bytes_list.value[0]).numpy().tobytes():
              r.features.feature["label_name"].bytes_list.value[0].decode() for r in records}
    for image, label in zip(images, labels):
        assert pixels[image.reshape(28, 28, 1).tobytes()] == ["cat", "dog", "bird"][label]
    # The IDX scan profiles pixel arrays in bulk; serving's request log profiles PNG bytes one
    # by one (features.profile_image). Drift compares the two, so they must agree.
    for r in records:
        f = r.features.feature
        expected = profile_image(f["image_raw"].bytes_list.value[0])
        assert f[IMAGE_HEIGHT].int64_list.value == [expected[IMAGE_HEIGHT]] == [28]
        assert f[IMAGE_WIDTH].int64_list.value == [expected[IMAGE_WIDTH]] == [28]
        assert f[IMAGE_MEAN].float_list.value[0] == pytest.approx(expected[IMAGE_MEAN], abs=1e-6)


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "mnist")), reason="shared MNIST data not available")
def test_real_mnist_idx_file_reads(tmp_path):
    from data.idx import read_idx
    images = read_idx(os.path.join(SHARED_DATA, "mnist", "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SHARED_DATA, "mnist", "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_tfrecord_input(tmp_path):
    data = tmp_path / "tfr"
    data.mkdir()
    with tf.io.TFRecordWriter(str(data / "part.tfrecord")) as writer:
        for i in range(40):
            example = tf.train.Example(features=tf.train.Features(feature={
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(i)])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }))
            writer.write(example.SerializeToString())
    examples = _ingest(str(data), tmp_path / "out")
    assert len(read_examples(examples.uri, "train") + read_examples(examples.uri, "eval")) == 40
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == ["0", "1"]


def test_corrupt_image_names_the_file(tmp_path):
    data = _class_tree(tmp_path / "data", {"a": 3, "b": 3})
    bad = tmp_path / "data" / "b" / "broken.png"
    bad.write_bytes(_png(3)[:20])
    with pytest.raises(IngestError, match=r"broken\.png: not a readable image.*--skip-bad-images"):
        _ingest(data, tmp_path / "out")
    assert not (tmp_path / "out" / "label_names.json").exists()


def test_skip_bad_images_records_them(tmp_path):
    data = _class_tree(tmp_path / "data", {"a": 20, "b": 20})
    (tmp_path / "data" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    examples = _ingest(data, tmp_path / "out", skip_bad_images=True)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert sorted(os.path.basename(s["source"]) for s in skipped) == ["broken.png", "notes.txt"]
    assert examples.get_int_custom_property("skipped_count") == 2
    assert len(read_examples(examples.uri, "train") + read_examples(examples.uri, "eval")) == 40


def test_mismatched_idx_counts(tmp_path):
    write_idx(str(tmp_path / "x-images-idx3-ubyte"), np.zeros((5, 4, 4)))
    write_idx(str(tmp_path / "x-labels-idx1-ubyte"), np.zeros(4))
    with pytest.raises(IngestError, match="has 5 images but .*x-labels-idx1-ubyte has 4 labels"):
        _ingest(str(tmp_path), tmp_path / "out")


def test_truncated_idx_file(tmp_path):
    write_idx(str(tmp_path / "x-images-idx3-ubyte"), np.zeros((5, 4, 4)))
    write_idx(str(tmp_path / "x-labels-idx1-ubyte"), np.zeros(5))
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IngestError, match="x-images-idx3-ubyte: IDX header says shape"):
        _ingest(str(tmp_path), tmp_path / "out")


def test_empty_class_folder(tmp_path):
    data = _class_tree(tmp_path / "data", {"a": 3, "b": 3})
    os.makedirs(tmp_path / "data" / "c")
    (tmp_path / "data" / "c" / "readme.md").write_text("x")
    with pytest.raises(IngestError, match=r"class folder\(s\) \['c'\] contain no usable images"):
        _ingest(data, tmp_path / "out", skip_bad_images=True)


def test_single_class_is_refused(tmp_path):
    data = _class_tree(tmp_path / "data", {"only": 4})
    with pytest.raises(IngestError, match="single class"):
        _ingest(data, tmp_path / "out")


def test_images_directly_in_the_data_folder_are_refused_naming_the_layout(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.png").write_bytes(_png(i * 40))
    (data / "notes.txt").write_text("not an image")
    with pytest.raises(IngestError) as error:
        _ingest(str(data), tmp_path / "out", skip_bad_images=True)
    assert str(error.value) == (f"{data}: 4 image file(s) lie directly in the data folder (e.g. 0.png); "
                                f"images must be in one subfolder per class: {data}/<class name>/<image files>")


def test_empty_data_dir(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(IngestError, match="data directory is empty"):
        detect_input_pattern(str(tmp_path / "empty"))
    shutil.rmtree(tmp_path / "empty")
    with pytest.raises(IngestError, match="does not exist"):
        detect_input_pattern(str(tmp_path / "empty"))


def test_integer_class_names_sort_numerically(tmp_path):
    data = tmp_path / "idx"
    data.mkdir()
    # Distinct images: identical examples hash alike, and a class the hash split puts wholly
    # in train or in eval is refused. 20 per class.
    write_idx(str(data / "a-images-idx3-ubyte"), np.arange(240).reshape(240, 1, 1) * np.ones((240, 4, 4)))
    write_idx(str(data / "a-labels-idx1-ubyte"), np.arange(240) % 12)
    examples = _ingest(str(data), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == [str(i) for i in range(12)]
    for example in read_examples(examples.uri, "train") + read_examples(examples.uri, "eval"):
        f = example.features.feature
        assert str(f["label"].int64_list.value[0]) == f["label_name"].bytes_list.value[0].decode()


def test_a_folder_inside_a_class_folder_is_refused_not_made_a_class(tmp_path):
    data = _class_tree(tmp_path / "data", {"0": 3, "1": 3})
    _class_tree(tmp_path / "data" / "0", {"more": 2})  # data/0/more/*.png
    with pytest.raises(IngestError, match=r"data/0/more: a folder inside class folder '0'; images must lie "
                                          r"directly in <data>/<class name>/"):
        _ingest(data, tmp_path / "out", skip_bad_images=True)
