"""Where server state lives: a SQLite file on one machine, or PostgreSQL for many.

The only module importing ``sqlite3`` (for server state), ``psycopg`` and ``psycopg_pool``.
Callers write SQL once, with ``?`` placeholders and SQL both engines accept (``ON CONFLICT``
upserts, no ``INSERT OR ...``, ``"user"`` quoted: it is a keyword in PostgreSQL), and get
tuples back:

- ``read(sql, args)``: the rows of one statement, outside any write transaction;
- ``execute(sql, args)``: one writing statement, committed on its own (an upsert with
  ``RETURNING``: one round trip), never repeated;
- ``transaction(serial=...)``: a write transaction. SQLite's ``BEGIN IMMEDIATE`` holds the
  file's one write lock, so read-modify-write code (a login throttle) is atomic across
  processes. PostgreSQL has no such lock, so each transaction first takes a transaction-level
  advisory lock named by ``serial``: writers under the same name run one after another on
  every host, exactly as they did on SQLite. ``serial=None`` for writes that need only row
  locks.

Failures are typed: an unreachable, down or locked database is ``DatabaseUnavailable`` (503
with Retry-After at the server, never "allow"); a broken unique constraint is
``DatabaseConflict``. The PostgreSQL pool reconnects by itself when the database returns.

Schemas are versioned per component (``migrate``): one ``schema_version`` row per component,
and migrations applied under an advisory lock, so servers starting at once against an empty
database end with one schema.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tileserver.errors import ConfigError, TileserverError

Row = tuple[Any, ...]  # values typed by the schema, not by Python
Args = Sequence[object]

CONNECT_TIMEOUT = 5  # seconds; a URL's own connect_timeout wins
WAIT_TIMEOUT = 5.0  # seconds a request waits for a pooled connection before a 503
RECONNECT_TIMEOUT = 10.0  # then the pool gives up retrying and connects again on demand
RETRY_AFTER = 5  # seconds, told to clients while the database is unavailable
SCHEMES = ("postgresql://", "postgres://")

# The pool warns on every failed reconnection attempt, in the background; an outage reaches
# operators as the DatabaseUnavailable of each refused request instead (one line each).
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class DatabaseError(TileserverError):
    """The state database refused or failed an operation."""


class DatabaseUnavailable(DatabaseError):
    """The database is down, unreachable or locked for too long: try again later."""


class DatabaseConflict(DatabaseError, ValueError):
    """A write broke a uniqueness rule (another process wrote the same thing first)."""


class Cursor(Protocol):
    """What a statement inside a transaction returns (sqlite3 and psycopg cursors both are)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    def execute(self, sql: str, args: Args = ()) -> Cursor: ...


class Database(Protocol):
    dialect: str  # "sqlite" or "postgresql"

    def read(self, sql: str, args: Args = ()) -> list[Row]: ...

    def execute(self, sql: str, args: Args = ()) -> list[Row]: ...

    def transaction(
        self, serial: str | None = "tileserver"
    ) -> AbstractContextManager[Transaction]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(SCHEMES)


def open_database(target: str | Path, *, max_size: int = 8) -> Database:
    """A ``postgresql://`` URL (libpq's: sslmode and friends pass through) or a file path."""
    if is_url(target):
        return PostgresDatabase(str(target), max_size=max_size)
    return SqliteDatabase(Path(target))


def connect(dsn: str, *, max_size: int = 8) -> PostgresDatabase:
    """A pooled PostgreSQL database, for modules keeping their own tables there."""
    return PostgresDatabase(dsn, max_size=max_size)


# -- URLs ------------------------------------------------------------------------------------
def _params(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"database URL is malformed: {_first_line(exc)}") from None


def has_password(url: str) -> bool:
    return is_url(url) and bool(_params(url).get("password"))


def mask(url: str) -> str:
    """A URL fit for logs and messages: user, host, port and database, never a password."""
    if not is_url(url):
        return url
    p = _params(url)
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', '')}{port}/{p.get('dbname', '')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- SQLite ----------------------------------------------------------------------------------
# Busy or locked past the timeout, a file that cannot be opened, read or grown.
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")


def _sqlite_error(exc: sqlite3.Error) -> Exception | None:
    """Our error for SQLite's, or None to let SQLite's through."""
    if isinstance(exc, sqlite3.IntegrityError):
        return DatabaseConflict(f"database: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and str(
        getattr(exc, "sqlite_errorname", "")
    ).startswith(_SQLITE_UNAVAILABLE):
        return DatabaseUnavailable(f"database: {exc}")
    return None


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        ours = _sqlite_error(exc)
        if ours is None:
            raise
        raise ours from None


