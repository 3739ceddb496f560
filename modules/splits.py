"""Reading the splits of an Examples artifact the way ExampleGen writes them:
`<uri>/Split-<name>/*.gz`, GZIP-compressed TFRecord files of serialized tf.Examples.

One reader for the Evaluator's label count, the infra validator's requests and the Trainer's
warmup inputs. It imports only TensorFlow (not Transform), so components can use it cheaply.
"""
import os
from typing import Iterator, Optional

import tensorflow as tf


def split_pattern(examples_uri: str, split: str, files: str = "*") -> str:
    """The glob of one split's files: '<examples_uri>/Split-<split>/<files>'."""
    return os.path.join(examples_uri, f"Split-{split}", files)


def read_split_examples(pattern: str, limit: Optional[int] = None) -> Iterator[tf.train.Example]:
    """The tf.Examples in the GZIP TFRecord files `pattern` matches, read lazily.

    Files are read one after the other in sorted name order, so the first examples are always
    the same ones; stopping the iteration stops the reading.

    Args:
      pattern: a tf.io.gfile glob (local or any TensorFlow file system), e.g. from
        `split_pattern`. Matching no file yields nothing.
      limit: at most this many examples; None reads them all.
    Yields:
      tf.train.Example, one per record.
    Raises:
      tf.errors.DataLossError: a file is not a GZIP TFRecord file.
      google.protobuf.message.DecodeError: a record is not a serialized tf.Example.
    """
    paths = sorted(tf.io.gfile.glob(pattern))
    if not paths:
        return
    records = tf.data.TFRecordDataset(paths, compression_type="GZIP")
    if limit is not None:
        records = records.take(limit)
    for record in records.as_numpy_iterator():
        yield tf.train.Example.FromString(record)
