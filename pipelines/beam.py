"""Named Beam presets: the `beam_pipeline_args` TFX hands to every Beam-based component
(ExampleGen, StatisticsGen, Transform, Evaluator).

    beam_args("direct")                                   # all local cores
    beam_args("flink", job_endpoint="flink-jobserver:8099")
    beam_args("spark", job_endpoint="spark-jobserver:8099")
    beam_args("dataflow", project="p", region="europe-west1", temp_location="gs://b/tmp")

A config selects one with `beam_preset:` and its `beam_settings:` mapping (the keyword
arguments below); `beam_args:` given as well are appended (Beam keeps the last value of a flag).
Without a preset the config's `beam_args` apply as they are: by default the in-memory
DirectRunner with one worker, because on the demo's small data multi-processing is much slower
(every worker process imports TF/TFX before it does anything; see README "Beam").
"""
import os
from typing import Dict, List, Optional, Sequence

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_FILE = os.path.join(PROJECT_ROOT, "setup.py")
PRESETS = ("direct", "flink", "spark", "dataflow")


class BeamPresetError(ValueError):
    """An unknown preset or a missing setting; the message names the setting."""


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole host when pinned)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _direct(workers: Optional[int] = None) -> List[str]:
    """DirectRunner with one worker process per core (real parallelism, unlike in_memory)."""
    workers = workers or cores()
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}"]


def _portable(job_endpoint: Optional[str], environment_type: str,
              environment_config: Optional[str], preset: str) -> List[str]:
    """Flink and Spark through their Beam job servers (PortableRunner).

    environment_type LOOPBACK runs the SDK workers inside the submitting process (which has
    this repo installed); DOCKER/EXTERNAL need environment_config (an image with this repo
    installed, or a worker-pool address).
    """
    if not job_endpoint:
        raise BeamPresetError(f"beam preset '{preset}': set job_endpoint (host:port of the "
                              f"{preset} Beam job server)")
    environment_type = environment_type.upper()
    if environment_type not in ("LOOPBACK", "DOCKER", "EXTERNAL", "PROCESS"):
        raise BeamPresetError(f"beam preset '{preset}': environment_type must be LOOPBACK, DOCKER, "
                              f"EXTERNAL or PROCESS, got {environment_type!r}")
    args = ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
            f"--environment_type={environment_type}"]
    if environment_type != "LOOPBACK":
        if not environment_config:
            raise BeamPresetError(f"beam preset '{preset}': environment_type {environment_type} "
                                  "needs environment_config (SDK image or worker-pool address)")
        args.append(f"--environment_config={environment_config}")
    return args


def _dataflow(project: Optional[str], region: Optional[str], temp_location: Optional[str],
              sdk_container_image: Optional[str], max_num_workers: Optional[int],
              setup_file: str) -> List[str]:
    missing = [k for k, v in (("project", project), ("region", region),
                              ("temp_location", temp_location)) if not v]
    if missing:
        raise BeamPresetError(f"beam preset 'dataflow': set {', '.join(missing)}")
    args = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
            f"--temp_location={temp_location}",
            # Workers install this repo (components/, modules/ ...) from setup.py.
            f"--setup_file={setup_file}"]
    if sdk_container_image:
        args.append(f"--sdk_container_image={sdk_container_image}")
    if max_num_workers:
        args.append(f"--max_num_workers={max_num_workers}")
    return args


def beam_args(preset: str, *, workers: Optional[int] = None, job_endpoint: Optional[str] = None,
              environment_type: str = "LOOPBACK", environment_config: Optional[str] = None,
              project: Optional[str] = None, region: Optional[str] = None,
              temp_location: Optional[str] = None, sdk_container_image: Optional[str] = None,
              max_num_workers: Optional[int] = None, setup_file: str = SETUP_FILE,
              extra: Sequence[str] = ()) -> List[str]:
    """The Beam argument list of a named preset (see module docstring); `extra` is appended."""
    if preset == "direct":
        args = _direct(workers)
    elif preset in ("flink", "spark"):
        args = _portable(job_endpoint, environment_type, environment_config, preset)
    elif preset == "dataflow":
        args = _dataflow(project, region, temp_location, sdk_container_image, max_num_workers,
                         setup_file)
    else:
        raise BeamPresetError(f"unknown beam preset {preset!r} (known: {', '.join(PRESETS)})")
    return args + list(extra)


DEPENDENCY_FLAGS = ("--extra_package", "--extra_packages", "--setup_file", "--requirements_file",
                    "--sdk_container_image", "--worker_harness_container_image")


def with_worker_setup_file(args: Sequence[str], setup_file: Optional[str] = SETUP_FILE) -> List[str]:
    """`args` plus --setup_file=<this repo's setup.py> unless they already say what workers install.

    Without any such flag every TFX Beam component builds an sdist of the whole tfx package
    to ship to workers (about 1.7 s each, even for the in-memory DirectRunner, which ignores
    it); Conveyor's setup.py already depends on tfx and packages Conveyor's own code.
    """
    args = list(args)
    if setup_file and os.path.exists(setup_file) and not any(
            a.split("=", 1)[0] in DEPENDENCY_FLAGS for a in args):
        args.append(f"--setup_file={setup_file}")
    return args


def preset_from_settings(preset: str, settings: Optional[Dict] = None) -> List[str]:
    """beam_args() from a mapping (e.g. a `beam_settings:` block of a config file)."""
    settings = dict(settings or {})
    unknown = set(settings) - set(_SETTING_TYPES)
    if unknown:
        raise BeamPresetError(f"beam settings: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(_SETTING_TYPES))})")
    for key, value in settings.items():
        expected = _SETTING_TYPES[key]
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif expected is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str) and value != ""
        if not ok:
            what = {int: "a positive integer", list: "a list of strings"}.get(expected, "a string")
            raise BeamPresetError(f"beam settings: key '{key}': expected {what}, got {value!r}")
    return beam_args(preset, **settings)


_SETTING_TYPES = {"workers": int, "job_endpoint": str, "environment_type": str,
                  "environment_config": str, "project": str, "region": str, "temp_location": str,
                  "sdk_container_image": str, "max_num_workers": int, "setup_file": str,
                  "extra": list}
