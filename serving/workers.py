"""Several server processes on one set of ports (`--worker_processes N`, a Conveyor extension).

Why: the REST and gRPC front ends are Python; one process answers requests on one core at a
time (the GIL), so on a 2-core machine one server process leaves a core idle while the load
is there (bench/results/serving.md: server CPU ~50 % of the machine). TF Serving is C++ and
multi-threaded, so it has no such flag; this is the usual answer of Python servers
(gunicorn's and uvicorn's `--workers`): N identical processes, each loading the models and
binding the same ports with SO_REUSEPORT, so the Linux kernel spreads new connections over
them. Costs: N copies of every model in memory, each process polls the base paths on its own
(a new version becomes AVAILABLE in each within a poll interval of the others), and each has
its own batcher (merging happens within a process).

The supervisor (the process the user started) loads nothing: it starts the workers by
re-running its own command line (`sys.orig_argv`) with CONVEYOR_SERVER_WORKER set, forwards
SIGTERM/SIGINT to them (each drains as a single server does), and when one worker exits
while the others serve, stops the others and exits 1 so the orchestrator restarts the whole
server (a half-size server behind one port would be invisible to it).

Prometheus metrics stay one set per server: the workers run prometheus_client in its
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a directory the supervisor creates and removes),
and whichever worker answers a scrape sums counters and histograms over all workers.
"""
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

log = logging.getLogger("conveyor.serving")

# Set in a worker's environment: its index (0..N-1). A worker binds its ports with SO_REUSEPORT.
WORKER_ENV = "CONVEYOR_SERVER_WORKER"
# Set in a worker's environment: the supervisor's pid (see die_with_supervisor).
SUPERVISOR_ENV = "CONVEYOR_SERVER_SUPERVISOR"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# prometheus_client's multiprocess mode reads this variable when it is imported.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
POLL_SECONDS = 0.2


def worker_index() -> Optional[int]:
    """This process's worker index, or None when it is not a worker of a supervisor."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def die_with_supervisor() -> None:
    """In a worker: asks Linux to send SIGTERM (a graceful stop) when the supervisor dies, so
    a supervisor killed with SIGKILL leaves no workers serving on the shared ports; exits at
    once when the supervisor is already gone. A no-op outside Linux or outside a worker."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if worker_index() is None or not supervisor or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(supervisor):  # died before prctl took effect
        log.error("The supervising server process %s is gone: exiting", supervisor)
        sys.exit(1)


def worker_command(argv: List[str]) -> List[str]:
    """The command line of a worker: the supervisor's own (interpreter flags and `-m module`
    or script kept), with every --worker_processes flag replaced by --worker_processes=1.

    Args:
      argv: the supervisor's `sys.orig_argv` (interpreter first).
    """
    command = [sys.executable]
    skip_value = False
    for arg in argv[1:]:
        if skip_value:
            skip_value = False
            continue
        if arg == "--worker_processes":
            skip_value = True
            continue
        if arg.startswith("--worker_processes="):
            continue
        command.append(arg)
    return command + ["--worker_processes=1"]


def supervise(processes: int, drain_seconds: float) -> int:
    """Runs `processes` workers until SIGTERM/SIGINT or until one of them exits.

    Args:
      processes: number of worker processes (>= 2).
      drain_seconds: the workers' --drain_seconds; after a stop signal the supervisor waits
        this long plus 60 s for them before killing what remains.
    Returns:
      0 when every worker exited 0 after a stop signal; 1 when a worker exited on its own
      (for example it could not bind a port or load its models) or had to be killed.
    """
    metrics_dir = tempfile.mkdtemp(prefix="conveyor-metrics-")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workers: List[subprocess.Popen] = []
    try:
        command = worker_command(sys.orig_argv)
        for index in range(processes):
            env = dict(os.environ, **{WORKER_ENV: str(index), METRICS_DIR_ENV: metrics_dir,
                                       SUPERVISOR_ENV: str(os.getpid())})
            workers.append(subprocess.Popen(command, env=env))
        log.info("Started %d worker processes (pids %s) sharing the ports", processes,
                 ", ".join(str(w.pid) for w in workers))
        failed = None
        while not stop.wait(POLL_SECONDS):
            failed = next((w for w in workers if w.poll() is not None), None)
            if failed is not None:
                log.error("Worker process %d exited with status %s: stopping the others",
                          failed.pid, failed.returncode)
                break
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_seconds + 60
        killed = False
        for worker in workers:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("Worker process %d did not stop in time: killed", worker.pid)
                worker.kill()
                worker.wait()
                killed = True
        if failed is not None or killed:
            return 1
        return 0 if all(w.returncode == 0 for w in workers) else 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
