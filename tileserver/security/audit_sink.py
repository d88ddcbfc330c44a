"""Central audit (issue 13): every server process appends its own hash-chained stream to
PostgreSQL, through a role that can only INSERT and SELECT.

Tables (made by ``init_database``, run once by an operator as the tables' owner):

    audit_streams(stream PK, host, pid, started)     one row per process that wrote a record
    audit_records(stream, seq, line, PK(stream, seq)) the stream's records, as audit.py writes
                                                       them to a file (one canonical JSON line)

A stream ID is ``host-YYYYmmddTHHMMSSZ-pid-random``. Each stream is its own chain: seq from 0,
its head kept in memory (nobody else writes to it), and its first ``prev`` is a keyed hash of
the stream ID, so records cannot be moved to another stream, nor a stream renamed, without
breaking the chain. Append-only is enforced twice: the server's role is granted INSERT and
SELECT only, and a trigger refuses UPDATE, DELETE and TRUNCATE even to the tables' owner
(a superuser can still get round both; ``audit_streams.verify_streams`` and signed
checkpoints are what catch that).

When the database cannot be reached, records are never dropped: they are appended (fsynced)
to a spool file, ``<home>/audit/spool/<stream>.jsonl``, and a background thread inserts them
in order once it is back (inserts are idempotent, so a crash mid-drain repeats nothing). A
process that dies with records spooled leaves its file behind; the next sink opened on the
same home drains it. Requests go on while the spool has room (fail-open, with a security
alert in the stream and an error in the log); once the spool holds ``max_spool_bytes``, an
append raises ``AuditUnavailable`` (503): no PHI is served that cannot be audited.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tileserver.security.audit import (
    SECURITY_ALERT,
    SERIOUS_FAILURE,
    AuditError,
    AuditLog,
    VerifyResult,
    canonical,
    seal,
    verify_lines,
)
from tileserver.security.database import Database, DatabaseUnavailable, connect

logger = logging.getLogger(__name__)

WRITER_ROLE = "tileserver_audit"
MAX_SPOOL_BYTES = 64 << 20  # about 150,000 records: hours of a busy server's audit trail
RETRY_SECONDS = 1.0  # between attempts to drain the spool while the database is away
SWEEP_SECONDS = 60.0  # between looks for spools that other processes here died with
PAGE = 1000  # records read per query
STREAM_ID = re.compile(
    r"(?P<host>[A-Za-z0-9._-]{1,64})-(?P<started>\d{8}T\d{6}Z)-(?P<pid>\d{1,10})-[0-9a-f]{8}"
)
_STARTED = "%Y%m%dT%H%M%SZ"
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TABLES = ("audit_streams", "audit_records")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_streams (
        stream TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        started TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS audit_records (
        stream TEXT NOT NULL,
        seq BIGINT NOT NULL CHECK (seq >= 0),
        line TEXT NOT NULL,
        PRIMARY KEY (stream, seq))""",
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit tables are append-only' USING ERRCODE = 'insufficient_privilege';
    END
    $$""",
    *[
        statement
        for table in _TABLES
        for statement in (
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
            f"REVOKE ALL ON {table} FROM PUBLIC",
        )
    ],
]


class AuditUnavailable(AuditError, DatabaseUnavailable):
    """The audit database is away and the spool is full: nothing more can be recorded, so
    the request is refused like any other that needs the database (503, Retry-After)."""


def open_audit_log(home: Path, key: bytes, url: str | None) -> AuditLog:
    """This process's audit trail: the file under ``home/audit``, or with ``url`` a stream
    of its own in PostgreSQL (spooling beside the file). ``close()`` it when done."""
    path = home / "audit" / "audit.jsonl"
    if url is None:
        return AuditLog(path, key)
    return AuditLog(path, key, sink=PostgresSink(url, key, path.parent / "spool"))


def genesis(key: bytes, stream: str) -> str:
    """The first record's ``prev`` in a stream: binds every record to its stream's ID."""
    return hmac.new(key, b"audit-stream\x00" + stream.encode(), hashlib.sha256).hexdigest()


def new_stream_id(now: float) -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
    started = datetime.fromtimestamp(now, UTC).strftime(_STARTED)
    return f"{host}-{started}-{os.getpid()}-{secrets.token_hex(4)}"


def register_stream(db: Database, stream: str) -> None:
    """Enter a stream in ``audit_streams`` as its ID describes it, before its first record
    is stored (registering again is a no-op: a drain may repeat it)."""
    parts = STREAM_ID.fullmatch(stream)
    if parts is None:
        raise AuditError(f"not an audit stream ID: {stream[:80]!r}")
    started = datetime.strptime(parts["started"], _STARTED).replace(tzinfo=UTC)
    db.read(
        "INSERT INTO audit_streams (stream, host, pid, started) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (stream) DO NOTHING RETURNING stream",
        (stream, parts["host"], int(parts["pid"]), started),
    )


def _check_role(role: str) -> str:
    if not _ROLE.fullmatch(role):
        raise AuditError(f"role name must be lowercase letters, digits and _: {role[:70]!r}")
    return role


def init_database(admin_url: str, role: str = WRITER_ROLE) -> tuple[list[str], str | None]:
    """Create the tables, the append-only triggers and the writer role (as the tables' owner;
    run again, it changes nothing but re-applies the grants). Returns the grant statements
    made and, when the role was created now, its URL with a new password (else None)."""
    role = _check_role(role)
    password = secrets.token_hex(24)  # hex: safe inside the SQL literal below
    grants = [
        f"GRANT INSERT, SELECT ON {', '.join(_TABLES)} TO {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {', '.join(_TABLES)} FROM {role}",
    ]
    db = connect(admin_url, max_size=1)
    try:
        (may_create,) = db.read(
            "SELECT has_schema_privilege(current_schema(), 'CREATE')"
            " AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user)"
        )
        if not may_create[0]:
            raise AuditError(
                f"{db.describe()}: this role cannot create tables here and roles: run "
                "init-db as the database's owner with CREATEROLE, or a superuser"
            )
        with db.transaction(serial="audit-init") as tx:
            for statement in _SCHEMA:
                tx.execute(statement)
            exists = tx.execute("SELECT 1 FROM pg_roles WHERE rolname = ?", (role,)).fetchone()
            if exists is None:
                tx.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            for statement in grants:
                tx.execute(statement)
    finally:
        db.close()
    if exists is not None:
        return grants, None
    parts = urlsplit(admin_url)
    netloc = f"{role}:{password}@{parts.netloc.rpartition('@')[2]}"
    return grants, urlunsplit(parts._replace(netloc=netloc))


def check_writer(db: Database) -> None:
    """The tables exist and this role may INSERT and SELECT but not UPDATE, DELETE or
    TRUNCATE them: a server never writes its audit trail through a role that could rewrite it."""
    rows = db.read(
        "SELECT t, has_table_privilege(t, 'INSERT') AND has_table_privilege(t, 'SELECT'),"
        " has_table_privilege(t, 'UPDATE') OR has_table_privilege(t, 'DELETE')"
        " OR has_table_privilege(t, 'TRUNCATE')"
        " FROM unnest(ARRAY['audit_streams', 'audit_records']) AS t"
        " WHERE to_regclass(t) IS NOT NULL"
    )
    if len(rows) < len(_TABLES):
        raise AuditError(
            f"{db.describe()}: no audit tables; run `tileserver audit init-db` once first"
        )
    for table, may_append, may_rewrite in rows:
        if not may_append:
            raise AuditError(f"{db.describe()}: this role may not INSERT and SELECT {table}")
        if may_rewrite:
            raise AuditError(
                f"{db.describe()}: this role may UPDATE, DELETE or TRUNCATE {table}; connect "
                "as the append-only role that `tileserver audit init-db` made"
            )


def insert_line(db: Database, stream: str, seq: int, line: str) -> None:
    """Store one record; storing the same record again is a no-op, so a write whose answer
    was lost, or a spool drained twice, is safe to repeat (one autocommit statement)."""
    stored = db.read(
        "INSERT INTO audit_records (stream, seq, line) VALUES (?, ?, ?)"
        " ON CONFLICT (stream, seq) DO NOTHING RETURNING seq",
        (stream, seq, line),
    )
    if not stored:
        rows = db.read("SELECT line FROM audit_records WHERE stream = ? AND seq = ?", (stream, seq))
        if not rows or rows[0][0] != line:
            raise AuditError(f"audit stream {stream} seq {seq} already holds another record")


def stream_lines(
    db: Database, stream: str, limit: int | None = None, page: int = PAGE
) -> Iterator[bytes]:
    """The stream's lines in seq order (at most ``limit``), each ending in a newline, read a
    page at a time. The order is the seq column's; the chain checks the seq inside each."""
    after = -1
    remaining = limit
    while remaining is None or remaining > 0:
        size = page if remaining is None else min(page, remaining)
        rows = db.read(
            "SELECT seq, line FROM audit_records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after, size),
        )
        for _, line in rows:
            yield (line + "\n").encode("utf-8")
        if len(rows) < size:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


