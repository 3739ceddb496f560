"""A throwaway PostgreSQL server for the Airflow-on-PostgreSQL test.

Debian's `postgresql` (installed by `make setup`: scripts/setup_system_packages.sh), started
with its own cluster (initdb) in a temporary folder, a unix socket and a loopback port, and
stopped afterwards. PostgreSQL refuses to run as root, so under root the cluster belongs to
Debian's `postgres` system user and the server runs as that user. A missing PostgreSQL fails
the test (it does not skip) with what to install.
"""
import contextlib
import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Dict, Iterator, Optional

import pytest

from tests.support import processes

INSTALL_HINT = ("run `make setup` as root (scripts/setup_system_packages.sh installs Debian's "
                "postgresql), or `sudo apt-get install postgresql`")
SUPERUSER = "conveyor"


def _server_binaries() -> Optional[Dict[str, str]]:
    """initdb and postgres of the newest installed PostgreSQL (Debian keeps them in
    /usr/lib/postgresql/VERSION/bin, off PATH), or from PATH; None when missing."""
    for bin_dir in _bin_dirs():
        found = {n: os.path.join(bin_dir, n) for n in ("initdb", "postgres")}
        if all(os.access(p, os.X_OK) for p in found.values()):
            return found
    found = {n: shutil.which(n) for n in ("initdb", "postgres")}
    return found if all(found.values()) else None


def _bin_dirs():
    """Debian's /usr/lib/postgresql/VERSION/bin folders, newest first."""
    version = lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0
    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)



def _run_as() -> Dict[str, object]:
    """Popen arguments that drop root to Debian's `postgres` user; none for other users."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclasses.dataclass
class PostgreSQL:
    """A running server: SUPERUSER (trust authentication, no password) on 127.0.0.1:`port`.

    Fields:
      port: its loopback TCP port; socket_dir: its unix socket's folder; datadir: its cluster;
      process: the postgres process; log: its log file.
    """
    port: int
    socket_dir: str
    datadir: str
    process: subprocess.Popen
    log: str

    def connect(self, database: str = "postgres"):
        """A psycopg2 connection (autocommit) to `database` as SUPERUSER over TCP."""
        import psycopg2
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database)
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (UTF8)."""
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\'')

    def sqlalchemy_url(self, database: str) -> str:
        """postgresql+psycopg2://SUPERUSER@127.0.0.1:PORT/DATABASE (Airflow's sql_alchemy_conn)."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def dump(self, database: str) -> str:
        """Every row of `database` as SQL text (pg_dump of the server's version), e.g. to look
        for a secret in it.

        Raises:
          AssertionError: pg_dump failed (with its stderr).
        """
        pg_dump = next((os.path.join(d, "pg_dump") for d in _bin_dirs()
                        if os.access(os.path.join(d, "pg_dump"), os.X_OK)), None) or shutil.which("pg_dump")
        result = subprocess.run([pg_dump, "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, database],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, the cluster is left consistent),
        killing the server after 30 s."""
        processes.stop(self.process, signal.SIGINT)


@contextlib.contextmanager
def running_postgres(timeout: float = 90) -> Iterator[PostgreSQL]:
    """A fresh PostgreSQL cluster and server, removed on exit.

    The cluster lives in a new folder under the system temp dir (not pytest's tmp_path, which
    is private to root and unreachable for the `postgres` user). Durability settings are off
    (fsync, synchronous_commit, full_page_writes): the cluster is thrown away afterwards.

    Raises:
      pytest.fail: PostgreSQL is not installed (naming what to run), or it did not start
        within `timeout` seconds (with its log).
    """
    binaries = _server_binaries()
    if binaries is None:
        pytest.fail(f"PostgreSQL is not installed (the Airflow scheduler test keeps Airflow's "
                    f"metadata DB in it): {INSTALL_HINT}", pytrace=False)
    base = tempfile.mkdtemp(prefix="pg")
    os.chmod(base, 0o755)
    run_as = _run_as()
    if run_as:
        shutil.chown(base, "postgres", "postgres")
    datadir = os.path.join(base, "data")
    log = os.path.join(base, "postgres.log")
    process = None
    try:
        initdb = subprocess.run(
            [binaries["initdb"], "-D", datadir, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=120, cwd=base, **run_as)
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed: {initdb.stderr[-2000:]}", pytrace=False)
        port = processes.free_port()
        with open(log, "w") as log_file:
            if run_as:
                shutil.chown(log, "postgres", "postgres")
            process = subprocess.Popen(
                [binaries["postgres"], "-D", datadir, "-p", str(port), "-k", base,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=100"],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=base, start_new_session=True, **run_as)
        server = PostgreSQL(port=port, socket_dir=base, datadir=datadir, process=process, log=log)
        import psycopg2
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"postgres exited with status {process.returncode}: {processes.log_tail(log)}", pytrace=False)
            try:
                server.connect().close()
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    pytest.fail(f"postgres did not answer within {timeout:.0f} s: {processes.log_tail(log)}",
                                pytrace=False)
                time.sleep(0.2)
        yield server
    finally:
        if process is not None and process.poll() is None:
            processes.stop(process, signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)
