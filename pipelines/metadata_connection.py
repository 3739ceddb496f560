"""Where ML Metadata (MLMD) lives and how every part of Conveyor connects to it.

`metadata: sqlite` (the default) keeps MLMD in HOME/metadata.sqlite; a `metadata:` mapping
(pipelines/config.py MySQLMetadata) puts it in a MySQL-compatible database shared by every
machine that runs or reads the pipeline (ML Metadata's documented production setup). The
local runner, the Airflow DAG, the pre-flight check and every read command (runs, lineage,
diff, report, drift, bless, ui) build their ConnectionConfig here, so they agree on the store.

The MySQL password is read from the environment variable the config names (`password_env`)
at the moment a connection is built: it is in no config file, and `redacting` keeps it out
of the run logs (TFX's LocalDagRunner logs the connection config it is given).
"""
import logging
import os
import re
import time
from typing import List, NamedTuple, Optional

from pipelines.config import Config, ConfigError, MySQLMetadata

METADATA_FILE = "metadata.sqlite"
# Attempts at the first connection: MLMD answers Aborted when two clients create its tables
# in a new database at once (tfx/orchestration/metadata.py retries for the same reason).
_ATTEMPTS = 3


class MetadataConnectionError(ConfigError):
    """The configured store cannot be reached; one sentence naming host, port and database.
    A ConfigError, so commands exit as for any other configuration problem (status 2)."""


def sqlite_path(home: str) -> str:
    """The SQLite store of a HOME: HOME/metadata.sqlite (absolute)."""
    return os.path.join(os.path.abspath(home), METADATA_FILE)


def describe(home: str, metadata: Optional[MySQLMetadata]) -> str:
    """Where the store is, for messages: the SQLite file, or "MySQL database 'D' at H:P
    (user U)"; never the password."""
    return metadata.where() if metadata is not None else sqlite_path(home)


def password(metadata: MySQLMetadata) -> str:
    """The password of `metadata.user`: the value of the environment variable
    `metadata.password_env` ("" when password_env is None).

    Raises:
      MetadataConnectionError: password_env names a variable that is not set.
    """
    if metadata.password_env is None:
        return ""
    value = os.environ.get(metadata.password_env)
    if value is None:
        raise MetadataConnectionError(
            f"metadata: the environment variable {metadata.password_env} (password_env) is not set; it must "
            f"hold the password of user {metadata.user} for {metadata.where()}")
    return value


