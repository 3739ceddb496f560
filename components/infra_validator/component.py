"""ConveyorInfraValidator's declaration: its ComponentSpec and the component itself."""
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.errors import InfraInputError
from components.infra_validator.executor import (
    BLESSING_KEY, DEFAULT_MODEL_NAME, DEFAULT_SERVER, EXAMPLES_KEY, MODEL_KEY, MODEL_NAME_KEY,
    NUM_REQUESTS_KEY, P99_BUDGET_MS_KEY, REMEASURE_KEY, SERVER_KEY, Executor)
from components.infra_validator.runners import SERVER_MODES


class InfraValidatorSpec(types.ComponentSpec):
    """ConveyorInfraValidator's inputs, output and parameters."""

    PARAMETERS = {
        NUM_REQUESTS_KEY: ExecutionParameter(type=int),
        P99_BUDGET_MS_KEY: ExecutionParameter(type=float),
        MODEL_NAME_KEY: ExecutionParameter(type=str),
        SERVER_KEY: ExecutionParameter(type=str, optional=True),
        REMEASURE_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
    }


class ConveyorInfraValidator(base_component.BaseComponent):
    """Infra-validates a trained model in Conveyor's TF Serving-compatible server.

    TFX's InfraValidator needs Docker or Kubernetes to launch TF Serving; Conveyor has
    neither, but ships serving/server.py with the same REST API and warmup replay. This
    component loads the candidate there (`server`: in this process, or a fresh subprocess),
    sends `num_requests` real :predict requests built
    from the eval split, and blesses it only if all succeed within `p99_budget_ms` (p99).
    Feed `outputs['blessing']` to the Pusher's `infra_blessing` input.
    """

    SPEC_CLASS = InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
                 num_requests: int = 50, p99_budget_ms: float = 500.0,
                 model_name: str = DEFAULT_MODEL_NAME, server: str = DEFAULT_SERVER,
                 remeasure: Optional[str] = None):
        """Declares the component; nothing runs until the pipeline does.

        Args:
          model: channel of the Trainer's Model (its Format-Serving SavedModel is served).
          examples: channel of ExampleGen's Examples; requests are built from the raw
            feature (image_raw or text) of its eval split, cycled if it has fewer examples.
          num_requests: :predict requests to send, one instance each, >= 1 (checked when
            the executor runs).
          p99_budget_ms: the p99 latency budget in milliseconds; an int is taken as float.
          model_name: the name the model is served and requested under.
          server: "in_process" (the executor's own process) or "subprocess" (a fresh
            `python -m serving.server`), see SERVER_MODES.
          remeasure: None, or a token that only enters TFX's cache key (the executor ignores
            it). TFX reuses the verdict of an earlier execution with the same inputs and
            parameters (tfx/orchestration/portable/cache_utils.py), also a failed one; a
            verdict measured under load is worth measuring again, so the local runner passes
            a new token after a failed verdict (pipelines/preflight.py `infra_remeasure`) and
            the token of the last passing verdict otherwise, which keeps that one cached.
        Outputs:
          `outputs['blessing']`: an InfraBlessing, blessed or not with a `reason`, read by
          TFX's Pusher through its `infra_blessing` input.
        Raises:
          InfraInputError (a ValueError): `server` is not one of SERVER_MODES.
        """
        if server not in SERVER_MODES:
            raise InfraInputError(f"server must be one of {SERVER_MODES}, got {server!r}")
        if isinstance(p99_budget_ms, int):
            p99_budget_ms = float(p99_budget_ms)
        spec = InfraValidatorSpec(
            model=model, examples=examples,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            num_requests=num_requests, p99_budget_ms=p99_budget_ms, model_name=model_name,
            server=server, remeasure=remeasure)
        super().__init__(spec=spec)
