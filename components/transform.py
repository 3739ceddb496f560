"""Transform that refuses a text vocabulary the model could not learn from.

When normalisation leaves (almost) no tokens, e.g. text in a script the tokenizer does not
keep, TFT still writes a vocabulary: its one-entry placeholder for an empty vocabulary. The
Trainer would then fit a model that answers a constant, and the run would end "NOT blessed",
which points at the model instead of the data. This executor checks the vocabulary TFX's
Transform just wrote and stops the run before the Trainer, naming the feature, when:
  * it holds no token (only TFT's placeholder), or
  * more than MAX_OOV_SHARE of the tokens of (up to SAMPLE_EXAMPLES) training examples,
    transformed by the very graph Transform wrote, fall outside it.
Image pipelines are not checked.
"""
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components import Transform
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs

from components.errors import ComponentError
from modules import features as F
from modules.preprocessing import VOCABULARY_NAME, dense_1d, tokenize
from modules.settings import ModuleSettings

MAX_OOV_SHARE = 0.5
SAMPLE_EXAMPLES = 2000
# tensorflow_transform.analyzers.get_empy_vocabulary_dummy_value: what TFT writes for an
# empty string vocabulary.
EMPTY_VOCABULARY_PLACEHOLDER = b"49d0cd50-04bb-48c0-bc6f-5b575dce351a"


class VocabularyError(ComponentError, ValueError):
    """The Transform vocabulary of a text feature is empty or misses most training tokens."""


def check_vocabulary(transform_graph_uri: str, train_files: str) -> float:
    """Checks the text vocabulary of a Transform output against training examples.

    Args:
      transform_graph_uri: the TransformGraph artifact's directory.
      train_files: glob of the train split's GZIP TFRecords of raw tf.Examples.
    Returns:
      The share of sampled training tokens outside the vocabulary (0..1).
    Raises:
      VocabularyError: empty vocabulary, no tokens at all, or more than MAX_OOV_SHARE OOV;
        the message names the feature and what to check.
    """
    output = tft.TFTransformOutput(transform_graph_uri)
    vocabulary = [t for t in output.vocabulary_by_name(VOCABULARY_NAME) if t != EMPTY_VOCABULARY_PLACEHOLDER]
    feature = f"feature '{F.TEXT}'"
    if not vocabulary:
        raise VocabularyError(
            f"{feature}: the Transform vocabulary is empty: normalisation left no tokens in the "
            "training texts (modules/preprocessing.py: normalize_text); check the text column "
            "and its encoding; the run stops before the Trainer")
    spec = {F.TEXT: output.raw_feature_spec()[F.TEXT]}
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(train_files), compression_type="GZIP")
    batch = next(iter(records.take(SAMPLE_EXAMPLES).batch(SAMPLE_EXAMPLES)), None)
    if batch is None:
        return 0.0
    raw = tf.io.parse_example(batch, spec)
    ids = output.transform_raw_features(raw)[F.TOKENS]
    # Count the tokens with the tokenizer itself, in the same max_tokens window: an OOV token
    # has an id above the vocabulary with OOV buckets, but shares the padding id 0 without.
    total = int(tf.size(tokenize(dense_1d(raw[F.TEXT]), int(ids.shape[-1])).values))
    if total == 0:
        raise VocabularyError(f"{feature}: normalisation left no tokens in {int(batch.shape[0])} "
                              "training texts; the run stops before the Trainer")
    known = int(tf.reduce_sum(tf.cast((ids > 0) & (ids <= len(vocabulary)), tf.int32)))
    share = (total - known) / total
    if share > MAX_OOV_SHARE:
        raise VocabularyError(
            f"{feature}: {share:.0%} of the training tokens are outside the Transform vocabulary "
            f"({len(vocabulary)} tokens; at most {MAX_OOV_SHARE:.0%} allowed); the model could not "
            "learn from them; the run stops before the Trainer")
    return share


class Executor(transform_executor.Executor):
    """TFX's Transform executor, then check_vocabulary for text pipelines."""

    def Do(self, input_dict, output_dict, exec_properties):
        super().Do(input_dict, output_dict, exec_properties)
        custom_config = json.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}")
        settings = ModuleSettings.from_custom_config(custom_config)
        if settings.kind != "text":
            return
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        graph = artifact_utils.get_single_instance(output_dict[standard_component_specs.TRANSFORM_GRAPH_KEY])
        check_vocabulary(graph.uri, os.path.join(examples.uri, "Split-train", "*"))


class CheckedTransform(Transform):
    """tfx.components.Transform with check_vocabulary after it (see module docstring)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

