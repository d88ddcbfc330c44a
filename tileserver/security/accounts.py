"""Who may do what: people, sessions, machine tokens, collections and grants, in SQLite.

One database (``TILESERVER_HOME/auth.db``, 0600) shared by every server process, so a
disabled user or a removed grant takes effect on the very next request everywhere.
Secrets are never stored as they are: session IDs and tokens as SHA-256 (they carry 256
random bits, so a fast hash is enough), passwords with Argon2id, TOTP secrets sealed with
AES-GCM under a key of the key ring.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tileserver.errors import TileserverError
from tileserver.security.crypto import Sealer

ROLES = ("admin", "pathologist", "viewer")
SCOPES = ("metadata", "thumbnails", "tiles", "regions", "labels")
USER_SCOPES = frozenset({"metadata", "thumbnails", "tiles", "regions"})  # labels need a grant

Row = tuple[Any, ...]  # SQLite values are typed by the schema below, not by Python

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT, totp_sealed BLOB,
    totp_last_step INTEGER, disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS one_time (
    hash TEXT PRIMARY KEY, purpose TEXT NOT NULL, user TEXT, role TEXT, expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, totp_sealed BLOB);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, scopes TEXT NOT NULL,
    collections TEXT, expires REAL, revoked INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS slides (slide_id TEXT PRIMARY KEY, collection TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    user TEXT NOT NULL, collection TEXT NOT NULL, labels INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, collection));
"""


class AccountError(TileserverError, ValueError):
    """An account operation that cannot be done (unknown user, bad role, ...)."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a person with a session, or a machine with a token."""

    kind: str  # "user" or "token"
    name: str
    role: str  # for tokens: "service"
    scopes: frozenset[str]
    collections: frozenset[str] | None  # tokens may be limited; None: the caller's grants
    session: str | None = None  # session hash, for audit correlation


@dataclass(frozen=True)
class User:
    name: str
    role: str
    pw_hash: str | None
    totp_sealed: bytes | None
    totp_last_step: int | None
    disabled: bool
    failures: int
    next_attempt: float


