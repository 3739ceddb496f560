"""Where ML Metadata lives: the `metadata` setting, the one ConnectionConfig builder, the
`--to` URL of `conveyor metadata copy`, password redaction, and an unreachable MySQL store
(one line, exit status 2). A closed loopback port stands in for a server that is down."""
import logging
import os
import socket

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import cli
from conveyor.metadata_copy import UsageError, parse_mysql_url
from pipelines import metadata_connection as mc
from pipelines.config import ConfigError, MySQLMetadata, load_any_config, load_config

MYSQL = {"host": "db.internal", "port": 3307, "database": "mlmd", "user": "conveyor", "password_env": "MLMD_PW"}


def _config(tmp_path, text, kind="image"):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(kind, str(path))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sqlite_is_the_default_and_can_be_named(tmp_path):
    assert load_config("image").metadata is None
    assert _config(tmp_path, "metadata: sqlite\n").metadata is None
    config = load_config("image", overrides={"home": str(tmp_path / "h")})
    built = mc.config_connection(config)
    assert built.sqlite.filename_uri == str(tmp_path / "h" / "metadata.sqlite")
    assert built.sqlite.connection_mode == pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    assert mc.config_connection(config, read_only=True).sqlite.connection_mode == pb.SqliteMetadataSourceConfig.READONLY


def test_a_mysql_connection_from_the_config_reads_the_password_from_the_environment(tmp_path, monkeypatch):
    config = _config(tmp_path, "metadata:\n  host: db.internal\n  port: 3307\n  database: mlmd\n"
                               "  user: conveyor\n  password_env: MLMD_PW\n")
    assert config.metadata == MySQLMetadata(**MYSQL)
    assert config.replace(train_steps=5).metadata == config.metadata  # survives replace (model_dump)
    monkeypatch.setenv("MLMD_PW", "s3cret")
    built = mc.config_connection(config)
    assert (built.mysql.host, built.mysql.port, built.mysql.database, built.mysql.user, built.mysql.password) == (
        "db.internal", 3307, "mlmd", "conveyor", "s3cret")
    assert not built.mysql.skip_db_creation and not built.mysql.socket
    assert mc.config_connection(config, read_only=True).mysql.skip_db_creation  # reads never create it
    assert mc.describe(config.home_dir, config.metadata) == "MySQL database 'mlmd' at db.internal:3307 (user conveyor)"


def test_a_socket_replaces_host_and_port_and_no_password_env_means_no_password():
    metadata = MySQLMetadata(socket="/run/mysqld/mysqld.sock", database="mlmd", user="me")
    built = mc.connection_config("/h", metadata)
    # MLMD aborts the whole process (a CHECK) unless exactly one of host and socket is set.
    assert not built.mysql.HasField("host") and not built.mysql.HasField("port")
    assert (built.mysql.socket, built.mysql.password) == ("/run/mysqld/mysqld.sock", "")
    assert metadata.where() == "MySQL database 'mlmd' at socket /run/mysqld/mysqld.sock (user me)"


def test_an_unset_password_variable_is_one_line(monkeypatch):
    monkeypatch.delenv("MLMD_PW", raising=False)
    with pytest.raises(mc.MetadataConnectionError, match=r"^metadata: the environment variable MLMD_PW \(password_env\) "
                                                         r"is not set; it must hold the password of user conveyor"):
        mc.connection_config("/h", MySQLMetadata(**MYSQL))


@pytest.mark.parametrize("text, message", [
    ("metadata: postgres\n", "key 'metadata': expected sqlite or a MySQL connection"),
    ("metadata: {database: m}\n", "key 'metadata.user': missing; a MySQL connection needs database and user"),
    ("metadata: {database: m, user: u, port: 70000}\n", "key 'metadata.port': expected 1..65535, got 70000"),
    ("metadata: {database: m, user: u, port: '3306'}\n", "key 'metadata.port': expected an integer, got '3306'"),
    ("metadata: {database: m, user: u, hots: h}\n", "unknown key 'metadata.hots' (known keys of metadata: host, port"),
    ("metadata: {database: m, user: u, password_env: 'my pw'}\n", "key 'metadata.password_env': expected the NAME of "
                                                                  "an environment variable"),
    ("metadata: {database: '', user: u}\n", "key 'metadata.database': expected a database name of letters, digits, "
                                            "'_' or '$' (at most 64; ML Metadata does not quote it), got ''"),
    # MLMD sends the name unquoted: 'mlmd-prod' would fail later with an SQL syntax error.
    ("metadata: {database: mlmd-prod, user: u}\n", "key 'metadata.database': expected a database name of letters"),
    ("metadata: {database: 'm; DROP DATABASE x', user: u}\n", "key 'metadata.database': expected a database name"),
])
def test_bad_metadata_settings_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, text)
    assert str(error.value).startswith(f"config file {tmp_path / 'c.yaml'}: "), str(error.value)
    assert message in str(error.value)


def test_a_password_pasted_into_password_env_is_not_repeated(tmp_path):
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, "metadata: {database: m, user: u, password_env: 'S3cr#t-pw'}\n")
    assert "key 'metadata.password_env': expected the NAME of an environment variable" in str(error.value)
    assert "S3cr" not in str(error.value)


def test_a_password_in_the_config_is_refused_without_repeating_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, "metadata: {database: m, user: u, password: hunter2}\n")
    assert "a password is never written into a config: set password_env" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_read_commands_take_any_kind_of_config_file(tmp_path):
    (tmp_path / "t.yaml").write_text("model: tfidf\nmetadata: {database: m, user: u}\nhome: h\n")
    config = load_any_config(str(tmp_path / "t.yaml"), {"home": None})
    assert (config.kind, config.metadata.database) == ("text", "m")