class PostgresSink:
    """This process's audit stream in PostgreSQL (an ``audit.AuditSink``); thread-safe."""

    def __init__(
        self,
        url: str,
        key: bytes,
        spool_dir: Path,
        *,
        max_spool_bytes: int = MAX_SPOOL_BYTES,
    ) -> None:
        self._key = key
        self._max_spool = max_spool_bytes
        self.stream = new_stream_id(time.time())
        self._seq = 0
        self._head = genesis(key, self.stream)
        self._lock = threading.Lock()  # the chain head and the spool file
        self._drain_lock = threading.Lock()  # one drain at a time
        self._spooling = False
        self._registered = False  # at the first record: a process that writes none leaves none
        self._drained = 0  # bytes of our spool already in the database
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.db = connect(url, max_size=2)
        try:
            check_writer(self.db)
            self._spool_dir = _private_dir(spool_dir)
            self._spool_path, self._spool_fd = _locked_spool(self._spool_dir, self.stream)
        except BaseException:
            self.db.close()
            raise
        self._wake.set()  # first round: spools that processes which died left behind
        self._thread = threading.Thread(target=self._drain_loop, name="audit-spool", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"PostgresSink({self.db.describe()!r}, stream={self.stream!r})"

    @property
    def spooling(self) -> bool:
        return self._spooling

    def write(self, ts: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._stop.is_set():
                raise AuditError(f"audit stream {self.stream} is closed")
            record = seal(self._key, self._seq, ts, fields, self._head)
            line = canonical(record)
            began = False
            if not self._spooling:
                try:
                    self._register()
                    insert_line(self.db, self.stream, self._seq, line)
                except DatabaseUnavailable as exc:
                    logger.error(
                        "audit database unavailable (%s): spooling audit records to %s",
                        exc,
                        self._spool_path,
                    )
                    self._spooling = began = True
            if self._spooling:
                self._spool(line)
            self._seq, self._head = self._seq + 1, record["mac"]
            if began:
                alert = {
                    "event_id": SECURITY_ALERT,
                    "event_type": None,
                    "action": "E",
                    "outcome": SERIOUS_FAILURE,
                    "user": None,
                    "role": None,
                    "source_ip": None,
                    "object": None,
                    "detail": {"reason": "audit database unavailable: records spooled locally"},
                }
                spooled = seal(self._key, self._seq, ts, alert, self._head)
                self._spool(canonical(spooled))
                self._seq, self._head = self._seq + 1, spooled["mac"]
                self._wake.set()
        return record

    def _register(self) -> None:
        if not self._registered:
            register_stream(self.db, self.stream)
            self._registered = True

    def _spool(self, line: str) -> None:
        data = (line + "\n").encode("ascii")
        if os.fstat(self._spool_fd).st_size + len(data) > self._max_spool:
            raise AuditUnavailable(
                "audit database unavailable and the local audit spool is full: refusing "
                "to act without an audit record"
            )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._spool_fd, view) :]
            os.fsync(self._spool_fd)
        except OSError as exc:
            raise AuditUnavailable(
                f"audit database unavailable and the audit spool cannot be written: {exc.strerror}"
            ) from None

    def flush(self, timeout: float = 30.0) -> bool:
        """Drain the spool now (when the database is back); True when nothing is left."""
        deadline = time.monotonic() + timeout
        while True:
            if self._drain():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))

    def _drain_loop(self) -> None:
        while True:
            self._wake.wait(SWEEP_SECONDS)
            if self._stop.is_set():
                return
            self._wake.clear()  # before draining: an outage beginning meanwhile sets it again
            try:
                drained = self._drain()
            except (AuditError, OSError) as exc:  # keep the records, say so, try again
                logger.error("audit spool not drained: %s", exc)
                drained = False
            if not drained:
                self._wake.set()
                self._stop.wait(RETRY_SECONDS)

    def _drain(self) -> bool:
        with self._drain_lock:
            orphans_done = self._drain_orphans()
            return self._drain_own() and orphans_done

    def _drain_own(self) -> bool:
        """Insert what our spool holds; True once it is empty and we write directly again."""
        with self._lock:
            if not self._spooling:
                return True
            size = os.fstat(self._spool_fd).st_size
        try:
            self._register()
            count = _insert_spooled(self.db, self.stream, self._spool_path, self._drained, size)
        except DatabaseUnavailable:
            return False
        self._drained = size
        with self._lock:
            if os.fstat(self._spool_fd).st_size != size:
                return False  # more arrived meanwhile: go round again
            os.ftruncate(self._spool_fd, 0)
            os.fsync(self._spool_fd)
            self._drained = 0
            self._spooling = False
        logger.warning("audit database back: %d spooled audit records stored", count)
        return True

    def _drain_orphans(self) -> bool:
        """Spools of processes that died before draining them; True when none is left."""
        left = True
        for path in _orphans(self._spool_dir, self._spool_path):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # another sink drained it meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process lives, or another sink drains it now
                stream = path.name.removesuffix(".jsonl")
                try:
                    register_stream(self.db, stream)
                    _insert_spooled(self.db, stream, path, 0, os.fstat(fd).st_size)
                except DatabaseUnavailable:
                    left = False
                    continue
                path.unlink()
            finally:
                os.close(fd)
        return left

    def records(self) -> Iterator[dict[str, Any]]:
        """This stream's records in the database (not those still spooled), in seq order."""
        for line in stream_lines(self.db, self.stream):
            yield json.loads(line)

    def verify(self) -> VerifyResult:
        genesis_mac = genesis(self._key, self.stream)
        return verify_lines(lambda: stream_lines(self.db, self.stream), self._key, genesis_mac)

    def close(self) -> None:
        """Stop the drainer, drain once more, and let go of the spool (kept if not empty)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with contextlib.suppress(AuditError, OSError):
            self._drain()
        empty = os.fstat(self._spool_fd).st_size == 0
        if empty:
            self._spool_path.unlink(missing_ok=True)
        os.close(self._spool_fd)
        self.db.close()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def _locked_spool(directory: Path, stream: str) -> tuple[Path, int]:
    """Our spool file, created under its name only once we hold its lock, so no other sink
    ever takes it for the orphan of a dead process."""
    path = directory / f"{stream}.jsonl"
    hidden = directory / f".{stream}.new"
    fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # ours while we live
    os.rename(hidden, path)
    return path, fd


def _orphans(directory: Path, own: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.glob("*.jsonl")
        if path != own and STREAM_ID.fullmatch(path.name.removesuffix(".jsonl")) is not None
    )


def _insert_spooled(db: Database, stream: str, path: Path, start: int, end: int) -> int:
    """Insert the complete lines in bytes [start, end) of a spool file, in order."""
    count = 0
    with path.open("rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            raw = handle.readline(remaining)
            if not raw:
                break
            remaining -= len(raw)
            if not raw.endswith(b"\n"):  # torn by a crash mid-write: never acknowledged
                logger.error("audit spool %s: incomplete last line skipped", path.name)
                break
            line = raw.decode("ascii").rstrip("\n")
            try:
                seq = json.loads(line)["seq"]
            except (ValueError, KeyError, TypeError):
                raise AuditError(f"audit spool {path.name}: unreadable record") from None
            insert_line(db, stream, seq, line)
            count += 1
    return count
