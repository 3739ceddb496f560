"""Hostile requests against a live `conveyor serve` (issue 7), server in a subprocess.

1. schemathesis generates requests from serving/openapi.yaml (schema-valid and invalid) for
   every operation: no response may be a 5xx, and every status code, content type and body
   must be the one the document gives.
2. Explicit abuse cases not already in tests/test_serving_api.py (truncated JSON, wrong
   types and shapes, 10,000 instances, a 50 MB body, invalid base64, non-images, unknown
   signatures): each gets a 4xx with a one-line `error`, and the server then still answers
   a valid request correctly.
"""
import json
import os
import socket

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from serving.testing import serialized_example, solid_png
from tests.support.serving_harness import REPO, ServerProcess, b64, install, model_entry, write_config

SPEC = os.path.join(REPO, "serving", "openapi.yaml")
MAX_BODY = 16 * 1024 * 1024
RED, BLUE = solid_png((250, 10, 0)), solid_png((5, 0, 255))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    image_base, text_base = str(root / "image"), str(root / "text")
    install("image", image_base, 1)
    install("text_v1", text_base, 1)
    install("text_v2", text_base, 2)
    config = write_config(str(root / "models.config"), "model_config_list {\n"
                          + model_entry("image", image_base)
                          + model_entry("text", text_base, "all {}", {"stable": 1, "canary": 2})
                          + "}\n")
    proc = ServerProcess(["--model_config_file", config,
                          "--rest_api_max_body_bytes", str(MAX_BODY)], str(root / "server.log"))
    try:
        proc.wait_ready("text")
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def assert_still_serving(server) -> None:
    """The server answers a valid request for each model correctly."""
    image = requests.post(f"{server.url}/v1/models/image:predict", timeout=30,
                          json={"instances": [b64(RED), b64(BLUE)]})
    assert image.status_code == 200, image.text
    assert [p["class_names"] for p in image.json()["predictions"]] == ["red", "blue"]
    text = requests.post(f"{server.url}/v1/models/text/labels/stable:predict", timeout=30,
                         json={"inputs": {"text": ["good good", "bad"]}})
    assert text.status_code == 200, text.text
    assert text.json()["outputs"]["class_names"] == ["positive", "negative"]
    assert server.proc.poll() is None


# ---- 1. schemathesis against serving/openapi.yaml ------------------------------------------

schema = schemathesis.openapi.from_path(SPEC)
# schemathesis.pytest.from_fixture (a lazily loaded schema) does not work with pytest 9, so the
# schema is loaded at import and each call gets the live server's URL.


