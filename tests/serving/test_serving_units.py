"""In-process pieces of serving/: warmup files, batching, version policies, config polling,
CLI flags and the deploy manifests."""
import os
import threading

import grpc
import numpy as np
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import server as server_lib
from serving import model_manager, warmup
from serving.batching import Batcher, BatchingOptions
from serving.errors import ServingError
from serving.model_config import ModelConfigError, read_models_config
from serving.model_manager import ModelManager, aspired_versions
from serving.servables import SavedModelServable
from tests.support.serving_harness import REPO, install, model_entry, wait_for, write_config

END = get_model_status_pb2.ModelVersionStatus.State.END
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


def test_warmup_file_round_trip_and_replay(tmp_path):
    path = install("text_v1", str(tmp_path / "text"), 1)
    written = warmup.write_warmup_requests(path, [{"text": [b"good", b"bad"]}, {"text": ["meh"]}],
                                           model_name="text")
    assert written == os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    requests = warmup.read_warmup_requests(path)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default"] * 2
    assert requests[0].model_spec.name == "text"
    servable = SavedModelServable("text", 1, path)
    seen = []

    def run(signature, inputs):
        seen.append(inputs["text"].tolist())
        return servable.run(signature, inputs)

    assert warmup.replay_warmup_requests(path, run) == 2
    assert seen == [[b"good", b"bad"], [b"meh"]]
    with pytest.raises(ValueError):
        warmup.write_warmup_requests(path, [])


def test_batcher_merges_concurrent_requests_and_splits_results():
    batch_sizes = []

    def double(inputs):
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000))
    results = {}

    def call(i):
        results[i] = batcher.run("m", double, {"x": np.array([i, i + 100])})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i]["y"].tolist() == [2 * i, 2 * i + 200] for i in range(8))
    assert max(batch_sizes) > 2 and max(batch_sizes) <= 8
    assert batcher.run("m", double, {"x": np.arange(20)})["y"].tolist() == list(range(0, 40, 2))


def test_version_policies():
    def policy(text):
        return text_format.Parse(f'name: "m" base_path: "/x" {text}',
                                 model_server_config_pb2.ModelConfig())

    assert aspired_versions(policy(""), [1, 5, 3]) == [5]
    assert aspired_versions(policy("model_version_policy { latest { num_versions: 2 } }"), [1, 5, 3]) == [3, 5]
    assert aspired_versions(policy("model_version_policy { all {} }"), [3, 1]) == [1, 3]
    assert aspired_versions(policy("model_version_policy { specific { versions: 1 versions: 9 } }"),
                            [1, 3]) == [1]


def test_models_config_is_polled_for_new_models(tmp_path):
    base = str(tmp_path / "text")
    install("text_v1", base, 1)
    config = str(tmp_path / "models.config")
    write_config(config, "model_config_list {\n" + model_entry("a", base) + "}\n")
    args = server_lib.ServerOptions(model_config_file=config)
    manager = ModelManager(server_lib.load_model_configs(args), poll_wait_seconds=0.1,
                           config_loader=lambda: server_lib.load_model_configs(args),
                           config_poll_wait_seconds=0.1)
    manager.start()
    try:
        assert manager.model_names() == ["a"]
        write_config(config, "model_config_list {\n" + model_entry("a", base)
                     + model_entry("b", base) + "}\n")
        wait_for(lambda: manager.loaded_versions("b") == [1], what="model b to load")
        write_config(config, "not a config {")  # a broken file keeps the current models
        write_config(config, "model_config_list {\n" + model_entry("b", base) + "}\n")
        wait_for(lambda: manager.model_names() == ["b"], what="model a to be removed")
        assert manager.get_servable("b").version == 1
        # a removed model keeps its versions' END states (TF Serving's servable state monitor)
        status = manager.model_status("a").model_version_status
        assert [(s.version, s.state, s.status.error_code) for s in status] == [(1, END, 0)]
        with pytest.raises(ServingError) as never:
            manager.model_status("never_configured")
        assert never.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        manager.stop()


