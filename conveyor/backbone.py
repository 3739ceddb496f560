"""`conveyor export-backbone`: the backbone weights of a pushed transfer model, as a Keras
weights file that another run's `backbone_weights` loads (pretrain on one task, start the
next from it; README "Transfer learning").

The pushed versions are the integer-named folders under HOME/serving/<name>/, as the server
and the Pusher see them. The version's assets.extra/conveyor_model.json (written by the
Trainer) says whether it is a transfer model before TensorFlow is imported.
"""
import argparse
import os
import sys
from typing import List, Optional

from modules.settings import MODEL_SETTINGS_FILE, ModuleSettingsError, read_model_settings
from pipelines.config import DEFAULT_HOME

WEIGHTS_SUFFIX = ".h5"


class BackboneExportError(ValueError):
    """A model or version that cannot give a backbone (exit status 1); one line says why."""


class BackboneUsageError(ValueError):
    """Flags that do not make the command (exit status 2)."""


def pushed_versions(model_dir: str) -> List[int]:
    """The integer-named version folders under a model's serving folder, ascending."""
    names = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    return sorted(int(n) for n in names if n.isascii() and n.isdigit() and os.path.isdir(os.path.join(model_dir, n)))


def version_dir(home: str, name: str, version: Optional[str]) -> str:
    """The pushed version folder HOME/serving/NAME/V (V = the newest when version is None).

    Args:
      home: Conveyor HOME.
      name: model name.
      version: "3", "v3", or None / "" / "latest" for the newest pushed version.
    Raises:
      BackboneUsageError: a version that is not a number.
      BackboneExportError: unknown model, nothing pushed, or no such version.
    """
    serving = os.path.join(home, "serving")
    model_dir = os.path.join(serving, name)
    if not os.path.isdir(model_dir):
        known = sorted(n for n in (os.listdir(serving) if os.path.isdir(serving) else [])
                       if pushed_versions(os.path.join(serving, n)))
        raise BackboneExportError(f"no pushed model '{name}' in {serving} ("
                                  + (f"pushed models: {', '.join(known)})" if known else "nothing pushed yet)"))
    versions = pushed_versions(model_dir)
    if not versions:
        raise BackboneExportError(f"model '{name}' has no pushed versions in {model_dir}")
    if version in (None, "", "latest"):
        return os.path.join(model_dir, str(versions[-1]))
    digits = version[1:] if version[:1] in ("v", "V") else version
    if not (digits.isascii() and digits.isdigit()):
        raise BackboneUsageError(f"--version {version!r}: expected a version number such as 3 or v3")
    if int(digits) not in versions:
        raise BackboneExportError(f"model '{name}' has no version {int(digits)}; pushed versions: "
                                  + ", ".join(map(str, versions)))
    return os.path.join(model_dir, str(int(digits)))


def export_backbone(home: str, name: str, version: Optional[str], out: str) -> str:
    """Writes the backbone weights of a pushed transfer model to `out`, atomically (a
    temporary file beside it, then a rename: `out` is either the old file or the new one).

    Args:
      home: Conveyor HOME.
      name: model name.
      version: see version_dir.
      out: the weights file, ending in .h5 (.weights.h5 = Keras v3 weights format).
    Returns:
      one line saying what was written.
    Raises:
      BackboneUsageError: `out` not ending in .h5, its folder missing, a bad version.
      BackboneExportError: see version_dir; the version is not a transfer model.
    """
    if not out.endswith(WEIGHTS_SUFFIX):
        raise BackboneUsageError(f"--out {out}: expected a Keras weights file name ending in .h5 "
                                 "(e.g. backbone.weights.h5)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise BackboneUsageError(f"--out {out}: folder {folder} does not exist")
    if os.path.isdir(out):
        raise BackboneUsageError(f"--out {out} is a folder; give a file name ending in .h5")
    source = version_dir(home, name, version)
    where = f"model '{name}' version {os.path.basename(source)}"
    try:
        settings, _ = read_model_settings(source)
    except FileNotFoundError:
        raise BackboneExportError(f"{where} has no {MODEL_SETTINGS_FILE}: it was exported before transfer "
                                  "models existed, so it is not a transfer model") from None
    except ModuleSettingsError as e:
        raise BackboneExportError(f"{where}: {e}") from None
    if settings.model != "transfer":
        raise BackboneExportError(f"{where} is a {settings.model} model, not a transfer model; "
                                  "export-backbone needs a model trained with model: transfer")
    from modules.export import save_backbone_weights  # TensorFlow: only once there is work to do
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(out)}")  # same suffix: same format
    try:
        save_backbone_weights(source, temporary)
        os.replace(temporary, out)
    except ValueError as e:
        raise BackboneExportError(f"{where}: {e}") from None
    except OSError as e:  # e.g. a read-only folder
        raise BackboneExportError(f"--out {out}: cannot write it: {e.strerror or e}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return (f"wrote the {settings.backbone} backbone of {where} ({settings.image_size}x{settings.image_size} "
            f"images) to {out}; use it with backbone: {settings.backbone}, backbone_weights: {os.path.abspath(out)}")


def add_command(sub) -> None:
    """Adds `export-backbone` to an argparse subparsers object."""
    command = sub.add_parser("export-backbone", help="write the backbone weights of a pushed transfer model to a "
                                                     "Keras weights file (backbone_weights of the next run)")
    command.add_argument("--model", required=True, help="model name (HOME/serving/<model>)")
    command.add_argument("--version", help="pushed version, e.g. 3 or v3 (default: the newest)")
    command.add_argument("--out", required=True, help="weights file to write, ending in .h5 "
                                                      "(e.g. backbone.weights.h5)")
    command.add_argument("--home", help=f"Conveyor HOME holding serving/ (default ./{DEFAULT_HOME})")


def cmd_export_backbone(args: argparse.Namespace) -> int:
    """`conveyor export-backbone`: 0 when written, 1 when the model/version gives no backbone,
    2 for bad flags; errors are one line on stderr."""
    from conveyor.quiet import third_party_output
    home = os.path.abspath(args.home or DEFAULT_HOME)
    try:
        with third_party_output(home, "export-backbone"):
            message = export_backbone(home, args.model, args.version, args.out)
    except BackboneUsageError as e:
        print(f"conveyor export-backbone: {e}", file=sys.stderr)
        return 2
    except BackboneExportError as e:
        print(f"conveyor export-backbone: {e}", file=sys.stderr)
        return 1
    print(message)
    return 0
