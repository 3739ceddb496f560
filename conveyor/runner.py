"""`conveyor run`: the pipeline on the local DAG runner, then its summary table and HTML report.

pipelines/local_runner.py runs the DAG under the HOME lock (or, when nothing changed since
the last run, records a no-op rerun instead); this adds what a person reads afterwards, read
back from MLMD: the summary table (run_summary.py), the self-contained report (report.py)
and the next commands to try, with real paths.
"""
import csv
import os
import shlex
import shutil
import sys
from typing import Optional

from conveyor import run_summary
from pipelines import local_runner, preflight
from pipelines.config import Config
from pipelines.local_runner import ConveyorError  # noqa: F401  (what run() raises)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TEXT_COLUMNS = ("text", "review", "sentence")  # components/text_example_gen.py's default order


def _write_report(config: Config, stream) -> Optional[str]:
    """The HTML report is a convenience: failing to write it must not change the run's outcome."""
    from conveyor.report import write_run_report
    try:
        path = write_run_report(config)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        stream.write(f"  report not written: {type(e).__name__}: {e}\n")
        return None
    stream.write(f"  report {path}\n")
    return path


def sample_input(config: Config) -> Optional[str]:
    """`conveyor predict` arguments asking for one example of the run's own data.

    Returns:
      an image file path (image runs on image folders), `--text "<first review>"` (text runs
      on CSV/TSV files or aclImdb folders), or None when the data has no such file (IDX,
      TFRecord inputs). Shell-quoted.
    """
    from components.spans import split_span_path
    base, _ = split_span_path(config.data, config.input_pattern)
    files = [base] if os.path.isfile(base) else sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(base) for name in names
        if not name.startswith("."))
    if config.kind == "image":
        return next((shlex.quote(f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)), None)
    for path in files:
        if path.endswith(".txt"):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        elif path.endswith((".csv", ".tsv")):
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                rows = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
                column = config.text_column or next((c for c in TEXT_COLUMNS if c in (rows.fieldnames or [])), None)
                row = next(rows, None)
                text = row.get(column) if row and column else None
        else:
            continue
        if text:
            words = text.replace("<br />", " ").split()
            return "--text " + shlex.quote(" ".join(words[:40]))
    return None


def conveyor_command(cwd: Optional[str] = None) -> str:
    """How the user runs this installation's `conveyor` from `cwd` (default: the current folder).

    Returns:
      "conveyor" when the `conveyor` found on PATH is this installation's script (the one
      beside the running Python, e.g. .venv/bin/conveyor); else that script's path, relative
      when it is under `cwd` (".venv/bin/conveyor" after `make demo`), absolute otherwise;
      else (no script installed) "<python> -m conveyor.cli". Shell-quoted.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "conveyor")
    if not os.path.isfile(script):
        return f"{shlex.quote(sys.executable)} -m conveyor.cli"
    on_path = shutil.which("conveyor")
    if on_path and os.path.realpath(on_path) == os.path.realpath(script):
        return "conveyor"
    relative = os.path.relpath(script, cwd)
    return shlex.quote(script if relative.startswith(os.pardir) else relative)


def next_commands(config: Config, report: Optional[str], run_id: Optional[str] = None,
                  blessable: bool = False) -> str:
    """What to try next, with this run's real paths: serve the pushed model, ask it for a
    prediction on a sample of the data just used, open the report.

    Args:
      config: the run's Config.
      report: the run's report file, if written.
      run_id: the run's id (named in the `conveyor bless` hint).
      blessable: the run's model was not blessed by the Evaluator but passed infra
        validation, so `conveyor bless --run run_id` may push it.
    Returns:
      the "Next:" block, one command per line, `conveyor` written as the user can run it
      (conveyor_command); with MLMD on MySQL the read commands carry `--config CONFIG`.
    """
    conveyor = conveyor_command()
    home = shlex.quote(config.home_dir)
    # A MySQL store is named in the config file (whose path the Config does not keep).
    store = " --config CONFIG" if config.metadata is not None else ""
    version = preflight.served_version(config)
    lines = ["", "Next:"]
    if version is not None:
        lines.append(f"  {conveyor} serve --home {home}   # serves {config.name} version {version} "
                     "(REST :8501, gRPC :8500)")
        sample = sample_input(config)
        lines.append(f"  {conveyor} predict --model {config.name} {sample or '<image file>'}   # in another terminal")
    else:
        lines.append(f"  nothing is served yet for {config.name}: see why above")
    if blessable and run_id:
        lines.append(f"  {conveyor} bless --run {shlex.quote(run_id)} --reason \"...\" --home {home}{store}"
                     "   # push this run's model anyway, recorded as your decision")
    if report:
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        lines.append(f"  {opener} {shlex.quote(report)}   # the run report")
    lines.append(f"  {conveyor} runs --home {home}{store}   # every run of this HOME"
                 + (" (CONFIG: this run's config file, naming its MySQL metadata store)" if store else ""))
    return "\n".join(lines)


def _blessable(config: Config, summary: run_summary.RunSummary) -> bool:
    """Whether `conveyor bless` would push the run's model (conveyor/bless.py `check`)."""
    if summary.blessed is not False or summary.infra_blessed is not True:
        return False
    from conveyor.bless import check
    from conveyor.metadata.store import LineageError
    try:
        check(summary.run_id, config.home_dir, config.name, config.metadata)
    except LineageError:
        return False
    return True


def _unchanged(config: Config, unchanged: preflight.Unchanged, stream) -> run_summary.RunSummary:
    from conveyor.report import run_report_path
    served = (f"served version {unchanged.served_version} unchanged" if unchanged.served_version
              else "nothing served")
    stream.write(f"Conveyor: nothing changed since run {unchanged.repeats_run}; {served}.\n"
                 f"  (same data, config, user code, schema and packages; recorded as run {unchanged.run_id}; "
                 "--force runs anyway)\n")
    report = run_report_path(config, unchanged.repeats_run)
    report = report if os.path.isfile(report) else None
    stream.write(next_commands(config, report) + "\n")
    return run_summary.RunSummary(config.name, unchanged.run_id, [],
                                  pushed_version=unchanged.served_version or None,
                                  unchanged_since=unchanged.repeats_run)


def run(config: Config, stream=sys.stdout, force: bool = False) -> run_summary.RunSummary:
    """Runs the pipeline once and prints its summary table, report path and next commands to
    `stream`; when nothing changed since the last run (pipelines/preflight.py) and not
    `force`, runs nothing and says so.

    Returns:
      the RunSummary of the run (also when a component failed, the summary is printed
      first); for a no-op rerun, one with no nodes, `unchanged_since` = the repeated run and
      `pushed_version` = the served version.
    Raises:
      ConveyorError: HOME in use, or the run failed (the message is for the user).
    """
    def finish(config: Config, started: float) -> run_summary.RunSummary:
        summary = run_summary.summarize(config)
        stream.write(summary.table() + "\n")
        report = _write_report(config, stream)
        if not any(n.state == "failed" for n in summary.nodes):
            stream.write(next_commands(config, report, summary.run_id, _blessable(config, summary)) + "\n")
        return summary

    return local_runner.run(config, stream, on_finish=finish,
                            on_unchanged=lambda c, u: _unchanged(c, u, stream), force=force)
