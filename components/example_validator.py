"""ExampleValidator as a gate: TFX's validator, but a run with anomalies stops here.

TFX's ExampleValidator only records anomalies; Conveyor must not train on data that
breaks the schema, so this executor raises (naming each anomaly) after writing them.
Transform is ordered after this component, so nothing downstream runs.
"""
from typing import List

from tfx.components.example_validator import executor as tfx_executor
from tfx.components.example_validator.component import ExampleValidator
from tfx.dsl.components.base import executor_spec


class DataValidationError(RuntimeError):
    """The data does not match the schema; the message lists each anomaly."""


class Executor(tfx_executor.Executor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._found: List[str] = []
        result = super().Do(input_dict, output_dict, exec_properties)
        if self._found:
            raise DataValidationError(
                "data validation found anomalies; the run stops before Transform:\n  "
                + "\n  ".join(self._found))
        return result

    def _Validate(self, inputs, outputs):
        anomalies = super()._Validate(inputs, outputs)
        split = outputs[tfx_executor.labels.SCHEMA_DIFF_PATH].rstrip("/").rsplit("Split-", 1)[-1]
        for feature, info in sorted(anomalies.anomaly_info.items()):
            self._found.append(f"[{split}] feature '{feature}': {info.short_description} - {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            self._found.append(f"[{split}] dataset: {info.short_description} - {info.description}")
        return anomalies


class GatedExampleValidator(ExampleValidator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
