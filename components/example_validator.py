"""ExampleValidator as a gate: TFX's validator, but a run with anomalies stops here.

TFX's ExampleValidator only records anomalies; Conveyor must not train on data that
breaks the schema, so this executor raises (naming each anomaly) after writing them.
Transform is ordered after this component, so nothing downstream runs.

The schema SchemaGen infers is re-inferred from each run's own data, so on its own it
accepts any drift (a new class, images of another size, a text column of numbers). The
gate therefore also checks the statistics against the schema of the *latest blessed
model* (optional input `baseline_model`, wired from the pipeline's latest-blessed
Resolver): the Trainer saves the raw-data schema it trained with, tightened by
`tighten_schema` from its training statistics, in the exported model as
`assets.extra/conveyor_schema.pbtxt` (modules/training_schema.py). Without a blessed model
(the first run) or without that file, only this run's schema is checked. Anomalies against both schemas are written to the split's SchemaDiff.pb (so
`conveyor lineage` and the report show them) and listed in the DataValidationError.
"""
import os
from typing import List, Optional, Set

import tensorflow as tf
import tensorflow_data_validation as tfdv
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx import types
from tfx.components.example_validator import executor as tfx_executor
from tfx.components.example_validator import labels
from tfx.components.example_validator.component import ExampleValidator
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.components.util import value_utils
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils, path_utils, writer_utils

from components.errors import DataValidationError
from modules import features as F
from modules.training_schema import BASELINE_SCHEMA_FILE, drop_free_value_domains, feature_stats

BASELINE_MODEL_KEY = "baseline_model"
BLESSED = "blessed model's schema"


def read_baseline_schema(model: types.Artifact) -> Optional[schema_pb2.Schema]:
    """The schema saved in a model's export, or None when the model has none.

    Value domains of free-value features (features.FREE_VALUE_FEATURES: text, image bytes)
    are dropped as it is read: models blessed before the training schema left them out carry
    the texts of their own training run as the only allowed values, which would refuse every
    run on new data.

    Args:
      model: a Model artifact (the Trainer's output or a pushed copy of it).
    Returns:
      The schema from `<serving model dir>/assets.extra/conveyor_schema.pbtxt`, or None.
    """
    path = os.path.join(path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)),
                        BASELINE_SCHEMA_FILE)
    if not tf.io.gfile.exists(path):
        logging.warning("Blessed model %s has no %s; validating against this run's schema only",
                        model.uri, BASELINE_SCHEMA_FILE)
        return None
    return drop_free_value_domains(tfdv.load_schema_text(path))


def schema_classes(schema: schema_pb2.Schema) -> List[str]:
    feature = next((f for f in schema.feature if f.name == F.LABEL_NAME), None)
    if feature is None:
        return []
    if feature.HasField("string_domain"):
        return list(feature.string_domain.value)
    domain = next((d for d in schema.string_domain if d.name == feature.domain), None)
    return list(domain.value) if domain else []


def observed_classes(dataset: statistics_pb2.DatasetFeatureStatistics) -> Set[str]:
    """label_name values of a split, from the rank histogram StatisticsGen keeps (up to
    1,000 distinct values by default; top_values as a fallback)."""
    feature = feature_stats(dataset, F.LABEL_NAME)
    if feature is None:
        return set()
    string_stats = feature.string_stats
    return ({b.label for b in string_stats.rank_histogram.buckets if b.sample_count > 0}
            or {v.value for v in string_stats.top_values if v.frequency > 0})


def class_anomaly(expected: List[str], found: Set[str]) -> Optional[str]:
    """Why the classes of new data differ from the blessed model's, or None.

    This is checked here because a schema cannot say it: a string domain lists the values
    a feature *may* take (so TFDV reports a new class), but nothing in the schema requires
    each value to *occur*, so a class with no examples passes TFDV. A model trained on such
    data silently loses the class, so the gate treats it as an anomaly.
    """
    new = sorted(found - set(expected))
    missing = [c for c in expected if c not in found]
    problems = []
    if new:
        problems.append(f"new class(es) {new} not among the blessed model's classes {expected}")
    if missing:
        problems.append(f"class(es) {missing} of the blessed model have no examples")
    return "; ".join(problems) or None


# ---------------------------------------------------------------------------------------
# The component


def _merge(into: anomalies_pb2.Anomalies, extra: anomalies_pb2.Anomalies, source: str) -> None:
    """Adds `extra`'s anomalies to `into`, each description saying which schema found it."""
    for feature, info in extra.anomaly_info.items():
        target = into.anomaly_info[feature]
        if target.description:
            target.description += "; "
            target.short_description += "; "
        target.description += f"{info.description} ({source})"
        target.short_description += info.short_description
        target.severity = anomalies_pb2.AnomalyInfo.ERROR
        target.reason.extend(info.reason)
    if extra.HasField("dataset_anomaly_info"):
        info = extra.dataset_anomaly_info
        into.dataset_anomaly_info.description += f"{info.description} ({source})"
        into.dataset_anomaly_info.short_description += info.short_description
        into.dataset_anomaly_info.severity = anomalies_pb2.AnomalyInfo.ERROR


