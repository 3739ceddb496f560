"""TF Serving's REST API (/v1/models/...) on aiohttp's HTTP server, JSON by orjson.

Why aiohttp: a well-kept asyncio HTTP/1.1 server with a C parser (llhttp), already in the
lock (Airflow needs it). One event-loop thread owns every connection, so an idle keep-alive
connection or a slow client costs a socket, not a thread, and SIGTERM can stop accepting,
finish what was received and close keep-alive connections (aiohttp's graceful shutdown).
The model work runs on a bounded thread pool (TensorFlow releases the GIL) or, with
--enable_batching, in the shared batcher; JSON is parsed and written by orjson, with the
stdlib codec as the slow path where the two differ (errors, NaN/Infinity), so error texts
and NaN outputs are what they were.

URL patterns, status-code mapping and the `{"error": ...}` body follow TF Serving's
http_rest_api_util.cc / http_server.cc. Errors of the HTTP layer itself (bad request line,
oversized URI or headers, unknown methods) are JSON too, through `_ConnectionHandler`.
"""
import asyncio
import json
import logging
import re
import socket
import threading
import urllib.parse
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import orjson
from aiohttp import http_exceptions, web, web_protocol, web_server

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2,
                                     regression_pb2)

from serving import json_tensors
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.contract import DEFAULT_SIGNATURE
from serving.errors import HTTP_STATUS, ServingError
from serving.predictor import SIGNATURE_DEF_FIELD, Predictor
from serving.traffic import (ARM_HEADER, REQUEST_ID_HEADER, UNIT_HEADER, VERSION_HEADER,
                             new_request_id)

log = logging.getLogger("conveyor.serving.rest")

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)


_MAX_ERROR_CHARS = 1000


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


def _error(e: ServingError) -> Tuple[int, Any]:
    """(HTTP status, {"error": message}) of a ServingError (http_server.cc ToHTTPStatusCode).

    Messages echo request values (names, signature keys): a huge one loses its middle,
    keeping the start and the end that says what was wrong.
    """
    message = e.message
    if len(message) > _MAX_ERROR_CHARS:
        message = message[:_MAX_ERROR_CHARS - 205] + " ... " + message[-200:]
    return HTTP_STATUS.get(e.code, 500), {"error": message}


def _signature_name(request: dict) -> str:
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"JSON Value: {json_tensors._short(request)} not formatted "
                           "correctly. 'signature_name' key must be a string value.")
    return signature_name


def _proto_json(message, preserve_names: bool) -> Any:
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=preserve_names)


