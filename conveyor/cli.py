"""`conveyor` command line: run pipelines, serve models, send predictions."""
import argparse
import os
import sys
from typing import List, Optional

from components.spans import split_span_path
from modules.settings import IMAGE_MODELS, IMAGENET_WEIGHTS, NO_WEIGHTS, TEXT_MODELS
from pipelines.config import ConfigError, load_config


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="run the image or text pipeline on the local DAG runner")
    run.add_argument("kind", choices=["image", "text"])
    run.add_argument("--data", help="input data folder (default: offline sample data)")
    run.add_argument("--home", help="Conveyor HOME holding metadata.sqlite, pipelines/, serving/ "
                                    "(default ./conveyor_home)")
    run.add_argument("--config", help="YAML or JSON config file")
    run.add_argument("--model", help=f"image: {'|'.join(IMAGE_MODELS)}; text: {'|'.join(TEXT_MODELS)}")
    run.add_argument("--name", help="model name (default image_classifier / text_classifier)")
    run.add_argument("--train-steps", type=int)
    run.add_argument("--eval-steps", type=int)
    run.add_argument("--epochs", type=int)
    run.add_argument("--input-pattern", help="glob under --data, may contain {SPAN}")
    run.add_argument("--warm-start", action="store_true", default=None,
                     help="start training from the latest blessed model's weights when it matches")
    run.add_argument("--skip-bad-images", action="store_true", default=None,
                     help="skip unreadable images instead of stopping (recorded on the artifact)")
    run.add_argument("--skip-bad-rows", action="store_true", default=None,
                     help="skip malformed text rows instead of stopping (recorded on the artifact)")
    run.add_argument("--force", action="store_true",
                     help="run the pipeline even when nothing changed since the last run")
    run.add_argument("--canary", action="store_true", default=None,
                     help="push a blessed model as the `canary` version while the serving one stays "
                          "`stable` (conveyor promote / rollback end it)")


