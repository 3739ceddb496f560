"""`conveyor serve` / `tensorflow_model_server`: a TF Serving 2.16-compatible model server
(REST + gRPC).

Every flag of tensorflow_model_server 2.16 (model_servers/main.cc) is accepted with the same
name and meaning, or logged once as ignored where it has no meaning here (IGNORED_FLAGS), so
the same command lines and manifests work against either server. Conveyor's own flags are
listed in the README's table of deliberate differences; any other flag is an error.
"""
import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tensorflow.core.protobuf import config_pb2

from serving import workers
from serving.batching import Batcher, BatchingOptions
from serving.config_protos import (BatchingParameters, ConfigFileError, MonitoringConfig,
                                   read_text_proto)
from serving.errors import ServingError
from serving.grpc_service import GrpcServer, parse_channel_arguments
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.model_config import MODELS_CONFIG, ModelConfigError, read_models_config
from serving.model_manager import LoadOptions, ModelManager, version_dirs
from serving.predictor import PredictionHook, Predictor
from serving.rest import PostRoute, RestApi, RestServer
from serving.traffic import SplitError, TrafficSplit, parse_ab_split

log = logging.getLogger("conveyor.serving")
# Conveyor's extension routes live under /v1/conveyor/, outside TF Serving's /v1/models.
EXTENSION_PREFIX = "/v1/conveyor/"
READY_PATH = EXTENSION_PREFIX + "ready"
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE

USAGE = """\
tensorflow_model_server | conveyor serve
    [--model_config_file FILE | --model_name NAME --model_base_path PATH | --home DIR]
    [--port 8500] [--rest_api_port PORT] [--host ADDRESS] [flags]

Serves SavedModels (and TFLite models) over TF Serving's gRPC (--port) and REST
(--rest_api_port) APIs. A model's base path holds one directory per version, named by an
integer (leading zeros allowed); new versions are picked up every
--file_system_poll_wait_seconds. Flags take --flag=value or --flag value; booleans also --flag.
Without a model source, MODEL_NAME (default "model") and MODEL_BASE_PATH (default /models)
name the model and its base path MODEL_BASE_PATH/MODEL_NAME, as in the tensorflow/serving image.
`tensorflow_model_server` keeps TF Serving's defaults (REST off, all interfaces); `conveyor serve`
defaults to REST on 8501 and 127.0.0.1."""

# The defaults that differ between the drop-in `tensorflow_model_server` (TF Serving's own:
# main.cc --rest_api_port=0, server.cc binds 0.0.0.0) and `conveyor serve` (a local tool).
# `conveyor serve` re-reads models.config every 2 s, so `conveyor promote` / `rollback` and
# canary pushes (serving/model_config.py) take effect without a restart.
DROP_IN_DEFAULTS = {"rest_api_port": 0, "host": "0.0.0.0", "model_config_file_poll_wait_seconds": 0}
CONVEYOR_DEFAULTS = {"rest_api_port": 8501, "host": "127.0.0.1", "model_config_file_poll_wait_seconds": 2}

# tensorflow_model_server 2.16 flags that have no effect here: accepted and logged once
# (model_servers/main.cc). Value: why it has no meaning here.
IGNORED_FLAGS = {
    "num_load_threads": "versions load one at a time on the polling thread",
    "num_unload_threads": "versions unload on the polling thread",
    "flush_filesystem_caches": "no file system cache to flush",
    "per_process_gpu_memory_fraction": "no GPU session options",
    "remove_unused_fields_from_bundle_metagraph": "the MetaGraphDef is not kept",
    "xla_cpu_compilation_enabled": "XLA is TF's default here",
    "enable_profiler": "no profiler service",
    "thread_pool_factory_config_file": "no custom thread pools",
    "mixed_precision": "no mixed-precision rewrite",
    "skip_initialize_tpu": "no TPU",
    "enable_per_model_batching_parameters": "batching parameters are server-wide",
    "num_tflite_interpreters_per_pool": "no batch splitting across interpreters",
    "use_alts_credentials": "ALTS is not available (false is the only accepted value)",
}
# Flags whose meaning cannot be honoured safely: a non-default value is an error.
UNSUPPORTED_FLAGS = {
    "ssl_config_file": "TLS for gRPC is not implemented; terminate TLS in front of the server",
    "platform_config_file": "only the tensorflow and tflite platforms are built in",
}