class RestApi:
    """Maps (method, path, body) to (HTTP status, JSON object); independent of the socket layer."""

    def __init__(self, predictor: Predictor, metrics: Metrics, timeout_ms: int = 0):
        self.predictor = predictor
        self.metrics = metrics
        self.timeout_ms = timeout_ms  # --rest_api_timeout_in_ms: bounds each predict run

    def handle(self, method: str, path: str, body: bytes, unit: Optional[str] = None,
               headers: Optional[dict] = None) -> Tuple[int, Any]:
        """(HTTP status, JSON-able payload) of one /v1/ request; blocks while the model runs.

        Args:
          method, path, body: the request.
          unit: the X-Conveyor-Unit header (sticky A/B arm), or None.
          headers: when given, filled with the Conveyor response headers of a :predict
            (X-Conveyor-Version, X-Conveyor-Arm, X-Conveyor-Request-Id; serving/traffic.py).
        Errors are TF Serving's status and `{"error": one line}`; nothing raises but bugs.
        """
        try:
            return 200, self._dispatch(method, path, body, unit, {} if headers is None else headers)
        except ServingError as e:
            return _error(e)

    async def handle_async(self, method: str, path: str, body: bytes, executor: Executor,
                           inline_bytes: int = 256 * 1024, unit: Optional[str] = None
                           ) -> Tuple[int, bytes, dict]:
        """`respond` for an asyncio server.

        A :predict whose body is at most `inline_bytes` is parsed and answered on the event
        loop, its model run awaited in the batcher or on `executor`, so no thread waits for
        a batch to fill. Anything else (bigger bodies, whose parsing would stall the loop;
        status, metadata, :classify, :regress) runs whole on `executor`.

        Returns:
          (HTTP status, JSON bytes, extra response headers).
        """
        match = _PREDICT_RE.fullmatch(path) if method == "POST" else None
        if match is None or match.group(4).lower() != "predict" or len(body) > inline_bytes:
            return await asyncio.get_running_loop().run_in_executor(
                executor, self.respond, method, path, body, unit)
        headers: dict = {}
        try:
            with self.metrics.track("predict", "rest") as outcome:
                name, version, label, _ = match.groups()
                call = self._predict_inputs(_model_spec(name, version, label), body, outcome,
                                            unit, headers)
                outputs = await self.predictor.predict_async(
                    call.servable, call.signature, call.inputs, executor,
                    timeout_ms=self.timeout_ms, request_id=call.request_id, arm=call.arm)
                status, payload = 200, json_tensors.format_predict_response(outputs, call.fmt)
                if call.request_id:
                    headers[REQUEST_ID_HEADER] = call.request_id
        except ServingError as e:
            status, payload = _error(e)
        return status, encode_json(payload), headers

    def _dispatch(self, method: str, path: str, body: bytes, unit: Optional[str], headers: dict) -> Any:
        if method == "POST":
            match = _PREDICT_RE.fullmatch(path)
            if match:
                name, version, label, api = match.groups()
                return self._post(api.lower(), _model_spec(name, version, label), body, unit, headers)
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

    def _post(self, api: str, spec: model_pb2.ModelSpec, body: bytes, unit: Optional[str],
              headers: dict) -> Any:
        with self.metrics.track(api, "rest") as outcome:
            if api != "predict":
                request = self._parse_body(body)
                return self._classify_or_regress(api, spec, _signature_name(request), request,
                                                 outcome)
            call = self._predict_inputs(spec, body, outcome, unit, headers)
            outputs = self.predictor.predict(call.servable, call.signature, call.inputs,
                                             timeout_ms=self.timeout_ms,
                                             request_id=call.request_id, arm=call.arm)
            if call.request_id:
                headers[REQUEST_ID_HEADER] = call.request_id
            return json_tensors.format_predict_response(outputs, call.fmt)

    def _predict_inputs(self, spec: model_pb2.ModelSpec, body: bytes, outcome,
                        unit: Optional[str], headers: dict) -> "_RestPredict":
        """The parsed :predict: servable (routed by the A/B split), signature, inputs, row or
        columnar format, arm and request id; `headers` gets the answering version and arm."""
        request = self._parse_body(body)
        signature_name = _signature_name(request)
        servable, arm = self.predictor.route(spec, unit)
        outcome.model_name, outcome.version, outcome.arm = servable.name, str(servable.version), arm
        headers[VERSION_HEADER] = str(servable.version)
        if arm:
            headers[ARM_HEADER] = arm
        name = signature_name or DEFAULT_SIGNATURE
        if name not in servable.signature_defs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'Serving signature name: "{name}" not found in signature def')
        inputs, fmt = json_tensors.parse_predict_request(request, servable.signature_defs[name].inputs)
        request_id = new_request_id() if self.predictor.on_prediction is not None else ""
        return _RestPredict(servable, name, inputs, fmt, arm, request_id)

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

    def respond(self, method: str, path: str, body: bytes, unit: Optional[str] = None
                ) -> Tuple[int, bytes, dict]:
        """`handle` with the payload encoded: (HTTP status, JSON bytes, extra headers)."""
        headers: dict = {}
        status, payload = self.handle(method, path, body, unit, headers)
        return status, encode_json(payload), headers

    @staticmethod
    def _parse_body(body: bytes) -> dict:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            # The stdlib decoder is the reference (it accepts NaN/Infinity and lone
            # surrogates, which json_tensors then rejects by name, and its messages say
            # where the text broke); orjson only speeds up the bodies both accept.
            try:
                request = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from e
        if not isinstance(request, dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "JSON Parse error: request body must be a JSON object")
        return request


