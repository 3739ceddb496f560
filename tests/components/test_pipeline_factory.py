"""The DAG factory (pipelines/pipeline.py): what the components it builds receive."""
import pytest

from pipelines import beam
from pipelines.config import load_config


def _config(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config("image", str(path))


def test_user_code_fingerprint_reaches_transform_and_trainer(tmp_path, monkeypatch, digits_dir):
    """Edited user code changes Transform's and Trainer's exec properties, hence TFX's cache key."""
    import json
    import shutil

    from modules import settings
    from pipelines import pipeline as factory
    config = load_config("image", overrides={"home": str(tmp_path / "home"), "data": digits_dir})
    modules = tmp_path / "modules"
    shutil.copytree(settings.MODULES_DIR, modules, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(settings, "MODULES_DIR", str(modules))

    def fingerprints():
        components = {c.id: c for c in factory.create_pipeline(config).components}
        props = [components[name].exec_properties for name in ("Transform", "Trainer")]
        assert props[0]["preprocessing_fn"] == factory.PREPROCESSING_FN and not props[0]["module_file"]
        assert props[1]["run_fn"] == factory.RUN_FN and not props[1]["module_file"]
        return [json.loads(p["custom_config"])[settings.MODULES_FINGERPRINT_KEY] for p in props]

    before = fingerprints()
    assert before[0] == before[1] == settings.modules_fingerprint()
    assert fingerprints() == before  # unchanged code: same key, cache hits
    with open(modules / "models.py", "a") as f:
        f.write("\n# an edit\n")
    after = fingerprints()
    assert after[0] == after[1] != before[0]


def test_the_pipeline_gets_the_configured_beam_args(tmp_path, digits_dir):
    from pipelines.pipeline import create_pipeline
    config = _config(tmp_path, f"data: {digits_dir}\nbeam_preset: flink\n"
                               "beam_settings: {job_endpoint: 'flink:8099'}\n")
    flink = ["--runner=PortableRunner", "--job_endpoint=flink:8099", "--environment_type=LOOPBACK"]
    # Workers install this repo's setup.py (which requires tfx) ...
    assert create_pipeline(config).beam_pipeline_args == flink + [f"--setup_file={beam.SETUP_FILE}"]
    # ... except where the pipeline runs from an image that has it installed (Kubeflow).
    assert create_pipeline(config, worker_setup_file=None).beam_pipeline_args == flink