def _bool(text: str) -> bool:
    """tensorflow::Flags booleans: true/false/1/0 (any case)."""
    value = str(text).strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (true, false, 1 or 0)")


def build_parser(drop_in: bool = False) -> argparse.ArgumentParser:
    """The command line of tensorflow_model_server 2.16 plus Conveyor's extension flags.

    Args:
      drop_in: True for the `tensorflow_model_server` console script, which takes TF
        Serving's defaults (DROP_IN_DEFAULTS); False for `conveyor serve` (CONVEYOR_DEFAULTS).
    Returns:
      The parser; `ServerOptions.from_args` turns its result into options.
    """
    defaults = DROP_IN_DEFAULTS if drop_in else CONVEYOR_DEFAULTS
    p = argparse.ArgumentParser(prog="tensorflow_model_server" if drop_in else "conveyor serve",
                                usage=USAGE, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def flag(group, name, kind=str, default=None, help="", metavar=None):
        if kind is bool:
            group.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                               metavar="true|false", help=help)
        else:
            group.add_argument(f"--{name}", type=kind, default=default, help=help, metavar=metavar)

    src = p.add_argument_group("models (TF Serving)")
    flag(src, "model_config_file", help="ModelServerConfig text proto (several models, version "
         "policies, labels); --model_name/--model_base_path are then ignored", metavar="FILE")
    flag(src, "model_config_file_poll_wait_seconds", int, defaults["model_config_file_poll_wait_seconds"],
         "interval between re-reads of --model_config_file (0: read once; TF Serving's default is "
         "0, `conveyor serve`'s 2)")
    flag(src, "model_name", str, "default", "name of the model served from --model_base_path")
    flag(src, "model_base_path", help="path to export: one directory per integer version",
         metavar="PATH")
    flag(src, "file_system_poll_wait_seconds", float, 1.0,
         "interval between polls of the base paths for new versions (0: poll once)")
    flag(src, "saved_model_tags", str, "serve", "comma-separated tags of the MetaGraphDef to load")
    flag(src, "prefer_tflite_model", bool, False,
         "serve <version>/model.tflite with the TFLite interpreter when present")
    flag(src, "num_tflite_pools", int, os.cpu_count() or 1,
         "TFLite interpreters per model version (concurrent requests)")
    flag(src, "enable_model_warmup", bool, True,
         "replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE")
    flag(src, "num_request_iterations_for_warmup", int, 1, "times each warmup request is replayed")
    flag(src, "max_num_load_retries", int, 0,
         "retries of a failed version load (TF Serving's default: 5; see README)")
    flag(src, "load_retry_interval_micros", int, 60_000_000, "interval between load retries")
    flag(src, "allow_version_labels_for_unavailable_models", bool, False,
         "allow new version labels to name versions that are not available yet")
    flag(src, "enable_signature_method_name_check", bool, False,
         "Classify/Regress require classify/regress signature method names")
    net = p.add_argument_group("network (TF Serving)")
    flag(net, "port", int, 8500, "gRPC port (0 disables it)")
    flag(net, "grpc_socket_path", str, "", "also serve gRPC on this UNIX socket")
    flag(net, "rest_api_port", int, defaults["rest_api_port"],
         "HTTP/REST port (0 disables it; TF Serving's default is 0, `conveyor serve`'s 8501)")
    flag(net, "rest_api_num_threads", int, 0,
         "threads running REST model calls, status and metadata (0: 4 x CPUs, as TF Serving)")
    flag(net, "rest_api_timeout_in_ms", int, 30000, "run timeout of a REST predict (DEADLINE_EXCEEDED)")
    flag(net, "rest_api_enable_cors_support", bool, False, "add CORS headers to REST responses")
    flag(net, "grpc_channel_arguments", str, "", "k=v,... gRPC server arguments")
    flag(net, "grpc_max_threads", int, 16, "threads answering gRPC requests")
    flag(net, "enable_grpc_healthcheck_service", bool, False, "serve grpc.health.v1.Health")
    flag(net, "monitoring_config_file", str, "", "MonitoringConfig text proto (Prometheus path)")
    batch = p.add_argument_group("batching (TF Serving)")
    flag(batch, "enable_batching", bool, False,
         "merge concurrent requests to the same model version and signature")
    flag(batch, "batching_parameters_file", str, "",
         "BatchingParameters text proto (max_batch_size, batch_timeout_micros, "
         "max_enqueued_batches, num_batch_threads, allowed_batch_sizes)")
    tf_group = p.add_argument_group("TensorFlow session (TF Serving)")
    flag(tf_group, "tensorflow_session_parallelism", int, 0, "threads of a session (0: auto)")
    flag(tf_group, "tensorflow_intra_op_parallelism", int, 0, "threads within an op (0: auto)")
    flag(tf_group, "tensorflow_inter_op_parallelism", int, 0, "ops run at once (0: auto)")
    flag(tf_group, "tensorflow_session_config_file", str, "", "ConfigProto text proto for sessions")
    flag(p, "version", bool, False, "print the version and exit")
    ignored = p.add_argument_group("accepted and ignored (no meaning here)")
    for name, why in IGNORED_FLAGS.items():
        kind = bool if name in ("flush_filesystem_caches", "remove_unused_fields_from_bundle_metagraph",
                                "xla_cpu_compilation_enabled", "enable_profiler",
                                "skip_initialize_tpu", "enable_per_model_batching_parameters",
                                "use_alts_credentials") else str
        flag(ignored, name, kind, None, why)
    for name, why in UNSUPPORTED_FLAGS.items():
        flag(ignored, name, str, "", f"must be empty: {why}")
    ext = p.add_argument_group("Conveyor extensions")
    flag(ext, "home", help=f"Conveyor home; serves DIR/serving/{MODELS_CONFIG}", metavar="DIR")
    flag(ext, "host", str, defaults["host"], "address to bind both APIs to (0.0.0.0: all interfaces, "
         "TF Serving's behaviour; `conveyor serve` defaults to 127.0.0.1)")
    flag(ext, "rest_api_max_body_bytes", int, 64 * 1024 * 1024,
         "larger REST bodies get HTTP 413 (also the gRPC max message size)")
    flag(ext, "max_batch_size", int, 32, "rows per merged batch (batching_parameters_file wins)")
    flag(ext, "batch_timeout_micros", int, 2000, "how long a batch waits to fill up")
    flag(ext, "drain_seconds", float, 10.0,
         "on SIGTERM: time in-flight gRPC calls get to finish (REST requests already "
         "received are always answered)")
    flag(ext, "worker_processes", int, 1,
         "server processes sharing the ports (SO_REUSEPORT), each loading every model: "
         "uses more than one core for the Python front ends (see serving/workers.py)")
    ext.add_argument("--ab_split", action="append", default=[], metavar="[MODEL:]canary=P",
                     help="send share P (0..1) of unversioned Predict requests of a model with "
                          "`stable` and `canary` labels to the canary, the rest to stable (every "
                          "model, or MODEL's; repeatable). Header X-Conveyor-Unit / gRPC metadata "
                          "x-conveyor-unit makes a client's arm sticky")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="Conveyor extension: log level")
    return p


