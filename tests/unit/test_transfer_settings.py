"""The transfer model's and augmentation's settings (Config -> ModuleSettings), the report's
phase sentence, and `conveyor export-backbone`'s refusals that need no TensorFlow."""
import json
import os

import pytest

from conveyor import pictures
from conveyor.backbone import BackboneExportError, BackboneUsageError, export_backbone, version_dir
from modules.settings import MODEL_SETTINGS_FILE, TRANSFER_PHASE_LOG, ModuleSettings
from pipelines.config import Config, ConfigError, load_config
from pipelines.preflight import config_fingerprint


def _load(tmp_path, text, overrides=None, kind="image"):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(kind, str(path), overrides)


def test_transfer_settings_reach_the_trainer_resolved(tmp_path):
    config = _load(tmp_path, "model: transfer\nimage_size: 48\ntraining:\n  backbone: vgg16\n"
                             "  backbone_weights: /w/vgg16.h5\n  fine_tune_layers: 4\n  epochs: 5\n"
                             "augment: [flip, {rotation: 0.25}, {zoom: 0.1}, contrast]\n")
    settings = config.module_settings()
    assert (settings.backbone, settings.backbone_weights, settings.fine_tune_layers) == ("vgg16", "/w/vgg16.h5", 4)
    assert settings.backbone_weights_sha256 == ""  # not on this machine: the Trainer's host may have it
    assert settings.head_epochs == 3  # half of the 5 epochs, rounded up
    assert settings.fine_tune_learning_rate == pytest.approx(config.learning_rate / 10)
    assert settings.augment == (("flip", "horizontal"), ("rotation", 0.25), ("zoom", 0.1), ("contrast", 0.2))
    # custom_config is JSON on its way to run_fn: the same settings come back.
    assert ModuleSettings.from_custom_config(json.loads(json.dumps(settings.to_custom_config()))) == settings
    assert _load(tmp_path, "model: transfer\nimage_size: 32\n").module_settings().head_epochs == 5


@pytest.mark.parametrize("text, message", [
    ("model: transfer\n", "config: key 'image_size': backbone mobilenet_v2 needs images of at least 32x32 "
                          "(keras.applications), got 28; raise image_size"),
    ("model: transfer\nimage_size: 31\nbackbone: efficientnet_b0\n",
     "key 'image_size': backbone efficientnet_b0 needs images of at least 32x32"),
    ("model: transfer\nimage_size: 32\nbackbone: resnet50\n",
     "key 'backbone': expected one of mobilenet_v2, vgg16, efficientnet_b0, got 'resnet50'"),
    ("model: transfer\nimage_size: 32\nbackbone: vgg16\nfine_tune_layers: 19\n",
     "key 'fine_tune_layers': backbone vgg16 has 18 layers, got 19"),
    ("model: transfer\nimage_size: 32\nfine_tune_layers: 3\nepochs: 1\n",
     "key 'fine_tune_layers': fine-tuning needs epochs of its own after the head's"),
    ("model: transfer\nimage_size: 32\nfine_tune_layers: 3\nhead_epochs: 5\n",
     "key 'head_epochs': fine-tuning runs the epochs after the head's, so head_epochs must be below epochs (5)"),
    ("model: transfer\nimage_size: 32\nhead_epochs: 2\n",
     "key 'head_epochs': without fine-tuning (fine_tune_layers 0) the head trains for all 5 epochs, got 2"),
    ("model: transfer\nimage_size: 32\nfine_tune_learning_rate: 0\n", "key 'fine_tune_learning_rate': expected > 0"),
    ("model: cnn\nbackbone: vgg16\n", "key 'backbone' applies to model transfer only, and the model is 'cnn'"),
    ("fine_tune_layers: 2\n", "key 'fine_tune_layers' applies to model transfer only"),
    ("model: transfer\nimage_size: 32\nbackbone_weights: none\nfine_tune_layers: 2\n",
     "key 'fine_tune_layers': backbone_weights none trains the whole model from scratch"),
    ("augment: flip\n", "key 'augment': expected a list of flip, rotation, zoom, contrast"),
    ("augment: [blur]\n", "key 'augment': expected a list of flip, rotation, zoom, contrast"),
    ("augment: [{rotation: 1.5}]\n", "got [{'rotation': 1.5}]"),
    ("augment: [{flip: diagonal}]\n", "(flip: horizontal | vertical | horizontal_and_vertical; rotation, zoom, "
                                      "contrast: a number in (0, 1))"),
    ("augment: [zoom, {zoom: 0.2}]\n", "each at most once"),
    ("augment: [{zoom: true}]\n", "key 'augment'"),
])
def test_bad_transfer_settings_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_augmentation_is_for_image_models_only(tmp_path):
    with pytest.raises(ConfigError, match="key 'augment': augmentation applies to image models only"):
        _load(tmp_path, "augment: [flip]\n", kind="text")
    assert _load(tmp_path, "model: mlp\naugment: [flip]\n").module_settings().augment == (("flip", "horizontal"),)


