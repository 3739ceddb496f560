"""REST and gRPC API of `conveyor serve` against a real server subprocess (no mocks)."""
import json
import socket
import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import client as client_lib
from serving.testing import serialized_example, solid_png
from tests.support.generated import png_bomb
from tests.support.serving_harness import (ServerProcess, b64, install, model_entry, versions_by_state,
                                   write_config)

MAX_BODY = 1_000_000
RED, GREEN, BLUE = solid_png((250, 10, 0)), solid_png((0, 240, 20)), solid_png((5, 0, 255))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    image_base, text_base = str(root / "image"), str(root / "text")
    for version in (1, 2):
        install("image", image_base, version)
    for version in (1, 2, 3):
        install(f"text_v{version}", text_base, version)
    config = write_config(str(root / "models.config"), "model_config_list {\n" + "".join([
        model_entry("image", image_base),
        model_entry("text", text_base, "all {}", {"stable": 1, "canary": 2}),
        model_entry("text_latest2", text_base, "latest { num_versions: 2 }"),
        model_entry("text_specific", text_base, "specific { versions: 1 }"),
    ]) + "}\n")
    proc = ServerProcess(["--model_config_file", config,
                          "--rest_api_max_body_bytes", str(MAX_BODY)], str(root / "server.log"))
    try:
        proc.wait_ready("text_specific")
        yield proc
    finally:
        proc.stop()


def post(server, path, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=30, **kwargs)


# ---- REST: status and metadata ----------------------------------------------------------