@dataclasses.dataclass
class ServerOptions:
    """What the server runs with; `main()` fills it from the command line (flags are parsed
    nowhere else), other callers (the infra validator, tests, bench) build it directly.

    Exactly one model source: `home` (serves HOME/serving/models.config), `model_config_file`
    (a ModelServerConfig text proto) or `model_base_path` (one model named `model_name`).
    Ports of 0 disable that API; a port of 0 is never "pick a free port".
    Defaults are `conveyor serve`'s flag defaults (REST on 8501, 127.0.0.1).

    Attributes (each the flag of the same name; see build_parser and TF Serving's main.cc):
      home: Conveyor home; serves HOME/serving/models.config.
      model_config_file: ModelServerConfig text proto of the models to serve.
      model_name: name of the single model at model_base_path.
      model_base_path: directory of one model's integer-named version directories.
      port: gRPC TCP port (0: no TCP gRPC).
      grpc_socket_path: also serve gRPC on this UNIX socket ("": no).
      rest_api_port: HTTP/REST port (0: no REST).
      host: address both APIs bind to (0.0.0.0: all interfaces).
      rest_api_max_body_bytes: larger REST bodies get HTTP 413; also the gRPC message limit.
      rest_api_timeout_in_ms: run timeout of a REST call, ms (then DEADLINE_EXCEEDED).
      rest_api_num_threads: threads running REST model calls, status and metadata (0: 4 x CPUs).
      rest_api_enable_cors_support: add CORS headers to REST answers.
      grpc_max_threads: gRPC worker threads.
      grpc_channel_arguments: "k=v,..." gRPC server options.
      enable_grpc_healthcheck_service: serve grpc.health.v1.Health.
      monitoring_config_file: MonitoringConfig text proto (Prometheus path; "": default path).
      file_system_poll_wait_seconds: seconds between base-path polls (0: poll once).
      model_config_file_poll_wait_seconds: seconds between config-file re-reads (0: read once).
      enable_batching: merge concurrent requests per model version and signature.
      batching_parameters_file: BatchingParameters text proto (needs enable_batching).
      max_batch_size: rows per merged batch (the batching file wins).
      batch_timeout_micros: how long a batch waits to fill up, µs (the batching file wins).
      drain_seconds: on stop, how long in-flight gRPC calls get to finish.
      worker_processes: server processes sharing the ports (main() runs the supervisor).
      reuse_port: bind the ports with SO_REUSEPORT (set in a worker of a supervisor).
      enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before AVAILABLE.
      num_request_iterations_for_warmup: replays of each warmup request.
      prefer_tflite_model: serve <version>/model.tflite when present.
      num_tflite_pools: TFLite interpreters per version.
      saved_model_tags: comma-separated MetaGraphDef tags to load.
      max_num_load_retries: retries of a failed version load.
      load_retry_interval_micros: interval between load retries, µs.
      allow_version_labels_for_unavailable_models: new labels may name versions not loaded yet.
      enable_signature_method_name_check: Classify/Regress require classify/regress method names.
      tensorflow_session_parallelism: threads of both session pools (0: TF's choice).
      tensorflow_intra_op_parallelism: threads within an op (0: TF's choice; wins over the above).
      tensorflow_inter_op_parallelism: ops run at once (0: TF's choice; wins over the above).
      tensorflow_session_config_file: ConfigProto text proto for the sessions.
      ab_split: --ab_split values, "canary=P" or "MODEL:canary=P" (serving/traffic.py).
      log_level: Python logging level name (DEBUG, INFO, WARNING, ERROR).
    The one default that differs from `conveyor serve`'s flags: model_config_file_poll_wait_seconds
    is 0 (read once) here, 2 for `conveyor serve`.
    """
    home: Optional[str] = None
    model_config_file: Optional[str] = None
    model_name: str = "default"
    model_base_path: Optional[str] = None
    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    rest_api_max_body_bytes: int = 64 * 1024 * 1024
    rest_api_timeout_in_ms: int = 30000
    rest_api_num_threads: int = 0
    rest_api_enable_cors_support: bool = False
    grpc_max_threads: int = 16
    grpc_channel_arguments: str = ""
    enable_grpc_healthcheck_service: bool = False
    monitoring_config_file: str = ""
    file_system_poll_wait_seconds: float = 1.0
    model_config_file_poll_wait_seconds: float = 0.0   # 0: read the config file once
    enable_batching: bool = False
    batching_parameters_file: str = ""
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    drain_seconds: float = 10.0
    worker_processes: int = 1
    reuse_port: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 1
    saved_model_tags: str = "serve"
    max_num_load_retries: int = 0
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    ab_split: Tuple[str, ...] = ()
    log_level: str = "INFO"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerOptions":
        """The options of a parsed `build_parser()` command line."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        values["ab_split"] = tuple(values.get("ab_split") or ())
        return cls(**values)

    @property
    def config_path(self) -> Optional[str]:
        """The models.config file the server reads, or None with --model_base_path."""
        if self.home:
            return os.path.join(self.home, "serving", MODELS_CONFIG)
        return self.model_config_file

    def session_config(self) -> config_pb2.ConfigProto:
        """The sessions' ConfigProto: --tensorflow_session_config_file, then the parallelism flags
        (server.cc: session_parallelism sets both pools unless intra/inter are given)."""
        config = config_pb2.ConfigProto()
        if self.tensorflow_session_config_file:
            config = read_text_proto(self.tensorflow_session_config_file, config_pb2.ConfigProto)
        if self.tensorflow_session_parallelism:
            config.intra_op_parallelism_threads = self.tensorflow_session_parallelism
            config.inter_op_parallelism_threads = self.tensorflow_session_parallelism
        if self.tensorflow_intra_op_parallelism:
            config.intra_op_parallelism_threads = self.tensorflow_intra_op_parallelism
        if self.tensorflow_inter_op_parallelism:
            config.inter_op_parallelism_threads = self.tensorflow_inter_op_parallelism
        return config

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            max_num_load_retries=self.max_num_load_retries,
            load_retry_interval_micros=self.load_retry_interval_micros,
            enable_model_warmup=self.enable_model_warmup,
            num_request_iterations_for_warmup=self.num_request_iterations_for_warmup,
            prefer_tflite_model=self.prefer_tflite_model,
            num_tflite_interpreters=max(1, self.num_tflite_pools),
            session_config=self.session_config(),
            saved_model_tags=tuple(t.strip() for t in self.saved_model_tags.split(",") if t.strip()),
            allow_version_labels_for_unavailable_models=self.allow_version_labels_for_unavailable_models,
            # A session callable is built per run timeout: warm both front ends' (gRPC runs
            # without one, REST with --rest_api_timeout_in_ms), or the first REST request
            # after a load pays the build (1 s for the tfidf model, 4.6 s for bilstm).
            warmup_timeouts_ms=tuple(sorted({0, max(0, self.rest_api_timeout_in_ms)})))

    def metrics_path(self) -> Optional[str]:
        """Where Prometheus metrics are served: the monitoring config's path when a
        --monitoring_config_file is given (None if it disables Prometheus), else TF Serving's
        default path (Conveyor serves metrics by default)."""
        if not self.monitoring_config_file:
            return PROMETHEUS_PATH
        config = read_text_proto(self.monitoring_config_file, MonitoringConfig)
        if not config.prometheus_config.enable:
            return None
        return config.prometheus_config.path or PROMETHEUS_PATH

    def batching_options(self) -> Optional[BatchingOptions]:
        """The batching parameters, or None without --enable_batching: TF Serving's defaults
        (BatchingOptions), --max_batch_size/--batch_timeout_micros, then the
        --batching_parameters_file's fields, which win.

        Raises:
          ConfigFileError: the file is unreadable or a value is one TF Serving refuses.
        """
        if not self.enable_batching:
            return None
        values: Dict[str, Any] = {"max_batch_size": self.max_batch_size,
                                  "batch_timeout_micros": self.batch_timeout_micros}
        if self.batching_parameters_file:
            params = read_text_proto(self.batching_parameters_file, BatchingParameters)
            for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                         "num_batch_threads"):
                if params.HasField(name):
                    values[name] = getattr(params, name).value
            values["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
            used = set(values)
            others = [f.name for f, _ in params.ListFields() if f.name not in used]
            if others:
                log.info("Batching parameters %s are ignored (requests larger than "
                         "max_batch_size always run in chunks of max_batch_size rows)",
                         ", ".join(others))
        try:
            return BatchingOptions(**values)
        except ValueError as e:
            raise ConfigFileError(f"{self.batching_parameters_file or '--max_batch_size'}: {e}") from e


def load_model_configs(options: ServerOptions) -> List[model_server_config_pb2.ModelConfig]:
    """The ModelConfigs to serve: the config file's (it wins over --model_base_path, as in TF
    Serving), else one model named --model_name at --model_base_path.

    Raises:
      ModelConfigError: an unreadable or unsupported file.
    """
    if not options.config_path and options.model_base_path:
        config = model_server_config_pb2.ModelConfig(
            name=options.model_name, base_path=os.path.abspath(options.model_base_path),
            model_platform="tensorflow")
        return [config]
    config = read_models_config(options.config_path)
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError(f"{options.config_path}: only model_config_list is supported")
    return list(config.model_config_list.config)


# on_predict(model name, version, {input name: numpy batch}) is called after every successful
# Predict; it must be cheap and must not raise (e.g. conveyor's sampled request logger).
PredictHook = Callable[[str, int, Dict[str, Any]], None]


class ModelServer:
    """The running server: model manager plus REST and gRPC front ends.

    Args:
      options: what to serve and where (see ServerOptions).
      on_predict: optional PredictHook called after each successful Predict.
      on_prediction: optional PredictionHook (serving/predictor.py); when given, every
        Predict gets a request id (REST header X-Conveyor-Request-Id, gRPC initial metadata
        x-conveyor-request-id) and the hook gets its PredictionEvent.
      post_routes: extension REST routes {regex of a path under /v1/conveyor/: PostRoute}
        (serving/rest.py), e.g. the feedback route of `conveyor serve`.
    Raises:
      ModelConfigError: the model config file cannot be read.
      SplitError: a malformed ab_split.
      OSError: a port cannot be bound.
    Loading happens in the constructor; `start()` opens the ports, `stop()` closes them.
    """

    def __init__(self, options: ServerOptions, on_predict: Optional[PredictHook] = None,
                 on_prediction: Optional[PredictionHook] = None,
                 post_routes: Optional[Dict[str, PostRoute]] = None):
        for pattern in post_routes or {}:
            if not pattern.startswith(EXTENSION_PREFIX):
                raise ValueError(f"extension route {pattern} must be under {EXTENSION_PREFIX}")
        shares = parse_ab_split(options.ab_split)
        self.options = options
        self.configs = load_model_configs(options)
        served = {c.name for c in self.configs}
        for model in sorted(m for m in shares if m and m not in served):
            # Not refused: a models.config reload may add it later.
            log.warning("--ab_split names model %r, which the model config does not list (%s): its split "
                        "applies once it is served", model, ", ".join(sorted(served)) or "no models")
        self.metrics = Metrics()
        metrics_path = options.metrics_path()
        batching = options.batching_options()
        self.batcher = Batcher(batching, on_batch=self._observe_batch) if batching else None
        channel_arguments = parse_channel_arguments(options.grpc_channel_arguments)
        self.manager = ModelManager(
            self.configs, options.file_system_poll_wait_seconds,
            config_loader=(lambda: load_model_configs(options)) if options.config_path else None,
            config_poll_wait_seconds=options.model_config_file_poll_wait_seconds,
            load_options=options.load_options(), on_unload=self.metrics.forget_version)
        predictor = Predictor(self.manager, self.batcher, on_predict,
                              method_name_check=options.enable_signature_method_name_check,
                              split=TrafficSplit(shares) if shares else None,
                              on_prediction=on_prediction)
        self.metrics_path = metrics_path
        self._stopping = False
        self.http = None
        self.grpc = None
        if options.rest_api_port:
            self.http = RestServer(
                options.host, options.rest_api_port,
                RestApi(predictor, self.metrics, options.rest_api_timeout_in_ms),
                options.rest_api_max_body_bytes, metrics_path=metrics_path,
                cors=options.rest_api_enable_cors_support,
                num_threads=options.rest_api_num_threads or 4 * (os.cpu_count() or 1),
                extra_routes={READY_PATH: self.readiness}, reuse_port=options.reuse_port,
                post_routes=post_routes)
        addresses = []
        if options.port:
            addresses.append(f"{options.host}:{options.port}")
        if options.grpc_socket_path:
            addresses.append(f"unix:{os.path.abspath(options.grpc_socket_path)}")
        if addresses:
            self.grpc = GrpcServer(addresses, predictor, self.metrics,
                                   options.rest_api_max_body_bytes, options.grpc_max_threads,
                                   channel_arguments, options.enable_grpc_healthcheck_service)

    def startup_report(self) -> List[Tuple[int, str]]:
        """(log level, line) per model: what is served, and each version directory skipped.

        Loading happens in the manager's constructor, so when this runs every aspired
        version has been tried: this is exactly what the server starts with.
        """
        lines = []
        for config in self.configs:
            try:
                statuses = self.manager.model_status(config.name).model_version_status
            except ServingError:
                statuses = []
            served = sorted(s.version for s in statuses if s.state == _AVAILABLE)
            lines.append((logging.INFO if served else logging.WARNING,
                          f"Model {config.name}: serving version(s) "
                          f"{', '.join(map(str, served)) or 'NONE'} from {config.base_path}"))
            dirs = version_dirs(config.base_path)
            for s in sorted(statuses, key=lambda s: s.version):
                if s.status.error_code != 0:
                    reason = (s.status.error_message.splitlines() or ["unknown error"])[0]
                    path = os.path.join(config.base_path, dirs.get(s.version, str(s.version)))
                    lines.append((logging.WARNING,
                                  f"Model {config.name}: skipped version {s.version}, "
                                  f"{path} failed to load: {reason}"))
        return lines

    def start(self) -> None:
        """Logs the startup report, starts version polling and opens the gRPC and REST ports
        (the ports were bound in the constructor); returns at once, serving on threads."""
        for level, line in self.startup_report():
            log.log(level, "%s", line)
        self.manager.start()
        if self.grpc:
            self.grpc.start()
            if self.options.port:
                log.info("Running gRPC ModelServer at %s:%d ...", self.options.host, self.options.port)
            if self.options.grpc_socket_path:
                log.info("Running gRPC ModelServer at UNIX socket %s ...", self.options.grpc_socket_path)
        if self.http:
            self.http.start()
            log.info("Exporting HTTP/REST API at:%s:%d ... (metrics at %s)",
                     self.options.host, self.options.rest_api_port, self.metrics_path or "nowhere")

    def readiness(self) -> Tuple[int, Dict[str, Any]]:
        """GET /v1/conveyor/ready for load balancers (a Conveyor extension).

        Returns:
          (200, {"ready": true, "models": {name: [available versions]}}) when every
          configured model has an AVAILABLE version; (503, {"error": ...} naming the models
          without one, plus "models") otherwise, and while shutting down.
        """
        models = {name: sorted(self.manager.loaded_versions(name))
                  for name in self.manager.model_names()}
        if self._stopping:
            return 503, {"error": "Not ready: the server is shutting down", "models": models}
        missing = [name for name, versions in models.items() if not versions]
        if missing:
            return 503, {"error": "Not ready: no AVAILABLE version of model(s) "
                                  + ", ".join(sorted(missing)), "models": models}
        return 200, {"ready": True, "models": models}

    def _observe_batch(self, key: Tuple, rows: int, padded: int) -> None:
        name, version = key[0], key[1]
        self.metrics.observe_batch(name, version, rows, padded)

    def stop(self) -> None:
        """Graceful stop: closes both ports to new connections and calls, lets every REST
        request already received finish (keep-alive connections get `Connection: close` on
        their last response) and in-flight gRPC calls up to `drain_seconds`, runs what the
        batcher holds at once (without waiting for batch timeouts), then stops polling (waiting up
        to 30 s for a load in progress). A second call does nothing."""
        if self._stopping:  # stopped already
            return
        self._stopping = True
        if self.batcher is not None:
            self.batcher.drain()  # queued requests run now, not at their batch timeout
        if self.grpc:
            self.grpc.begin_stop(self.options.drain_seconds)
        if self.http:
            # A request already received is answered; its model run is bounded by
            # --rest_api_timeout_in_ms, which bounds this wait too.
            self.http.stop(max(self.options.drain_seconds,
                               self.options.rest_api_timeout_in_ms / 1000 + 1))
        if self.grpc:
            self.grpc.wait_stopped(self.options.drain_seconds + 30)
        if self.batcher is not None:
            self.batcher.close()
        self.manager.stop()


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits (status 2) on a command line TF Serving would also refuse or that cannot be
    honoured here; logs each accepted-but-ignored flag once."""
    for name, why in UNSUPPORTED_FLAGS.items():
        if getattr(args, name):
            parser.error(f"--{name} is not supported: {why}")
    if args.use_alts_credentials:
        parser.error("--use_alts_credentials=true is not supported: ALTS is not available")
    for name, why in IGNORED_FLAGS.items():
        if getattr(args, name) is not None:
            log.info("Flag --%s is accepted and ignored: %s", name, why)
    if args.home and (args.model_config_file or args.model_base_path):
        parser.error("--home serves HOME/serving/models.config: give it without "
                     "--model_config_file / --model_base_path")
    if not (args.home or args.model_config_file or args.model_base_path):
        parser.error("give --model_config_file, --model_base_path (with --model_name) or --home")
    if args.model_config_file and args.model_base_path:
        log.info("--model_config_file is set: --model_name and --model_base_path are ignored")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file is set without --enable_batching=true")
    if not args.port and not args.rest_api_port and not args.grpc_socket_path:
        parser.error("both APIs disabled: set --port and/or --rest_api_port")
    if args.port and args.port == args.rest_api_port:
        parser.error("--rest_api_port cannot be the same as --port")
    if args.worker_processes < 1:
        parser.error(f"--worker_processes must be at least 1, got {args.worker_processes}")
    if args.worker_processes > 1 and args.grpc_socket_path:
        parser.error("--grpc_socket_path cannot be shared by several --worker_processes")
    try:
        parse_ab_split(args.ab_split)
    except SplitError as e:
        parser.error(str(e))


