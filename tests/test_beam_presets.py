"""Beam presets: exact argument lists, and Beam itself parses each of them."""
import os

import pytest
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                  PipelineOptions, PortableOptions,
                                                  SetupOptions, StandardOptions)

from pipelines import beam


def test_direct_uses_every_core():
    args = beam.beam_args("direct")
    assert args == ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={os.cpu_count()}"]
    opts = PipelineOptions(args)
    assert opts.view_as(StandardOptions).runner == "DirectRunner"
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert opts.view_as(DirectOptions).direct_num_workers == os.cpu_count()


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