def test_a_weights_path_is_local_and_its_content_counts(tmp_path, monkeypatch):
    """Relative to the working directory, made absolute for the run; editing the file is a new
    Trainer input (ModuleSettings) and a new run input (pre-flight fingerprint)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.h5").write_bytes(b"one")
    config = Config(model="transfer", image_size=32, backbone_weights="w.h5", home=str(tmp_path / "h"))
    local = config.with_local_data(str(tmp_path))
    assert local.backbone_weights == str(tmp_path / "w.h5")
    first, print_first = local.module_settings().backbone_weights_sha256, config_fingerprint(local)
    (tmp_path / "w.h5").write_bytes(b"two")
    assert local.module_settings().backbone_weights_sha256 not in ("", first)
    assert config_fingerprint(local) != print_first
    assert Config(model="transfer", image_size=32).module_settings().backbone_weights_sha256 == ""


def test_the_report_says_which_epochs_trained_the_head_and_which_fine_tuned():
    history = {"train": {"loss": [(0, 1.0)], TRANSFER_PHASE_LOG: [(0, 0.0), (1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)]}}
    assert pictures.transfer_phases_html(history) == (
        '<p id="transfer-phases">Transfer learning: epochs 1-3 trained the new head with the backbone frozen; '
        "epochs 4-5 fine-tuned the backbone's top layers with it, at the lower fine-tuning learning rate.</p>")
    head_only = {"train": {TRANSFER_PHASE_LOG: [(0, 0.0)]}}
    assert pictures.transfer_phases_html(head_only) == (
        '<p id="transfer-phases">Transfer learning: epoch 1 trained the new head with the backbone frozen.</p>')
    assert pictures.transfer_phases_html({"train": {"loss": [(0, 1.0)]}}) == ""


def _version(home, name, version, settings=None):
    path = home / "serving" / name / str(version)
    path.mkdir(parents=True)
    if settings is not None:
        (path / "assets.extra").mkdir()
        (path / MODEL_SETTINGS_FILE).write_text(json.dumps({"settings": settings.to_custom_config(),
                                                            "num_classes": 2}))
    return str(path)


def test_export_backbone_finds_versions_and_refuses_what_has_no_backbone(tmp_path):
    home = tmp_path / "home"
    _version(home, "digits", 1, ModuleSettings(kind="image", name="digits", model="transfer"))
    newest = _version(home, "digits", 12, ModuleSettings(kind="image", name="digits", model="transfer"))
    _version(home, "cnn_model", 1, ModuleSettings(kind="image", name="cnn_model", model="cnn"))
    _version(home, "old", 3)  # exported before the Trainer recorded its settings
    (home / "serving" / "digits" / ".tmp-13").mkdir()  # a Pusher copy under way is no version
    assert version_dir(str(home), "digits", None) == newest
    assert version_dir(str(home), "digits", "v1") == str(home / "serving" / "digits" / "1")
    out = str(tmp_path / "b.weights.h5")
    refusals = [
        (("nope", None, out), BackboneExportError,
         f"no pushed model 'nope' in {home}/serving (pushed models: cnn_model, digits, old)"),
        (("digits", "5", out), BackboneExportError, "model 'digits' has no version 5; pushed versions: 1, 12"),
        (("digits", "five", out), BackboneUsageError, "--version 'five': expected a version number such as 3 or v3"),
        (("cnn_model", None, out), BackboneExportError,
         "model 'cnn_model' version 1 is a cnn model, not a transfer model; export-backbone needs a model "
         "trained with model: transfer"),
        (("old", None, out), BackboneExportError, f"model 'old' version 3 has no {MODEL_SETTINGS_FILE}: it was "
                                                  "exported before transfer models existed"),
        (("digits", None, str(tmp_path / "b.keras")), BackboneUsageError,
         "expected a Keras weights file name ending in .h5"),
        (("digits", None, str(tmp_path / "no" / "b.h5")), BackboneUsageError, "does not exist"),
    ]
    for args, error, message in refusals:
        with pytest.raises(error) as raised:
            export_backbone(str(home), *args)
        assert message in str(raised.value), str(raised.value)
    assert not os.path.exists(out)
    with pytest.raises(BackboneExportError, match="nothing pushed yet"):
        export_backbone(str(tmp_path / "empty"), "digits", None, out)


def test_export_backbone_exit_statuses(tmp_path, capsys):
    from conveyor.cli import main
    home = tmp_path / "home"
    _version(home, "cnn_model", 1, ModuleSettings(kind="image", name="cnn_model", model="cnn"))
    base = ["export-backbone", "--home", str(home), "--out", str(tmp_path / "b.h5")]
    assert main(base + ["--model", "cnn_model"]) == 1
    assert capsys.readouterr().err.startswith("conveyor export-backbone: model 'cnn_model' version 1 is a cnn model")
    assert main(base + ["--model", "cnn_model", "--version", "x"]) == 2
    with pytest.raises(SystemExit):
        main(["export-backbone", "--model", "cnn_model"])  # --out is required


def test_export_backbone_refuses_a_folder_as_out(tmp_path, capsys):
    from conveyor.cli import main
    home = tmp_path / "home"
    _version(home, "cnn_model", 1, ModuleSettings(kind="image", name="cnn_model", model="cnn"))
    (tmp_path / "d.h5").mkdir()
    assert main(["export-backbone", "--home", str(home), "--model", "cnn_model",
                 "--out", str(tmp_path / "d.h5")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a folder; give a file name ending in .h5")
