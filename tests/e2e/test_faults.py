"""Faults: SIGKILL in the middle of a run, two runs on one HOME, corrupt versions at start-up.

The pipeline faults are one chain on one HOME, because every real pipeline run costs
a minute or more here (each step is a real `conveyor run` subprocess, SIGKILLed as a
whole process group):

  A  run, SIGKILL while the Trainer is training (its MLMD execution is RUNNING);
  B  rerun (the stale .run.lock must not block it) with the Pusher's fault-injection pause
     (components/pusher.py PAUSE_ENV): SIGKILL while the new version sits complete in
     its temp dir, just before the rename;
  D  rerun to completion; while it holds HOME, a second run C is refused.

A watcher thread samples the serving directory during the whole chain: no integer
version directory may ever be incomplete.
"""
import base64
import filecmp
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.helpers import subset_digits
import requests
from ml_metadata.proto import metadata_store_pb2

from components.pusher import PAUSE_ENV, PUSH_RECORD
from conveyor.metadata import runs as mlmd_runs
from conveyor.metadata.store import Graph, open_store, props
from serving.model_manager import version_dirs
from tests.support.serving_harness import REPO, ServerProcess, versions_by_state

PIPELINE = "image_classifier"
STEPS = ["--train-steps", "30", "--eval-steps", "5"]
PER_CLASS = 30  # 300 real digits: enough to be blessed, small enough to train in seconds
Execution = metadata_store_pb2.Execution


# ---------------------------------------------------------------------------------------
# helpers


class Run:
    """`conveyor run image` in its own session (process group), output collected by a thread."""

    def __init__(self, home: str, data: str, env_extra=None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
        # Serving latency is not what these tests check: on a loaded machine the default 500 ms
        # p99 budget would stop the push they need.
        config = os.path.join(os.path.dirname(os.path.abspath(home)), "faults-config.yaml")
        with open(config, "w") as f:
            f.write("infra_p99_budget_ms: 10000\n")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "run", "image", "--data", data, "--home", home,
             "--config", config, *STEPS],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 300) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if regex.search(line)), None)
            if found:
                return found
            assert self.proc.poll() is None, f"run exited ({self.proc.returncode}) before {pattern!r}:\n" + self.output[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} after {timeout}s:\n" + self.output[-3000:])

    def wait_log_line(self, pattern: str, timeout: float = 300) -> str:
        """Waits for a line of the run's log file (third-party output such as Keras's epoch
        lines goes there, not to the terminal)."""
        log_path = self.wait_line(r"^\s+log\s+\S+", timeout=timeout).split()[-1]
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    found = regex.search(f.read())
            except FileNotFoundError:
                found = None
            if found:
                return found.group(0)
            assert self.proc.poll() is None, f"run exited ({self.proc.returncode}) before {pattern!r} in {log_path}"
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in {log_path} after {timeout}s")

    def wait(self, timeout: float = 400) -> int:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def kill_group(self) -> None:
        """SIGKILL the run and everything it started (e.g. the infra validator's server)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(timeout=60)


def live_group_members(pgid: int):
    """Non-zombie processes still in a process group."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat.split("/")[2]))
    return members


def logs_text(home: str) -> str:
    """Everything the runs wrote to HOME/logs/ (the full TFX logs)."""
    text = []
    for path in sorted(glob.glob(os.path.join(home, "logs", "*.log"))):
        with open(path, errors="replace") as f:
            text.append(f.read())
    return "\n".join(text)


def executions_by_node(home: str):
    """node id -> its executions (oldest first), or {} while the store is not readable yet."""
    try:
        graph = Graph(open_store(home))
        out = {}
        for e in sorted(graph.store.get_executions(), key=lambda e: e.id):
            out.setdefault(graph.node_of(e), []).append(e)
        return out
    except Exception:  # no store yet, or SQLite busy while the run writes: ask again
        return {}


