"""Shared helpers for tests/test_serving_*.py: fixture SavedModels and a server subprocess."""
import atexit
import base64
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import requests

from serving.net import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_CLASSES_BY_VERSION = {
    1: ["positive", "negative", "neutral"],
    2: ["positive_v2", "negative_v2", "neutral_v2"],
    3: ["positive_v3", "negative_v3", "neutral_v3"],
}


@functools.lru_cache(maxsize=None)
def model_store() -> str:
    """Builds each fixture SavedModel once per test session; homes copy from here."""
    from serving import testing as demo_models, warmup

    root = tempfile.mkdtemp(prefix="conveyor-serving-models-")
    atexit.register(shutil.rmtree, root, True)
    image = demo_models.save_model(os.path.join(root, "image"), "image")
    warmup.write_warmup_requests(image, [{"images": [demo_models.solid_png((255, 0, 0))]}],
                                 model_name="image")
    for version, names in TEXT_CLASSES_BY_VERSION.items():
        demo_models.save_model(os.path.join(root, f"text_v{version}"), "text", names)
    return root


def install(source: str, base_path: str, version: int) -> str:
    """Copies a fixture model in as `version` the way the Pusher does: dot-dir, then rename."""
    os.makedirs(base_path, exist_ok=True)
    tmp = os.path.join(base_path, f".tmp-{version}")
    shutil.copytree(os.path.join(model_store(), source), tmp)
    final = os.path.join(base_path, str(version))
    os.rename(tmp, final)
    return final


class ServerProcess:
    """`python -m serving.server` (or `entry`, e.g. ["-m", "conveyor.cli", "serve"]) on free
    ports; stop() in teardown."""

    def __init__(self, args: List[str], log_path: str, entry: Optional[List[str]] = None):
        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            [sys.executable, *(entry or ["-m", "serving.server"]), "--host", "127.0.0.1",
             "--port", str(self.grpc_port), "--rest_api_port", str(self.rest_port),
             "--file_system_poll_wait_seconds", "0.2"] + args,
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, model: str, timeout: float = 300) -> None:
        # Generous: importing TensorFlow alone took 70 s on a 2-core machine under load; an
        # exiting server fails at once, so only a slow start waits this long.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/v1/models/{model}", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def versions_by_state(url: str, model: str) -> Dict[str, List[int]]:
    response = requests.get(f"{url}/v1/models/{model}", timeout=5)
    if response.status_code != 200:
        return {}
    states: Dict[str, List[int]] = {}
    for entry in response.json()["model_version_status"]:
        states.setdefault(entry["state"], []).append(int(entry["version"]))
    return states


def write_config(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def model_entry(name: str, base_path: str, policy: str = "", labels: Optional[Dict[str, int]] = None) -> str:
    label_text = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n'
                         for k, v in (labels or {}).items())
    policy_text = f"    model_version_policy {{ {policy} }}\n" if policy else ""
    return (f'  config {{\n    name: "{name}"\n    base_path: "{base_path}"\n'
            f'    model_platform: "tensorflow"\n{policy_text}{label_text}  }}\n')


def b64(data: bytes) -> dict:
    """A binary value as TF Serving's REST API takes it."""
    return {"b64": base64.b64encode(data).decode("ascii")}
