"""`conveyor metadata copy`: move a HOME's ML Metadata from SQLite into a MySQL database with
its history, so the first run on MySQL finds its blessed baseline and lineage goes on.

The copy is table by table, keeping every row's id and timestamps. MLMD's own API cannot do
that: it gives new ids and creation times to what it stores, and both matter here — a
ModelBlessing names its model by id (`current_model_id`, what TFX's LatestBlessedModelStrategy
and `conveyor bless` match), pre-flight and `conveyor runs` order runs by creation time and
derive durations from it. MLMD keeps the same tables, columns and schema version in SQLite
and MySQL (MLMDEnv.schema_version), so a row-for-row copy is a faithful one; the copy checks
that the columns and versions agree before writing anything.

Strings are written as MLMD's MySQL client writes them (see _connect_mysql), so a non-ASCII
string reads back the same through MLMD.

Steps: the source is opened with MLMD (which refuses a schema of another version), the
target database is created and initialised by MLMD (its tables and MLMD's built-in types),
the copy is refused unless the target holds no artifact, execution or context, then, in one
transaction, the target's tables are emptied and filled with the source's rows; the row
counts are compared afterwards.
"""
import argparse
import dataclasses
import os
import sqlite3
import sys
import urllib.parse
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from pydantic import ValidationError

from conveyor.metadata.store import store_location
from pipelines import metadata_connection
from pipelines.config import ConfigError, MySQLMetadata

# MLMD's tables hold no foreign keys; this order (types, then nodes, then links) is the one a
# reader would expect anyway.
TABLE_ORDER = ("Type", "TypeProperty", "ParentType", "Artifact", "ArtifactProperty", "Execution",
               "ExecutionProperty", "Context", "ContextProperty", "ParentContext", "Event", "EventPath",
               "Association", "Attribution")
# What MLMD keeps about itself (copied: no; compared: the schema version).
_OWN_TABLES = ("MLMDEnv", "sqlite_sequence")
_BATCH = 500  # rows read from SQLite at a time
_STATEMENT_BYTES = 4 << 20
URL_FORM = "mysql://USER@HOST[:PORT]/DATABASE or mysql://USER@localhost/DATABASE?socket=PATH"


class CopyError(RuntimeError):
    """The copy is refused or failed (nothing is left half-written); the message says why."""


class UsageError(ValueError):
    """A --to URL or flag combination that does not name a MySQL target (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class CopyResult:
    """What was copied.

    Fields:
      source: the SQLite file.
      target: the MySQL store (MySQLMetadata; holds no password).
      rows: rows copied per MLMD table, e.g. {"Artifact": 12, "Execution": 10, ...}.
    """
    source: str
    target: MySQLMetadata
    rows: Dict[str, int]

    def line(self) -> str:
        """One line: what went where, in MLMD's words."""
        r = self.rows
        return (f"copied {self.source} to {self.target.where()}: {r.get('Type', 0)} types, "
                f"{r.get('Artifact', 0)} artifacts, {r.get('Execution', 0)} executions, "
                f"{r.get('Event', 0)} events, {r.get('Context', 0)} contexts, "
                f"{r.get('Association', 0)} associations, {r.get('Attribution', 0)} attributions")


def parse_mysql_url(url: str, password_env: Optional[str] = None) -> MySQLMetadata:
    """The MySQL store a `--to` URL names.

    Args:
      url: mysql://USER@HOST[:PORT]/DATABASE (port default 3306), or
        mysql://USER@localhost/DATABASE?socket=PATH for a unix socket. No password: it
        stays out of shell history and process lists.
      password_env: NAME of the environment variable holding USER's password (None: none).
    Returns:
      the MySQLMetadata (as under `metadata:` in a config).
    Raises:
      UsageError: not such a URL, a password in it, or a bad port/name; one line.
    """
    # Before any message that repeats the URL: a password may hold '#', '/' or '?', which
    # urlsplit reads as the start of another part, so "USER:" before the first '@' is enough.
    _, has_scheme, rest = url.partition("://")
    if has_scheme and "@" in rest and ":" in rest.split("@", 1)[0]:
        raise UsageError("--to: the URL holds a password (not shown); put the password in an environment "
                         "variable and name it with --password-env NAME")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mysql":
        raise UsageError(f"--to: expected {URL_FORM}, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--to: the port of {url!r} is not a number in 1..65535") from None
    query = urllib.parse.parse_qs(parts.query)
    unknown = sorted(set(query) - {"socket"})
    if unknown:
        raise UsageError(f"--to: unknown URL parameter(s) {', '.join(unknown)} (known: socket)")
    values = {"host": parts.hostname or "", "database": urllib.parse.unquote(parts.path.lstrip("/")),
              "user": urllib.parse.unquote(parts.username or ""), "password_env": password_env}
    if port is not None:
        values["port"] = port
    if "socket" in query:
        values["socket"] = query["socket"][-1]
    if not values["host"] or not values["database"] or not values["user"]:
        raise UsageError(f"--to: expected {URL_FORM}, got {url!r}")
    try:
        return MySQLMetadata(**values)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in error["loc"]) or "url"
        raise UsageError(f"--to: {key}: {error['msg']}") from None