def sqlite_connection_config(path: str, *, read_only: bool = False):
    """The ConnectionConfig of the SQLite store at `path`: READONLY, or READWRITE_OPENCREATE
    with the file's folder created (as TFX's sqlite_metadata_connection_config: an Airflow
    DAG is built before its HOME exists)."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    if not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config = mlmd_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = (mlmd_pb2.SqliteMetadataSourceConfig.READONLY if read_only
                                     else mlmd_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    return config


def connection_config(home: str, metadata: Optional[MySQLMetadata] = None, *, read_only: bool = False):
    """The MLMD ConnectionConfig of a HOME's store: the one place one is built.

    Args:
      home: Conveyor HOME (the SQLite store is HOME/metadata.sqlite).
      metadata: the config's `metadata` (None = SQLite).
      read_only: SQLite: READONLY instead of READWRITE_OPENCREATE. MySQL (which has no
        read-only mode): skip_db_creation, so a mistyped database name is an error instead
        of a new empty database.
    Returns:
      a ml_metadata.proto.metadata_store_pb2.ConnectionConfig; for MySQL it holds the
      password (pass it to MLMD/TFX only; never log or store it).
    Raises:
      MetadataConnectionError: the password's environment variable is not set.
    """
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2
    if metadata is None:
        return sqlite_connection_config(sqlite_path(home), read_only=read_only)
    config = mlmd_pb2.ConnectionConfig()
    mysql = config.mysql
    if metadata.socket:  # MLMD aborts the process unless exactly one of host and socket is set
        mysql.socket = metadata.socket
    else:
        mysql.host = metadata.host
        mysql.port = metadata.port
    mysql.database = metadata.database
    mysql.user = metadata.user
    mysql.password = password(metadata)
    mysql.skip_db_creation = read_only
    return config


def config_connection(config: Config, *, read_only: bool = False):
    """connection_config(config.home_dir, config.metadata, read_only=read_only)."""
    return connection_config(config.home_dir, config.metadata, read_only=read_only)


def store_exists(home: str, metadata: Optional[MySQLMetadata] = None) -> bool:
    """Whether there may be something to read: SQLite, the file exists; MySQL, always (the
    server says, when connected)."""
    return metadata is not None or os.path.isfile(sqlite_path(home))


def connect(home: str, metadata: Optional[MySQLMetadata] = None, *, read_only: bool = False):
    """A MetadataStore on the HOME's store (connection_config's arguments).

    Returns:
      ml_metadata.metadata_store.MetadataStore. For MySQL, MLMD creates its tables in an
      empty database (and, unless read_only, the database itself).
    Raises:
      MetadataConnectionError: the server cannot be reached, refuses the user, has no such
        database (read_only) or holds another MLMD schema version; one sentence naming
        the store and the server's reason.
    """
    from ml_metadata import metadata_store
    config = connection_config(home, metadata, read_only=read_only)
    for attempt in range(_ATTEMPTS):
        # A login the server refuses is asked about with PyMySQL first: MLMD's client prints
        # glog lines to stderr for each failed attempt, before Conveyor's one sentence, and
        # often gives no reason (_UNSAID).
        login = _login_error(metadata) if metadata is not None else None
        if login is not None and login.refused:
            reason = login.reason
        else:
            try:
                return metadata_store.MetadataStore(config)
            except RuntimeError as e:  # what MLMD's C++ layer raises (tfx/orchestration/metadata.py)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if login is not None and _UNSAID.search(reason):
                    reason = login.reason
        if metadata is None:
            break
        time.sleep(0.2 * (attempt + 1))
    reason = redact(reason, secrets(metadata))
    raise MetadataConnectionError(f"cannot open the ML Metadata store, {describe(home, metadata)}: {reason}")


# MLMD's MySQL client often reports a failed login or connection with no reason at all:
# "mysql_real_connect failed: errno: , error: " (a wrong password and a closed port alike).
_UNSAID = re.compile(r"errno:\s*,\s*error:\s*$")


# MySQL client and server error codes that mean "no login": access denied (1045), can't
# connect by socket / TCP (2002 / 2003), unknown host (2005), connection lost (2013).
# Anything else PyMySQL may fail on where MLMD's client would not (e.g. an authentication
# plugin PyMySQL lacks) does not stop a connection before MLMD's client tried it.
_REFUSED = {1045, 2002, 2003, 2005, 2013}


class _LoginError(NamedTuple):
    reason: str    # e.g. "Access denied for user 'conveyor'@'localhost' (using password: YES) (MySQL error 1045)"
    refused: bool  # a code in _REFUSED, or no connection at all (OSError)


def _login_error(metadata: MySQLMetadata) -> Optional[_LoginError]:
    """What the server says to a plain login as the configured user, made with PyMySQL; None
    when that login works (a failure's reason is then elsewhere)."""
    import pymysql
    where = {"unix_socket": metadata.socket} if metadata.socket else {"host": metadata.host, "port": metadata.port}
    try:
        pymysql.connect(user=metadata.user, password=password(metadata), connect_timeout=10, read_timeout=10,
                        write_timeout=10, **where).close()
    except pymysql.MySQLError as e:
        code, message = (tuple(e.args) + (None, None))[:2]
        return _LoginError(f"{message} (MySQL error {code})" if message else str(e), code in _REFUSED)
    except OSError as e:   # e.g. a socket path that does not exist
        return _LoginError(str(e), True)
    return None


def connect_config(config: Config, *, read_only: bool = False):
    """connect(config.home_dir, config.metadata, read_only=read_only)."""
    return connect(config.home_dir, config.metadata, read_only=read_only)


def secrets(metadata: Optional[MySQLMetadata]) -> List[str]:
    """The secret strings a connection to `metadata` uses (the password when its variable
    is set and not empty); [] for SQLite."""
    if metadata is None or metadata.password_env is None:
        return []
    value = os.environ.get(metadata.password_env)
    return [value] if value else []


def _escaped(secret: str) -> List[str]:
    """`secret` as it appears in text: as is, and C-escaped as in printed protos."""
    from google.protobuf import text_encoding
    forms = {secret, text_encoding.CEscape(secret.encode("utf-8"), as_utf8=False),
             text_encoding.CEscape(secret.encode("utf-8"), as_utf8=True)}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secret_values: List[str]) -> str:
    """`text` with every secret (and its C-escaped form) replaced by "***"."""
    for secret in secret_values:
        for form in _escaped(secret):
            text = text.replace(form, "***")
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that replaces the secrets in a record's message by "***" (TFX's
    LocalDagRunner logs its connection config, password included, at INFO).

    Args:
      secret_values: the strings to hide (see `secrets`); with none, records pass unchanged.
    """

    def __init__(self, secret_values: List[str]):
        super().__init__()
        self.secret_values = [s for s in secret_values if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret_values:
            message = record.getMessage()
            cleaned = redact(message, self.secret_values)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True