class Executor(tfx_executor.Executor):
    """TFX's ExampleValidator executor that also checks the blessed model's schema and
    classes, and raises DataValidationError after writing the anomalies."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._found: List[str] = []
        self._baseline: Optional[schema_pb2.Schema] = None
        self._class_problem: Optional[str] = None
        models = input_dict.get(BASELINE_MODEL_KEY) or []
        if models:
            self._baseline = read_baseline_schema(models[0])
        if self._baseline is not None:
            self._class_problem = self._check_classes(input_dict, exec_properties)
        result = super().Do(input_dict, output_dict, exec_properties)
        if self._found:
            raise DataValidationError(
                "data validation found anomalies; the run stops before Transform:\n  "
                + "\n  ".join(self._found))
        return result

    def _check_classes(self, input_dict, exec_properties) -> Optional[str]:
        """Classes over all validated splits (a small eval split may lack a class by chance)."""
        expected = schema_classes(self._baseline)
        if not expected:
            return None
        stats = artifact_utils.get_single_instance(input_dict[standard_component_specs.STATISTICS_KEY])
        excluded = json_utils.loads(exec_properties.get(standard_component_specs.EXCLUDE_SPLITS_KEY, "null")) or []
        found: Set[str] = set()
        for split in artifact_utils.decode_split_names(stats.split_names):
            if split not in excluded:
                found |= observed_classes(stats_artifact_utils.load_statistics(stats, split).proto().datasets[0])
        return class_anomaly(expected, found)

    def _Validate(self, inputs, outputs):
        schema = value_utils.GetSoleValue(inputs, standard_component_specs.SCHEMA_KEY)
        stats = value_utils.GetSoleValue(inputs, standard_component_specs.STATISTICS_KEY)
        schema_diff_path = value_utils.GetSoleValue(outputs, labels.SCHEMA_DIFF_PATH)
        anomalies = tfdv.validate_statistics(
            statistics=stats, schema=schema,
            custom_validation_config=value_utils.GetSoleValue(
                inputs, standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY))
        if self._baseline is not None:
            _merge(anomalies, tfdv.validate_statistics(statistics=stats, schema=self._baseline), BLESSED)
            if self._class_problem:
                # Reported once, with the first split validated (it concerns all splits).
                extra = anomalies_pb2.Anomalies()
                extra.anomaly_info[F.LABEL_NAME].short_description = "Classes differ from the blessed model"
                extra.anomaly_info[F.LABEL_NAME].description = self._class_problem
                _merge(anomalies, extra, BLESSED)
                self._class_problem = None
        writer_utils.write_anomalies(os.path.join(schema_diff_path, tfx_executor.DEFAULT_FILE_NAME), anomalies)

        split = schema_diff_path.rstrip("/").rsplit("Split-", 1)[-1]
        for feature, info in sorted(anomalies.anomaly_info.items()):
            self._found.append(f"[{split}] feature '{feature}': {info.short_description} - {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            self._found.append(f"[{split}] dataset: {info.short_description} - {info.description}")
        return anomalies


class GatedExampleValidatorSpec(standard_component_specs.ExampleValidatorSpec):
    """TFX's ExampleValidatorSpec plus the optional `baseline_model` input."""

    INPUTS = dict(standard_component_specs.ExampleValidatorSpec.INPUTS, **{
        BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True)})


class GatedExampleValidator(ExampleValidator):
    """ExampleValidator that stops the run on anomalies, also against the blessed model's schema."""

    SPEC_CLASS = GatedExampleValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, statistics: types.BaseChannel, schema: types.BaseChannel,
                 baseline_model: Optional[types.BaseChannel] = None,
                 exclude_splits: Optional[List[str]] = None):
        """Declares the gate; nothing is validated until the pipeline runs.

        Args:
          statistics: channel of StatisticsGen's ExampleStatistics.
          schema: channel of this run's Schema (SchemaGen's or an imported curated one).
          baseline_model: channel of the latest blessed Model; its exported training schema
            (assets.extra/conveyor_schema.pbtxt) is checked too. None, an empty channel or a
            model without that file: this run's schema only.
          exclude_splits: split names not to validate (default: none).
        Outputs:
          `outputs['anomalies']`: ExampleAnomalies, one SchemaDiff.pb per split, with the
          anomalies against both schemas.
        Raises (when the component runs):
          DataValidationError: any anomaly, listing each one; the run stops before Transform.
        """
        spec = GatedExampleValidatorSpec(
            statistics=statistics, schema=schema, baseline_model=baseline_model,
            exclude_splits=json_utils.dumps(exclude_splits or []),
            anomalies=types.Channel(type=standard_artifacts.ExampleAnomalies))
        base_component.BaseComponent.__init__(self, spec=spec)
