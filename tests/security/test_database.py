"""The state database on both engines: one SQL dialect, typed failures, versioned schemas,
and a PostgreSQL pool that survives its server going away and coming back."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.pgserver import PgServer
from tests.tcpproxy import tcp_proxy
from tileserver.errors import ConfigError
from tileserver.security.database import (
    Database,
    DatabaseConflict,
    DatabaseError,
    DatabaseUnavailable,
    Migration,
    has_password,
    mask,
    migrate,
    open_database,
    statements,
)

TABLE = [
    Migration(1, "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, b BLOB, r REAL, n INTEGER)")
]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = open_database(tmp_path / "state.db")
    else:
        database = open_database(request.getfixturevalue("pg_dsn"))
    try:
        yield database
    finally:
        database.close()


def test_same_sql_same_values_on_both_engines(db: Database) -> None:
    migrate(db, "test", TABLE)
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (?, ?, ?, ?)", ("100%", b"\x00\xff", 1.5, 2**40))
        assert tx.execute("UPDATE t SET n = n + 1 WHERE k = ?", ("100%",)).rowcount == 1
        assert tx.execute("SELECT n FROM t WHERE k = ?", ("100%",)).fetchone() == (2**40 + 1,)
    # A literal % next to placeholders is not a placeholder on PostgreSQL either.
    assert db.read("SELECT k, b, r, n FROM t WHERE k LIKE '1%' AND r > ?", (1,)) == [
        ("100%", b"\x00\xff", 1.5, 2**40 + 1)
    ]


def test_a_failed_transaction_leaves_nothing(db: Database) -> None:
    migrate(db, "test", TABLE)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO t (k) VALUES (?)", ("gone",))
        raise RuntimeError("abort")
    assert db.read("SELECT k FROM t") == []


def test_a_broken_unique_rule_is_a_typed_conflict(db: Database) -> None:
    migrate(db, "test", TABLE)
    with db.transaction() as tx:
        tx.execute("INSERT INTO t (k) VALUES (?)", ("once",))
    with pytest.raises(DatabaseConflict), db.transaction() as tx:
        tx.execute("INSERT INTO t (k) VALUES (?)", ("once",))
    assert db.read("SELECT count(*) FROM t") == [(1,)]


def test_migrations_apply_once_in_order_and_record_the_version(db: Database) -> None:
    assert migrate(db, "test", TABLE) == 1
    later = [
        *TABLE,
        Migration(2, "CREATE TABLE IF NOT EXISTS u (x INTEGER); INSERT INTO u VALUES (7)"),
    ]
    assert migrate(db, "test", later) == 2
    assert migrate(db, "test", later) == 2  # nothing re-run: u still has one row
    assert db.read("SELECT x FROM u") == [(7,)]
    assert db.read("SELECT component, version FROM schema_version") == [("test", 2)]
    with pytest.raises(DatabaseError, match="newer than this program"):
        migrate(db, "test", TABLE)


def test_postgresql_gets_its_own_type_names() -> None:
    sql = "CREATE TABLE x (b BLOB, r REAL, n INTEGER, realm TEXT)"
    assert statements(sql, "postgresql") == [
        "CREATE TABLE x (b BYTEA, r DOUBLE PRECISION, n BIGINT, realm TEXT)"
    ]
    assert statements(sql, "sqlite") == [sql]


def test_a_database_made_before_versioning_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE t (k TEXT PRIMARY KEY, b BLOB, r REAL, n INTEGER)")
        old.execute("INSERT INTO t (k) VALUES ('kept')")
    db = open_database(path)
    assert migrate(db, "test", TABLE) == 1
    assert db.read("SELECT k FROM t") == [("kept",)]


def _migrate_slowly(dsn: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    db = open_database(dsn)
    slow = [
        Migration(
            1,
            "CREATE TABLE IF NOT EXISTS once (k TEXT PRIMARY KEY); SELECT pg_sleep(0.3);"
            " INSERT INTO once VALUES ('bootstrap')",  # a second run would break the key
        )
    ]
    barrier.wait()
    migrate(db, "race", slow)
    db.close()


def test_two_processes_migrating_an_empty_database_make_one_schema(pg_dsn: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_migrate_slowly, args=(pg_dsn, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    db = open_database(pg_dsn)
    assert db.read("SELECT k FROM once") == [("bootstrap",)]
    assert db.read("SELECT component, version FROM schema_version") == [("race", 1)]
    db.close()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))


def test_postgresql_down_is_unavailable_and_back_up_recovers_without_restart(
    pg_server: PgServer, pg_dsn: str
) -> None:
    with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        db = open_database(_via(pg_dsn, proxy.port))
        migrate(db, "test", TABLE)
        assert db.read("SELECT count(*) FROM t") == [(0,)]
        proxy.down()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            db.read("SELECT count(*) FROM t")
        with pytest.raises(DatabaseUnavailable), db.transaction() as tx:
            tx.execute("INSERT INTO t (k) VALUES ('lost')")
        assert time.monotonic() - started < 30  # bounded waits, not a hang
        proxy.up()
        deadline = time.monotonic() + 30
        while True:  # the pool reconnects in the background
            try:
                rows = db.read("SELECT count(*) FROM t")
                break
            except DatabaseUnavailable:
                assert time.monotonic() < deadline, "the pool never reconnected"
                time.sleep(0.2)
        assert rows == [(0,)]  # the write made while down never happened
        with db.transaction() as tx:
            tx.execute("INSERT INTO t (k) VALUES ('after')")
        db.close()


def test_a_restarted_server_costs_no_failed_read(pg_server: PgServer, pg_dsn: str) -> None:
    """Idle pooled connections die with the server; the next read retries on a fresh one."""
    with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        db = open_database(_via(pg_dsn, proxy.port))
        assert db.read("SELECT 1") == [(1,)]
        proxy.down()
        proxy.up()
        assert db.read("SELECT 1") == [(1,)]
        db.close()


def test_urls_are_masked_and_passwords_found() -> None:
    url = "postgresql://alice:s3cret@db.example:5433/tiles?sslmode=verify-full"
    assert mask(url) == "postgresql://alice@db.example:5433/tiles"
    assert has_password(url)
    assert not has_password("postgresql://alice@db.example/tiles")
    assert not has_password("/srv/tileserver/auth.db")
    with pytest.raises(ConfigError, match="malformed"):
        has_password("postgresql://alice@db.example:notaport/tiles?nonsense=1")


def test_libpq_options_in_the_url_pass_through_and_failures_say_why(pg_dsn: str) -> None:
    """TLS settings reach libpq as given (this test server has no TLS, so requiring it
    fails), and the 503's message says why, never with the password."""
    db = open_database(pg_dsn + "?sslmode=require")
    with pytest.raises(DatabaseUnavailable, match="SSL") as refused:
        db.read("SELECT 1")
    password = urlsplit(pg_dsn).password
    assert password and password not in str(refused.value)
    db.close()
