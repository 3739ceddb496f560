"""TF Serving 2.16 fidelity on SavedModels that are not Conveyor's own (issue 14).

One server per module serves a TF1 graph export, a tf.Module with an unknown-rank signature,
a Keras `model.export()` and a TFLite file (tests/support/serving_models.py), each under a
version directory named with leading zeros, started with TF Serving's own flags in both
`--flag=value` and `--flag value` forms. Each API is checked over REST and over gRPC with the
official tensorflow-serving-api stubs. Expected answers are TF Serving's (json_tensor.cc,
classifier.cc, regressor.cc, multi_inference.cc, http_server.cc).
"""
import base64
import math
import os
import shutil
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import server as server_lib
from serving.errors import ServingError
from serving.health import HealthCheckRequest, HealthCheckResponse
from serving.metrics import Metrics
from serving.model_manager import LoadOptions, ModelManager, parse_version, version_dirs
from tests.support import serving_models
from tests.support.serving_harness import ServerProcess, model_entry, wait_for, write_config


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: base path}; every version directory named with leading zeros."""
    root = tmp_path_factory.mktemp("tf-models")
    serving_models.tf1_graph_model(str(root / "tf1" / "00000123"))
    serving_models.tf2_module_model(str(root / "tf2" / "0001"))
    keras = serving_models.keras_export_model(str(root / "keras" / "01"))
    shutil.copytree(keras, str(root / "keras" / "1"))  # duplicate of version 1: one is kept
    serving_models.tflite_model(str(root / "tflite" / "007"))
    return {kind: str(root / kind) for kind in ("tf1", "tf2", "keras", "tflite")}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("tf-server")
    config = write_config(str(root / "models.config"), "model_config_list {\n" + "".join(
        model_entry(kind, base) for kind, base in models.items()) + "}\n")
    monitoring = write_config(str(root / "monitoring.config"),
                              'prometheus_config { enable: true path: "/metrics" }\n')
    batching = write_config(str(root / "batching.config"),
                            "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 1000 }\n"
                            "num_batch_threads { value: 2 }\n")
    socket_path = str(root / "grpc.sock")
    proc = ServerProcess([
        f"--model_config_file={config}", "--model_config_file_poll_wait_seconds", "1",
        "--rest_api_timeout_in_ms=30000", "--rest_api_num_threads=4",
        "--rest_api_enable_cors_support=true", "--enable_grpc_healthcheck_service",
        f"--grpc_socket_path={socket_path}", f"--monitoring_config_file={monitoring}",
        "--enable_batching=true", f"--batching_parameters_file={batching}",
        "--enable_model_warmup=true", "--prefer_tflite_model=true",
        "--num_tflite_interpreters_per_pool=1", "--num_tflite_pools", "2",
        "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=600000,grpc.primary_user_agent=x",
        "--allow_version_labels_for_unavailable_models=false", "--max_num_load_retries=0",
        "--load_retry_interval_micros=100000",
    ], str(root / "server.log"))
    proc.socket_path = socket_path
    proc.config = config
    try:
        proc.wait_ready("tflite")
        yield proc
    finally:
        proc.stop()


def post(server, path, body):
    return requests.post(server.url + path, json=body, timeout=30)


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


# ---- discovery, status, metadata -----------------------------------------------------------

def test_version_names_parse_as_tf_serving(tmp_path):
    assert [parse_version(n) for n in ("00000123", "1", " 7 ", "-2", "v1", ".tmp-3", "1e3", "")] \
        == [123, 1, 7, -2, None, None, None, None]
    for name in ("01", "1", "0002", "junk"):
        os.makedirs(tmp_path / name)
    assert version_dirs(str(tmp_path)) == {1: "1", 2: "0002"}


def test_status_is_tf_servings_json(server):
    for model, version in (("tf1", "123"), ("tf2", "1"), ("keras", "1"), ("tflite", "7")):
        response = requests.get(f"{server.url}/v1/models/{model}", timeout=5)
        assert response.json() == {"model_version_status": [{
            "version": version, "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}, model
    assert "Duplicate version directories detected. Version 1 will be loaded from 1, 01" in server.log()


def test_metadata_of_tf1_and_tflite(server):
    body = requests.get(f"{server.url}/v1/models/tf1/versions/123/metadata", timeout=5).json()
    assert body["model_spec"] == {"name": "tf1", "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["x"] == {
        "dtype": "DT_FLOAT", "name": "x:0",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                         "unknown_rank": False}}
    assert signatures["classify_x"]["method_name"] == "tensorflow/serving/classify"
    lite = requests.get(f"{server.url}/v1/models/tflite/metadata", timeout=5).json()
    default = lite["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert list(default["inputs"]) == ["serving_default_x"]
    assert default["inputs"]["serving_default_x"]["dtype"] == "DT_FLOAT"


# ---- predict -------------------------------------------------------------------------------

def test_tf1_predict_feeds_the_tensor_as_sent(server, stub):
    """A [3] tensor for a [-1, 1] placeholder: TF Serving feeds it; the graph is element-wise."""
    assert post(server, "/v1/models/tf1:predict", {"instances": [2.0, 3.0, 4.0]}).json() == \
        {"predictions": [5.0, 7.0, 9.0]}
    assert post(server, "/v1/models/tf1:predict", {"instances": [[2.0], [3.0]]}).json() == \
        {"predictions": [[5.0], [7.0]]}
    assert post(server, "/v1/models/tf1/versions/123:predict", {"inputs": {"x": [[2.0]]}}).json() == \
        {"outputs": [[5.0]]}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)))
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0, 5.0]
    assert response.model_spec.version.value == 123


def test_unknown_rank_signature_and_keras_export(server, stub):
    assert post(server, "/v1/models/tf2:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}).json() == \
        {"predictions": [[3.0, 5.0], [7.0, 9.0]]}
    assert post(server, "/v1/models/tf2:predict", {"inputs": 2.0}).json() == {"outputs": 5.0}
    # A rank-0 output has no batch dimension: the row format refuses it (json_tensor.cc).
    scalar = post(server, "/v1/models/tf2:predict", {"instances": 2.0})
    assert scalar.status_code == 400 and "Expecting 'instances' to be an list" in scalar.json()["error"]
    assert post(server, "/v1/models/keras:predict", {"instances": [[2.0], [0.5]]}).json() == \
        {"predictions": [[5.0], [2.0]]}
    bad = post(server, "/v1/models/keras:predict", {"instances": [2.0]})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("Input 'x' has shape [1]; the signature expects [-1, 1]")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    assert tf.make_ndarray(stub.Predict(request, timeout=30).outputs["output_0"]).tolist() == [[3.0]]


def test_tflite_model_predicts_like_the_saved_model(server, stub):
    assert post(server, "/v1/models/tflite:predict", {"instances": [[2.0]]}).json() == \
        {"predictions": [[5.0]]}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tflite"
    request.inputs["serving_default_x"].CopyFrom(tf.make_tensor_proto(np.array([[4.0]], np.float32)))
    outputs = stub.Predict(request, timeout=30).outputs
    # Output keys are TFLite tensor names without ":0", as TF Serving's tflite_session.cc names them.
    assert {k: tf.make_ndarray(v).tolist() for k, v in outputs.items()} == {"PartitionedCall": [[9.0]]}


def test_base64_is_decoded_as_abseil_does(server):
    """Unpadded and line-wrapped base64 (what `base64 FILE` prints) are accepted."""
    encoded = base64.b64encode(serving_models.example(1.0)).decode("ascii")
    wrapped = "\n".join(encoded[i:i + 10] for i in range(0, len(encoded), 10)).rstrip("=")
    answers = [post(server, "/v1/models/tf1:predict", {
        "signature_name": "regress_x", "instances": [{"b64": text}]}).json() for text in (encoded, wrapped)]
    assert answers[0] == answers[1] == {"predictions": [[3.0]]}
    bad = post(server, "/v1/models/tf1:predict", {"signature_name": "regress_x",
                                                  "instances": [{"b64": "A"}]})
    assert bad.status_code == 400 and "Unable to base64 decode" in bad.json()["error"]


# ---- classify / regress / multi-inference --------------------------------------------------

def test_rest_classify_and_regress(server):
    response = post(server, "/v1/models/tf1:classify",
                    {"signature_name": "classify_x", "examples": [{"x": 1.0}, {"x": [-3.0]}]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["neg", "pos"]] * 2
    assert results[0][1][1] == pytest.approx(sigmoid(3.0), rel=1e-6)
    assert results[1][0][1] == pytest.approx(1 - sigmoid(-5.0), rel=1e-6)
    # context: one example merged into each (its features lose to the example's own)
    context = post(server, "/v1/models/tf1:regress", {"signature_name": "regress_x",
                                                      "context": {"x": 2.0}, "examples": [{}, {"x": 0.0}]})
    assert context.json() == {"results": [5.0, 1.0]}
    regress = post(server, "/v1/models/tf1/versions/123:regress",
                   {"signature_name": "regress_x", "examples": [{"x": 1.0}, {"x": -3.0}]})
    assert regress.json() == {"results": [3.0, -5.0]}
    # TF2: a predict-method signature shaped like a classify one is classified (no method check)
    tf2 = post(server, "/v1/models/tf2:classify", {"signature_name": "classify", "examples": [{"x": 1.0}]})
    assert tf2.status_code == 200, tf2.text
    assert tf2.json()["results"][0][1][1] == pytest.approx(sigmoid(3.0), rel=1e-6)


CLASSIFY_REGRESS_ERRORS = [
    ("tf1:classify", {"signature_name": "regress_x", "examples": [{"x": 1.0}]},
     'Expected classification signature outputs to contain at least one of "classes" or "scores"'),
    ("tf1:regress", {"signature_name": "classify_x", "examples": [{"x": 1.0}]}, "Expected one output Tensor."),
    ("tf1:classify", {"examples": [{"x": 1.0}]}, "No classification inputs found in SignatureDef"),
    ("tf1:classify", {"signature_name": "classify_x"}, "key 'examples' is expected and was not found"),
    ("tf1:classify", {"signature_name": "classify_x", "examples": []}, "'examples' value is an empty array"),
    ("tf1:classify", {"signature_name": "classify_x", "examples": [{"x": [1.0, "a"]}]},
     "Unexpected element type in feature: x expecting type: float"),
    ("tf1:classify", {"signature_name": "classify_x", "examples": [{"x": None}]}, "unexpected JSON type: null"),
    ("tf1:regress", {"signature_name": "nope", "examples": [{"x": 1.0}]}, "No signature was found with the name: nope"),
    ("tf1:regress", {"signature_name": "regress_x", "examples": [{"y": 1.0}]}, "Feature: x"),
]


@pytest.mark.parametrize("route,body,fragment", CLASSIFY_REGRESS_ERRORS)
def test_classify_regress_errors_are_tf_servings(server, route, body, fragment):
    response = post(server, f"/v1/models/{route}", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error and "\n" not in error


def _examples(values, context=None):
    """An Input proto of tf.Examples with feature x = each value (plus a context example)."""
    request = classification_pb2.ClassificationRequest()
    target = request.input.example_list_with_context if context is not None else request.input.example_list
    if context is not None:
        target.context.ParseFromString(serving_models.example(context))
    for value in values:
        target.examples.add().ParseFromString(serving_models.example(value))
    return request.input


def test_grpc_classify_regress_multi_inference(server, stub):
    classify = classification_pb2.ClassificationRequest(input=_examples([1.0, -3.0]))
    classify.model_spec.name = "tf1"
    classify.model_spec.signature_name = "classify_x"
    response = stub.Classify(classify, timeout=30)
    assert response.model_spec.version.value == 123 and response.model_spec.signature_name == "classify_x"
    assert [c.label for c in response.result.classifications[0].classes] == ["neg", "pos"]
    assert response.result.classifications[0].classes[1].score == pytest.approx(sigmoid(3.0), rel=1e-6)

    regress = regression_pb2.RegressionRequest(input=_examples([1.0, -3.0]))
    regress.model_spec.name = "tf1"
    regress.model_spec.signature_name = "regress_x"
    assert [r.value for r in stub.Regress(regress, timeout=30).result.regressions] == [3.0, -5.0]

    multi = inference_pb2.MultiInferenceRequest(input=_examples([0.5]))
    for signature, method in (("classify_x", "tensorflow/serving/classify"),
                              ("regress_x", "tensorflow/serving/regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "tf1"
        task.model_spec.signature_name = signature
    results = stub.MultiInference(multi, timeout=30).results
    assert results[0].classification_result.classifications[0].classes[1].score == \
        pytest.approx(sigmoid(2.0), rel=1e-6)
    assert results[1].regression_result.regressions[0].value == 2.0
    assert [r.model_spec.version.value for r in results] == [123, 123]

    wrong = regression_pb2.RegressionRequest(input=_examples([1.0]))
    wrong.model_spec.name = "tf1"
    wrong.model_spec.signature_name = "classify_x"
    with pytest.raises(grpc.RpcError) as error:
        stub.Regress(wrong, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    multi.tasks[1].method_name = "tensorflow/serving/predict"
    with pytest.raises(grpc.RpcError) as error:
        stub.MultiInference(multi, timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- HTTP and gRPC surroundings ------------------------------------------------------------

def test_cors_and_options_as_http_server_cc(server):
    preflight = requests.options(f"{server.url}/v1/models/tf1:predict", timeout=5,
                                 headers={"Origin": "https://app.example"})
    assert preflight.status_code == 200 and preflight.content == b""
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST, GET"
    assert preflight.headers["Access-Control-Allow-Headers"] == "Content-Type"
    no_origin = requests.options(f"{server.url}/v1/models/tf1", timeout=5)
    assert no_origin.status_code == 400
    assert no_origin.json() == {"error": "Origin header is missing in CORS preflight"}
    status = requests.get(f"{server.url}/v1/models/tf1", timeout=5)
    assert status.headers["Access-Control-Allow-Origin"] == "*"


def test_monitoring_config_path(server):
    post(server, "/v1/models/tf1:predict", {"instances": [1.0]})
    metrics = requests.get(f"{server.url}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert 'conveyor_serving_request_count_total{api="predict",model_name="tf1"' in metrics.text
    assert requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=5).status_code == 404


def test_grpc_health_and_unix_socket(server):
    channel = grpc.insecure_channel(server.grpc_target)
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=HealthCheckRequest.SerializeToString,
                                response_deserializer=HealthCheckResponse.FromString)
    for service in ("", "ModelService", "PredictionService"):
        assert check(HealthCheckRequest(service=service), timeout=10).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as error:
        check(HealthCheckRequest(service="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()
    with grpc.insecure_channel(f"unix:{server.socket_path}") as unix:
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "tf1"
        response = model_service_pb2_grpc.ModelServiceStub(unix).GetModelStatus(status, timeout=10)
        assert response.model_version_status[0].version == 123


def test_reload_config_reports_models_that_did_not_load(server, models, tmp_path):
    """Last in the module: it changes the served config, then restores it."""
    broken = tmp_path / "broken" / "05"
    shutil.copytree(os.path.join(models["tf2"], "0001"), broken)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))
    request = model_management_pb2.ReloadConfigRequest()
    for kind, base in models.items():
        request.config.model_config_list.config.add(name=kind, base_path=base, model_platform="tensorflow")
    request.config.model_config_list.config.add(name="broken", base_path=str(tmp_path / "broken"),
                                                model_platform="tensorflow")
    status = stub.HandleReloadConfigRequest(request, timeout=60).status
    assert status.error_code == grpc.StatusCode.UNKNOWN.value[0]
    # server_core.cc: "{" + per model "{" + ServableId.DebugString() + " due to error: ..." + "}, " + "}"
    assert status.error_message.startswith(
        "1 model(s) did not become available: {{{name: broken version: 5} due to error: ")
    del request.config.model_config_list.config[-1]
    assert stub.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
    assert post(server, "/v1/models/tf1:predict", {"instances": [1.0]}).json() == {"predictions": [3.0]}


# ---- in-process: labels, retries, metrics, flags ------------------------------------------

def _config(name, base, labels=None):
    config = model_server_config_pb2.ModelConfig(name=name, base_path=base, model_platform="tensorflow")
    config.model_version_policy.all.SetInParent()
    for label, version in (labels or {}).items():
        config.version_labels[label] = version
    return config


def test_version_labels_must_point_at_available_versions(models):
    with pytest.raises(ServingError) as error:
        ModelManager([_config("tf2", models["tf2"], {"stable": 1, "next": 2})], poll_wait_seconds=0)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.message == ("Request to assign label to version 2 of model tf2, which is not "
                                   "currently available for inference")
    manager = ModelManager([_config("tf2", models["tf2"], {"stable": 1, "next": 2})], poll_wait_seconds=0,
                           load_options=LoadOptions(allow_version_labels_for_unavailable_models=True))
    assert manager.resolve_label("tf2", "next") == 2
    assert manager.get_servable("tf2", label="stable").version == 1


def test_half_copied_version_is_retried_until_complete(models, tmp_path):
    """A non-atomic copy: the first load finds no saved_model.pb; a retry gets the finished copy."""
    base = tmp_path / "m"
    target = base / "0003"
    source = os.path.join(models["tf2"], "0001")
    os.makedirs(target / "variables")

    def finish_copy():
        time.sleep(0.5)
        shutil.copytree(source, target, dirs_exist_ok=True)

    copier = threading.Thread(target=finish_copy)
    copier.start()
    manager = ModelManager([_config("m", str(base))], poll_wait_seconds=0,
                           load_options=LoadOptions(max_num_load_retries=5, load_retry_interval_micros=300_000))
    copier.join()
    assert manager.loaded_versions("m") == [3]

    # Without retries the failed version is tried again once its directory changes.
    shutil.rmtree(base)
    os.makedirs(target / "variables")
    manager = ModelManager([_config("m", str(base))], poll_wait_seconds=0.1)
    assert manager.loaded_versions("m") == []
    manager.start()
    try:
        shutil.copytree(source, target, dirs_exist_ok=True)
        wait_for(lambda: manager.loaded_versions("m") == [3], what="the completed copy to load")
    finally:
        manager.stop()


def test_unloaded_versions_drop_their_metric_series():
    metrics = Metrics()
    for version in ("1", "2"):
        with metrics.track("predict", "rest") as outcome:
            outcome.model_name, outcome.version = "m", version
    metrics.forget_version("m", 1)
    text = metrics.render({"m": [2]}).decode()
    assert 'version="2"' in text and 'version="1"' not in text


FLAGS = ("port=8500 grpc_socket_path=/tmp/x.sock rest_api_port=8501 rest_api_num_threads=4 "
         "rest_api_timeout_in_ms=30000 rest_api_enable_cors_support=true "
         "enable_grpc_healthcheck_service=true model_name=m model_base_path=/models/m "
         "model_config_file=/c model_config_file_poll_wait_seconds=60 file_system_poll_wait_seconds=1 "
         "monitoring_config_file=/m enable_batching=true batching_parameters_file=/b "
         "enable_model_warmup=false prefer_tflite_model=true num_tflite_interpreters_per_pool=1 "
         "num_tflite_pools=2 tensorflow_intra_op_parallelism=1 tensorflow_inter_op_parallelism=1 "
         "grpc_channel_arguments=a=1,b=x allow_version_labels_for_unavailable_models=true "
         "max_num_load_retries=2 load_retry_interval_micros=100").split()


def test_every_tf_serving_flag_parses_in_both_forms():
    parser = server_lib.build_parser()
    joined = parser.parse_args([f"--{f}" for f in FLAGS])
    split = parser.parse_args([part for f in FLAGS for part in (f"--{f.split('=', 1)[0]}", f.split("=", 1)[1])])
    assert vars(joined) == vars(split)
    assert joined.enable_model_warmup is False and joined.rest_api_enable_cors_support is True
    assert parser.parse_args(["--enable_batching"]).enable_batching is True
    options = server_lib.ServerOptions.from_args(joined)
    assert options.session_config().intra_op_parallelism_threads == 1
    assert options.load_options().max_num_load_retries == 2


def test_flag_errors(capsys):
    for argv, message in ((["--model_base_path=/m", "--no_such_flag=1"], "unrecognized arguments"),
                          (["--model_base_path=/m", "--ssl_config_file=/s"], "--ssl_config_file is not supported"),
                          (["--model_base_path=/m", "--enable_batching=maybe"], "not a boolean"),
                          (["--model_base_path=/m", "--batching_parameters_file=/b"], "without --enable_batching"),
                          (["--model_base_path=/m", "--ab_split=canary=2"], "expected canary=P or MODEL:canary=P")):
        with pytest.raises(SystemExit) as exit_info:
            server_lib.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_console_script_uses_the_images_environment(tmp_path):
    assert server_lib.with_env_model(["--port=8500"], {"MODEL_NAME": "tf1", "MODEL_BASE_PATH": "/models"}) == \
        ["--model_base_path=/models/tf1", "--model_name=tf1", "--port=8500"]
    assert server_lib.with_env_model(["--model_config_file=/c"], {"MODEL_NAME": "x"}) == ["--model_config_file=/c"]
    assert server_lib.with_env_model([], {}) == []
    with open(os.path.join(server_lib.__file__.rsplit("/serving/", 1)[0], "setup.py")) as f:
        assert '"tensorflow_model_server=serving.server:tensorflow_model_server"' in f.read()


def test_drop_in_keeps_tf_servings_defaults_and_conveyor_serve_its_own(monkeypatch, capsys):
    drop_in = server_lib.parse_options(["--model_base_path=/m"], drop_in=True)
    assert (drop_in.rest_api_port, drop_in.host, drop_in.port) == (0, "0.0.0.0", 8500)
    ours = server_lib.parse_options(["--model_base_path=/m"])
    assert (ours.rest_api_port, ours.host, ours.port) == (8501, "127.0.0.1", 8500)
    # conveyor serve re-reads models.config (canary releases, promote, rollback); TF Serving reads it once
    assert (drop_in.model_config_file_poll_wait_seconds, ours.model_config_file_poll_wait_seconds) == (0, 2)
    given = server_lib.parse_options(["--model_base_path=/m", "--rest_api_port=9000", "--host=::1"], drop_in=True)
    assert (given.rest_api_port, given.host) == (9000, "::1")
    # the console script itself: with gRPC off and REST off by default, nothing is left to serve
    monkeypatch.setattr(sys, "argv", ["tensorflow_model_server", "--model_base_path=/m", "--port=0"])
    with pytest.raises(SystemExit) as exit_info:
        server_lib.tensorflow_model_server()
    assert exit_info.value.code == 2 and "both APIs disabled" in capsys.readouterr().err
    # `conveyor serve --help` shows its own defaults
    from conveyor import serve as conveyor_serve
    assert conveyor_serve.main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "conveyor serve" in help_text and "(default: 8501)" in help_text and "(default: 127.0.0.1)" in help_text
