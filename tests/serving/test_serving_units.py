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