def _sqlite_columns(db: sqlite3.Connection, table: str) -> List[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info(`{table}`)")]


def _mysql_columns(cursor, table: str) -> List[str]:
    cursor.execute(f"SHOW COLUMNS FROM `{table}`")
    return [row[0] for row in cursor.fetchall()]


def _connect_mysql(target: MySQLMetadata):
    """A PyMySQL connection to the target database (MLMD created it), in a transaction."""
    import pymysql
    # ML Metadata's client talks latin1 to the server and sends each string's UTF-8 bytes, so
    # the server stores a non-ASCII string as those bytes read as latin1 (in a utf8mb4 table:
    # double-encoded). The copy writes strings the same way (_sql_value), so MLMD reads them
    # back unchanged.
    kwargs = dict(user=target.user, password=metadata_connection.password(target), database=target.database,
                  charset="utf8mb4", autocommit=False)
    if target.socket:
        kwargs["unix_socket"] = target.socket
    else:
        kwargs.update(host=target.host, port=target.port)
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as e:
        raise metadata_connection.MetadataConnectionError(
            f"cannot connect to {target.where()}: {_mysql_message(e)}") from None


def _mysql_message(error: Exception) -> str:
    args = getattr(error, "args", ())
    return str(args[1]) if len(args) > 1 else str(error)


def _sql_value(value) -> str:
    """A SQLite value as a MySQL literal. A string is its UTF-8 bytes introduced as latin1,
    what ML Metadata's MySQL client sends (see _connect_mysql); hex literals need no escaping."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"_latin1 X'{value.encode('utf-8').hex()}'"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"X'{bytes(value).hex()}'"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def _inserts(table: str, columns: Sequence[str], rows: Sequence[Sequence]) -> Iterator[str]:
    """Multi-row INSERT statements of `rows`, each below _STATEMENT_BYTES (MySQL's
    max_allowed_packet is 16 MB by default)."""
    head = f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in columns)}) VALUES "
    values: List[str] = []
    size = 0
    for row in rows:
        literal = "(" + ", ".join(_sql_value(v) for v in row) + ")"
        if values and size + len(literal) > _STATEMENT_BYTES:
            yield head + ", ".join(values)
            values, size = [], 0
        values.append(literal)
        size += len(literal) + 2
    if values:
        yield head + ", ".join(values)


def _source_tables(db: sqlite3.Connection) -> List[str]:
    names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    tables = [n for n in names if n not in _OWN_TABLES]
    return sorted(tables, key=lambda t: (TABLE_ORDER.index(t) if t in TABLE_ORDER else len(TABLE_ORDER), t))


def _schema_version(rows: Sequence[Sequence[int]]) -> Optional[int]:
    return max((r[0] for r in rows), default=None)


def copy_sqlite_to_mysql(sqlite_file: str, target: MySQLMetadata) -> CopyResult:
    """Copies the MLMD SQLite file `sqlite_file` into the MySQL store `target` (see the
    module docstring).

    Args:
      sqlite_file: an MLMD SQLite file (e.g. HOME/metadata.sqlite), read only.
      target: the MySQL store; its database is created when missing (the user needs the
        right to), and must hold no artifact, execution or context.
    Returns:
      the CopyResult (row counts per table, equal in source and target).
    Raises:
      CopyError: no source file, a non-empty target, MLMD schema versions or columns that
        differ, or a row MySQL refuses (e.g. two context names that differ only in case,
        which MySQL's default collation treats as equal); nothing is written then.
      MetadataConnectionError (a ConfigError): the source or target cannot be opened.
    """
    from ml_metadata import metadata_store

    if not os.path.isfile(sqlite_file):
        raise CopyError(f"no metadata store at {sqlite_file}: nothing to copy (pass --home)")
    try:  # MLMD refuses a file of another schema version
        metadata_store.MetadataStore(metadata_connection.sqlite_connection_config(sqlite_file, read_only=True))
    except RuntimeError as e:
        raise CopyError(f"cannot open {sqlite_file} with ML Metadata: {str(e).strip().splitlines()[0]}") from None
    metadata_connection.connect(os.path.dirname(sqlite_file), target)  # creates the database and MLMD's tables
    import pymysql
    mysql = _connect_mysql(target)
    source = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(sqlite_file))}?mode=ro", uri=True)
    try:
        try:
            with mysql.cursor() as cursor:
                rows = _copy_tables(source, cursor, sqlite_file, target)
            mysql.commit()
        except pymysql.err.MySQLError as e:
            mysql.rollback()
            raise CopyError(f"copying {sqlite_file} to {target.where()} failed, nothing was written: "
                            f"{_mysql_message(e)}") from None
        except CopyError:
            mysql.rollback()
            raise
        with mysql.cursor() as cursor:
            for table, count in rows.items():
                cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
                copied = cursor.fetchone()[0]
                if copied != count:
                    raise CopyError(f"table {table}: {count} rows in {sqlite_file} but {copied} in "
                                    f"{target.where()} after the copy")
    finally:
        source.close()
        mysql.close()
    return CopyResult(source=sqlite_file, target=target, rows=rows)


def _copy_tables(source: sqlite3.Connection, cursor, sqlite_file: str, target: MySQLMetadata) -> Dict[str, int]:
    """The copy inside the target's transaction; returns the rows copied per table."""
    cursor.execute("SELECT schema_version FROM MLMDEnv")
    target_version = _schema_version(cursor.fetchall())
    source_version = _schema_version(source.execute("SELECT schema_version FROM MLMDEnv").fetchall())
    if source_version != target_version:
        raise CopyError(f"{sqlite_file} has ML Metadata schema version {source_version}, {target.where()} "
                        f"{target_version}; open the older one once with this ml-metadata to upgrade it")
    held = {}
    for table in ("Artifact", "Execution", "Context"):
        cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
        held[table] = cursor.fetchone()[0]
    if any(held.values()):
        raise CopyError(f"{target.where()} already holds {held['Artifact']} artifacts, {held['Execution']} "
                        f"executions and {held['Context']} contexts; copy into an empty (or new) database")
    cursor.execute("SHOW TABLES")
    target_tables = {row[0] for row in cursor.fetchall()}
    tables = _source_tables(source)
    for table in tables:
        if table not in target_tables:
            raise CopyError(f"{target.where()} has no table {table} (the ML Metadata schemas differ)")
        missing = set(_sqlite_columns(source, table)) - set(_mysql_columns(cursor, table))
        if missing:
            raise CopyError(f"table {table} of {target.where()} has no column(s) {', '.join(sorted(missing))} "
                            "(the ML Metadata schemas differ)")
    rows: Dict[str, int] = {}
    # MLMD put its built-in types into the new database: the source's rows replace them, ids and all.
    for table in tables:
        cursor.execute(f"DELETE FROM `{table}`")
    for table in tables:
        columns = _sqlite_columns(source, table)
        names = ", ".join(f"`{c}`" for c in columns)
        select = source.execute(f"SELECT {names} FROM `{table}`")
        rows[table] = 0
        while True:
            batch = select.fetchmany(_BATCH)
            if not batch:
                break
            for statement in _inserts(table, columns, batch):
                cursor.execute(statement)
            rows[table] += len(batch)
    return rows


def add_command(sub) -> None:
    """Adds `metadata copy` to an argparse subparsers object."""
    metadata = sub.add_parser("metadata", help="ML Metadata store tools (copy a HOME's SQLite store to MySQL)")
    commands = metadata.add_subparsers(dest="metadata_command", required=True)
    copy = commands.add_parser(
        "copy", help="copy HOME/metadata.sqlite, history and blessed models included, into an empty MySQL "
                     "database; then set `metadata:` in the config to that database")
    copy.add_argument("--home", help="Conveyor HOME whose metadata.sqlite is copied (default: the config's "
                                     "home, else ./conveyor_home)")
    copy.add_argument("--to", help=f"target database: {URL_FORM}")
    copy.add_argument("--password-env", help="NAME of the environment variable holding the MySQL user's password")
    copy.add_argument("--config", help="config file whose `metadata:` names the target MySQL database "
                                       "(instead of --to)")


def target_of(args: argparse.Namespace) -> Tuple[str, MySQLMetadata]:
    """(HOME, target MySQLMetadata) of `conveyor metadata copy`'s flags.

    Raises:
      UsageError: neither or both of --to and --config, or a config whose metadata is SQLite.
      ConfigError: the config file is invalid.
    """
    if bool(args.to) == bool(args.config):
        raise UsageError(f"give the target as --to {URL_FORM} (with --password-env NAME) or as --config FILE")
    if args.to:
        return store_location(args.home).home, parse_mysql_url(args.to, args.password_env)
    if args.password_env:
        raise UsageError("--password-env goes with --to; with --config the config's metadata.password_env applies")
    where = store_location(args.home, args.config)
    if where.metadata is None:
        raise UsageError(f"--config {args.config}: its metadata is sqlite; name the MySQL target under `metadata:`")
    return where.home, where.metadata


def cmd_metadata(args: argparse.Namespace) -> int:
    """`conveyor metadata copy ...`: 0 copied, 1 refused or failed (nothing written), 2 bad
    flags, a bad config or an unreachable store; one line on stderr for each failure."""
    try:
        home, target = target_of(args)
        result = copy_sqlite_to_mysql(metadata_connection.sqlite_path(home), target)
    except (UsageError, ConfigError) as e:
        print(f"conveyor metadata copy: {e}", file=sys.stderr)
        return 2
    except CopyError as e:
        print(f"conveyor metadata copy: {e}", file=sys.stderr)
        return 1
    t = result.target
    place = f"  socket: {t.socket}" if t.socket else f"  host: {t.host}\n  port: {t.port}"
    secret = f"\n  password_env: {t.password_env}" if t.password_env else ""
    print(f"conveyor metadata copy: {result.line()}\n"
          f"Runs and read commands use it with this in the config (the password stays in the environment):\n"
          f"metadata:\n{place}\n  database: {t.database}\n  user: {t.user}{secret}")
    return 0