def cmd_run(args) -> int:
    """`conveyor run`: 0 when the run completed (blessed or not), 1 when it failed or a gate
    stopped it. Raises ConfigError for a bad config or --data (main() turns it into exit 2)."""
    from conveyor.runner import ConveyorError, run
    overrides = {"home": args.home, "model": args.model, "name": args.name,
                 "train_steps": args.train_steps, "eval_steps": args.eval_steps, "epochs": args.epochs,
                 "input_pattern": args.input_pattern, "skip_bad_images": args.skip_bad_images,
                 "skip_bad_rows": args.skip_bad_rows, "warm_start": args.warm_start,
                 "canary": args.canary}
    config = load_config(args.kind, args.config, overrides)
    data = args.data or config.data
    # With a {SPAN} spec, the folder above the span folders must exist (spans may come later).
    if data and not os.path.exists(split_span_path(data)[0]):
        raise ConfigError(f"--data {data}: no such file or directory")
    config = config.with_local_data(data)
    weights = config.backbone_weights
    if config.model == "transfer" and weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS) and not os.path.isfile(weights):
        raise ConfigError(f"key 'backbone_weights': no such file {weights}; expected imagenet, none or a local "
                          "Keras weights file (.h5)")
    try:
        run(config, force=args.force)
    except ConveyorError as e:
        print(f"\nconveyor: run failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_download(args) -> int:
    """`conveyor download`: fetches a public dataset; 0 on success, 1 with one line on failure."""
    from data.downloads import CLASS_NAMES, DownloadError, download_idx_dataset
    from data.imdb import download_aclimdb
    try:
        if args.dataset == "imdb":
            print(f"aclImdb reviews in {download_aclimdb(args.out)} (conveyor run text --data DIR)")
            return 0
        files = download_idx_dataset(args.dataset, args.out)
    except (DownloadError, OSError, ValueError) as e:
        print(f"conveyor: {e}", file=sys.stderr)
        return 1
    print("\n".join(files))
    print(f"class_names for the config: {CLASS_NAMES[args.dataset]}")
    return 0


def cmd_ui(args) -> int:
    """`conveyor ui`: serves the dashboard until Ctrl-C; 0 then, 1 with one line when the
    port cannot be bound, 2 with one line for a port outside 1..65535, a --serving-url
    that is not http(s)://host[:port] or a bad --config."""
    from conveyor.ui import UiArgumentError, check_port, check_serving_url, serve
    try:
        check_port(args.port)
        args.serving_url = check_serving_url(args.serving_url)
    except UiArgumentError as e:
        print(f"conveyor: ui: {e}", file=sys.stderr)
        return 2
    from conveyor.metadata.store import store_location
    try:
        where = store_location(args.home, args.config)
    except ConfigError as e:
        print(f"conveyor: ui: {e}", file=sys.stderr)
        return 2
    try:
        serve(where.home, port=args.port, host=args.host, serving_url=args.serving_url, metadata=where.metadata)
    except OSError as e:
        print(f"conveyor: ui: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The `conveyor` command; returns the exit status (0 ok, 1 failed run or stdout's reader
    gone, 2 bad command line)."""
    from serving.console import run_command
    return run_command(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: List[str]) -> int:
    # serve/predict keep TF Serving's own flag names, so their parsers own the arguments.
    if argv and argv[0] == "serve":
        from conveyor.serve import main as serve_main
        return serve_main(argv[1:])
    if argv and argv[0] == "predict":
        from serving.client import main as predict_main
        return predict_main(argv[1:])
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("serve", help="TF Serving-compatible model server (see conveyor serve --help)")
    sub.add_parser("predict", help="send images or texts to a model server (see conveyor predict --help)")
    download = sub.add_parser("download", help="fetch MNIST, Fashion-MNIST or aclImdb as published (needs internet)")
    download.add_argument("dataset", choices=["mnist", "fashion-mnist", "imdb"])
    download.add_argument("--out", required=True, help="target folder")
    compile_ = sub.add_parser("compile", help="compile the image and text pipelines for an orchestrator")
    compile_.add_argument("target", choices=["kubeflow"])
    compile_.add_argument("--out", required=True, help="folder for <name>.json (Vertex) and <name>.yaml (KFP)")
    compile_.add_argument("--image", help="container image with this repo installed (default conveyor:latest)")
    compile_.add_argument("--pipeline-root", help="gs://, s3:// or minio:// root (default minio://mlpipeline/conveyor)")
    compile_.add_argument("--image-config", help="YAML/JSON config of the image pipeline")
    compile_.add_argument("--text-config", help="YAML/JSON config of the text pipeline")
    ui = sub.add_parser("ui", help="local read-only dashboard of runs, models and comparisons (a web page)")
    ui.add_argument("--home", help="Conveyor HOME holding metadata.sqlite and serving/ (default ./conveyor_home)")
    ui.add_argument("--config", help="config file whose `metadata:` (and `home:`) say where ML Metadata is")
    ui.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: only this machine; the pages are not authenticated)")
    ui.add_argument("--serving-url", help="a running `conveyor serve` REST URL, e.g. http://127.0.0.1:8501, "
                                          "for its live versions and request counts")
    from conveyor import history_cli
    history_cli.add_commands(sub)
    from conveyor import drift_cli
    drift_cli.add_command(sub)
    from conveyor import bless
    bless.add_command(sub)
    from conveyor import backbone
    backbone.add_command(sub)
    from conveyor import production_cli
    production_cli.add_commands(sub)
    from conveyor import metadata_copy
    metadata_copy.add_command(sub)
    args = parser.parse_args(argv)
    if args.command == "export-backbone":
        return backbone.cmd_export_backbone(args)
    if args.command in production_cli.COMMANDS:
        return production_cli.dispatch(args)
    if args.command == "metadata":
        return metadata_copy.cmd_metadata(args)
    if args.command == "drift":
        return drift_cli.cmd_drift(args)
    if args.command == "bless":
        return bless.cmd_bless(args)
    if args.command == "download":
        return cmd_download(args)
    if args.command == "ui":
        return cmd_ui(args)
    if args.command in history_cli.COMMANDS:
        return history_cli.dispatch(args)
    if args.command == "compile":
        from kubeflow import runner as kfp_runner
        try:
            paths = kfp_runner.compile_all(
                args.out, image=args.image or kfp_runner.DEFAULT_IMAGE,
                pipeline_root=args.pipeline_root or kfp_runner.DEFAULT_PIPELINE_ROOT,
                config_paths={"image": args.image_config, "text": args.text_config})
        except ConfigError as e:
            print(f"conveyor: {e}", file=sys.stderr)
            return 2
        print("\n".join(paths))
        return 0
    try:
        return cmd_run(args)
    except ConfigError as e:
        print(f"conveyor: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