def test_status_matches_tf_serving_json(server):
    response = requests.get(f"{server.url}/v1/models/image", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{server.url}/v1/models/image/versions/2", timeout=5).status_code == 200


def test_version_policies_and_labels(server):
    assert versions_by_state(server.url, "text") == {"AVAILABLE": [3, 2, 1]}
    assert versions_by_state(server.url, "text_latest2") == {"AVAILABLE": [3, 2]}
    assert versions_by_state(server.url, "text_specific") == {"AVAILABLE": [1]}
    for label, version in (("stable", "1"), ("canary", "2")):
        body = requests.get(f"{server.url}/v1/models/text/labels/{label}", timeout=5).json()
        assert [s["version"] for s in body["model_version_status"]] == [version]


def test_metadata(server):
    body = requests.get(f"{server.url}/v1/models/image/metadata", timeout=5).json()
    assert body["model_spec"] == {"name": "image", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_STRING"
    assert default["inputs"]["images"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                                          "unknown_rank": False}
    assert set(default["outputs"]) == {"probabilities", "class_ids", "class_names"}
    assert default["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "3"
    assert signatures["serving_examples"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    versioned = requests.get(f"{server.url}/v1/models/text/labels/canary/metadata", timeout=5).json()
    assert versioned["model_spec"]["version"] == "2"
    assert "text" in versioned["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]


# ---- REST: predict ----------------------------------------------------------------------

def test_predict_row_format_b64_images(server):
    response = post(server, "/v1/models/image:predict", {"instances": [b64(RED), b64(GREEN), b64(BLUE)]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["class_names"] for p in predictions] == ["red", "green", "blue"]
    assert [p["class_ids"] for p in predictions] == [0, 1, 2]
    for p in predictions:
        assert set(p) == {"probabilities", "class_ids", "class_names"}
        assert abs(sum(p["probabilities"]) - 1) < 1e-5


def test_predict_row_format_named_instances(server):
    response = post(server, "/v1/models/image/versions/2:predict", {"instances": [{"images": b64(BLUE)}]})
    assert response.json()["predictions"][0]["class_names"] == "blue"


def test_predict_columnar_format(server):
    response = post(server, "/v1/models/image:predict", {"inputs": {"images": [b64(RED), b64(BLUE)]}})
    outputs = response.json()["outputs"]
    assert outputs["class_names"] == ["red", "blue"]
    assert outputs["class_ids"] == [0, 2]
    assert np.array(outputs["probabilities"]).shape == (2, 3)
    unnamed = post(server, "/v1/models/text:predict", {"inputs": ["good", "bad bad"]}).json()
    assert unnamed["outputs"]["class_names"] == ["positive_v3", "negative_v3"]


def test_predict_raw_text_by_version_and_label(server):
    body = {"instances": ["good good movie", "bad", "meh"]}
    expected = {"": "_v3", "/versions/1": "", "/labels/stable": "", "/labels/canary": "_v2",
                "/versions/3": "_v3"}
    for route, suffix in expected.items():
        response = post(server, f"/v1/models/text{route}:predict", body)
        assert response.status_code == 200, (route, response.text)
        names = [p["class_names"] for p in response.json()["predictions"]]
        assert names == [f"positive{suffix}", f"negative{suffix}", f"neutral{suffix}"], route


def test_predict_serving_examples_signature(server):
    examples = [b64(serialized_example("image_raw", GREEN)), b64(serialized_example("image_raw", RED))]
    response = post(server, "/v1/models/image:predict",
                    {"signature_name": "serving_examples", "instances": examples})
    assert [p["class_names"] for p in response.json()["predictions"]] == ["green", "red"]
    text = post(server, "/v1/models/text/labels/stable:predict",
                {"signature_name": "serving_examples",
                 "inputs": {"examples": [b64(serialized_example("text", b"bad"))]}})
    assert text.json()["outputs"]["class_names"] == ["negative"]


ERRORS = [
    # (method, path, body, HTTP status, message fragment) -- TF Serving's codes and messages
    ("POST", "/v1/models/nope:predict", {"instances": ["x"]}, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/image/versions/7:predict", {"instances": ["x"]}, 404, "Specific(image, 7)"),
    ("POST", "/v1/models/text/labels/gold:predict", {"instances": ["x"]}, 400, "Unrecognized servable version label: gold"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/image/versions/1", None, 404, "Could not find version 1 of model image"),
    ("GET", "/v1/models/text/labels/gold", None, 400, "Unrecognized servable version label"),
    ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found"),
    ("POST", "/v1/models/text:predict", {"instances": ["x"], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/text:predict", {"instances": ["x"], "signature_name": 3}, 400, "'signature_name' key must be a string"),
    ("POST", "/v1/models/text:predict", {"instances": ["x"], "inputs": ["x"]}, 400, "Not both"),
    ("POST", "/v1/models/text:predict", {"signature_name": ""}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/text:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/text:predict", b"[1, 2]", 400, "JSON Parse error"),
    ("POST", "/v1/models/text:predict", {"instances": "good"}, 400, "'instances' to be an list"),
    ("POST", "/v1/models/text:predict", {"instances": [1.5]}, 400, "not formatted correctly"),
    ("POST", "/v1/models/text:predict", {"instances": [["a", "b"], ["c"]]}, 400, "ragged"),
    # echoed JSON values are printed as JSON (json_tensor.cc JsonValueToString), never Python reprs
    ("POST", "/v1/models/text:predict", {"instances": [None]}, 400, "JSON value: null not formatted correctly"),
    ("POST", "/v1/models/text:predict", {"instances": [True]}, 400, "JSON value: true not formatted correctly"),
    ("POST", "/v1/models/text:regress", {"signature_name": "", "examples": []}, 400,
     'JSON Value: {"signature_name":"","examples":[]} \'examples\' value is an empty array'),
    ("POST", "/v1/models/text:predict", {"inputs": {"tokens": ["a"]}}, 400, "not inputs of the signature"),
    ("POST", "/v1/models/text:predict", {"inputs": {}}, 400, "input size does not match signature"),
    ("POST", "/v1/models/image:predict", {"instances": [{"b64": "***"}]}, 400, "Unable to base64 decode"),
    ("POST", "/v1/models/image:predict", {"instances": [b64(b"not an image")]}, 400,
     "Input 'images' instance 0: not an image: no PNG, JPEG, GIF or BMP signature"),
    # TF Serving 2.16 checks a classify/regress signature's shape, not its method name, unless
    # --enable_signature_method_name_check (classifier.cc / regressor.cc PreProcess*).
    ("POST", "/v1/models/text:classify", {"examples": [{"text": "x"}]}, 400,
     "Expected one or two output Tensors, found 3"),
    ("POST", "/v1/models/text:regress", {"examples": [{"text": "x"}]}, 400,
     "Expected one output Tensor."),
    ("POST", "/v1/models/text:explode", {}, 400, "Malformed request: POST /v1/models/text:explode"),
    ("GET", "/v1/models/text/foo", None, 400, "Malformed request"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v2/models/text", None, 404, "Not found"),
]


@pytest.mark.parametrize("method,path,body,status,fragment", ERRORS, ids=[f"{e[0]} {e[1]} {e[3]}" for e in ERRORS])
def test_errors_use_tf_serving_codes(server, method, path, body, status, fragment):
    if method == "GET":
        response = requests.get(server.url + path, timeout=10)
    else:
        response = post(server, path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_body_over_limit_is_413(server):
    response = post(server, "/v1/models/text:predict", {"instances": ["x" * (MAX_BODY + 10)]})
    assert response.status_code == 413
    assert "--rest_api_max_body_bytes" in response.json()["error"]
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(b"POST /v1/models/text:predict HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 999999999999\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 413")


def _raw(server, payload: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    except OSError:
        pass  # the server may reset junk connections; it only has to survive them


def test_burst_of_malformed_requests_leaves_server_healthy(server):
    junk = [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"BREW /v1/models/text HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/models/text:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst",
        b"POST /v1/models/text:predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/models/text:predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/models/text:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/models/text:predict HTTP/1.1\r\nContent-Length: 30000\r\n\r\n" + b"[" * 30000,
        b"POST /v1/models/image:predict HTTP/1.1\r\nContent-Length: 26\r\n\r\n" + b'{"instances": [{"b64": 5}]}'[:26],
        b"POST /v1/models/%ff%fe:predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ]
    threads = [threading.Thread(target=_raw, args=(server, payload)) for payload in junk * 5]
    for t in threads:
        t.start()
    bad_bodies = [b"", b"null", b'{"instances": [[[[[[[[[[[[[["x"]]]]]]]]]]]]]]}', b'{"instances": [{}]}',
                  b'{"instances": [{"text": "a", "other": 1}]}', b'{"inputs": {"text": [NaN]}}',
                  "{\"instances\": [\"\u00e9\u6f22\"]}".encode("utf-8"), b"\xff\xfe"]
    for body in bad_bodies * 3:
        response = post(server, "/v1/models/text:predict", body)
        assert response.status_code in (200, 400), (body, response.status_code, response.text)
        assert "error" in response.json() or "predictions" in response.json()
    for t in threads:
        t.join(timeout=30)
    chunked = requests.post(f"{server.url}/v1/models/text:predict", timeout=10,
                            data=iter([b'{"instances": ', b'["good"]}']))
    assert chunked.json()["predictions"][0]["class_names"] == "positive_v3"
    assert versions_by_state(server.url, "image") == {"AVAILABLE": [2]}
    response = post(server, "/v1/models/image:predict", {"instances": [b64(RED)]})
    assert response.json()["predictions"][0]["class_names"] == "red"
    assert server.proc.poll() is None


def test_prometheus_metrics(server):
    post(server, "/v1/models/image:predict", {"instances": [b64(RED)]})
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=5).text
    assert ('conveyor_serving_request_count_total{api="predict",model_name="image",'
            'protocol="rest",status="OK",version="2"}') in text
    assert 'conveyor_serving_request_latency_seconds_bucket{api="predict",le="0.005",' \
           'model_name="image",protocol="rest",version="2"}' in text
    assert 'status="INVALID_ARGUMENT"' in text
    assert 'conveyor_serving_loaded_versions{model_name="text"} 3.0' in text


# ---- client --------------------------------------------------------------------------------

def test_client_library(server):
    client = client_lib.PredictClient(server.url)
    images = client.predict_images("image", [BLUE, RED])
    assert [(p.class_name, p.class_id) for p in images] == [("blue", 2), ("red", 0)]
    assert images[0].top[0][0] == 2 and images[0].probability > 0.9
    texts = client.predict_texts("text", ["good"], label="stable")
    assert texts[0].class_name == "positive"
    assert client.status("text", version=1)["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(client_lib.PredictError) as error:
        client.predict_texts("nope", ["x"])
    assert error.value.status == 404


def test_predict_cli(server, tmp_path, capsys):
    path = tmp_path / "blue.png"
    path.write_bytes(BLUE)
    assert client_lib.main(["--model", "image", "--url", server.url, str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: blue (")
    assert client_lib.main(["--model", "text", "--url", server.url, "--label", "canary",
                            "--text", "bad day", "--text", "good"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "negative_v2" in lines[0] and "positive_v2" in lines[1]
    assert client_lib.main(["--model", "nope", "--url", server.url, "--text", "x"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(10000, 10000))
    assert client_lib.main(["--model", "image", "--url", server.url, str(path), str(bomb)]) == 1
    assert capsys.readouterr().err == (f"conveyor predict: HTTP 400: {bomb}: PNG of 10000x10000 pixels is "
                                       "more than the limit of 89,478,485 pixels per image (a decompression "
                                       "bomb guard)\n")


# ---- gRPC ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def test_grpc_predict(stubs):
    prediction, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "image"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([RED, BLUE]))
    response = prediction.Predict(request, timeout=30)
    assert response.model_spec.name == "image"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert list(tf.make_ndarray(response.outputs["class_names"])) == [b"red", b"blue"]
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (2, 3)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.model_spec.version_label = "canary"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["good"]))
    request.output_filter.append("class_names")
    response = prediction.Predict(request, timeout=30)
    assert set(response.outputs) == {"class_names"}
    assert response.model_spec.version.value == 2
    assert list(tf.make_ndarray(response.outputs["class_names"])) == [b"positive_v2"]


def test_grpc_metadata_and_status(stubs):
    prediction, model = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "text"
    request.model_spec.version.value = 1
    response = prediction.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["text"].dtype == tf.string.as_datatype_enum

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "text_latest2"
    status = model.GetModelStatus(status_request, timeout=10)
    assert [s.version for s in status.model_version_status] == [3, 2]
    assert all(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in status.model_version_status)
    status_request.model_spec.version.value = 2
    assert [s.version for s in model.GetModelStatus(status_request, timeout=10).model_version_status] == [2]


def test_bad_images_are_named_by_instance_over_rest_and_grpc(server, stubs):
    """A decompression bomb is refused from its header (the limit ingestion applies), and a
    value the graph cannot decode is named by its instance in one clean line."""
    prediction, _ = stubs
    bomb = png_bomb(10000, 10000)  # ~100 KB on the wire, 100 million pixels decoded
    limit = ("Input 'images' instance 1: PNG of 10000x10000 pixels is more than the limit of "
             "89,478,485 pixels per image (a decompression bomb guard)")
    truncated = ("Input 'images' instance 2: Invalid PNG. Failed to initialize decoder; expected PNG, "
                 "JPEG (grey or RGB), GIF (first frame) or 24-bit BMP")
    for batch, message in (([RED, bomb], limit), ([RED, BLUE, RED[:40], GREEN], truncated)):
        response = post(server, "/v1/models/image:predict", {"instances": [b64(x) for x in batch]})
        assert response.status_code == 400 and response.json() == {"error": message}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "image"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
        error = _grpc_error(prediction.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message
    response = post(server, "/v1/models/image:predict", {"instances": [b64(RED), b64(BLUE)]})
    assert [p["class_names"] for p in response.json()["predictions"]] == ["red", "blue"]


def _grpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)
    return error.value


def test_grpc_error_codes(stubs):
    prediction, model = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope"
    assert _grpc_error(prediction.Predict, request).code() == grpc.StatusCode.NOT_FOUND

    request.model_spec.name = "text"
    request.model_spec.version_label = "gold"
    assert _grpc_error(prediction.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.model_spec.signature_name = "nope"
    error = _grpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found.' in error.details()

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.inputs["wrong"].CopyFrom(tf.make_tensor_proto(["x"]))
    error = _grpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input size does not match signature: 1!=1 len({wrong}) != len({text}). "
                               "Sent extra: {wrong}. Missing but required: {text}.")

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    assert _grpc_error(prediction.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "text"
    error = _grpc_error(prediction.Classify, classify)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected one or two output Tensors, found 3"

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "text"
    assert _grpc_error(prediction.GetModelMetadata, metadata).code() == grpc.StatusCode.INVALID_ARGUMENT

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    assert _grpc_error(model.GetModelStatus, status).code() == grpc.StatusCode.NOT_FOUND