def test_removed_models_states_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(model_manager, "MAX_REMOVED_MODELS", 1)
    base = str(tmp_path / "text")
    install("text_v1", base, 1)

    def config(*names):
        return [model_server_config_pb2.ModelConfig(name=n, base_path=base, model_platform="tensorflow")
                for n in names]

    with pytest.raises(ServingError, match="^Illegal to list model a multiple times in config list$"):
        ModelManager(config("b", "a", "a"), poll_wait_seconds=0)
    manager = ModelManager(config("a", "b", "c"), poll_wait_seconds=0)
    manager.apply_config(config("c"))  # a and b removed: only the last removal is kept
    kept = [n for n in ("a", "b") if _has_status(manager, n)]
    assert len(kept) == 1
    manager.apply_config(config("c", kept[0]))  # re-added: served again, no longer "removed"
    assert manager.model_status(kept[0]).model_version_status[0].state == AVAILABLE
    manager.apply_config(config("a", "b"))
    assert manager.model_status("c").model_version_status[0].state == END
    assert manager.model_status("a").model_version_status[0].state == AVAILABLE


def _has_status(manager, name) -> bool:
    try:
        return manager.model_status(name).model_version_status[0].state == END
    except ServingError:
        return False


def test_serve_help_and_flag_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        server_lib.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--port", "--rest_api_port", "--model_config_file", "--model_name",
                 "--model_base_path", "--file_system_poll_wait_seconds", "--enable_batching",
                 "--max_batch_size", "--batch_timeout_micros", "--rest_api_max_body_bytes", "--home"):
        assert flag in help_text
    with pytest.raises(SystemExit) as exit_info:
        server_lib.main(["--port", "8500"])
    assert exit_info.value.code == 2
    assert "give --model_config_file, --model_base_path (with --model_name) or --home" \
        in capsys.readouterr().err
    assert server_lib.main(["--model_config_file", "/nonexistent/models.config"]) == 1


