"""Shared executor logic of Conveyor's ExampleGens (images and texts).

TFX's FileBasedExampleGen already gives us span/version resolution, input fingerprints
(caching) and the stable hash split into train/eval; what it lacks is a reader for
class folders, IDX files and review CSVs, and a label vocabulary. Each ExampleGen here
scans and validates its inputs *before* Beam starts, so a bad file stops the run with
a message naming the file instead of a Beam traceback, then Beam turns the scanned
records into tf.Examples:

    <payload feature>  bytes   image bytes (`image_raw`) or review text (`text`)
    label              int64   index of label_name in the class names
    label_name         bytes   the class name
    profile features   int64/float  image_height, image_width, image_mean / text_tokens,
                                    text_alpha_ratio, text_stopword_ratio (modules/features.py)

The class names (configured order, else sorted) are stored on the Examples artifact (`label_names` custom
property and `label_names.json`), and skipped inputs in `skipped` / `skipped.json`.
"""
import abc
import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.errors import IngestError  # noqa: F401  (ExampleGens raise it)
from modules import features as F

LABEL = F.LABEL
LABEL_NAME = F.LABEL_NAME
PROFILE = "profile"  # optional record key: profile features a scan computed in bulk
CHUNK_RECORDS = 1000
LABEL_NAMES_FILE = F.LABEL_NAMES_FILE
SKIPPED_FILE = "skipped.json"


@dataclasses.dataclass
class Scan:
    """What a scan of one input pattern found.

    records: one dict per example with `label_name` plus whatever `load` needs.
    skipped: (source, reason) of inputs dropped because skipping was asked for.
    """
    records: List[Dict[str, Any]]
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


def hash_split_output(eval_percent: int) -> example_gen_pb2.Output:
    """train/eval split by TFX's stable hash of each example: eval_percent % go to eval."""
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_percent),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_percent)]))


def options_to_custom_config(options: Dict[str, Any]) -> example_gen_pb2.CustomConfig:
    """Packs plain options into the CustomConfig proto FileBasedExampleGen carries to its executor."""
    struct = struct_pb2.Struct()
    struct.update(options)
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(struct)
    return config