class SqliteDatabase:
    """One file (0600), a connection per thread, WAL: readers never wait for the writer."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        new = not path.exists()
        self._connection()
        if new:
            path.chmod(0o600)

    def describe(self) -> str:
        return str(self.path)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with _sqlite_errors():
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def read(self, sql: str, args: Args = ()) -> list[Row]:
        # Not _sqlite_errors(): this runs on the event loop (the change counter, after a
        # write), and the context manager cost more than the read itself (~6.5 against ~4 us).
        try:
            return self._connection().execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            ours = _sqlite_error(exc)
            if ours is None:
                raise
            raise ours from None

    def execute(self, sql: str, args: Args = ()) -> list[Row]:
        return self.read(sql, args)  # autocommit: a statement is its own transaction

    @contextmanager
    def transaction(self, serial: str | None = "tileserver") -> Iterator[Transaction]:
        # BEGIN IMMEDIATE takes the file's write lock: every writer is serial, whatever name.
        conn = self._connection()
        with _sqlite_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Args = ()) -> Cursor:
        return self._conn.execute(sql, tuple(args))


# -- PostgreSQL ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for a name (stable across hosts and versions)."""
    digest = hashlib.sha256(f"tileserver:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _pg_errors(db: PostgresDatabase) -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise DatabaseConflict(f"database: {_first_line(exc)}") from None
    except psycopg_pool.PoolTimeout:
        why = f" (last attempt: {db.failures[-1]})" if db.failures else ""
        raise DatabaseUnavailable(
            f"database {db.describe()} unavailable: no connection within {WAIT_TIMEOUT:.0f} s{why}"
        ) from None
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        _drop_broken(db.pool)
        raise DatabaseUnavailable(
            f"database {db.describe()} unavailable: {_first_line(exc)}"
        ) from None


def _drop_broken(pool: psycopg_pool.ConnectionPool[Any]) -> None:
    """After a connection failure the idle ones are likely dead too (a restarted server):
    test them now, so the next request gets a fresh one instead of failing again."""
    # The pool reconnects in the background; this request fails either way.
    with contextlib.suppress(psycopg.Error, psycopg_pool.PoolClosed):
        pool.check()


def _recording(failures: list[str]) -> type[psycopg.Connection[Any]]:
    """A connection class that notes why connecting failed (the pool only logs it)."""

    class Recording(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                conn = super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                failures[:] = [_first_line(exc)]
                raise
            failures.clear()
            return conn

    return Recording


class PostgresDatabase:
    """A psycopg pool (autocommit connections: a read is one round trip)."""

    dialect = "postgresql"

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        params = _params(url)
        extra: dict[str, Any] = {"application_name": "tileserver"}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        self._url = url
        # Why the pool has no connection (refused, TLS, authentication), for the 503's log line.
        self.failures: list[str] = []
        self.pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            make_conninfo(url, **extra),
            connection_class=_recording(self.failures),
            kwargs={"autocommit": True},
            min_size=1,
            max_size=max(1, max_size),
            timeout=WAIT_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            name="tileserver",
            open=False,
        )
        self.pool.open(wait=False)

    def describe(self) -> str:
        return mask(self._url)

    def read(self, sql: str, args: Args = ()) -> list[Row]:
        query = _pg_sql(sql)
        with _pg_errors(self):
            try:
                return self._read(query, args)
            except psycopg_pool.PoolTimeout:
                raise  # no connection to be had: waiting again would only double the wait
            except (psycopg.OperationalError, psycopg.InterfaceError):
                # A read is safe to repeat: a connection that died while idle (the server
                # restarted) costs one retry on a fresh connection, not a 503.
                _drop_broken(self.pool)
                return self._read(query, args)

    def execute(self, sql: str, args: Args = ()) -> list[Row]:
        with _pg_errors(self):
            return self._read(_pg_sql(sql), args)  # autocommit; not retried: it writes

    def _read(self, query: str, args: Args) -> list[Row]:
        with self.pool.connection() as conn:
            rows: list[Row] = conn.execute(query, tuple(args)).fetchall()
            return rows

    @contextmanager
    def transaction(self, serial: str | None = "tileserver") -> Iterator[Transaction]:
        with (
            _pg_errors(self),
            self.pool.connection() as conn,
            conn.transaction(),
        ):
            tx = _PgTransaction(conn)
            if serial is not None:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(serial),))
            yield tx

    def close(self) -> None:
        self.pool.close()


class _PgTransaction:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Args = ()) -> Cursor:
        return self._conn.execute(_pg_sql(sql), tuple(args))


# -- versioned schemas -----------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """Statements separated by ``;``, with SQLite's type names (BLOB, REAL, INTEGER):
    PostgreSQL gets BYTEA, DOUBLE PRECISION and BIGINT (Unix times overflow nothing,
    counters never wrap)."""

    version: int
    sql: str


_PG_TYPES = {"BLOB": "BYTEA", "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_TYPE_WORD = re.compile(r"\b(BLOB|REAL|INTEGER)\b")


def statements(sql: str, dialect: str) -> list[str]:
    if dialect == "postgresql":
        sql = _TYPE_WORD.sub(lambda m: _PG_TYPES[m.group(1)], sql)
    return [s.strip() for s in sql.split(";") if s.strip()]


def migrate(db: Database, component: str, migrations: Sequence[Migration]) -> int:
    """Bring ``component``'s tables to the newest version; the version it is at now.

    A database made before versioning (no ``schema_version`` row) starts at 0, so migration
    1 must be idempotent (``CREATE TABLE IF NOT EXISTS``) to adopt an existing file.
    """
    newest = max((m.version for m in migrations), default=0)
    if _version(db, component) == newest:
        return newest  # the common start: no lock taken
    with db.transaction(serial="schema-migration") as tx:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = tx.execute(
            "SELECT version FROM schema_version WHERE component = ?", (component,)
        ).fetchone()
        current = 0 if row is None else int(row[0])
        if current > newest:
            raise DatabaseError(
                f"database schema of {component} is version {current}, newer than this"
                f" program's {newest}: upgrade the program"
            )
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version > current:
                for statement in statements(migration.sql, db.dialect):
                    tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_version (component, version) VALUES (?, ?)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, newest),
        )
    return newest


def _version(db: Database, component: str) -> int | None:
    try:
        rows = db.read("SELECT version FROM schema_version WHERE component = ?", (component,))
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
        return None  # no schema_version table yet
    return int(rows[0][0]) if rows else None
