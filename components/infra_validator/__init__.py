"""InfraValidator that runs the candidate model in Conveyor's own server: no Docker, no Kubernetes.

Why this exists (project issue #4): TFX's InfraValidator can only launch TF Serving
through local Docker or a Kubernetes cluster, and neither exists where Conveyor runs.
Conveyor already ships a TF Serving-compatible server (serving/server.py) with the same
REST API, the same version layout and the same warmup replay, so this component checks
the thing that matters before a push: *the exported model loads and answers in a real
server process*.

The executor
  1. copies the candidate's serving model into a temporary base path as version 1;
  2. starts Conveyor's server for it on a free loopback port (REST only, gRPC disabled):
     by default in the executor's own process (`server="in_process"`: serving.server's
     ModelServer, which loads the model and replays its warmup before it answers); with
     `server="subprocess"`, as `python -m serving.server` in a fresh process, which also
     proves the model loads in a process that imported nothing but TensorFlow and the
     server, at the price of that process's TensorFlow import (about 8 s here);
  3. waits until GET /v1/models/<name> reports version 1 AVAILABLE, which the server only
     does after replaying assets.extra/tf_serving_warmup_requests;
  4. sends `num_requests` real REST :predict requests over HTTP (one instance each) to
     `serving_default`, built from the eval split's raw examples (`image_raw` -> images as
     {"b64": ...}, `text` -> text as plain strings);
  5. blesses the model only if every request answered HTTP 200 with the contract's outputs
     (probabilities, class_ids, class_names) and the p99 latency is within `p99_budget_ms`.

The InfraBlessing is written the way TFX's InfraValidator writes it (INFRA_BLESSED /
INFRA_NOT_BLESSED file plus the `blessed` int custom property), so TFX's Pusher honours it
through its `infra_blessing` input. It also records p50/p99 latency, request and failure
counts, and a `reason` when not blessed. A model the server cannot load is a verdict (not
blessed, with the server's error and log tail), not an exception. The server is always
stopped (in process: shut down; subprocess: SIGTERM, then SIGKILL) before the executor returns.

One role per file, as in TFX's tfx/components/infra_validator/:
  * component.py: the ComponentSpec and the component;
  * executor.py: the executor, the verdict, the blessing marks and `percentile`;
  * runners.py: the server in this process or in a subprocess;
  * requests.py: REST :predict instances from the eval split.
HTTP goes through serving.client.PredictClient; errors derive from
components.errors.InfraValidationError.
"""
from components.infra_validator.component import ConveyorInfraValidator, InfraValidatorSpec
from components.infra_validator.executor import Executor
from components.infra_validator.runners import SERVER_MODES

__all__ = ["ConveyorInfraValidator", "Executor", "InfraValidatorSpec", "SERVER_MODES"]