def parse_options(argv: List[str], drop_in: bool = False) -> ServerOptions:
    """The ServerOptions of a command line, checked as `main()` checks it.

    Args:
      argv: the flags, without the program name.
      drop_in: TF Serving's defaults (`tensorflow_model_server`) instead of `conveyor serve`'s.
    Returns:
      The options.
    Raises:
      SystemExit(2): a bad command line (the message is on stderr), as from argparse.
    """
    parser = build_parser(drop_in)
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    return ServerOptions.from_args(args)


def main(argv: Optional[List[str]] = None, on_predict: Optional[PredictHook] = None,
         drop_in: bool = False, on_prediction: Optional[PredictionHook] = None,
         post_routes: Optional[Dict[str, PostRoute]] = None) -> int:
    """Parses TF Serving's flags, serves until SIGINT/SIGTERM.

    Args:
      argv: the flags (default sys.argv[1:]).
      on_predict: optional PredictHook called after each successful Predict.
      on_prediction, post_routes: request ids and extension routes (see ModelServer).
      drop_in: TF Serving's defaults (see build_parser); `conveyor serve` passes False.
    Returns:
      The exit status: 0 after a signal or --version, 1 when the server cannot start (or,
      with --worker_processes > 1, when a worker exits on its own), 2 for a bad command line
      (argparse exits with it).
    """
    parser = build_parser(drop_in)
    args = parser.parse_args(argv)
    if args.version:
        print(f"TensorFlow ModelServer: conveyor (TF Serving 2.16 API)\n"
              f"TensorFlow Library: {tf_version()}")
        return 0
    worker = workers.worker_index()
    process = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(level=args.log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s{process}: %(message)s")
    one_handler_for_tensorflow()
    _check_flags(parser, args)
    if args.worker_processes > 1 and worker is None:
        return workers.supervise(args.worker_processes, args.drain_seconds)
    workers.die_with_supervisor()
    options = dataclasses.replace(ServerOptions.from_args(args), reuse_port=worker is not None)
    try:
        server = ModelServer(options, on_predict, on_prediction, post_routes)
    except (ModelConfigError, ConfigFileError, ServingError, OSError, ValueError) as e:
        log.error("Failed to start server. Error: %s", getattr(e, "message", e))
        return 1
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("Shutting down")
    server.stop()
    return 0


def one_handler_for_tensorflow() -> None:
    """TF's logger prints through the root logger's handlers only.

    TensorFlow gives its "tensorflow" logger a stream handler of its own when the root
    logger had none at import time (tensorflow/python/platform/tf_logging.py get_logger),
    and the logger still propagates to the root: once main() configured the root, every
    TF line would be printed twice ("WARNING:tensorflow:..." and the server's format).
    """
    tf_logger = logging.getLogger("tensorflow")
    if logging.getLogger().handlers:
        for handler in list(tf_logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                tf_logger.removeHandler(handler)


def tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def tensorflow_model_server() -> int:
    """The `tensorflow_model_server` console script: main() on sys.argv, with the official
    image's MODEL_NAME / MODEL_BASE_PATH environment variables used when the command line
    names no model (the image runs --model_name=$MODEL_NAME
    --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME; defaults "model" and /models)."""
    from serving.console import run_command
    return run_command(lambda: main(with_env_model(sys.argv[1:], os.environ), drop_in=True))


def with_env_model(argv: List[str], environ) -> List[str]:
    """`argv` plus --model_name/--model_base_path from MODEL_NAME/MODEL_BASE_PATH when argv
    has no model source and either variable is set."""
    named = any(a.split("=", 1)[0] in ("--model_config_file", "--model_base_path", "--home")
                for a in argv)
    if named or not ({"MODEL_NAME", "MODEL_BASE_PATH"} & set(environ)):
        return list(argv)
    name = environ.get("MODEL_NAME") or "model"
    base = environ.get("MODEL_BASE_PATH") or "/models"
    extra = [f"--model_base_path={os.path.join(base, name)}"]
    if not any(a.split("=", 1)[0] == "--model_name" for a in argv):
        extra.append(f"--model_name={name}")
    return extra + list(argv)


if __name__ == "__main__":
    sys.exit(tensorflow_model_server())