class Accounts:
    """The auth database. Thread-safe (a connection per thread); process-safe (SQLite)."""

    def __init__(self, path: Path, totp_key: bytes, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.now = now
        self._sealer = Sealer(totp_key)
        self._local = threading.local()
        new = not path.exists()
        self._connection().executescript(_SCHEMA)  # executescript manages its own commit
        if new:
            path.chmod(0o600)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Row]:
        return self._connection().execute(sql, args).fetchall()

    # -- TOTP secrets ------------------------------------------------------------------------
    def seal_totp(self, user: str, secret: bytes) -> bytes:
        return self._sealer.seal(secret, f"tileserver-totp/v1\x00{user}".encode())

    def open_totp(self, user: str, sealed: bytes) -> bytes:
        return self._sealer.open(sealed, f"tileserver-totp/v1\x00{user}".encode(), f"{user}: TOTP")

    # -- users -------------------------------------------------------------------------------
    def user(self, name: str) -> User | None:
        rows = self._read(
            "SELECT name, role, pw_hash, totp_sealed, totp_last_step, disabled, failures,"
            " next_attempt FROM users WHERE name = ?",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return User(str(r[0]), str(r[1]), r[2], r[3], r[4], bool(r[5]), int(r[6]), float(r[7]))

    def users(self) -> list[User]:
        names = [str(r[0]) for r in self._read("SELECT name FROM users ORDER BY name")]
        return [u for u in (self.user(n) for n in names) if u is not None]

    def has_users(self) -> bool:
        return bool(self._read("SELECT 1 FROM users LIMIT 1"))

    def create_user(
        self, name: str, role: str, pw_hash: str, totp_sealed: bytes, step: int
    ) -> None:
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                db.execute(
                    "UPDATE users SET role=?, pw_hash=?, totp_sealed=?, totp_last_step=?,"
                    " disabled=0, failures=0, next_attempt=0 WHERE name=?",
                    (role, pw_hash, totp_sealed, step, name),
                )
            else:
                db.execute(
                    "INSERT INTO users (name, role, pw_hash, totp_sealed, totp_last_step, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, role, pw_hash, totp_sealed, step, self.now()),
                )

    def add_pending(self, name: str, role: str) -> None:
        """A user who has not enrolled yet: grants can be given, no password login works."""
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        with self._db() as db:
            db.execute(
                "INSERT INTO users (name, role, created) VALUES (?, ?, ?)",
                (name, role, self.now()),
            )

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._db() as db:
            if not db.execute(
                "UPDATE users SET disabled=? WHERE name=?", (int(disabled), name)
            ).rowcount:
                raise AccountError(f"no user {name!r}")
            if disabled:
                db.execute("DELETE FROM sessions WHERE user=?", (name,))

    def reset(self, name: str) -> None:
        """Forget the password and TOTP secret and end every session (re-enrolment follows)."""
        with self._db() as db:
            if not db.execute(
                "UPDATE users SET pw_hash=NULL, totp_sealed=NULL, totp_last_step=NULL,"
                " failures=0, next_attempt=0 WHERE name=?",
                (name,),
            ).rowcount:
                raise AccountError(f"no user {name!r}")
            db.execute("DELETE FROM sessions WHERE user=?", (name,))

    def record_failure(self, name: str, failures: int, next_attempt: float) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE users SET failures=?, next_attempt=? WHERE name=?",
                (failures, next_attempt, name),
            )

    def record_success(self, name: str, totp_step: int) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE users SET failures=0, next_attempt=0, totp_last_step=? WHERE name=?",
                (totp_step, name),
            )

    def claim_totp_step(self, name: str, step: int) -> bool:
        """Atomically accept a TOTP step newer than the last one (replays lose the race)."""
        with self._db() as db:
            return bool(
                db.execute(
                    "UPDATE users SET totp_last_step=? WHERE name=?"
                    " AND (totp_last_step IS NULL OR totp_last_step < ?)",
                    (step, name, step),
                ).rowcount
            )

    # -- one-time tokens (bootstrap, enrolment, login links) -----------------------------------
    def issue_one_time(self, purpose: str, user: str | None, role: str | None, ttl: float) -> str:
        token = new_secret()
        with self._db() as db:
            db.execute(
                "INSERT INTO one_time (hash, purpose, user, role, expires) VALUES (?, ?, ?, ?, ?)",
                (digest(token), purpose, user, role, self.now() + ttl),
            )
        return token

    def peek_one_time(
        self, token: str, purposes: tuple[str, ...]
    ) -> tuple[str, str | None, str | None, bytes | None] | None:
        """(purpose, user, role, pending TOTP) of a valid, unused token; None otherwise."""
        rows = self._read(
            "SELECT purpose, user, role, totp_sealed FROM one_time WHERE hash=? AND used=0"
            " AND expires > ?",
            (digest(token), self.now()),
        )
        if not rows or rows[0][0] not in purposes:
            return None
        purpose, user, role, sealed = rows[0]
        return str(purpose), user, role, sealed

    def stage_totp(self, token: str, user: str, sealed: bytes) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE one_time SET totp_sealed=?, user=? WHERE hash=? AND used=0",
                (sealed, user, digest(token)),
            )

    def consume_one_time(self, token: str) -> bool:
        """Mark used; False when it was already used or expired (single use, even in races)."""
        with self._db() as db:
            return bool(
                db.execute(
                    "UPDATE one_time SET used=1 WHERE hash=? AND used=0 AND expires > ?",
                    (digest(token), self.now()),
                ).rowcount
            )

    # -- sessions ----------------------------------------------------------------------------
    def create_session(self, user: str) -> str:
        session = new_secret()
        now = self.now()
        with self._db() as db:
            db.execute(
                "INSERT INTO sessions (hash, user, created, last_seen) VALUES (?, ?, ?, ?)",
                (digest(session), user, now, now),
            )
        return session

    def session_user(
        self, session: str, idle: float, absolute: float
    ) -> tuple[str, str, str] | None:
        """(user, role, session hash) of a live session of an enabled user, else None."""
        h = digest(session)
        rows = self._read(
            "SELECT s.user, u.role, s.created, s.last_seen FROM sessions s"
            " JOIN users u ON u.name = s.user WHERE s.hash=? AND u.disabled=0",
            (h,),
        )
        now = self.now()
        if not rows:
            return None
        user, role, created, last_seen = rows[0]
        if now - float(last_seen) > idle or now - float(created) > absolute:
            self.end_session(session)
            return None
        if now - float(last_seen) > 30:  # write at most twice a minute
            with self._db() as db:
                db.execute("UPDATE sessions SET last_seen=? WHERE hash=?", (now, h))
        return str(user), str(role), h

    def end_session(self, session: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE hash=?", (digest(session),))

    # -- machine tokens ----------------------------------------------------------------------
    def create_token(
        self,
        name: str,
        scopes: frozenset[str],
        collections: frozenset[str] | None,
        expires: float | None,
    ) -> str:
        unknown = scopes - set(SCOPES)
        if unknown or not scopes:
            raise AccountError(f"scopes must be among {', '.join(SCOPES)}; got {sorted(unknown)}")
        token = "tst_" + new_secret()
        with self._db() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
                raise AccountError(f"a token named {name!r} exists; revoke it first")
            db.execute(
                "INSERT INTO tokens (hash, name, scopes, collections, expires, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    digest(token),
                    name,
                    ",".join(sorted(scopes)),
                    None if collections is None else ",".join(sorted(collections)),
                    expires,
                    self.now(),
                ),
            )
        return token

    def token_principal(self, token: str) -> Principal | None:
        """The machine presenting this bearer token, if the token is live."""
        return self._live_token(
            self._read(
                "SELECT name, scopes, collections, expires FROM tokens WHERE hash=? AND revoked=0",
                (digest(token),),
            )
        )

    def certificate_principal(self, name: str) -> Principal | None:
        """The machine whose verified client certificate names it (TLS-04): the live token
        of that name gives its scopes and collections."""
        return self._live_token(
            self._read(
                "SELECT name, scopes, collections, expires FROM tokens WHERE name=? AND revoked=0",
                (name,),
            )
        )

    def _live_token(self, rows: list[Row]) -> Principal | None:
        if not rows:
            return None
        name, scopes, collections, expires = rows[0]
        if expires is not None and float(expires) <= self.now():
            return None
        limited = None if collections is None else frozenset(str(collections).split(","))
        return Principal("token", str(name), "service", frozenset(str(scopes).split(",")), limited)

    def revoke_token(self, name: str) -> None:
        with self._db() as db:
            if not db.execute("DELETE FROM tokens WHERE name=?", (name,)).rowcount:
                raise AccountError(f"no token named {name!r}")

    def tokens(self) -> list[tuple[str, str, str | None, float | None]]:
        rows = self._read("SELECT name, scopes, collections, expires FROM tokens ORDER BY name")
        return [(str(n), str(s), c, e) for n, s, c, e in rows]

    # -- collections and grants -----------------------------------------------------------------
    def assign(self, slide_id: str, collection: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO slides (slide_id, collection) VALUES (?, ?)"
                " ON CONFLICT(slide_id) DO UPDATE SET collection=excluded.collection",
                (slide_id, collection),
            )

    def collection_of(self, slide_id: str) -> str | None:
        rows = self._read("SELECT collection FROM slides WHERE slide_id=?", (slide_id,))
        return str(rows[0][0]) if rows else None

    def grant(self, user: str, collection: str, labels: bool) -> None:
        if self.user(user) is None:
            raise AccountError(f"no user {user!r}")
        with self._db() as db:
            db.execute(
                "INSERT INTO grants (user, collection, labels) VALUES (?, ?, ?)"
                " ON CONFLICT(user, collection) DO UPDATE SET labels=excluded.labels",
                (user, collection, int(labels)),
            )

    def revoke_grant(self, user: str, collection: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM grants WHERE user=? AND collection=?", (user, collection))

    def grant_of(self, user: str, collection: str) -> tuple[bool, bool]:
        """(may view, may see labels) of a user in a collection."""
        rows = self._read(
            "SELECT labels FROM grants WHERE user=? AND collection=?", (user, collection)
        )
        return (True, bool(rows[0][0])) if rows else (False, False)

    def visible_slides(self, principal: Principal) -> set[str]:
        """Slide IDs the caller may see at all (for listings)."""
        if principal.kind == "token":
            if principal.collections is None:
                return {str(r[0]) for r in self._read("SELECT slide_id FROM slides")}
            marks = ",".join("?" * len(principal.collections))
            rows = self._read(
                f"SELECT slide_id FROM slides WHERE collection IN ({marks})",
                tuple(principal.collections),
            )
            return {str(r[0]) for r in rows}
        rows = self._read(
            "SELECT s.slide_id FROM slides s JOIN grants g ON g.collection = s.collection"
            " WHERE g.user = ?",
            (principal.name,),
        )
        return {str(r[0]) for r in rows}

    def allows(self, principal: Principal, slide_id: str, scope: str) -> bool:
        """Deny by default: the slide must be in a collection the caller may use, for that scope."""
        collection = self.collection_of(slide_id)
        if collection is None:
            return False
        if principal.kind == "token":
            in_scope = scope in principal.scopes
            return in_scope and (
                principal.collections is None or collection in principal.collections
            )
        may_view, may_label = self.grant_of(principal.name, collection)
        return may_label if scope == "labels" else may_view and scope in USER_SCOPES