def test_deploy_manifests_agree():
    with open(os.path.join(REPO, "serving", "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)["services"]["tfserving"]
    assert compose["image"].startswith("tensorflow/serving")
    assert {"8500:8500", "8501:8501"} <= set(compose["ports"])
    assert "--model_config_file=/models/models.config" in compose["command"]
    assert any(v.endswith(":/models:ro") for v in compose["volumes"])
    assert "http://localhost:8501/v1/models/" in " ".join(compose["healthcheck"]["test"])

    with open(os.path.join(REPO, "serving", "k8s", "deployment.yaml")) as f:
        deployment = yaml.safe_load(f)
    with open(os.path.join(REPO, "serving", "k8s", "service.yaml")) as f:
        service = yaml.safe_load(f)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("tensorflow/serving")
    assert "--model_config_file=/models/models.config" in container["args"]
    assert {"--port=8500", "--rest_api_port=8501"} <= set(container["args"])
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == 8501 and probe["path"].startswith("/v1/models/")
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == "/models"
    assert mount["name"] in {v["name"] for v in pod["volumes"]}
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(8500, 8500), (8501, 8501)}


def test_bad_models_config_files_are_one_line_errors(tmp_path):
    cases = {"missing": (None, "no such model config file"),
             "latin1": (b"model_config_list { config { name: \"caf\xe9\" } }", "not UTF-8 text (byte 39)"),
             "garbage": (b"model_config_list {", "not a valid ModelServerConfig")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ModelConfigError) as error:
            read_models_config(str(path))
        assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
        assert "\n" not in str(error.value)
    with pytest.raises(ModelConfigError, match="cannot read the model config file"):
        read_models_config(str(tmp_path))  # a directory


# ---- encoded images: header sizes, the pixel limit, one-line graph errors -------------------

def test_image_sizes_come_from_the_headers_of_every_decoded_format():
    import io
    import struct

    import tensorflow as tf
    from PIL import Image
    from serving import images
    from tests.support.generated import SERVED, image_files
    files = image_files(np.zeros((12, 20), np.uint8))
    for name in SERVED + ("bmp_8bit", "jpeg_cmyk"):
        data = files[name][1]
        with Image.open(io.BytesIO(data)) as image:
            expected = (image.format, image.width, image.height)
        size = images.image_size(data)
        assert (size.format, size.width, size.height, size.pixels) == expected + (20 * 12,), name
    for name in ("webp", "tiff"):
        with pytest.raises(images.ImageProblem, match="no PNG, JPEG, GIF or BMP signature"):
            images.image_size(files[name][1])
    with pytest.raises(images.ImageProblem, match=r"empty \(0 bytes\)"):
        images.image_size(b"")
    with pytest.raises(images.ImageProblem, match=r"send files base64-encoded"):
        images.image_size(b"cat.png")
    with pytest.raises(images.ImageProblem, match="PNG without an IHDR"):
        images.image_size(files["png_grey"][1][:8])
    with pytest.raises(images.ImageProblem, match=r"BMP header is truncated \(20 bytes\)"):
        images.image_size(files["bmp_24bit"][1][:20])
    with pytest.raises(images.ImageProblem, match=r"JPEG header is truncated \(30 bytes\)"):
        images.image_size(files["jpeg_rgb"][1][:30])
    with pytest.raises(images.ImageProblem, match="no frame header before the image data"):
        images.image_size(b"\xff\xd8\xff\xda\x00\x02")
    # A huge JPEG is refused from its frame header alone (TF's parser reads the same size).
    jpeg = bytearray(files["jpeg_grey"][1])
    at = next(i for i in range(2, len(jpeg)) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[at + 5:at + 9] = struct.pack(">HH", 60000, 50000)
    assert tuple(tf.io.extract_jpeg_shape(bytes(jpeg)).numpy()[:2]) == (60000, 50000)
    assert images.image_size(bytes(jpeg)) == images.ImageSize("JPEG", 50000, 60000, 3_000_000_000)


def test_pixel_limit_is_pils_bomb_threshold_and_counts_every_gif_frame():
    from PIL import Image
    from serving import contract, images
    from tests.support.generated import gif_with_frames, png_bomb
    assert contract.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS  # the rule's source (PIL's default)
    limit = contract.MAX_IMAGE_PIXELS
    assert images.over_limit(images.ImageSize("PNG", limit, 1, limit)) == ""
    assert images.over_limit(images.ImageSize("PNG", limit + 1, 1, limit + 1)) == (
        f"PNG of {limit + 1}x1 pixels is more than the limit of 89,478,485 pixels per image "
        "(a decompression bomb guard)")
    bomb = png_bomb(10000, 10000)
    assert len(bomb) < 200_000 and images.image_size(bomb).pixels == 100_000_000
    # giflib holds every frame before TF keeps the first: 30 frames of 4000 x 1000 on a tiny screen
    gif = gif_with_frames((10, 10), [(4000, 1000)] * 30)
    assert images.image_size(gif) == images.ImageSize("GIF", 10, 10, 120_000_000)
    assert "GIF of 10x10 pixels (120,000,000 in all frames) is more than" in images.over_limit(
        images.image_size(gif))
    assert images.image_size(gif_with_frames((300, 200), [(300, 200)])).pixels == 60_000


def test_check_image_input_names_the_instance():
    from serving import images
    from tests.support.generated import png_bomb
    from serving.testing import solid_png
    good = solid_png((1, 2, 3))
    images.check_image_input("images", np.array([good, good], dtype=object))
    images.check_image_input("images", np.array([1.0, 2.0]))  # not strings: the graph's type check
    with pytest.raises(ServingError) as error:
        images.check_image_input("images", np.array([good, good, png_bomb(10000, 10000)], dtype=object))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message.startswith("Input 'images' instance 2: PNG of 10000x10000 pixels is more")
    with pytest.raises(ServingError, match=r"Input 'images' element \[1, 0\]: not an image"):
        images.check_image_input("images", np.array([[good], ["text"]], dtype=object))


def test_graph_errors_lose_tf_function_wrappers():
    from serving.predictor import _one_line
    wrapped = ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
        "Graph execution error:\n\nDetected at node 'map/while/decode_image/DecodeImage' defined at:\n"
        "{{function_node __inference_pruned_5527_specialized_for_StatefulPartitionedCall}} "
        "{{function_node __inference_pruned_5527_specialized_for_StatefulPartitionedCall}} "
        "Invalid PNG. Failed to initialize decoder.\n"
        "\t [[StatefulPartitionedCall/StatefulPartitionedCall/transform_features_layer/Call]]\n"
        "\t [[{{node map/while/decode_image/DecodeImage}}]]"))
    assert _one_line(wrapped) == "Invalid PNG. Failed to initialize decoder. (node map/while/decode_image/DecodeImage)"
    assert _one_line(wrapped, with_node=False) == "Invalid PNG. Failed to initialize decoder."
    asserted = ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
        "{{function_node f}} assertion failed: [serving input images: the bytes are not PNG]\n"
        "\t [[{{node map/while/Assert/Assert}}]]"))
    assert _one_line(asserted, with_node=False) == "serving input images: the bytes are not PNG"
    assert _one_line(asserted) == "serving input images: the bytes are not PNG"  # the model's own words
    # tf.debugging.assert_less_equal appends its condition and the values compared.
    ranged = ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
        "{{function_node f}} assertion failed: [serving input pixels: expected float pixels in [0, 1] "
        "(divide 8-bit values by 255)] [Condition x <= y did not hold element-wise:] [x (pixels:0) = ] "
        "[[[[255 3]]]...] [y (assert_less_equal/y:0) = ] [1]\n"
        "\t [[{{node assert_less_equal/Assert/AssertGuard/Assert}}]]"))
    assert _one_line(ranged) == ("serving input pixels: expected float pixels in [0, 1] "
                                 "(divide 8-bit values by 255)")
    # tf.debugging.Assert prints each data entry in brackets after the message.
    shaped = ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
        "assertion failed: [serving input pixels: expected shape [N, 28, 28, 1], got] [8 28 28]\n"
        "\t [[{{node Assert/Assert}}]]"))
    assert _one_line(shaped) == "serving input pixels: expected shape [N, 28, 28, 1], got [8 28 28]"


