"""modules.splits.read_split_examples: the one reader of ExampleGen's GZIP TFRecord splits."""
import os

import tensorflow as tf

from modules.splits import read_split_examples, split_pattern


def _write(path: str, ids) -> None:
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in ids:
            feature = {"id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_reads_files_in_name_order_up_to_the_limit(tmp_path):
    split = tmp_path / "Split-eval"
    split.mkdir()
    _write(str(split / "b.gz"), [3, 4])
    _write(str(split / "a.gz"), [1, 2])
    pattern = split_pattern(str(tmp_path), "eval")
    assert pattern == os.path.join(str(tmp_path), "Split-eval", "*")

    def ids(examples):
        return [e.features.feature["id"].int64_list.value[0] for e in examples]

    assert ids(read_split_examples(pattern)) == [1, 2, 3, 4]
    assert ids(read_split_examples(pattern, limit=3)) == [1, 2, 3]
    assert ids(read_split_examples(split_pattern(str(tmp_path), "train"))) == []