def wait_until(predicate, timeout: float, what: str, run: Run):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert run.proc.poll() is None, f"run exited before {what}:\n" + run.output[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n" + run.output[-3000:])


def version_problems(version_dir: str):
    """What is missing from a version directory the Pusher published (empty list: complete)."""
    problems = []
    for required in ("saved_model.pb", os.path.join("variables", "variables.index"), PUSH_RECORD):
        path = os.path.join(version_dir, required)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            problems.append(f"{required} missing or empty")
    if not glob.glob(os.path.join(version_dir, "variables", "variables.data-*")):
        problems.append("variables/variables.data-* missing")
    return problems


class ServingWatcher:
    """Samples HOME/serving/<name>/ every 50 ms and records any incomplete integer version."""

    def __init__(self, base: str):
        self.base = base
        self.samples = 0
        self.versions_seen = set()
        self.temp_dirs_seen = set()
        self.violations = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(0.05):
            try:
                names = os.listdir(self.base)
            except FileNotFoundError:
                continue
            self.samples += 1
            for name in names:
                if name.startswith(".tmp-"):
                    self.temp_dirs_seen.add(name)
                elif name.isdigit():
                    self.versions_seen.add(name)
                    problems = version_problems(os.path.join(self.base, name))
                    if problems:
                        self.violations.append((name, problems))

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)


# ---------------------------------------------------------------------------------------
# the chain


@pytest.fixture(scope="module")
def small_digits(digits_dir, tmp_path_factory):
    return subset_digits(digits_dir, str(tmp_path_factory.mktemp("faults-data") / "digits300"), PER_CLASS)


@pytest.fixture(scope="module")
def chain(small_digits, tmp_path_factory):
    home = str(tmp_path_factory.mktemp("faults-home"))
    base = os.path.join(home, "serving", PIPELINE)
    watcher = ServingWatcher(base)
    seen = {"home": home, "base": base, "watcher": watcher, "phases": {}}
    runs = []
    t0 = time.monotonic()
    try:
        # A: SIGKILL while the Trainer trains.
        a = Run(home, small_digits)
        runs.append(a)
        a.wait_line(r"^\[\d\d:\d\d:\d\d\] Trainer\s+started$")
        wait_until(lambda: [e for e in executions_by_node(home).get("Trainer", [])
                            if e.last_known_state == Execution.RUNNING], 120, "a RUNNING Trainer execution", a)
        a.wait_log_line(r"^Epoch 1/", timeout=120)  # Keras is fitting: the kill lands mid-training
        with open(os.path.join(home, ".run.lock")) as f:
            seen["lock_after_a"] = f.read()
        seen["a_pid"] = a.proc.pid
        a.kill_group()
        seen["a_returncode"] = a.proc.returncode
        seen["a_survivors"] = live_group_members(a.proc.pid)
        with open(os.path.join(home, ".run.lock")) as f:
            seen["lock_after_kill_a"] = f.read()
        seen["phases"]["A (to Trainer kill)"] = time.monotonic() - t0

        # B: rerun through the Trainer; SIGKILL while the Pusher holds the finished copy.
        b = Run(home, small_digits, {PAUSE_ENV: "600"})
        runs.append(b)
        b.wait_line(r"^Conveyor: running")
        seen["b_output_start"] = b.output
        b.wait_line(r"^\[\d\d:\d\d:\d\d\] ServingPusher\s+started$", timeout=400)
        wait_until(lambda: f"{PAUSE_ENV}: pausing" in logs_text(home), 60,
                   "the Pusher's pause before publishing", b)
        seen["serving_at_pause"] = sorted(os.listdir(base))
        seen["versions_on_disk_at_pause"] = sorted(version_dirs(base))
        b.kill_group()
        seen["b_returncode"] = b.proc.returncode
        seen["b_survivors"] = live_group_members(b.proc.pid)
        seen["serving_after_kill_b"] = sorted(os.listdir(base))
        seen["phases"]["B (to Pusher kill)"] = time.monotonic() - b.started

        # D: rerun to completion; C tries to run on the same HOME meanwhile.
        d = Run(home, small_digits)
        runs.append(d)
        d.wait_line(r"^Conveyor: running")
        c = Run(home, small_digits)
        runs.append(c)
        seen["c_returncode"] = c.wait(timeout=120)
        seen["c_seconds"] = time.monotonic() - c.started
        seen["c_output"] = c.output
        seen["d_running_when_c_refused"] = d.proc.poll() is None
        seen["d_pid"] = d.proc.pid
        seen["d_returncode"] = d.wait(timeout=600)
        seen["d_output"] = d.output
        seen["phases"]["D (rerun)"] = time.monotonic() - d.started
        print("\nfault chain phases:", {k: round(v, 1) for k, v in seen["phases"].items()})
        for name, run in (("B", b), ("D", d)):
            print(name, "\n".join(l for l in run.lines if re.match(r"^  \w+\s+(complete|cached|running)", l)))
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.kill_group()
        watcher.stop()
    return seen


