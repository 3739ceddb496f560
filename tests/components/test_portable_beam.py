"""The portable Beam path of the `flink` / `spark` presets, for real: PortableRunner, a job
endpoint and environment_type EXTERNAL with a worker pool's address.

Flink's and Spark's Beam job servers are Java jars this machine cannot download; Beam ships a
Python job service speaking the same Job API (apache_beam.runners.portability.
local_job_service_main) and an external SDK worker pool (apache_beam.runners.worker.
worker_pool_main). TFX's StatisticsGen executor runs on tiny digits through them with the
preset's flags; its TFDV code must run in SDK worker processes the pool starts (seen in /proc:
children of the pool that load TFDV's extension), and the statistics must equal those of the
in-memory DirectRunner.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines.beam import preset_from_settings, with_worker_setup_file
from tests.support.helpers import run_example_gen, subset_digits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, log: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {open(log).read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"port {port} not listening after {timeout} s: {open(log).read()[-2000:]}")


def _children(pid: int):
    """(pid, cmdline, maps text) of the live processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/maps") as f:
                maps = f.read()
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(entry), cmdline, maps))
    return out


class ChildWatcher:
    """Polls the children of a process while a job runs: which ran an SDK harness, which
    loaded TFDV's native extension (so ran StatisticsGen's code)."""

    def __init__(self, pid: int):
        self.pid, self.harness, self.tfdv = pid, set(), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            for pid, cmdline, maps in _children(self.pid):
                if "SdkHarness" in cmdline:
                    self.harness.add(pid)
                if "tensorflow_data_validation" in maps:
                    self.tfdv.add(pid)
            self._stop.wait(0.3)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """A Beam job service and an external worker pool on loopback ports (stopped afterwards)."""
    root = tmp_path_factory.mktemp("beam_portable")
    # The pool starts workers as `python -c ...`: the venv's python must come first on PATH.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    job_port, pool_port = _free_port(), _free_port()
    logs = {name: str(root / f"{name}.log") for name in ("job", "pool")}
    commands = {
        "pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
        "job": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                f"--port={job_port}", f"--staging_dir={root / 'staging'}"],
    }
    processes = {}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, stdout=open(logs[name], "w"), stderr=subprocess.STDOUT,
                                               env=env, start_new_session=True)
        _wait_port(pool_port, processes["pool"], logs["pool"])
        _wait_port(job_port, processes["job"], logs["job"])
        yield {"job_endpoint": f"localhost:{job_port}", "pool": f"localhost:{pool_port}",
               "pool_pid": processes["pool"].pid, "logs": logs}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def examples(digits_dir, tmp_path_factory):
    from components.image_example_gen import ImageExampleGen, detect_input_pattern
    root = tmp_path_factory.mktemp("beam_portable_examples")
    data = subset_digits(digits_dir, str(root / "digits"), per_class=20)
    component = ImageExampleGen(input_base=data, input_pattern=detect_input_pattern(data))
    return run_example_gen(component, str(root / "examples"))


def _statistics(examples, out_dir: str, beam_args):
    """Runs TFX's StatisticsGen executor with `beam_args`; returns split -> statistics proto."""
    from tfx.components.statistics_gen import executor, stats_artifact_utils
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    from tfx.types import artifact_utils, standard_artifacts
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = out_dir
    context = BaseBeamExecutor.Context(beam_pipeline_args=beam_args, tmp_dir=os.path.join(out_dir, ".tmp"))
    executor.Executor(context).Do({"examples": [examples]}, {"statistics": [statistics]}, {"exclude_splits": "[]"})
    return {split: stats_artifact_utils.load_statistics(statistics, split).proto()
            for split in artifact_utils.decode_split_names(statistics.split_names)}


def _comparable(statistics):
    """The statistics without what depends on bundle boundaries (sketch-based quantiles and
    histograms): per feature, its path, type and common/numeric/string counts and moments."""
    out = {}
    for dataset in statistics.datasets:
        for feature in dataset.features:
            kind = feature.WhichOneof("stats")
            stats = getattr(feature, kind)
            common = stats.common_stats
            row = {"type": feature.type, "num_non_missing": common.num_non_missing,
                   "num_missing": common.num_missing, "min_num_values": common.min_num_values,
                   "max_num_values": common.max_num_values}
            if kind == "num_stats":
                row.update(mean=round(stats.mean, 6), std=round(stats.std_dev, 6), min=stats.min, max=stats.max,
                           zeros=stats.num_zeros)
            elif kind == "string_stats":
                row.update(unique=stats.unique, top=sorted((v.value, v.frequency) for v in stats.top_values))
            out[tuple(feature.path.step)] = row
        out["num_examples"] = dataset.num_examples
    return out


def test_statistics_gen_runs_in_external_workers_and_matches_the_direct_runner(portable_services, examples,
                                                                                tmp_path):
    args = with_worker_setup_file(preset_from_settings("flink", {
        "job_endpoint": portable_services["job_endpoint"], "environment_type": "EXTERNAL",
        "environment_config": portable_services["pool"]}))
    assert args[:4] == ["--runner=PortableRunner", f"--job_endpoint={portable_services['job_endpoint']}",
                        "--environment_type=EXTERNAL", f"--environment_config={portable_services['pool']}"]
    with ChildWatcher(portable_services["pool_pid"]) as watcher:
        portable = _statistics(examples, str(tmp_path / "portable"), args)
    direct = _statistics(examples, str(tmp_path / "direct"), ["--direct_running_mode=in_memory",
                                                              "--direct_num_workers=1"])
    # TFDV ran in SDK worker processes the pool started, not in this (submitting) process.
    assert watcher.harness, open(portable_services["logs"]["pool"]).read()[-2000:]
    assert watcher.tfdv and watcher.tfdv <= watcher.harness and os.getpid() not in watcher.tfdv
    assert "Starting worker with command" in open(portable_services["logs"]["pool"]).read()
    assert sorted(portable) == sorted(direct) == ["eval", "train"]
    for split in direct:
        assert _comparable(portable[split]) == _comparable(direct[split]), split
        assert _comparable(direct[split])["num_examples"] > 0