SERVED = [{"name": "text", "version": 2, "label": "canary"}, {"name": "text", "version": 1, "label": "stable"},
          {"name": "image", "version": 1, "label": "stable"}]  # image has no labels: a 400


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Random names, versions and labels would almost always be 404/400 before the body is even
    looked at; served ones are mixed in so generated request bodies reach the models too."""
    params = path_parameters or {}
    served = [{key: real.get(key, value) for key, value in params.items()} for real in SERVED]
    return st.sampled_from(served + [params])


@schema.parametrize()
@hypothesis.settings(max_examples=30, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_response_matches_openapi(case, server):
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)


def test_openapi_covers_every_route(server):
    """Each operation in the document answers as documented for a valid request."""
    spec = schemathesis.openapi.from_path(SPEC).raw_schema
    assert set(spec["paths"]) == {
        "/v1/models/{name}", "/v1/models/{name}/versions/{version}",
        "/v1/models/{name}/labels/{label}", "/v1/models/{name}/metadata",
        "/v1/models/{name}/versions/{version}/metadata", "/v1/models/{name}/labels/{label}/metadata",
        "/monitoring/prometheus/metrics", "/v1/conveyor/ready",
    } | {f"/v1/models/{{name}}{route}:{verb}" for verb in ("predict", "classify", "regress")
         for route in ("", "/versions/{version}", "/labels/{label}")}
    fill = {"{name}": "text", "{version}": "2", "{label}": "canary"}
    for path, operations in spec["paths"].items():
        url = path
        for key, value in fill.items():
            url = url.replace(key, value)
        for method in operations:
            if method == "post" and url.endswith(":predict"):
                response = requests.post(server.url + url, json={"instances": ["good"]}, timeout=30)
                expected = 200
            elif method == "post":
                response = requests.post(server.url + url, json={"examples": [{"text": "good"}]}, timeout=30)
                expected = 400  # Conveyor's models have predict signatures only
            else:
                response = requests.get(server.url + url, timeout=30)
                expected = 200
            assert response.status_code == expected, (method, url, response.text)
            assert str(expected) in operations[method]["responses"], (method, path)


# ---- 2. explicit hostile requests ----------------------------------------------------------

HOSTILE = [
    # (id, model path, raw body or JSON object, status, fragment of the error)
    ("truncated-row", "text", b'{"instances": ["good", "ba', 400, "JSON Parse error"),
    ("truncated-columnar", "image", b'{"inputs": {"images": [{"b64": "iVBO', 400, "JSON Parse error"),
    ("truncated-after-value", "text", b'{"instances": ["good"]', 400, "JSON Parse error"),
    ("not-utf8", "text", b'{"instances": ["\xc3\x28"]}', 400, "JSON Parse error"),
    ("lone-surrogate", "text", b'{"instances": ["\\ud800"]}', 400, "not valid UTF-8"),
    ("instances-null", "text", {"instances": None}, 400, "'instances' to be an list"),
    ("instances-empty", "text", {"instances": []}, 400, "No values in 'instances' list"),
    ("number-for-string", "text", {"inputs": {"text": [3, 4]}}, 400, "not formatted correctly"),
    ("bool-for-string", "text", {"instances": [True]}, 400, "not formatted correctly"),
    ("null-for-string", "text", {"instances": [{"text": None}]}, 400, "not formatted correctly"),
    ("object-for-string", "text", {"instances": [{"text": {"nested": "x"}}]}, 400, "not formatted correctly"),
    ("infinity", "text", b'{"instances": [Infinity]}', 400, "not formatted correctly"),
    ("huge-int", "text", {"instances": [10 ** 30]}, 400, "not formatted correctly"),
    ("mixed-row-kinds", "text", {"instances": [{"text": "a"}, "b"]}, 400, "all instances must be objects"),
    ("rank-2-for-vector", "text", {"instances": [["good"], ["bad"]]}, 400,
     "Input 'text' has shape [2, 1]; the signature expects [-1]"),
    ("rank-3-columnar", "text", {"inputs": {"text": [[["good"]]]}}, 400, "has shape [1, 1, 1]"),
    ("scalar-for-vector", "image", {"inputs": {"images": b64(RED)}}, 400, "has shape []"),
    ("deep-nesting", "text", {"inputs": {"text": json.loads("[" * 80 + '"x"' + "]" * 80)}}, 400,
     "nested too deeply"),
    # Unpadded base64 is decoded (abseil's Base64Unescape, as TF Serving): the PNG signature
    # alone then has no header to size it by.
    ("b64-unpadded", "image", {"instances": [{"b64": "iVBORw0KGgo"}]}, 400,
     "Input 'images' instance 0: PNG without an IHDR header chunk"),
    ("b64-bad-length", "image", {"instances": [{"b64": "iVBORw0KG"}]}, 400, "Unable to base64 decode"),
    ("b64-non-ascii", "image", {"instances": [{"b64": "\u00e9\u00e9\u00e9\u00e9"}]}, 400, "Unable to base64 decode"),
    ("b64-not-a-string", "image", {"instances": [{"b64": ["AAAA"]}]}, 400, "'b64' value of 'images' must be a string"),
    ("b64-empty-image", "image", {"instances": [{"b64": ""}]}, 400, "image"),
    ("b64-truncated-png", "image", {"instances": [b64(RED[:40])]}, 400, "Input 'images' instance 0: Invalid PNG"),
    ("b64-text-as-image", "image", {"instances": [b64(b"GIF89a but not really")]}, 400, "image"),
    ("plain-string-as-image", "image", {"instances": ["red.png"]}, 400, "send files base64-encoded"),
    ("b64-png-to-examples-signature", "image", {"signature_name": "serving_examples", "instances": [b64(RED)]},
     400, "Could not parse example input"),
    ("text-to-examples-signature", "text", {"signature_name": "serving_examples", "instances": ["good"]},
     400, "Could not parse example input"),
    ("unknown-signature-columnar", "image", {"signature_name": "serving_nope", "inputs": [b64(RED)]}, 400,
     'Serving signature name: "serving_nope" not found'),
    ("unknown-signature-label", "text/labels/canary", {"signature_name": "x" * 5000, "instances": ["a"]}, 400,
     "not found in signature def"),
]


@pytest.mark.parametrize("model,body,status,fragment", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_request_is_4xx_and_server_keeps_serving(server, model, body, status, fragment):
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    response = requests.post(f"{server.url}/v1/models/{model}:predict", data=data, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert fragment in error
    assert "\n" not in error and len(error) <= 1000, error  # one clear line, no stack dump
    assert_still_serving(server)


@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_unknown_signature_for_classify_and_regress(server, verb):
    response = requests.post(f"{server.url}/v1/models/text:{verb}", timeout=30,
                             json={"signature_name": "nope", "examples": [{"text": "good"}]})
    assert response.status_code == 400
    assert response.json()["error"] == "No signature was found with the name: nope"
    assert_still_serving(server)


def test_ten_thousand_instances_are_answered(server):
    """TF Serving has no instance limit: a batch this size within the body limit is served."""
    text = requests.post(f"{server.url}/v1/models/text:predict", timeout=120,
                         json={"instances": ["good film", "bad film", "meh"] * 3333 + ["good"]})
    assert text.status_code == 200, text.text[:300]
    names = [p["class_names"] for p in text.json()["predictions"]]
    assert len(names) == 10_000
    assert names[:3] == ["positive_v2", "negative_v2", "neutral_v2"] and names[-1] == "positive_v2"
    image = requests.post(f"{server.url}/v1/models/image:predict", timeout=120,
                          json={"inputs": {"images": [b64(RED), b64(BLUE)] * 5000}})
    assert image.status_code == 200, image.text[:300]
    assert image.json()["outputs"]["class_names"][-2:] == ["red", "blue"]
    assert len(image.json()["outputs"]["class_ids"]) == 10_000
    # 10,000 instances with one bad value: the error names it and nothing is half-answered.
    bad = ["good"] * 9_999 + [7]
    response = requests.post(f"{server.url}/v1/models/text:predict", json={"instances": bad}, timeout=120)
    assert response.status_code == 400 and "JSON value: 7" in response.json()["error"]
    assert_still_serving(server)


def test_fifty_megabyte_body_is_413(server):
    body = json.dumps({"instances": ["good " * 100] * 100_000}).encode("utf-8")
    assert len(body) > 50_000_000
    response = requests.post(f"{server.url}/v1/models/text:predict", data=body, timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": f"Request body of {len(body)} bytes exceeds the limit of "
                                        f"{MAX_BODY} bytes (--rest_api_max_body_bytes)"}
    assert_still_serving(server)


def test_fifty_megabyte_chunked_body_is_413(server):
    """Without Content-Length the limit is enforced while reading; the client still sees 413."""
    chunk = json.dumps(["good " * 100] * 1000).encode("utf-8")[1:-1] + b","

    def body():
        yield b'{"instances": ['
        for _ in range(50_000_000 // len(chunk)):
            yield chunk
        yield b'"x"]}'

    response = requests.post(f"{server.url}/v1/models/text:predict", data=body(), timeout=120)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]
    assert_still_serving(server)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_get_tf_serving_400(server, method):
    """TF Serving answers any method but GET/POST on /v1/ with 400 'Malformed request', and an
    OPTIONS without an http(s) Origin (not a CORS preflight) with 400 (http_server.cc)."""
    response = requests.request(method, f"{server.url}/v1/models/text", data=b"{}", timeout=30)
    assert response.status_code == 400
    expected = ("Origin header is missing in CORS preflight" if method == "OPTIONS"
                else f"Malformed request: {method} /v1/models/text")
    assert response.json() == {"error": expected}
    head = requests.head(f"{server.url}/v1/models/text:predict", timeout=30)
    assert head.status_code == 400 and head.content == b""
    assert_still_serving(server)


def test_http_level_errors_are_json(server):
    """Errors raised by the HTTP layer itself (bad request line, oversized headers) use the same shape."""
    for raw, status in ((b"GET /v1/models/text HTTP/9.9\r\nHost: x\r\n\r\n", 505),
                        (b"GET /v1/models/text HTTP/one\r\nHost: x\r\n\r\n", 400),
                        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
                        (b"GET /v1/models/text HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431)):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
            s.sendall(raw)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == str(status).encode(), head
        assert b"Content-Type: application/json" in head
        assert json.loads(payload)["error"]
    assert_still_serving(server)


def test_examples_signature_still_works_after_abuse(server):
    """The serving_examples signature (tf.Example input) is unaffected by all of the above."""
    response = requests.post(f"{server.url}/v1/models/image:predict", timeout=30, json={
        "signature_name": "serving_examples",
        "instances": [b64(serialized_example("image_raw", BLUE))]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_names"] == "blue"
