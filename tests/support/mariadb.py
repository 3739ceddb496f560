"""A throwaway MariaDB server for the ML-Metadata-on-MySQL tests.

Debian's `mariadb-server` (installed by `make setup`: scripts/setup_system_packages.sh), started per
test module with its own data directory (mariadb-install-db) in a temporary folder, a unix
socket and a loopback port, and stopped afterwards. Under pytest-xdist (`-n 2 --dist
loadfile`) a worker runs whole modules, so every module — and so every worker — has its own
server: no shared database, no fixed port. A missing MariaDB fails the test (it does not
skip) with what to install.
"""
import contextlib
import dataclasses
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Dict, Iterator, Optional

import pytest

from tests.support import processes

INSTALL_HINT = ("run `make setup` as root (scripts/setup_system_packages.sh installs Debian's mariadb-server), "
                "or `sudo apt-get install mariadb-server`")
USER = "conveyor"
PASSWORD_ENV = "CONVEYOR_TEST_MLMD_PASSWORD"


def _binary(*names: str) -> Optional[str]:
    """The first of `names` on PATH or in /usr/sbin, /usr/bin (sbin is not on a user's PATH)."""
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                            if os.access(p, os.X_OK)), None)
        if found:
            return found
    return None


@dataclasses.dataclass
class MariaDB:
    """A running server: root (no password) on `socket`; `add_user` makes the test user.

    Fields:
      socket: its unix socket; port: its 127.0.0.1 TCP port; datadir: its data directory;
      process: the mariadbd process; log: its error log.
    """
    socket: str
    port: int
    datadir: str
    process: subprocess.Popen
    log: str
    client: str

    def sql(self, statements: str, database: Optional[str] = None) -> str:
        """Runs SQL as root over the socket; returns its tab-separated output (no header).

        Raises:
          AssertionError: the client failed (with its stderr).
        """
        command = [self.client, "--no-defaults", f"--socket={self.socket}", "-uroot", "--batch",
                   "--skip-column-names", "-e", statements] + ([database] if database else [])
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def add_user(self, password: str, user: str = USER) -> None:
        """Creates `user` with `password` for socket and loopback connections, allowed to
        create databases (ML Metadata creates its own)."""
        self.sql("".join(f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{password}'; "
                         f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'; "
                         for host in ("localhost", "127.0.0.1")))

    def metadata(self, database: str, via: str = "socket", user: str = USER,
                 password_env: Optional[str] = PASSWORD_ENV) -> Dict[str, object]:
        """The `metadata:` mapping of a Conveyor config for `database` on this server
        (via "socket" or "tcp")."""
        where: Dict[str, object] = ({"socket": self.socket} if via == "socket"
                                    else {"host": "127.0.0.1", "port": self.port})
        out = {**where, "database": database, "user": user}
        if password_env:
            out["password_env"] = password_env
        return out

    def url(self, database: str, user: str = USER) -> str:
        """mysql://USER@127.0.0.1:PORT/DATABASE (the form `conveyor metadata copy --to` takes)."""
        return f"mysql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Shuts the server down (SIGTERM: a clean InnoDB shutdown), killing it after 30 s."""
        processes.stop(self.process, signal.SIGTERM)


@contextlib.contextmanager
def running_mariadb(base_dir: str, timeout: float = 90) -> Iterator[MariaDB]:
    """A fresh MariaDB server with its data under `base_dir`, stopped on exit.

    Its socket lives in a short folder under the system temp dir (unix socket paths are
    limited to 107 bytes; pytest's tmp paths can be longer).

    Raises:
      pytest.fail: MariaDB is not installed (naming what to run), or it did not start
        within `timeout` seconds (with its log).
    """
    mariadbd = _binary("mariadbd", "mysqld")
    install_db = _binary("mariadb-install-db", "mysql_install_db")
    client = _binary("mariadb", "mysql")
    if not (mariadbd and install_db and client):
        pytest.fail(f"MariaDB is not installed (the ML Metadata on MySQL tests need mariadbd, "
                    f"mariadb-install-db and the mariadb client): {INSTALL_HINT}", pytrace=False)
    user = getpass.getuser()
    datadir = os.path.join(base_dir, "data")
    log = os.path.join(base_dir, "mariadb.err")
    run_dir = tempfile.mkdtemp(prefix="mdb")
    sock = os.path.join(run_dir, "mysqld.sock")
    installed = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", f"--user={user}",
         "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
        capture_output=True, text=True, timeout=120)
    if installed.returncode != 0:
        pytest.fail(f"mariadb-install-db failed: {installed.stderr[-2000:]}", pytrace=False)
    port = processes.free_port()
    process = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--user={user}", f"--log-error={log}",
         f"--pid-file={os.path.join(run_dir, 'mysqld.pid')}", "--skip-name-resolve",
         "--innodb-buffer-pool-size=32M", "--performance-schema=OFF",
         # As Debian's packaged config (50-server.cnf) and MySQL 8: ML Metadata creates its
         # database with the server's default, and MariaDB's compiled-in one is latin1.
         "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = MariaDB(socket=sock, port=port, datadir=datadir, process=process, log=log, client=client)
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"mariadbd exited with status {process.returncode}: {processes.log_tail(log)}", pytrace=False)
            ping = subprocess.run([client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", "SELECT 1"],
                                  capture_output=True, timeout=30)
            if ping.returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail(f"mariadbd did not answer within {timeout:.0f} s: {processes.log_tail(log)}", pytrace=False)
            time.sleep(0.2)
        yield server
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def dump(server: MariaDB, database: str) -> str:
    """Every row of `database` as SQL text (mariadb-dump), e.g. to look for a secret in it."""
    dumper = _binary("mariadb-dump", "mysqldump")
    result = subprocess.run([dumper, "--no-defaults", f"--socket={server.socket}", "-uroot", "--skip-extended-insert",
                             database], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout
