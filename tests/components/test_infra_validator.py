"""ConveyorInfraValidator's executor run for real: Conveyor's server in this process or in a
`serving.server` subprocess, answering real HTTP requests on loopback."""
import os
import shutil

import pytest
import tensorflow as tf
from tfx.components.util import model_utils
from tfx.types import Channel, standard_artifacts

from components import infra_validator as iv
from components.errors import ComponentError, InfraInputError
from components.infra_validator import requests as iv_requests
from serving import testing as demo_models, warmup


def _write_eval_split(root: str, key: str, values) -> standard_artifacts.Examples:
    split = os.path.join(root, "Split-eval")
    os.makedirs(split)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(split, "data_tfrecord-00000-of-00001.gz"), options) as w:
        for i, value in enumerate(values):
            feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri = root
    examples.split_names = '["train", "eval"]'
    return examples


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Demo models in the Trainer's layout (<uri>/Format-Serving) and raw eval splits."""
    root = tmp_path_factory.mktemp("infra")
    image = demo_models.save_model(str(root / "image_model" / "Format-Serving"), "image")
    warmup.write_warmup_requests(image, [{"images": [demo_models.solid_png((255, 0, 0))]}])
    text = demo_models.save_model(str(root / "text_model" / "Format-Serving"), "text")
    warmup.write_warmup_requests(text, [{"text": [b"good stuff"]}])
    pngs = [demo_models.solid_png(rgb) for rgb in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return {
        "root": root,
        "image_model": str(root / "image_model"),
        "text_model": str(root / "text_model"),
        "image_examples": _write_eval_split(str(root / "image_examples"), "image_raw", pngs),
        "text_examples": _write_eval_split(str(root / "text_examples"), "text",
                                           [b"good good", b"bad day", b"meh \xc3\xa9t\xc3\xa9"]),
    }


def _model(uri: str) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.uri = uri
    return model


def _server_children():
    """Live `serving.server` processes whose parent is this test process."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"serving.server" in cmdline:
            found.append(int(pid))
    return found


def _listening_ports():
    """TCP ports this process listens on: /proc/net/tcp rows in LISTEN state whose socket
    inode is one of this process's open files (other test workers share the table)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [r.split() for r in f.read().splitlines()[1:]]
        except OSError:
            continue
        ports.update(int(r[1].rsplit(":", 1)[1], 16) for r in rows if r[3] == "0A" and r[9] in inodes)
    return ports


def _run(tmp_path, model, examples, num_requests=8, p99_budget_ms=5000.0, model_name="image",
         server="in_process"):
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri)
    listening = _listening_ports()
    iv.Executor().Do({"model": [model], "examples": [examples]}, {"blessing": [blessing]},
                     {"num_requests": num_requests, "p99_budget_ms": p99_budget_ms,
                      "model_name": model_name, "server": server})
    # The server is gone either way: no child process, no port left listening.
    assert _server_children() == []
    assert _listening_ports() <= listening
    return blessing


def _assert_not_blessed(blessing, *fragments):
    assert blessing.get_int_custom_property("blessed") == 0
    assert not model_utils.is_infra_validated(blessing)
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "INFRA_BLESSED"))
    reason = blessing.get_string_custom_property("reason")
    for fragment in fragments:
        assert fragment in reason, reason


@pytest.mark.parametrize("server", iv.SERVER_MODES)
def test_good_image_model_is_blessed_with_latencies(tmp_path, store, server):
    blessing = _run(tmp_path, _model(store["image_model"]), store["image_examples"], server=server)
    assert blessing.get_int_custom_property("blessed") == 1
    assert model_utils.is_infra_validated(blessing)  # what the Pusher's CheckBlessing reads
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_BLESSED"))
    assert blessing.get_int_custom_property("num_requests") == 8
    assert blessing.get_int_custom_property("num_failures") == 0
    p50 = blessing.get_float_custom_property("p50_latency_ms")
    p99 = blessing.get_float_custom_property("p99_latency_ms")
    assert 0 < p50 <= p99 <= 5000
    assert "reason" not in blessing.mlmd_artifact.custom_properties
    with open(os.path.join(blessing.uri, "server.log")) as f:
        assert "Successfully loaded" in f.read()


def test_impossible_budget_on_text_model_is_not_blessed(tmp_path, store):
    blessing = _run(tmp_path, _model(store["text_model"]), store["text_examples"],
                    num_requests=4, p99_budget_ms=0.001, model_name="text")
    _assert_not_blessed(blessing, "p99 latency", "exceeds the budget")
    # Every request succeeded; only the latency failed the verdict.
    assert blessing.get_int_custom_property("num_failures") == 0
    assert blessing.get_int_custom_property("num_requests") == 4
    assert blessing.get_float_custom_property("p99_latency_ms") > 0.001


@pytest.mark.parametrize("server", iv.SERVER_MODES)
def test_model_with_corrupt_warmup_is_not_blessed_with_reason(tmp_path, store, server):
    """The SavedModel itself is fine; the server refuses it because warmup replay fails."""
    uri = str(tmp_path / "model")
    shutil.copytree(store["image_model"], uri)
    with open(os.path.join(uri, "Format-Serving", warmup.WARMUP_FILE), "wb") as f:
        f.write(b"\x00this is not a tfrecord of PredictionLogs" * 3)
    blessing = _run(tmp_path, _model(uri), store["image_examples"], server=server)
    _assert_not_blessed(blessing, "failed to load", "log tail")
    assert blessing.get_int_custom_property("num_requests") == 0
    assert "p99_latency_ms" not in blessing.mlmd_artifact.custom_properties


def test_component_wiring():
    component = iv.ConveyorInfraValidator(
        model=Channel(type=standard_artifacts.Model),
        examples=Channel(type=standard_artifacts.Examples),
        num_requests=20, p99_budget_ms=250, model_name="image_classifier")
    assert component.outputs["blessing"].type is standard_artifacts.InfraBlessing
    assert component.exec_properties == {"num_requests": 20, "p99_budget_ms": 250.0,
                                         "model_name": "image_classifier", "server": "in_process",
                                         "remeasure": None}
    with pytest.raises(ValueError, match="in_process"):
        iv.ConveyorInfraValidator(model=Channel(type=standard_artifacts.Model),
                                  examples=Channel(type=standard_artifacts.Examples), server="docker")
    assert component.executor_spec.executor_class is iv.Executor
    assert "Docker" in iv.ConveyorInfraValidator.__doc__


def test_remeasure_token_is_an_exec_property_only_when_given():
    from components.infra_validator.executor import REMEASURE_KEY
    from pipelines.preflight import INFRA_REMEASURE_PROPERTY
    assert REMEASURE_KEY == INFRA_REMEASURE_PROPERTY  # preflight reads it back without importing TFX
    channels = {"model": Channel(type=standard_artifacts.Model), "examples": Channel(type=standard_artifacts.Examples)}
    # None: TFX's compiler leaves the property out (tfx/dsl/compiler/compiler.py skips None
    # values), so the cache key of verdicts cached before tokens existed is unchanged.
    assert iv.ConveyorInfraValidator(**channels).exec_properties[REMEASURE_KEY] is None
    again = iv.ConveyorInfraValidator(**channels, remeasure="after-infra-blessing-7")
    assert again.exec_properties[REMEASURE_KEY] == "after-infra-blessing-7"


def test_reading_requests_without_a_server(store, tmp_path):
    name, instances = iv_requests.read_raw_instances(store["text_examples"].uri, limit=2)
    assert (name, instances) == ("text", ["good good", "bad day"])
    name, instances = iv_requests.read_raw_instances(store["image_examples"].uri, limit=10)
    assert name == "images" and len(instances) == 3 and set(instances[0]) == {"b64"}
    with pytest.raises(InfraInputError, match=r"Split-eval/\*\.gz: no eval examples") as e:
        iv_requests.read_raw_instances(str(tmp_path), limit=1)
    assert isinstance(e.value, ComponentError)  # printed as one line by the runner