# ---------------------------------------------------------------------------------------
# SIGKILL


def test_sigkill_kills_the_whole_run(chain):
    assert chain["a_returncode"] == -signal.SIGKILL and chain["b_returncode"] == -signal.SIGKILL
    assert chain["a_survivors"] == [] and chain["b_survivors"] == []


def test_stale_lock_file_does_not_block_the_rerun(chain):
    # The killed run's lock file still names it, but flock died with the process.
    assert chain["lock_after_a"] == f"pid {chain['a_pid']}"
    assert chain["lock_after_kill_a"] == f"pid {chain['a_pid']}"
    assert "Conveyor: running" in chain["b_output_start"]
    assert "in use" not in chain["b_output_start"]


def test_rerun_completes_and_mlmd_shows_the_killed_executions(chain):
    assert chain["d_returncode"] == 0, chain["d_output"][-4000:]
    assert "Pushed: version 1" in chain["d_output"], chain["d_output"][-3000:]
    graph = Graph(open_store(chain["home"]))
    runs = mlmd_runs.run_contexts(graph, PIPELINE)
    assert len(runs) == 3, [r.name for r in runs]  # A and B (killed), D; nothing from refused C
    by_run = [{graph.node_of(e): e for e in mlmd_runs.run_executions(graph, r)} for r in runs]
    run_a, run_b, run_d = by_run

    # SIGKILL leaves an execution as it was when killed: TFX marks executions
    # COMPLETE/FAILED/CANCELED only from the running process, and a later run never
    # revisits an old run's executions. So the killed ones stay RUNNING forever.
    assert run_a["Trainer"].last_known_state == Execution.RUNNING
    assert "BaselineEvaluator" not in run_a and "ServingPusher" not in run_a
    assert run_b["Trainer"].last_known_state == Execution.COMPLETE
    assert run_b["ServingPusher"].last_known_state == Execution.RUNNING
    assert run_d["ServingPusher"].last_known_state == Execution.COMPLETE
    # The rerun reused what finished before the kills and redid only what did not.
    for node in ("ImageExampleGen", "StatisticsGen", "SchemaGen", "Transform"):
        assert run_b[node].last_known_state == Execution.CACHED, node
    assert run_d["Trainer"].last_known_state == Execution.CACHED

    # A killed execution published nothing: no output artifact another run could pick up.
    for killed in (run_a["Trainer"], run_b["ServingPusher"]):
        assert not [ev for ev in graph.execution_events(killed.id) if ev.type == metadata_store_pb2.Event.OUTPUT]
    running = [(graph.node_of(e), e.id) for e in graph.store.get_executions()
               if e.last_known_state == Execution.RUNNING]
    assert sorted(running) == sorted([("Trainer", run_a["Trainer"].id),
                                      ("ServingPusher", run_b["ServingPusher"].id)])

    # `conveyor runs` lists the killed runs with the killed component "running".
    rows = mlmd_runs.list_runs(graph.store, PIPELINE)
    states = [{n.node: n.state for n in row.nodes} for row in rows]
    assert [s["Trainer"] for s in states] == ["running", "complete", "cached"]
    assert [s["ServingPusher"] for s in states] == ["not run", "running", "complete"]
    assert [row.pushed_version for row in rows] == [None, None, "1"]

    # The served version is D's push, of the model B's Trainer produced.
    pushed = graph.outputs(run_d["ServingPusher"])["pushed_model"][0]
    assert props(pushed)["pushed_version"] == "1"
    model = graph.input(run_d["ServingPusher"], "model")
    assert graph.producer(model).id == run_b["Trainer"].id


