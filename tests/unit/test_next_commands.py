"""The "Next:" block after a run (conveyor/runner.py): commands the user can paste."""
import os
import sys

from conveyor import runner
from pipelines.config import Config


def _venv(root):
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "conveyor").write_text("#!/bin/sh\n")
    (bin_dir / "conveyor").chmod(0o755)
    return bin_dir


def test_conveyor_is_written_as_the_user_can_run_it(tmp_path, monkeypatch):
    bin_dir = _venv(tmp_path / "clone")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "conveyor").write_text("#!/bin/sh\n")
    (other / "conveyor").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:/usr/bin")  # another installation's conveyor on PATH
    assert runner.conveyor_command(str(tmp_path / "clone")) == ".venv/bin/conveyor"
    assert runner.conveyor_command(str(tmp_path)) == "clone/.venv/bin/conveyor"
    assert runner.conveyor_command(str(other)) == str(bin_dir / "conveyor")
    monkeypatch.setenv("PATH", f"{bin_dir}:{other}:/usr/bin")  # the venv activated
    assert runner.conveyor_command(str(tmp_path / "clone")) == "conveyor"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bare" / "python"))
    assert runner.conveyor_command(str(tmp_path)) == f"{tmp_path / 'bare' / 'python'} -m conveyor.cli"


def test_the_bless_hint_names_the_run(tmp_path, monkeypatch):
    bin_dir = _venv(tmp_path)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path)
    config = Config(kind="image", home=str(tmp_path / "home"), data=str(tmp_path))
    text = runner.next_commands(config, None, "2026-01-01T10:00:00.5", blessable=True)
    assert "nothing is served yet for image_classifier" in text
    assert (f".venv/bin/conveyor bless --run 2026-01-01T10:00:00.5 --reason \"...\" --home {config.home_dir}"
            in text)
    assert "RUN" not in text and "\n  conveyor " not in text
    # An older version is served: serve and predict it, and still offer to bless this run.
    os.makedirs(os.path.join(config.serving_model_dir, "1"))
    text = runner.next_commands(config, None, "2026-01-01T10:00:00.5", blessable=True)
    assert f".venv/bin/conveyor serve --home {config.home_dir}" in text and "version 1" in text
    assert "bless --run 2026-01-01T10:00:00.5" in text
    assert "conveyor bless" not in runner.next_commands(config, None, "2026-01-01T10:00:00.5", blessable=False)
