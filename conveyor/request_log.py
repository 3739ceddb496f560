"""Request logging: a sample of served requests, as tf.Examples in the training schema.

`conveyor drift` compares TFDV statistics of these logs with the served model's training
statistics, so a logged request must look like a training example: the raw feature
(`image_raw` bytes / `text`) plus the profile features computed by the very function the
ExampleGens use (modules.features.profile). Labels are unknown at serving time; the
schema's SERVING environment leaves them out.

Layout: <dir>/<model>/<version>/requests-<unix ms>-<pid>-<n>.tfrecord (uncompressed
TFRecord). Each file is written under a hidden temp name and renamed when complete, so a
reader never sees half a file.

Why our own logger: TF Serving's request logging writes PredictionLog protos to a
configured sink and is not available without the TF Serving binary; PredictionLogs would
also need converting before TFDV can read them. Logging never fails or slows a request:
the request thread only samples and enqueues (dropping when the queue is full); a
background thread computes profiles and writes files, and logs its own errors.
"""
import logging
import os
import random
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from conveyor.batch_writer import BatchWriter
from modules import features
from serving import contract

log = logging.getLogger("conveyor.serving.request_log")

LOG_DIR_NAME = "request_logs"
FILE_PREFIX = "requests-"
FILE_SUFFIX = ".tfrecord"
# Which raw feature a serving_default input carries: {"images": ("image", "image_raw"), ...}
_RAW_BY_INPUT = {contract.SERVING_INPUT[kind]: (kind, features.RAW_INPUT[kind])
                 for kind in features.RAW_INPUT}


def log_files(directory: str) -> List[str]:
    """Complete request-log files under a <dir>/<model>/<version> folder, oldest first."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.startswith(FILE_PREFIX) and f.endswith(FILE_SUFFIX))


def pixels_to_png(pixels: np.ndarray) -> bytes:
    """One serving_pixels instance, float [size, size, 1 or 3] in [0, 1] -> 8-bit PNG bytes.

    The PNG decodes (modules/image_contract.py) to round(pixels * 255), so its profile features
    are those of the image the client decoded, comparable with the training statistics.
    """
    scaled = np.clip(np.rint(np.asarray(pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return tf.io.encode_png(scaled).numpy()


def raw_values(inputs: Dict[str, Any]) -> List[Tuple[str, bytes]]:
    """(kind, raw value) per instance of a request to serving_default, serving_examples or
    serving_pixels (each pixel instance logged as the PNG of its pixels)."""
    out: List[Tuple[str, bytes]] = []
    for name, value in inputs.items():
        if name == contract.PIXELS_INPUT:
            out.extend(("image", pixels_to_png(image)) for image in np.asarray(value))
            continue
        values = np.asarray(value, dtype=object).reshape(-1)
        if name in _RAW_BY_INPUT:
            kind = _RAW_BY_INPUT[name][0]
            out.extend((kind, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
        elif name == contract.EXAMPLES_INPUT:
            for serialized in values:
                feature = tf.train.Example.FromString(bytes(serialized)).features.feature
                for kind, raw in features.RAW_INPUT.items():
                    if feature[raw].bytes_list.value:
                        out.append((kind, feature[raw].bytes_list.value[0]))
                        break
    return out


def to_example(kind: str, raw: bytes) -> tf.train.Example:
    """The training-schema tf.Example of one raw value (profile via the ExampleGens' function)."""
    return features.to_example({features.RAW_INPUT[kind]: raw, **features.profile(kind, raw)})


class RequestLogger:
    """Samples requests at `rate` and writes them in batches from a background thread
    (conveyor/batch_writer.py): one TFRecord file of tf.Examples per model version and batch.

    Args:
      directory: where <model>/<version>/ folders are written.
      rate: share of requests logged, 0..1.
      batch_size: requests of one version per file at most; flush_seconds: the longest a
        logged request waits to be written; max_queue: requests waiting, beyond which they
        are dropped.
    Raises:
      ValueError: a rate outside 0..1.
    """

    def __init__(self, directory: str, rate: float, batch_size: int = 256,
                 flush_seconds: float = 2.0, max_queue: int = 10000):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"--request_log_rate: expected 0..1, got {rate}")
        self.directory = directory
        self.rate = rate
        self._files = 0
        self._writer = BatchWriter("request-log", self._examples, lambda key, records: self._write(*key, records),
                                   batch_size, flush_seconds, max_queue)

    def log(self, model: str, version: int, inputs: Dict[str, Any]) -> None:
        """Called after a successful request; cheap, never raises."""
        try:
            if self.rate <= 0 or random.random() >= self.rate:
                return
            self._writer.put((model, int(version), inputs))
        except Exception:  # noqa: BLE001 - logging must not fail a request
            log.exception("request log: could not enqueue a request")

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued and stops the thread."""
        self._writer.close(timeout)

    @staticmethod
    def _examples(item) -> Iterator[Tuple[Tuple[str, int], bytes]]:
        """((model, version), serialized tf.Example) of each instance of a logged request."""
        model, version, inputs = item
        for kind, raw in raw_values(inputs):
            try:
                example = to_example(kind, raw).SerializeToString()
            except Exception as e:  # noqa: BLE001 - e.g. bytes that are no image
                log.warning("request log: skipped an instance of %s/%d: %s", model, version, e)
                continue
            yield (model, version), example

    def _write(self, model: str, version: int, records: List[bytes]) -> str:
        folder = os.path.join(self.directory, model, str(version))
        os.makedirs(folder, exist_ok=True)
        self._files += 1
        name = f"{FILE_PREFIX}{int(time.time() * 1000)}-{os.getpid()}-{self._files}{FILE_SUFFIX}"
        tmp = os.path.join(folder, f".{name}.tmp")
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in records:
                    writer.write(record)
            os.replace(tmp, os.path.join(folder, name))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return os.path.join(folder, name)


def from_args(rate: Optional[float], directory: Optional[str], home: Optional[str]) -> Optional[RequestLogger]:
    """The server's logger for --request_log_rate/--request_log_dir, or None when off."""
    if not rate:
        return None
    if not directory:
        if not home:
            raise ValueError("--request_log_rate needs --request_log_dir (or --home)")
        directory = os.path.join(home, LOG_DIR_NAME)
    log.info("Logging %.0f%% of requests to %s", rate * 100, directory)
    return RequestLogger(os.path.abspath(directory), rate)


def configured_rate(flag: Optional[float], config_path: Optional[str]) -> float:
    """--request_log_rate, else `request_log_rate` of a Conveyor config file, else 0 (off).
    Raises ValueError (ConfigError) with the reason for a bad value or file."""
    rate = flag
    if rate is None and config_path:
        import yaml

        from pipelines.config import ConfigError, load_config
        try:
            with open(config_path, encoding="utf-8") as f:
                kind = (yaml.safe_load(f) or {}).get("kind", "image")
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise ConfigError(f"--config {config_path}: cannot read it ({e})") from e
        rate = load_config(kind, config_path).request_log_rate
    rate = float(rate or 0.0)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--request_log_rate: expected a share 0..1, got {rate}")
    return rate