def test_serving_directory_never_holds_a_partial_version(chain):
    base, watcher = chain["base"], chain["watcher"]
    assert watcher.samples > 100
    assert watcher.violations == []
    # At B's kill the copy was finished in a temp dir that servers do not treat as a version.
    tmp = [n for n in chain["serving_at_pause"] if n.startswith(".tmp-")]
    assert len(tmp) == 1 and not any(n.isdigit() for n in chain["serving_at_pause"]), chain["serving_at_pause"]
    assert chain["versions_on_disk_at_pause"] == []
    assert tmp[0] in chain["serving_after_kill_b"]
    # D removed the stale temp dir and published version 1.
    assert sorted(os.listdir(base)) == [".push.lock", "1"]
    assert f"Removing {os.path.join(base, tmp[0])}, left by an interrupted push" in logs_text(chain["home"])
    assert watcher.versions_seen == {"1"}


def test_every_file_of_the_served_version_is_complete_and_loads(chain, small_digits):
    import tensorflow as tf
    version_dir = os.path.join(chain["base"], "1")
    assert version_problems(version_dir) == []
    with open(os.path.join(version_dir, PUSH_RECORD)) as f:
        source = json.load(f)["model_uri"]
    source = os.path.join(source, "Format-Serving")
    # Every file of the trained model is in the version, byte for byte.
    files = [os.path.relpath(os.path.join(root, n), source)
             for root, _, names in os.walk(source) for n in names]
    assert files
    match, mismatch, errors = filecmp.cmpfiles(source, version_dir, files, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(files)
    model = tf.saved_model.load(version_dir)
    image = os.path.join(small_digits, "3", sorted(os.listdir(os.path.join(small_digits, "3")))[0])
    with open(image, "rb") as f:
        out = model.signatures["serving_default"](images=tf.constant([f.read()]))
    assert out["probabilities"].shape == (1, 10)


# ---------------------------------------------------------------------------------------
# two runs on one HOME


def test_second_run_on_the_same_home_is_refused_quickly(chain):
    assert chain["c_returncode"] == 1, chain["c_output"][-2000:]
    assert chain["d_running_when_c_refused"]
    assert chain["c_seconds"] < 30, chain["c_seconds"]
    message = [line for line in chain["c_output"].splitlines() if line.startswith("conveyor: run failed")]
    assert message == [f"conveyor: run failed: {chain['home']} is in use by another conveyor run "
                       f"(pid {chain['d_pid']}); wait for it to finish or use another --home"]
    assert "Traceback" not in chain["c_output"]
    # The refused run wrote no log and no run of its own (3 runs: A, B, D; see the MLMD test).
    assert len(glob.glob(os.path.join(chain["home"], "logs", "*.log"))) == 3


# ---------------------------------------------------------------------------------------
# corrupt versions at server start-up


def test_serve_reports_and_skips_corrupt_versions_at_startup(tmp_path):
    from serving.testing import save_model, solid_png
    from serving.model_config import register_model
    serving_dir = str(tmp_path / "home" / "serving")
    base = os.path.join(serving_dir, "image")
    good = save_model(os.path.join(base, "1"), "image")  # a tiny real SavedModel: colour -> class
    truncated = shutil.copytree(good, os.path.join(base, "2"))  # half-written saved_model.pb
    with open(os.path.join(truncated, "saved_model.pb"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(truncated, "saved_model.pb")) // 2)
    no_variables = shutil.copytree(good, os.path.join(base, "3"))  # copy stopped before variables/
    shutil.rmtree(os.path.join(no_variables, "variables"))
    os.makedirs(os.path.join(base, "4"))  # created, nothing copied yet
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, ".tmp-5-4242"))  # killed pusher's temp
    register_model(serving_dir, "image")

    server = ServerProcess(["--home", str(tmp_path / "home")], str(tmp_path / "server.log"))
    try:
        server.wait_ready("image")
        assert versions_by_state(server.url, "image") == {"AVAILABLE": [1], "END": [4, 3, 2]}
        response = requests.post(f"{server.url}/v1/models/image:predict", timeout=30,
                                 json={"instances": [{"b64": base64.b64encode(solid_png((255, 0, 0))).decode()}]})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["class_names"] == "red"
        log = server.log()
    finally:
        server.stop()
    assert f"Model image: serving version(s) 1 from {base}" in log
    for version, why in ((2, "DecodeError"), (3, "variables"), (4, "Could not find SavedModel")):
        line = next((l for l in log.splitlines() if f"Model image: skipped version {version}," in l), None)
        assert line is not None, log[-3000:]
        assert f"{os.path.join(base, str(version))} failed to load" in line and why in line, line
        assert "WARNING" in line
    assert ".tmp-5" not in log