def _options_from_exec_properties(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not raw:
        return {}
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(raw, config)
    struct = struct_pb2.Struct()
    if config.custom_config.Unpack(struct):
        return json_format.MessageToDict(struct)
    return {}


def _to_example(record: Dict[str, Any], load: Callable[[Dict[str, Any]], Dict[str, Any]],
                label_index: Dict[str, int], kind: str) -> tf.train.Example:
    features = load(record)
    # Profile features (modules/features.py) make drift visible to TFDV; serving's request
    # log computes them with the same function (a scan may have computed them already).
    features.update(record.get(PROFILE) or F.profile(kind, features[F.RAW_INPUT[kind]]))
    features[LABEL] = label_index[record[LABEL_NAME]]
    features[LABEL_NAME] = record[LABEL_NAME]
    return F.to_example(features)


class _Chunk:
    """Scanned records, handed to beam.Create in opaque chunks: Create infers an element type
    by walking every value it is given (1-2 s for 10,000 records), but not inside an object."""

    def __init__(self, records: List[Dict[str, Any]]):
        self.records = records

    def __iter__(self):
        return iter(self.records)


class LabelledExamplesExecutor(BaseExampleGenExecutor, abc.ABC):
    """Scan every input pattern, fix the label vocabulary, then let TFX write the splits."""

    KIND = ""  # "image" or "text": picks the raw feature and its profile features

    @abc.abstractmethod
    def scan(self, pattern: str, options: Dict[str, Any]) -> Scan:
        """Lists and validates the inputs matching `pattern` (an absolute glob)."""

    @staticmethod
    @abc.abstractmethod
    def load(record: Dict[str, Any]) -> Dict[str, Any]:
        """Turns a scanned record into its payload features (runs inside Beam workers)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        scans = self._scans
        label_index = self._label_index
        load = self.load
        kind = self.KIND

        @beam.ptransform_fn
        def records_to_examples(pipeline, exec_properties, split_pattern):
            del exec_properties
            records = scans[split_pattern].records
            chunks = [_Chunk(records[i:i + CHUNK_RECORDS]) for i in range(0, len(records), CHUNK_RECORDS)]
            return (pipeline
                    | "Records" >> beam.Create(chunks, reshuffle=False)
                    | "Unchunk" >> beam.FlatMap(iter)
                    | "ToExample" >> beam.Map(_to_example, load, label_index, kind))

        return records_to_examples

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        options = _options_from_exec_properties(exec_properties)
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        self._scans = {}
        for split in input_config.splits:
            scan = self.scan(os.path.join(input_base, split.pattern), options)
            if not scan.records:
                raise IngestError(f"{os.path.join(input_base, split.pattern)}: no usable examples "
                                  f"({len(scan.skipped)} skipped)")
            self._scans[split.pattern] = scan
        names = self._label_names(options)
        self._label_index = {name: i for i, name in enumerate(names)}

        super().Do(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        self._check_training_classes(examples.uri, names)

        skipped = [{"source": s, "reason": r} for scan in self._scans.values() for s, r in scan.skipped]
        _write_json(os.path.join(examples.uri, LABEL_NAMES_FILE), names)
        _write_json(os.path.join(examples.uri, SKIPPED_FILE), skipped)
        examples.set_json_value_custom_property("label_names", names)
        examples.set_int_custom_property("skipped_count", len(skipped))
        examples.set_int_custom_property(
            "example_count", sum(len(s.records) for s in self._scans.values()))

    def _label_names(self, options: Dict[str, Any]) -> List[str]:
        """The class names; a label's id is its position in this list.

        Configured class_names keep their given order (id = position = the integer label of
        IDX/TFRecord/CSV inputs, e.g. Fashion-MNIST's published names). Inferred names:
        integer names in numeric order (2 before 10), anything else alphabetically.

        Raises:
          IngestError: a label is not among class_names, or there are fewer than two classes.
        """
        seen = {r[LABEL_NAME] for scan in self._scans.values() for r in scan.records}
        configured: Optional[List[str]] = options.get("class_names")
        if configured:
            unknown = sorted(seen - set(configured))
            if unknown:
                raise IngestError(f"labels {unknown} are not among the configured class_names {configured}")
            duplicates = sorted({n for n in configured if configured.count(n) > 1})
            if duplicates:
                raise IngestError(f"class_names {configured} name {duplicates} more than once")
            names = list(configured)
        elif all(n.lstrip("-").isdigit() for n in seen):
            names = sorted(seen, key=int)
        else:
            names = sorted(seen)
        if len(names) < 2:
            raise IngestError(f"found a single class {names}: a classifier needs at least two "
                              "classes in the input data")
        return names

    def _check_training_classes(self, examples_uri: str, names: List[str]) -> None:
        """Every class must have examples in the written train split, and in the eval split.

        A class seen only in the eval split (aclImdb's test/neutral without train/neutral), a
        configured class without examples, or one with so few examples that the hash split put
        them all in eval would give a model that cannot predict it, which the Evaluator can
        still bless. A class with no eval examples cannot be judged: its per-class metrics are
        NaN, and so are the macro averages a blessing rule may gate on. Only the int64 `label`
        of each example is read back.

        Raises:
          IngestError: naming each such class, its example count and the split it lacks.
        """
        total = {name: 0 for name in names}
        for scan in self._scans.values():
            for record in scan.records:
                total[record[LABEL_NAME]] += 1
        for split, role in (("train", "training"), ("eval", "eval")):
            counts = _label_counts(examples_uri, split, len(names))
            if split == "eval" and not any(counts):
                continue  # no eval split was written (Evaluator-less runs): nothing to judge
            missing = [f"'{name}' ({total[name]} example(s) in all, none in {split})"
                       for name, count in zip(names, counts) if count == 0]
            if missing:
                remedy = ("a model cannot learn them; add training examples or remove the class"
                          if split == "train" else
                          "too few to split, so the model cannot be judged on them; add examples "
                          "(a few dozen per class) or remove the class")
                raise IngestError(f"class(es) {', '.join(missing)} have no {role} examples: {remedy}")


def _label_counts(examples_uri: str, split: str, num_classes: int) -> List[int]:
    """Examples per label id in one written split (zeros if the split has no files)."""
    counts = [0] * num_classes
    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    if not files:
        return counts
    spec = {LABEL: tf.io.FixedLenFeature([], tf.int64)}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    for batch in records.map(lambda b: tf.io.parse_example(b, spec)[LABEL]).as_numpy_iterator():
        for label, count in zip(*np.unique(batch, return_counts=True)):
            counts[int(label)] += int(count)
    return counts


def _write_json(path: str, value) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(value, indent=1))
