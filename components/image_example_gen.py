"""ImageExampleGen: labelled images from class folders, MNIST-style IDX files or TFRecords.

Layouts (matched by the input pattern under `input_base`):
  * class folders  <class>/<image>.png|jpg|jpeg|gif|bmp|webp|tif|tiff (class name = folder name)
  * IDX            *-images-idx3-ubyte[.gz] with the matching *-labels-idx1-ubyte[.gz]
  * TFRecord       *.tfrecord[.gz] of tf.Examples with `image_raw` bytes and an int64
                   `label` (named by `class_names`) or a bytes `label_name`
Every image is normalised to PNG while scanning (modules/image_contract.py: the one contract
for an accepted image), so any problem with a file stops ingestion with its path and the
reason (or, with skip_bad_images, the file is skipped and recorded on the artifact), and the
examples only ever hold PNGs the exported graph decodes to the pixels the Trainer saw.
"""
import functools
import glob
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from components.errors import IngestError
from components.labelled_example_gen import (LABEL, LABEL_NAME, PROFILE, LabelledExamplesExecutor, Scan,
                                             hash_split_output, options_to_custom_config)
from components.spans import latest_span_folder
from data.idx import IdxError, labels_path_for, read_idx
from modules import features as F
from modules.image_contract import INGEST_EXTENSIONS, ImageRejected, encode_png, normalize

IMAGE_KEY = F.IMAGE_RAW
# A normalised PNG up to this size travels in its scan record (one decode per file); larger
# ones are normalised again from the file inside Beam, so scans stay small.
KEEP_NORMALISED_BYTES = 256 << 10
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")
IDX_FILE, IDX_ITEM = "idx_file", "idx_item"  # scan record keys of an IDX image


def detect_input_pattern(data_dir: str) -> str:
    """The glob that selects the inputs of a data directory.

    Class folders use `*/*` so TFX fingerprints every image file (an edited image
    invalidates the cache); flat IDX/TFRecord folders use `*`.
    """
    if not os.path.isdir(data_dir):
        raise IngestError(f"{data_dir}: data directory does not exist")
    entries = os.listdir(data_dir)
    if not entries:
        raise IngestError(f"{data_dir}: data directory is empty")
    if any(os.path.isdir(os.path.join(data_dir, e)) for e in entries if not e.startswith(".")):
        return "*/*"
    return "*"


