"""Beam presets: exact argument lists, Beam itself parses each of them, and a config selects them."""
import os

import pytest
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions,
                                                  SetupOptions, StandardOptions)

from pipelines import beam


def test_direct_uses_every_core():
    cores = len(os.sched_getaffinity(0))
    assert beam.cores() == cores
    args = beam.beam_args("direct")
    assert args == ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={cores}"]
    opts = PipelineOptions(args)
    assert opts.view_as(StandardOptions).runner == "DirectRunner"
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert opts.view_as(DirectOptions).direct_num_workers == cores


@pytest.mark.parametrize("preset", ["flink", "spark"])
def test_portable_presets(preset):
    args = beam.beam_args(preset, job_endpoint="jobserver:8099")
    assert args == ["--runner=PortableRunner", "--job_endpoint=jobserver:8099",
                    "--environment_type=LOOPBACK"]
    portable = PipelineOptions(args).view_as(PortableOptions)
    assert portable.job_endpoint == "jobserver:8099"
    assert portable.environment_type == "LOOPBACK"

    docker = beam.beam_args(preset, job_endpoint="jobserver:8099", environment_type="docker",
                            environment_config="registry/conveyor:1")
    portable = PipelineOptions(docker).view_as(PortableOptions)
    assert portable.environment_type == "DOCKER"
    assert portable.environment_config == "registry/conveyor:1"


def test_portable_presets_need_their_settings():
    with pytest.raises(beam.BeamPresetError, match="job_endpoint"):
        beam.beam_args("flink")
    with pytest.raises(beam.BeamPresetError, match="environment_config"):
        beam.beam_args("spark", job_endpoint="j:8099", environment_type="DOCKER")


def test_dataflow_installs_this_repo():
    args = beam.beam_args("dataflow", project="proj", region="europe-west1",
                          temp_location="gs://bucket/tmp", max_num_workers=4)
    assert args[:4] == ["--runner=DataflowRunner", "--project=proj", "--region=europe-west1",
                        "--temp_location=gs://bucket/tmp"]
    opts = PipelineOptions(args)
    setup_file = opts.view_as(SetupOptions).setup_file
    assert setup_file == os.path.join(beam.PROJECT_ROOT, "setup.py") and os.path.isfile(setup_file)
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("proj", "europe-west1", "gs://bucket/tmp")
    with pytest.raises(beam.BeamPresetError, match="project, region, temp_location"):
        beam.beam_args("dataflow")


def test_unknown_preset_and_settings():
    with pytest.raises(beam.BeamPresetError, match="known: direct, flink, spark, dataflow"):
        beam.beam_args("local")
    assert beam.preset_from_settings("direct", {"workers": 3})[-1] == "--direct_num_workers=3"
    with pytest.raises(beam.BeamPresetError, match="unknown key"):
        beam.preset_from_settings("direct", {"cores": 3})
    with pytest.raises(beam.BeamPresetError, match="key 'workers': expected a positive integer"):
        beam.preset_from_settings("direct", {"workers": "3"})
    with pytest.raises(beam.BeamPresetError, match="key 'extra': expected a list of strings"):
        beam.preset_from_settings("flink", {"job_endpoint": "j:8099", "extra": "--x"})


def _config(tmp_path, text):
    from pipelines.config import load_config
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config("image", str(path))


def test_config_default_is_in_memory_direct_runner():
    from pipelines.config import load_config
    args = load_config("image").beam_args
    assert args == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    assert PipelineOptions(args).view_as(DirectOptions).direct_running_mode == "in_memory"


def test_config_selects_a_preset_and_appends_beam_args(tmp_path):
    config = _config(tmp_path, "beam_preset: direct\n")
    assert config.beam_args == beam.beam_args("direct")
    config = _config(tmp_path, "beam_preset: direct\nbeam_settings: {workers: 3}\n"
                               "beam_args: ['--direct_running_mode=multi_threading']\n")
    opts = PipelineOptions(config.beam_args).view_as(DirectOptions)
    assert (opts.direct_num_workers, opts.direct_running_mode) == (3, "multi_threading")
    config = _config(tmp_path, "beam_preset: spark\nbeam_settings:\n  job_endpoint: spark:8099\n"
                               "  environment_type: EXTERNAL\n  environment_config: pool:50000\n")
    assert config.beam_args == ["--runner=PortableRunner", "--job_endpoint=spark:8099",
                                "--environment_type=EXTERNAL", "--environment_config=pool:50000"]
    config = _config(tmp_path, "beam_preset: dataflow\nbeam_settings: {project: p, region: r, "
                               "temp_location: 'gs://b/t'}\n")
    assert f"--setup_file={beam.SETUP_FILE}" in config.beam_args


def test_config_refuses_bad_presets_in_one_line(tmp_path):
    from pipelines.config import ConfigError
    with pytest.raises(ConfigError, match="unknown beam preset 'local'"):
        _config(tmp_path, "beam_preset: local\n")
    with pytest.raises(ConfigError, match="beam preset 'flink': set job_endpoint"):
        _config(tmp_path, "beam_preset: flink\n")
    with pytest.raises(ConfigError, match="key 'beam_settings': expected a mapping"):
        _config(tmp_path, "beam_preset: flink\nbeam_settings: [a]\n")



def test_worker_setup_file_spares_tfx_its_sdist_build():
    from tfx.utils import dependency_utils
    args = beam.with_worker_setup_file(["--direct_num_workers=1"])
    assert args == ["--direct_num_workers=1", f"--setup_file={beam.SETUP_FILE}"]
    # TFX builds and ships an sdist of itself only when no dependency flag is given.
    assert dependency_utils.make_beam_dependency_flags(args) == args
    # A flag that already says what workers install is kept as the only one.
    for given in (["--setup_file=/other/setup.py"], ["--extra_package=/x.tar.gz"],
                  ["--sdk_container_image=img"], ["--requirements_file=r.txt"]):
        assert beam.with_worker_setup_file(given) == given
