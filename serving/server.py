"""`conveyor serve`: a TF Serving-compatible model server (REST + gRPC) for local use and tests.

Flags are named after tensorflow_model_server's, so the same command lines and
manifests work against either server.
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

from serving.batching import Batcher
from serving.grpc_service import make_grpc_server
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.model_config import MODELS_CONFIG, ModelConfigError, read_models_config
from serving.errors import ServingError
from serving.model_manager import ModelManager
from serving.predictor import Predictor
from serving.rest import RestApi, make_http_server

log = logging.getLogger("conveyor.serving")
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE

USAGE = """\
conveyor serve [--home DIR | --model_config_file FILE | --model_name NAME --model_base_path PATH]
               [--port 8500] [--rest_api_port 8501] [--host 127.0.0.1] [flags]

Serves SavedModels over TF Serving's gRPC (--port) and REST (--rest_api_port) APIs.
A model's base path holds one integer-named directory per version; new versions are
picked up every --file_system_poll_wait_seconds."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor serve", usage=USAGE, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("models (pick one)")
    src.add_argument("--home", metavar="DIR",
                     help=f"Conveyor home; serves DIR/serving/{MODELS_CONFIG}")
    src.add_argument("--model_config_file", metavar="FILE",
                     help="ModelServerConfig in protobuf text format (several models, version "
                          "policies, labels)")
    src.add_argument("--model_name", default="default",
                     help="name of the model (used with --model_base_path)")
    src.add_argument("--model_base_path", metavar="PATH",
                     help="path to export; it holds one directory per integer version")
    net = p.add_argument_group("network")
    net.add_argument("--port", type=int, default=8500, help="port for the gRPC API (0 disables it)")
    net.add_argument("--rest_api_port", type=int, default=8501,
                     help="port for the HTTP/REST API (0 disables it)")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind both APIs to (0.0.0.0 for all interfaces)")
    net.add_argument("--rest_api_max_body_bytes", type=int, default=64 * 1024 * 1024,
                     help="larger REST bodies get HTTP 413 (also the gRPC max message size)")
    net.add_argument("--grpc_max_threads", type=int, default=16,
                     help="threads answering gRPC requests")
    load = p.add_argument_group("loading")
    load.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                      help="interval between polls of the model base paths for new versions")
    load.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                      help="interval between re-reads of --model_config_file (0: read once)")
    batch = p.add_argument_group("batching")
    batch.add_argument("--enable_batching", action="store_true",
                       help="merge concurrent requests to the same model version and signature")
    batch.add_argument("--max_batch_size", type=int, default=32, help="rows per merged batch")
    batch.add_argument("--batch_timeout_micros", type=int, default=2000,
                       help="how long a batch waits to fill up")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


@dataclasses.dataclass
class ServerOptions:
    """What the server runs with; `main()` fills it from the command line (flags are parsed
    nowhere else), other callers (the infra validator, tests, bench) build it directly.

    Exactly one model source: `home` (serves HOME/serving/models.config), `model_config_file`
    (a ModelServerConfig text proto) or `model_base_path` (one model named `model_name`).
    Ports of 0 disable that API; a port of 0 is never "pick a free port".
    """
    home: Optional[str] = None
    model_config_file: Optional[str] = None
    model_name: str = "default"
    model_base_path: Optional[str] = None
    port: int = 8500                      # gRPC
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    rest_api_max_body_bytes: int = 64 * 1024 * 1024
    grpc_max_threads: int = 16
    file_system_poll_wait_seconds: float = 1.0
    model_config_file_poll_wait_seconds: float = 0.0   # 0: read the config file once
    enable_batching: bool = False
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    log_level: str = "INFO"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerOptions":
        """The options of a parsed `build_parser()` command line."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @property
    def config_path(self) -> Optional[str]:
        """The models.config file the server reads, or None with --model_base_path."""
        if self.home:
            return os.path.join(self.home, "serving", MODELS_CONFIG)
        return self.model_config_file


def load_model_configs(options: ServerOptions) -> List[model_server_config_pb2.ModelConfig]:
    """The ModelConfigs to serve. Raises ModelConfigError for an unreadable or unsupported file."""
    if options.model_base_path:
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
    Raises:
      ModelConfigError: the model config file cannot be read.
      OSError: a port cannot be bound.
    Loading happens in the constructor; `start()` opens the ports, `stop()` closes them.
    """

    def __init__(self, options: ServerOptions, on_predict: Optional[PredictHook] = None):
        self.options = options
        source = options.config_path if not options.model_base_path else None
        self.configs = load_model_configs(options)
        self.manager = ModelManager(
            self.configs, options.file_system_poll_wait_seconds,
            config_loader=(lambda: load_model_configs(options)) if source else None,
            config_poll_wait_seconds=options.model_config_file_poll_wait_seconds)
        batcher = (Batcher(options.max_batch_size, options.batch_timeout_micros)
                   if options.enable_batching else None)
        self.metrics = Metrics()
        predictor = Predictor(self.manager, batcher, on_predict)
        self.http = None
        self.grpc = None
        if options.rest_api_port:
            self.http = make_http_server(options.host, options.rest_api_port,
                                         RestApi(predictor, self.metrics), options.rest_api_max_body_bytes)
        if options.port:
            self.grpc = make_grpc_server(options.host, options.port, predictor, self.metrics,
                                         options.rest_api_max_body_bytes, options.grpc_max_threads)

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
            for s in sorted(statuses, key=lambda s: s.version):
                if s.status.error_code != 0:
                    reason = (s.status.error_message.splitlines() or ["unknown error"])[0]
                    lines.append((logging.WARNING,
                                  f"Model {config.name}: skipped version {s.version}, "
                                  f"{os.path.join(config.base_path, str(s.version))} failed to load: {reason}"))
        return lines

    def start(self) -> None:
        for level, line in self.startup_report():
            log.log(level, "%s", line)
        self.manager.start()
        if self.grpc:
            self.grpc.start()
            log.info("Running gRPC ModelServer at %s:%d ...", self.options.host, self.options.port)
        if self.http:
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:%s:%d ... (metrics at %s)",
                     self.options.host, self.options.rest_api_port, PROMETHEUS_PATH)

    def stop(self) -> None:
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        if self.grpc:
            self.grpc.stop(grace=2).wait()
        self.manager.stop()


def main(argv: Optional[List[str]] = None, on_predict: Optional[PredictHook] = None) -> int:
    """Parses TF Serving's flags, serves until SIGINT/SIGTERM; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [bool(args.home), bool(args.model_config_file), bool(args.model_base_path)]
    if sum(sources) != 1:
        parser.error("give exactly one of --home, --model_config_file or --model_base_path")
    if not args.port and not args.rest_api_port:
        parser.error("both APIs disabled: set --port and/or --rest_api_port")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = ModelServer(ServerOptions.from_args(args), on_predict)
    except (ModelConfigError, ServingError, OSError) as e:
        log.error("%s", e)
        return 1
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("Shutting down")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
