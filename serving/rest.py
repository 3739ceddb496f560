"""TF Serving's REST API (/v1/models/...) on the stdlib's threaded HTTP server.

The stdlib server keeps the dependency set unchanged; requests are small and the
heavy lifting happens in TensorFlow, which releases the GIL.
URL patterns, status-code mapping and the `{"error": ...}` body follow TF Serving's
http_rest_api_util.cc / http_server.cc.
"""
import json
import logging
import re
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2,
                                     regression_pb2)

from serving import json_tensors
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import HTTP_STATUS, ServingError
from serving.predictor import SIGNATURE_DEF_FIELD, Predictor

log = logging.getLogger("conveyor.serving.rest")

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)


_MAX_ERROR_CHARS = 1000


class _BodyTooLarge(Exception):
    """Raised before reading the body; `drain` says whether reading it first is affordable."""

    def __init__(self, message: str, drain: int = 0):
        super().__init__(message)
        self.drain = drain


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
    if version:
        try:
            spec.version.value = int(version)
        except ValueError:  # \d+ too large for int64
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Failed to convert version: {version} to numeric.")
    if label:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _proto_json(message, preserve_names: bool) -> Any:
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=preserve_names)


class RestApi:
    """Maps (method, path, body) to (HTTP status, JSON object); independent of the socket layer."""

    def __init__(self, predictor: Predictor, metrics: Metrics, timeout_ms: int = 0):
        self.predictor = predictor
        self.metrics = metrics
        self.timeout_ms = timeout_ms  # --rest_api_timeout_in_ms: bounds each predict run

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, Any]:
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as e:
            # Messages echo request values (names, signature keys): a huge one loses its
            # middle, keeping the start and the end that says what was wrong.
            message = e.message
            if len(message) > _MAX_ERROR_CHARS:
                message = message[:_MAX_ERROR_CHARS - 205] + " ... " + message[-200:]
            return HTTP_STATUS.get(e.code, 500), {"error": message}

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        if method == "POST":
            match = _PREDICT_RE.fullmatch(path)
            if match:
                name, version, label, api = match.groups()
                return self._post(api.lower(), _model_spec(name, version, label), body)
        elif method == "GET":
            match = _STATUS_RE.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
                spec = _model_spec(name, version, label)
                if subresource:
                    return self._metadata(spec)
                return self._status(spec)
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}")

    def _status(self, spec: model_pb2.ModelSpec) -> Any:
        version = spec.version.value if spec.HasField("version") else None
        response = self.predictor.manager.model_status(spec.name, version, spec.version_label or None)
        return _proto_json(response, preserve_names=False)

    def _metadata(self, spec: model_pb2.ModelSpec) -> Any:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        _, response = self.predictor.metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        # TF Serving prints model_spec and the unpacked SignatureDefMap separately
        # (http_rest_api_util.cc ToJsonString), so there is no "@type" key.
        return {"model_spec": _proto_json(response.model_spec, preserve_names=True),
                "metadata": {SIGNATURE_DEF_FIELD: _proto_json(signature_map, preserve_names=True)}}

    def _post(self, api: str, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        with self.metrics.track(api, "rest") as outcome:
            request = self._parse_body(body)
            signature_name = request.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON Value: {json_tensors._short(request)} not formatted "
                                   "correctly. 'signature_name' key must be a string value.")
            if api != "predict":
                return self._classify_or_regress(api, spec, signature_name, request, outcome)
            servable = self.predictor.servable(spec)
            outcome.model_name, outcome.version = servable.name, str(servable.version)
            name = signature_name or DEFAULT_SIGNATURE
            if name not in servable.signature_defs:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f'Serving signature name: "{name}" not found in signature def')
            inputs, fmt = json_tensors.parse_predict_request(
                request, servable.signature_defs[name].inputs)
            outputs = self.predictor.predict(servable, name, inputs, timeout_ms=self.timeout_ms)
            return json_tensors.format_predict_response(outputs, fmt)

    def _classify_or_regress(self, api: str, spec: model_pb2.ModelSpec, signature_name: str,
                             request: dict, outcome) -> Any:
        """POST :classify / :regress (http_rest_api_handler.cc ProcessClassifyRequest)."""
        spec.signature_name = signature_name
        proto = (classification_pb2.ClassificationRequest(model_spec=spec) if api == "classify"
                 else regression_pb2.RegressionRequest(model_spec=spec))
        json_tensors.parse_examples_request(request, proto.input)
        if api == "classify":
            servable, response = self.predictor.classify(proto)
            outcome.model_name, outcome.version = servable.name, str(servable.version)
            return json_tensors.format_classification(response.result)
        servable, response = self.predictor.regress(proto)
        outcome.model_name, outcome.version = servable.name, str(servable.version)
        return json_tensors.format_regression(response.result)

    @staticmethod
    def _parse_body(body: bytes) -> dict:
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from e
        if not isinstance(request, dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "JSON Parse error: request body must be a JSON object")
        return request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ConveyorModelServer"
    timeout = 60  # seconds; a client that stalls mid-request only ties up its own thread
    # Set on the subclass built by make_http_server.
    api: RestApi
    max_body_bytes: int
    metrics_path: Optional[str]   # None: Prometheus export disabled (monitoring config)
    cors: bool                    # --rest_api_enable_cors_support

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if self.metrics_path and path == self.metrics_path:
            manager = self.api.predictor.manager
            loaded = {n: manager.loaded_versions(n) for n in manager.model_names()}
            self._reply(200, self.api.metrics.render(loaded), self.api.metrics.content_type)
            return
        self._api("GET", path, b"")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self._api_with_body("POST", path)

    def do_OPTIONS(self) -> None:
        """CORS preflight as http_server.cc answers it: 200 with an empty body when the
        Origin header holds an http(s) URL, else 400; the body is read and ignored."""
        path = urllib.parse.urlsplit(self.path).path
        try:
            self._read_body()
        except (_BodyTooLarge, ValueError):
            self.close_connection = True
        if not re.match(r"(?i)/v1/", path):
            self._json(404, {"error": f"Not found: OPTIONS {path}"})
        elif re.search(r"https?://", self.headers.get("Origin", "")):
            self._reply(200, b"", "application/json")
        else:
            self._json(400, {"error": "Origin header is missing in CORS preflight"})

    def _other_method(self) -> None:
        # TF Serving answers any other method on /v1/ with 400 "Malformed request: PUT /v1/...";
        # the body is still read (within the limit) so the connection stays usable.
        self._api_with_body(self.command, urllib.parse.urlsplit(self.path).path)

    def __getattr__(self, name: str) -> Any:
        # The stdlib dispatches on do_<METHOD> and answers 501 when there is none; every
        # method TF Serving does not serve (PUT, DELETE, HEAD, TRACE, BREW...) goes to
        # _other_method instead.
        if name.startswith("do_"):
            return self._other_method
        raise AttributeError(name)

    def _api_with_body(self, method: str, path: str) -> None:
        try:
            body = self._read_body()
        except _BodyTooLarge as e:
            # Reading a moderately oversized body first lets the client see the 413 instead
            # of a reset connection; either way the connection is not reused.
            self._discard(e.drain)
            self.close_connection = True
            self._json(413, {"error": str(e)})
            return
        except ValueError as e:
            self.close_connection = True
            self._json(400, {"error": str(e)})
            return
        self._api(method, path, body)

    def _api(self, method: str, path: str, body: bytes) -> None:
        if not re.match(r"(?i)/v1/", path):
            self._json(404, {"error": f"Not found: {method} {path}"})
            return
        try:
            status, payload = self.api.handle(method, path, body)
        except Exception as e:  # a server bug: report it, keep serving
            log.exception("Internal error handling %s %s", method, path)
            status, payload = 500, {"error": f"Internal error: {type(e).__name__}: {e}"}
        self._json(status, payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length", "0")
        try:
            length = int(length_header)
        except ValueError:
            raise ValueError(f"Invalid Content-Length: {json.dumps(length_header)}")
        if length < 0:
            raise ValueError(f"Invalid Content-Length: {json.dumps(length_header)}")
        self._check_size(length, drain=length if length <= 4 * self.max_body_bytes else 0)
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        """Chunked bodies (curl -T -, streaming clients); TF Serving's evhttp accepts them too.

        Past the limit the remaining chunks are read and dropped (up to 4x the limit, as for
        a declared Content-Length) so the client gets the 413 rather than a reset connection.
        """
        body = bytearray()
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise ValueError("Malformed chunked request body")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                break
            total += size
            if total > 4 * self.max_body_bytes:
                self._check_size(total)  # give up reading: 413, then the connection closes
            if total > self.max_body_bytes:
                body.clear()
                self._discard(size)
            else:
                body += self.rfile.read(size)
            self.rfile.readline(1024)
        self._check_size(total)  # all of it was read, so the 413 reaches the client
        return bytes(body)

    def _check_size(self, size: int, drain: int = 0) -> None:
        """413 for a body over the limit; `drain` bytes are read first so the client sees it."""
        if size > self.max_body_bytes:
            raise _BodyTooLarge(f"Request body of {size} bytes exceeds the limit of "
                                f"{self.max_body_bytes} bytes (--rest_api_max_body_bytes)", drain)

    def _discard(self, size: int) -> None:
        try:
            while size > 0:
                chunk = self.rfile.read(min(size, 1 << 20))
                if not chunk:
                    return
                size -= len(chunk)
        except OSError:
            pass

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The stdlib's own errors (bad request line, 414, 431, 505) as
        `{"error": ...}` JSON like every other error, instead of its HTML page."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # request line unparsable: still send headers
            self.request_version = "HTTP/1.0"
        short, _ = self.responses.get(code, ("Error", ""))
        self._json(code, {"error": message or short})

    def _json(self, status: int, payload: Any) -> None:
        self._reply(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _reply(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if self.cors and re.match(r"(?i)/v1/", urllib.parse.urlsplit(getattr(self, "path", "")).path):
            # http_rest_api_util.cc AddCORSHeaders, on every REST API response
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "POST, GET")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if self.command != "HEAD":  # a HEAD response has headers and no body
                self.wfile.write(data)
        except ConnectionError:  # the client left without reading the answer: its loss only
            self.close_connection = True
            log.debug("Client %s closed the connection before the %d reply", self.address_string(), status)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def make_http_server(host: str, port: int, api: RestApi, max_body_bytes: int,
                     metrics_path: Optional[str] = PROMETHEUS_PATH, cors: bool = False,
                     timeout_seconds: float = 60) -> ThreadingHTTPServer:
    """The REST server (not started).

    Args:
      host, port: where to listen.
      api: answers /v1/ requests.
      max_body_bytes: larger bodies get 413.
      metrics_path: Prometheus page path (None: not served).
      cors: add TF Serving's CORS headers to REST responses.
      timeout_seconds: a connection idle this long mid-request is closed.
    """
    handler = type("RestHandler", (_Handler,), {"api": api, "max_body_bytes": max_body_bytes,
                                                "metrics_path": metrics_path, "cors": cors,
                                                "timeout": timeout_seconds})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
