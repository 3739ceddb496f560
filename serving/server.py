"""`conveyor serve`: a TF Serving-compatible model server (REST + gRPC) for local use and tests.

Flags are named after tensorflow_model_server's, so the same command lines and
manifests work against either server.
"""
import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional, Tuple

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import Batcher
from serving.grpc_service import make_grpc_server
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.model_config import MODELS_CONFIG, ModelConfigError, read_models_config
from serving.model_manager import ModelManager, ServingError
from serving.predictor import Predictor
from serving import request_log
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
    rlog = p.add_argument_group("request logging (for conveyor drift)")
    rlog.add_argument("--request_log_rate", type=float, default=None,
                      help="share of requests logged as tf.Examples, 0..1 (default: request_log_rate "
                           "of --config, else 0 = off)")
    rlog.add_argument("--request_log_dir", metavar="DIR",
                      help="where request logs go (default HOME/request_logs with --home)")
    rlog.add_argument("--config", metavar="FILE", help="Conveyor config file (YAML/JSON) to read "
                                                       "request_log_rate from")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_path(args: argparse.Namespace) -> Optional[str]:
    if args.home:
        return os.path.join(args.home, "serving", MODELS_CONFIG)
    return args.model_config_file


def load_model_configs(args: argparse.Namespace) -> List[model_server_config_pb2.ModelConfig]:
    if args.model_base_path:
        config = model_server_config_pb2.ModelConfig(
            name=args.model_name, base_path=os.path.abspath(args.model_base_path),
            model_platform="tensorflow")
        return [config]
    config = read_models_config(config_path(args))
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError(f"{config_path(args)}: only model_config_list is supported")
    return list(config.model_config_list.config)


class ModelServer:
    """The running server: model manager plus REST and gRPC front ends (used by tests and bench)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        source = config_path(args) if not args.model_base_path else None
        self.configs = load_model_configs(args)
        self.manager = ModelManager(
            self.configs, args.file_system_poll_wait_seconds,
            config_loader=(lambda: load_model_configs(args)) if source else None,
            config_poll_wait_seconds=args.model_config_file_poll_wait_seconds)
        batcher = Batcher(args.max_batch_size, args.batch_timeout_micros) if args.enable_batching else None
        self.metrics = Metrics()
        self.request_log = request_log.from_args(getattr(args, "request_log_rate", None),
                                                 getattr(args, "request_log_dir", None), args.home)
        predictor = Predictor(self.manager, batcher, self.request_log)
        self.http = None
        self.grpc = None
        if args.rest_api_port:
            self.http = make_http_server(args.host, args.rest_api_port,
                                         RestApi(predictor, self.metrics), args.rest_api_max_body_bytes)
        if args.port:
            self.grpc = make_grpc_server(args.host, args.port, predictor, self.metrics,
                                         args.rest_api_max_body_bytes, args.grpc_max_threads)

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
            log.info("Running gRPC ModelServer at %s:%d ...", self.args.host, self.args.port)
        if self.http:
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:%s:%d ... (metrics at %s)",
                     self.args.host, self.args.rest_api_port, PROMETHEUS_PATH)

    def stop(self) -> None:
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        if self.grpc:
            self.grpc.stop(grace=2).wait()
        self.manager.stop()
        if self.request_log:
            self.request_log.close()  # writes what is still queued


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [bool(args.home), bool(args.model_config_file), bool(args.model_base_path)]
    if sum(sources) != 1:
        parser.error("give exactly one of --home, --model_config_file or --model_base_path")
    if not args.port and not args.rest_api_port:
        parser.error("both APIs disabled: set --port and/or --rest_api_port")
    try:
        args.request_log_rate = request_log.configured_rate(args.request_log_rate, args.config)
    except ValueError as e:
        parser.error(str(e))
    if args.request_log_rate and not (args.request_log_dir or args.home):
        parser.error("--request_log_rate needs --request_log_dir (or --home)")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = ModelServer(args)
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