class _RestPredict(NamedTuple):
    servable: Any
    signature: str
    inputs: dict
    fmt: Any
    arm: str
    request_id: str


def encode_json(payload: Any) -> bytes:
    """JSON bytes of a response payload (UTF-8, no spaces).

    orjson writes NaN and ±Infinity as null; TF Serving writes them as NaN/Infinity
    (rapidjson's kWriteNanAndInfFlag), so a payload with a null is written by the stdlib
    encoder, which does the same. Predict outputs never hold a real null.
    """
    data = orjson.dumps(payload)
    if b"null" in data:
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return data


_JSON = "application/json"
_CORS_HEADERS = {  # http_rest_api_util.cc AddCORSHeaders, on every REST API response
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
# Request-line and header limits (the stdlib server's, which the tests and clients know):
# a longer request line is 414, a longer header line or more than 100 headers 431.
_MAX_REQUEST_LINE = 65536
_MAX_HEADER_LINE = 16384
_MAX_HEADERS = 100
_SERVER_HEADER = "ConveyorModelServer"
_READ_CHUNK = 1 << 20


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _is_api_path(path: str) -> bool:
    return path[:4].lower() == "/v1/"


# An extension POST route: fn(path match, request headers, body) -> (HTTP status, JSON payload).
PostRoute = Callable[[Any, Dict[str, str], bytes], Tuple[int, Any]]


class _BodyTooLarge(Exception):
    """The body exceeds --rest_api_max_body_bytes: 413, then the connection is closed."""


class _ConnectionHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection protocol, with its HTTP-level errors answered as JSON.

    aiohttp answers every parse error with 400 and a text body; the stdlib server this
    replaced (and TF Serving's evhttp) distinguish them, so the status is taken from the
    kind of error: request line too long 414, header line too long or too many headers 431,
    an HTTP version other than 1.x 505, an unknown method on /v1/ TF Serving's 400
    "Malformed request: METHOD PATH"; anything else 400 with aiohttp's first line.
    """

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: Optional[BaseException] = None, message: Optional[str] = None
                     ) -> web.StreamResponse:
        if status == 500 or not isinstance(exc, http_exceptions.HttpProcessingError):
            log.error("Internal error of the REST server", exc_info=exc)
            error = f"Internal error: {type(exc).__name__}: {exc}" if exc else "Internal error"
            status = 500
        else:
            status, error = _http_error(exc)
            log.debug("HTTP error %d from %s: %s", status, request.remote, error)
        response = web.Response(status=status, body=_error_body(error),
                                headers={"Content-Type": _JSON, "Server": _SERVER_HEADER})
        response.force_close()
        return response


def _http_error(exc: http_exceptions.HttpProcessingError) -> Tuple[int, str]:
    """(status, one-line message) for an aiohttp parse error (see _ConnectionHandler)."""
    text = exc.message if isinstance(exc.message, str) else str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "Bad request")
    if isinstance(exc, http_exceptions.LineTooLong):
        if exc.args[1] == _MAX_REQUEST_LINE:
            return 414, f"Request-URI Too Long (more than {_MAX_REQUEST_LINE} bytes)"
        return 431, f"Request Header Fields Too Large (a line of more than {_MAX_HEADER_LINE} bytes)"
    if "Too many headers" in text:
        return 431, f"Request Header Fields Too Large (more than {_MAX_HEADERS} headers)"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        # llhttp knows the registered methods only; TF Serving answers any other method
        # on /v1/ with 400 "Malformed request" (http_rest_api_handler.cc).
        line = re.search(r"b'([A-Za-z]+) (/\S*) HTTP/", text)
        if line and _is_api_path(line.group(2)):
            path = urllib.parse.urlsplit(line.group(2)).path
            return 400, f"Malformed request: {line.group(1)} {path}"
        return 400, "Bad request: invalid method"
    if isinstance(exc, http_exceptions.BadStatusLine) and "Invalid HTTP version" in text:
        return 505, "HTTP Version Not Supported"
    detail = re.sub(r"^Bad status line:?\s*", "", first).rstrip(":")
    return 400, f"Bad request: {detail}"


class _Server(web_server.Server):
    """aiohttp's low-level server building `_ConnectionHandler`s."""

    def __call__(self) -> web_protocol.RequestHandler:
        return _ConnectionHandler(self, loop=self._loop, **self._kwargs)


class RestServer:
    """The REST front end: aiohttp on its own event-loop thread, model work on a thread pool.

    Args:
      host, port: where to listen (bound in the constructor).
      api: answers /v1/ requests.
      max_body_bytes: larger bodies get 413 `{"error": ...}`; bodies up to 4x the limit are
        read (and dropped) first so the client sees the 413, larger ones are not read and
        the connection is closed after the answer.
      metrics_path: Prometheus page path (None: not served).
      cors: add TF Serving's CORS headers to REST responses.
      timeout_seconds: a client that stalls mid-body this long, or an idle keep-alive
        connection, is closed.
      num_threads: threads running requests' parsing and model calls concurrently; more
        concurrent requests wait in the event loop (they hold a socket and their body).
      extra_routes: {path: fn() -> (status, JSON payload)} answered on GET, e.g. readiness.
      post_routes: {regex: PostRoute} answered on POST for a path the regex fully matches
        (extension routes under /v1/conveyor/), run on the thread pool.
      reuse_port: bind with SO_REUSEPORT, to share the port with other worker processes.
    Raises:
      OSError: the port cannot be bound.

    Thread safety: `start` and `stop` are called from one controlling thread.
    """

    def __init__(self, host: str, port: int, api: RestApi, max_body_bytes: int,
                 metrics_path: Optional[str] = PROMETHEUS_PATH, cors: bool = False,
                 timeout_seconds: float = 60, num_threads: int = 8,
                 extra_routes: Optional[dict] = None, reuse_port: bool = False,
                 post_routes: Optional[Dict[str, "PostRoute"]] = None):
        self.api = api
        self.post_routes = [(re.compile(p), fn) for p, fn in (post_routes or {}).items()]
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        self.cors = cors
        self.timeout_seconds = timeout_seconds
        self.extra_routes = dict(extra_routes or {})
        self.draining = False
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        self._socket = socket.create_server((host, port), backlog=1024, reuse_port=reuse_port)
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._runner = self._loop.run_until_complete(self._setup())

    async def _setup(self) -> web.BaseRunner:
        server = _Server(self._handle, loop=self._loop, max_line_size=_MAX_REQUEST_LINE,
                         max_field_size=_MAX_HEADER_LINE, max_headers=_MAX_HEADERS,
                         keepalive_timeout=self.timeout_seconds, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, self._socket).start()
        return runner

    def start(self) -> None:
        """Serves on a daemon thread; returns at once."""
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = 30) -> None:
        """Graceful stop: closes the listening socket, then lets every request already
        received finish (its response carries `Connection: close`) for up to
        `timeout_seconds`, closes idle keep-alive connections, and stops the loop."""
        if self._thread is None:
            self._loop.run_until_complete(self._runner.cleanup())
        else:
            self._loop.call_soon_threadsafe(setattr, self, "draining", True)
            done = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_seconds), self._loop)
            done.result(timeout=timeout_seconds + 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False)
        self._loop.close()

    async def _shutdown(self, timeout_seconds: float) -> None:
        self._runner._shutdown_timeout = timeout_seconds  # BaseRunner's own setting
        await self._runner.cleanup()

    # ---- one request -------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = urllib.parse.urlsplit(request.raw_path).path
        method = request.method
        close = False
        extra: dict = {}
        try:
            if method == "GET" and self.metrics_path and path == self.metrics_path:
                status, data, content_type = 200, await self._metrics(), self.api.metrics.content_type
            elif method == "GET" and path in self.extra_routes:
                status, payload = self.extra_routes[path]()
                data, content_type = encode_json(payload), _JSON
            else:
                status, data, close, extra = await self._api(request, method, path)
                content_type = _JSON
        except Exception as e:  # a server bug: report it, keep serving
            log.exception("Internal error handling %s %s", method, path)
            status, data, content_type = 500, _error_body(f"Internal error: {type(e).__name__}: {e}"), _JSON
        headers = {"Content-Type": content_type, "Server": _SERVER_HEADER, **extra}
        if self.cors and _is_api_path(path):
            headers.update(_CORS_HEADERS)
        response = web.Response(status=status, body=data, headers=headers)
        if close or self.draining:
            response.force_close()  # "Connection: close": the client opens a new one
        return response

    async def _metrics(self) -> bytes:
        manager = self.api.predictor.manager
        loaded = {n: manager.loaded_versions(n) for n in manager.model_names()}
        return self.api.metrics.render(loaded)

    async def _api(self, request: web.BaseRequest, method: str, path: str
                   ) -> Tuple[int, bytes, bool, dict]:
        """(status, JSON body, close the connection, extra headers) of a request for the API."""
        extra: dict = {}
        status, data, close = await self._read_and_answer(request, method, path, extra)
        return status, data, close, extra

    async def _read_and_answer(self, request: web.BaseRequest, method: str, path: str,
                               extra: dict) -> Tuple[int, bytes, bool]:
        # A timer rather than asyncio.wait_for, which costs a task per request.
        task, expired = asyncio.current_task(), []
        timer = self._loop.call_later(self.timeout_seconds, lambda: (expired.append(1), task.cancel()))
        try:
            body = await self._read_body(request)
        except _BodyTooLarge as e:
            return 413, _error_body(str(e)), True
        except asyncio.CancelledError:
            if not expired:
                raise
            return 408, _error_body(f"Request body not received within {self.timeout_seconds:g} s"), True
        except (http_exceptions.HttpProcessingError, ValueError) as e:  # e.g. bad chunk framing
            return 400, _error_body(f"Bad request body: {str(e).strip().splitlines()[0]}"), True
        finally:
            timer.cancel()
        if method == "OPTIONS":
            return self._options(request, path) + (False,)
        if not _is_api_path(path):
            return 404, _error_body(f"Not found: {method} {path}"), False
        if method == "POST":
            for pattern, route in self.post_routes:
                match = pattern.fullmatch(path)
                if match:
                    status, payload = await self._loop.run_in_executor(
                        self._pool, route, match, dict(request.headers), body)
                    return status, encode_json(payload), False
        status, data, headers = await self.api.handle_async(
            method, path, body, self._pool, unit=request.headers.get(UNIT_HEADER))
        extra.update(headers)
        return status, data, False

    def _options(self, request: web.BaseRequest, path: str) -> Tuple[int, bytes]:
        """CORS preflight as http_server.cc answers it: 200 with an empty body when the
        Origin header holds an http(s) URL, else 400."""
        if not _is_api_path(path):
            return 404, _error_body(f"Not found: OPTIONS {path}")
        if re.search(r"https?://", request.headers.get("Origin", "")):
            return 200, b""
        return 400, _error_body("Origin header is missing in CORS preflight")

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The whole body (Content-Length or chunked; aiohttp decodes the framing).

        Raises:
          _BodyTooLarge: over the limit. The body is read to its end first when it is at
            most 4x the limit, so the client gets to read the 413.
        """
        limit = self.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            if declared <= 4 * limit:
                await self._discard(request, declared)
            raise _BodyTooLarge(self._too_large(declared))
        parts, total = [], 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            total += len(chunk)
            if total <= limit:
                parts.append(chunk)
            else:
                parts.clear()
                if total > 4 * limit:
                    raise _BodyTooLarge(self._too_large(total))
        if total > limit:
            raise _BodyTooLarge(self._too_large(total))
        return b"".join(parts)

    @staticmethod
    async def _discard(request: web.BaseRequest, size: int) -> None:
        while size > 0:
            chunk = await request.content.read(min(size, _READ_CHUNK))
            if not chunk:
                return
            size -= len(chunk)

    def _too_large(self, size: int) -> str:
        return (f"Request body of {size} bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes (--rest_api_max_body_bytes)")