@pytest.mark.parametrize("args", [["conveyor.cli", "serve", "--help"], ["serving.server", "--help"]])
def test_serve_help_into_a_closed_pipe_ends_without_a_traceback(args):
    from tests.unit.test_cli_parser import closed_pipe_run
    status, stderr = closed_pipe_run(args)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
    assert status == 1


def test_tensorflow_lines_are_logged_once():
    import subprocess
    import sys
    script = ("import logging, tensorflow as tf\n"
              "tf.get_logger()  # TF adds its own handler: the root had none yet\n"
              "logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n"
              "from serving.server import one_handler_for_tensorflow\n"
              "one_handler_for_tensorflow()\n"
              "tf.get_logger().warning('tf_record_iterator is deprecated')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "tf_record_iterator" in line]
    assert lines == ["WARNING tensorflow: tf_record_iterator is deprecated"], result.stderr[-2000:]


def test_warmup_prepares_the_session_for_both_front_ends(tmp_path):
    """gRPC runs without a run timeout and REST with --rest_api_timeout_in_ms; the session
    builds one callable per timeout, so warmup replays for both and the first REST request
    after a load does not pay the build (about 1 s for a text model)."""
    path = install("text_v1", str(tmp_path / "text"), 1)
    warmup.write_warmup_requests(path, [{"text": [b"good"]}], model_name="text")
    config = write_config(str(tmp_path / "models.config"),
                          "model_config_list {\n" + model_entry("text", str(tmp_path / "text")) + "}\n")
    server = server_lib.ModelServer(server_lib.ServerOptions(model_config_file=config, port=0, rest_api_port=0,
                                                             rest_api_timeout_in_ms=7000))
    try:
        servable = server.manager.get_servable("text")
        built = set(key[-1] for key in servable._callables)
        assert built == {0, 7000}
        servable.run("serving_default", {"text": np.array([b"meh"], dtype=object)}, timeout_ms=7000)
        assert len(servable._callables) == 2  # nothing new to build for a REST request
    finally:
        server.stop()


def test_an_ab_split_for_a_model_not_in_the_config_is_warned_about(tmp_path, caplog):
    install("text_v1", str(tmp_path / "text"), 1)
    config = write_config(str(tmp_path / "models.config"),
                          "model_config_list {\n" + model_entry("text", str(tmp_path / "text")) + "}\n")
    server = server_lib.ModelServer(server_lib.ServerOptions(model_config_file=config, port=0, rest_api_port=0,
                                                             ab_split=("txet:canary=0.1", "text:canary=0.2")))
    server.stop()
    warnings = [r.getMessage() for r in caplog.records if "--ab_split" in r.getMessage()]
    assert warnings == ["--ab_split names model 'txet', which the model config does not list (text): its split "
                        "applies once it is served"]
