"""`conveyor run`: the pipeline on the local DAG runner, then its summary table and HTML report.

pipelines/local_runner.py runs the DAG under the HOME lock; this adds what a person reads
afterwards, both read back from MLMD: the summary table (run_summary.py) and the
self-contained report (report.py).
"""
import sys

from conveyor import run_summary
from pipelines import local_runner
from pipelines.config import Config
from pipelines.local_runner import ConveyorError  # noqa: F401  (what run() raises)


def _write_report(config: Config, stream) -> None:
    """The HTML report is a convenience: failing to write it must not change the run's outcome."""
    from conveyor.report import write_run_report
    try:
        stream.write(f"  report {write_run_report(config)}\n")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        stream.write(f"  report not written: {type(e).__name__}: {e}\n")


def run(config: Config, stream=sys.stdout) -> run_summary.RunSummary:
    """Runs the pipeline once and prints its summary table and report path to `stream`.

    Returns:
      the RunSummary of the run (also when a component failed, the summary is printed first).
    Raises:
      ConveyorError: HOME in use, or the run failed (the message is for the user).
    """
    def finish(config: Config, started: float) -> run_summary.RunSummary:
        summary = run_summary.summarize(config)
        stream.write(summary.table() + "\n")
        _write_report(config, stream)
        return summary

    return local_runner.run(config, stream, on_finish=finish)