@pytest.mark.parametrize("url, expected", [
    ("mysql://conveyor@db:3307/mlmd", {"host": "db", "port": 3307, "database": "mlmd", "user": "conveyor"}),
    ("mysql://u@127.0.0.1/m", {"host": "127.0.0.1", "port": 3306, "database": "m", "user": "u"}),
    ("mysql://u@localhost/m?socket=/tmp/s.sock", {"socket": "/tmp/s.sock", "database": "m", "user": "u"}),
    ("mysql://ml%2Bops@db/mlmd%24prod", {"database": "mlmd$prod", "user": "ml+ops"}),
])
def test_copy_target_urls(url, expected):
    parsed = parse_mysql_url(url, "PW")
    assert parsed.password_env == "PW"
    assert {k: getattr(parsed, k) for k in expected} == expected


@pytest.mark.parametrize("url, message", [
    ("mysql://u:hunter2@db/m", "the URL holds a password (not shown); put the password in an environment variable"),
    # Characters urlsplit reads as another part of the URL, and other schemes: still refused
    # as a password, never repeated in a message about the port or the scheme.
    ("mysql://u:hun#ter2@db:3306/m", "the URL holds a password (not shown)"),
    ("mysql://u:hun/ter2@db/m", "the URL holds a password (not shown)"),
    ("mariadb://u:hunter2@db:3306/m", "the URL holds a password (not shown)"),
    ("mysql://:hunter2@db/m", "the URL holds a password (not shown)"),
    ("mysql://u@db/mlmd-prod", "--to: database: expected a database name of letters"),
    ("postgres://u@db/m", "--to: expected mysql://USER@HOST[:PORT]/DATABASE"),
    ("mysql://db/m", "--to: expected mysql://USER@HOST[:PORT]/DATABASE"),
    ("mysql://u@db:99999/m", "is not a number in 1..65535"),
    ("mysql://u@db/m?sock=/x", "unknown URL parameter(s) sock"),
])
def test_bad_copy_target_urls_are_one_line(url, message):
    with pytest.raises(UsageError) as error:
        parse_mysql_url(url)
    assert message in str(error.value)
    assert "hunter2" not in str(error.value) and "ter2" not in str(error.value)


def test_secrets_are_redacted_from_log_records_also_c_escaped():
    secret = 'pa"ss\\word'
    record = logging.LogRecord("tfx", logging.INFO, __file__, 1, "Using connection config:\n %s", (
        pb.ConnectionConfig(mysql=pb.MySQLDatabaseConfig(host="h", password=secret)),), None)
    mc.RedactSecrets([secret]).filter(record)
    message = record.getMessage()
    assert 'password: "***"' in message and "ss" not in message.split("password")[1], message
    assert mc.redact(f"x {secret} y", [secret]) == "x *** y"


def test_an_unreachable_mysql_store_is_one_sentence_naming_it(monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("MLMD_PW", "s3cret")
    metadata = MySQLMetadata(host="127.0.0.1", port=port, database="mlmd", user="conveyor", password_env="MLMD_PW")
    with pytest.raises(mc.MetadataConnectionError) as error:
        mc.connect("/nonexistent", metadata, read_only=True)
    message = str(error.value)
    assert message.startswith(f"cannot open the ML Metadata store, MySQL database 'mlmd' at 127.0.0.1:{port} "
                              "(user conveyor): "), message
    # MLMD's client says nothing ("errno: , error:"); the server's own reason is given instead.
    assert "Can't connect to MySQL server on '127.0.0.1'" in message and "(MySQL error 2003)" in message, message
    assert "\n" not in message and "s3cret" not in message


@pytest.mark.parametrize("command", [["runs"], ["lineage", "--model", "image_classifier"], ["diff", "1", "2"],
                                     ["report", "--out", "r.html"], ["drift", "--model", "image_classifier"],
                                     ["run", "image"], ["bless", "--run", "-1", "--reason", "r"],
                                     ["metadata", "copy"]])
def test_commands_on_an_unreachable_mysql_store_exit_2_with_one_line(command, tmp_path, monkeypatch, capfd):
    # capfd, not capsys: ML Metadata's C++ client writes its glog lines to file descriptor 2.
    port = _closed_port()
    monkeypatch.setenv("MLMD_PW", "s3cret")
    (tmp_path / "data" / "0").mkdir(parents=True)
    (tmp_path / "c.yaml").write_text(f"home: {tmp_path / 'home'}\nmetadata: {{host: 127.0.0.1, port: {port}, "
                                     "database: mlmd, user: conveyor, password_env: MLMD_PW}\n")
    extra = ["--data", str(tmp_path / "data")] if command[0] == "run" else []
    if command[0] == "metadata":  # the target is the unreachable store; the source must exist
        (tmp_path / "home").mkdir()
        mc.connect(str(tmp_path / "home"))  # an empty SQLite store
    status = cli.main([*command, *extra, "--config", str(tmp_path / "c.yaml")])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and f"MySQL database 'mlmd' at 127.0.0.1:{port} (user conveyor)" in lines[0], err
    assert "Traceback" not in err and "s3cret" not in err


def test_the_dashboard_on_an_unreachable_mysql_store_says_so(monkeypatch):
    from conveyor.ui import create_app
    port = _closed_port()
    metadata = MySQLMetadata(host="127.0.0.1", port=port, database="mlmd", user="conveyor")
    page = create_app("/nonexistent", metadata=metadata).test_client().get("/")
    assert page.status_code == 503
    assert f"MySQL database &#39;mlmd&#39; at 127.0.0.1:{port}" in page.get_data(as_text=True)