def _normalised(path: str) -> bytes:
    """The file's image as the contract's PNG. Raises ImageRejected (reading errors included)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageRejected(f"cannot be read ({e.strerror or e})") from None
    return normalize(data)


@functools.lru_cache(maxsize=4)
def _idx_images(path: str) -> np.ndarray:
    """An IDX image file, read once per worker process (records name the file and the item)."""
    return read_idx(path)


def _class_name(label: int, class_names: List[str], source: str) -> str:
    if class_names:
        if not 0 <= label < len(class_names):
            raise IngestError(f"{source}: label {label} has no entry in class_names "
                              f"({len(class_names)} names)")
        return class_names[label]
    return str(label)


class Executor(LabelledExamplesExecutor):
    """Scans class folders, IDX files or TFRecords of images (see the module docstring)."""

    KIND = "image"

    def scan(self, pattern: str, options: Dict[str, Any]) -> Scan:
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise IngestError(f"{pattern}: no input files matched")
        files: List[str] = []
        for path in paths:
            if os.path.isdir(path) and os.path.dirname(path) == os.path.dirname(pattern):
                # a pattern like `data/*` that matched class folders
                files.extend(sorted(os.path.join(path, f) for f in os.listdir(path)))
            elif os.path.isdir(path):
                # A folder inside a class folder: its name is no class, and its images are not
                # the parent's by any rule a user would guess.
                raise IngestError(
                    f"{path}: a folder inside class folder '{os.path.basename(os.path.dirname(path))}'; "
                    f"images must lie directly in <data>/<class name>/ (move them up, or make the "
                    f"folder a class of its own)")
            else:
                files.append(path)
        idx = [f for f in files if "images-idx3-ubyte" in os.path.basename(f)]
        if idx:
            return self._scan_idx(idx, options)
        records = [f for f in files if f.endswith(TFRECORD_SUFFIXES)]
        if records:
            return self._scan_tfrecords(records, options)
        return self._scan_folders(pattern, files, options)

    def _scan_folders(self, pattern: str, files: List[str], options) -> Scan:
        # Images a `*` pattern finds in the folder itself (a `*/*` pattern never does) would all
        # be labelled with the data folder's own name: one class.
        folder = os.path.dirname(pattern)
        loose = [f for f in files if os.path.dirname(f) == folder
                 and not os.path.basename(f).startswith(".") and f.lower().endswith(INGEST_EXTENSIONS)]
        if loose:
            raise IngestError(f"{folder}: {len(loose)} image file(s) lie directly in the data folder "
                              f"(e.g. {os.path.basename(loose[0])}); images must be in one subfolder per "
                              f"class: {folder}/<class name>/<image files>")
        skip = bool(options.get("skip_bad_images"))
        scan = Scan(records=[])
        per_class: Dict[str, int] = {}
        for path in files:
            if os.path.basename(path).startswith("."):
                continue
            parent = os.path.dirname(path)
            class_name = os.path.basename(parent)
            per_class.setdefault(class_name, 0)
            try:
                if not path.lower().endswith(INGEST_EXTENSIONS):
                    raise ImageRejected(f"not an image file (expected {', '.join(INGEST_EXTENSIONS)})")
                png = _normalised(path)
            except ImageRejected as e:
                if not skip:
                    raise IngestError(f"{path}: {e}; fix or remove it, or pass --skip-bad-images") from None
                scan.skipped.append((path, str(e)))
                continue
            per_class[class_name] += 1
            record = {"path": path, LABEL_NAME: class_name}
            if len(png) <= KEEP_NORMALISED_BYTES:
                record[IMAGE_KEY] = png
            scan.records.append(record)
        if not per_class:
            raise IngestError(f"{pattern}: no class folders with images found "
                              "(expected <data>/<class name>/<image files>)")
        empty = sorted(c for c, n in per_class.items() if n == 0)
        if empty:
            raise IngestError(f"{pattern}: class folder(s) {empty} contain no usable images")
        return scan

    def _scan_idx(self, image_files: List[str], options) -> Scan:
        class_names = options.get("class_names") or []
        scan = Scan(records=[])
        for images_path in image_files:
            labels_path = labels_path_for(images_path)
            if not os.path.exists(labels_path):
                raise IngestError(f"{images_path}: the matching labels file {labels_path} is missing")
            try:
                images, labels = read_idx(images_path), read_idx(labels_path)
            except IdxError as e:
                raise IngestError(str(e)) from e
            if images.ndim != 3:
                raise IngestError(f"{images_path}: expected images of shape (count, rows, cols), "
                                  f"got {images.shape}")
            if labels.ndim != 1 or len(labels) != len(images):
                raise IngestError(f"{images_path} has {len(images)} images but {labels_path} has "
                                  f"{labels.shape[0] if labels.ndim else 0} labels")
            # The pixels are at hand: profile them all at once instead of decoding every PNG again.
            means = images.reshape(len(images), -1).astype(np.float32).mean(axis=1) / 255.0
            height, width = int(images.shape[1]), int(images.shape[2])
            for i, label in enumerate(labels):
                name = _class_name(int(label), class_names, f"{labels_path} item {i}")
                # Only where the image is: Beam pickles and compresses every record it is given.
                scan.records.append({IDX_FILE: images_path, IDX_ITEM: i, LABEL_NAME: name,
                                     PROFILE: {F.IMAGE_HEIGHT: height, F.IMAGE_WIDTH: width,
                                               F.IMAGE_MEAN: float(means[i])}})
        return scan

    def _scan_tfrecords(self, files: List[str], options) -> Scan:
        class_names = options.get("class_names") or []
        skip = bool(options.get("skip_bad_images"))
        scan = Scan(records=[])
        for path in files:
            compression = "GZIP" if path.endswith(".gz") else ""
            try:
                serialized = list(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator())
            except tf.errors.OpError as e:
                raise IngestError(f"{path}: not a readable TFRecord file ({e.message})") from e
            for i, data in enumerate(serialized):
                source = f"{path} record {i}"
                example = tf.train.Example.FromString(data)
                feature = example.features.feature
                if not feature[IMAGE_KEY].bytes_list.value:
                    raise IngestError(f"{source}: missing bytes feature '{IMAGE_KEY}'")
                image = feature[IMAGE_KEY].bytes_list.value[0]
                if feature[LABEL_NAME].bytes_list.value:
                    name = feature[LABEL_NAME].bytes_list.value[0].decode("utf-8")
                elif feature[LABEL].int64_list.value:
                    name = _class_name(int(feature[LABEL].int64_list.value[0]), class_names, source)
                else:
                    raise IngestError(f"{source}: missing int64 feature '{LABEL}' or bytes feature '{LABEL_NAME}'")
                try:
                    png = normalize(image)
                except ImageRejected as e:
                    if not skip:
                        raise IngestError(f"{source}: '{IMAGE_KEY}' {e}; fix or remove it, "
                                          "or pass --skip-bad-images") from None
                    scan.skipped.append((source, str(e)))
                    continue
                scan.records.append({IMAGE_KEY: png, LABEL_NAME: name})
        return scan

    @staticmethod
    def load(record: Dict[str, Any]) -> Dict[str, Any]:
        if IMAGE_KEY in record:
            return {IMAGE_KEY: record[IMAGE_KEY]}
        if IDX_FILE in record:
            pixels = _idx_images(record[IDX_FILE])[record[IDX_ITEM]]
            return {IMAGE_KEY: encode_png(pixels.astype(np.uint8)[..., None])}
        try:
            return {IMAGE_KEY: _normalised(record["path"])}
        except ImageRejected as e:  # the file changed since the scan accepted it
            raise IngestError(f"{record['path']}: {e}") from None


class ImageExampleGen(FileBasedExampleGen):
    """FileBasedExampleGen over images (see module docstring)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, input_pattern: str = "*", eval_percent: int = 20,
                 skip_bad_images: bool = False, class_names=None):
        """Declares the component; the inputs are scanned when it runs.

        Args:
          input_base: folder the pattern is relative to.
          input_pattern: glob of the inputs (class folders `*/*`, IDX files, TFRecords); may
            contain TFX span specs such as span-{SPAN} (see components/spans.py).
          eval_percent: share of examples, in percent (1..99), hashed into the eval split.
          skip_bad_images: skip files that are not accepted images (recorded on the artifact,
            with the reason) instead of failing.
          class_names: names of integer labels (IDX, TFRecord inputs), index = label, in the
            given order.
        Outputs:
          `outputs['examples']`: Examples with splits train and eval of GZIP TFRecord
          tf.Examples (features: see components/labelled_example_gen.py), the sorted class
          names (`label_names`) and the skipped inputs (`skipped`).
        Raises:
          IngestError: a span pattern matches no span, or the latest span's folder is missing
            or empty. Bad inputs are reported when the component runs, also as IngestError.
        """
        from tfx.proto import example_gen_pb2
        span_folder = latest_span_folder(input_base, input_pattern)
        if span_folder:  # e.g. incoming/span-{SPAN} -> incoming/span-{SPAN}/*/* for class folders
            input_pattern = f"{input_pattern.rstrip('/')}/{detect_input_pattern(span_folder)}"
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=input_pattern)])
        output_config = hash_split_output(eval_percent)
        options = {"skip_bad_images": skip_bad_images}
        if class_names:
            options["class_names"] = list(class_names)
        super().__init__(input_base=input_base, input_config=input_config,
                         output_config=output_config,
                         custom_config=options_to_custom_config(options))
