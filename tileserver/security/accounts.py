"""Who may do what: people, sessions, machine tokens, collections and grants.

One database shared by every server process: ``TILESERVER_HOME/auth.db`` (SQLite, 0600) on
one machine, or PostgreSQL (``--database``) for servers on many hosts behind a load balancer,
so a disabled user or a removed grant takes effect on the very next request everywhere.
Secrets are never stored as they are: session IDs and tokens as SHA-256 (they carry 256
random bits, so a fast hash is enough), passwords with Argon2id, TOTP secrets sealed with
AES-GCM under a key of the key ring.

Login throttling is kept per user-name string, known or not, under a keyed hash of the name
(``login_throttle``): an unknown name is throttled exactly like an account, so the answers do
not say which names exist (AUTH-05), and a name that was really a mistyped password never sits
in the database as it was typed.

Every write transaction that can change who may do what bumps one change counter (the
``generation`` row) inside the same transaction, so a reader that sees the counter unchanged
knows every authorization answer it cached is still true (``authz_cache``), whichever process
or server wrote. Writes that change no such answer leave it alone (``_db(bump=False)``): a
session's last_seen time and the login throttle, or every viewer's refresh and every guessed
password would empty the caches of every server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from tileserver.errors import ConfigError, TileserverError
from tileserver.security.accounts_schema import MIGRATIONS
from tileserver.security.change_mark import ChangeMark
from tileserver.security.crypto import Sealer
from tileserver.security.database import (
    Database,
    Row,
    SqliteDatabase,
    Transaction,
    migrate,
    open_database,
)

ROLES = ("admin", "pathologist", "viewer")
SCOPES = ("metadata", "thumbnails", "tiles", "regions", "labels", "annotations")
# People get these with a view grant (labels need their own); tokens only what they name.
USER_SCOPES = frozenset({"metadata", "thumbnails", "tiles", "regions", "annotations"})

# Throttle rows of names that are not accounts are forgotten after a day without attempts.
UNKNOWN_NAME_MEMORY = 24 * 3600.0
PRUNE_EVERY = 60.0


class AccountError(TileserverError, ValueError):
    """An account operation that cannot be done (unknown user, bad role, ...)."""


def _url_aad(kid: object) -> bytes:
    return f"tileserver-url-key/v1\x00{kid}".encode()


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
    expires: float | None = None  # tokens: when the token stops working (checked per request)


@dataclass(frozen=True)
class Session:
    """A live session as the database holds it (times from ``Accounts.now``)."""

    user: str
    role: str
    hash: str
    created: float
    last_seen: float


@dataclass(frozen=True)
class User:
    name: str
    role: str
    pw_hash: str | None
    totp_sealed: bytes | None
    totp_last_step: int | None
    disabled: bool


@dataclass(frozen=True)
class Attempt:
    """One login attempt as the throttle counted it (``Accounts.begin_attempt``)."""

    allowed: bool  # False: still backing off, refuse without checking any credential
    failures: int  # consecutive failed attempts of this name, refused ones included
    guesses: int  # consecutive attempts whose credentials were checked (back-off, lock)
    next_attempt: float  # when the next check may happen, should this one fail


class Accounts:
    """The auth database: a SQLite file, or PostgreSQL shared by servers on many hosts.
    Thread-safe; safe across processes and hosts (``tileserver.security.database``)."""

    def __init__(
        self,
        database: Database | Path | str,
        totp_key: bytes,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = open_database(database) if isinstance(database, Path | str) else database
        # Across a network: the server keeps every lookup off its event loop (server/auth.py).
        self.remote = self.db.dialect != "sqlite"
        # SQLite: the counter's read is skipped while the mark beside the file says that no
        # write has committed since (change_mark.py).
        db = self.db
        self._changes = ChangeMark.beside(db.path) if isinstance(db, SqliteDatabase) else None
        self._seen: tuple[int, int] | None = None  # (mark, counter read after seeing it)
        self.now = now
        self._sealer = Sealer(totp_key)
        # Its own key for user-name tags, derived with a label so it is never the sealing key.
        label = b"tileserver-login-name-tag/v1"
        self._tag_key = hmac.new(totp_key, label, hashlib.sha256).digest()
        url_label = b"tileserver-url-key-seal/v1"
        self._url_sealer = Sealer(hmac.new(totp_key, url_label, hashlib.sha256).digest())
        self._pruned = 0.0
        migrate(self.db, "accounts", MIGRATIONS)
        self._check_key()

    def _check_key(self) -> None:
        """Servers sharing a database must share the TOTP service key, or a login enrolled
        through one host fails on the others and each host throttles names on its own."""
        mark = hmac.new(self._tag_key, b"tileserver-key-check/v1", hashlib.sha256).hexdigest()
        query = "SELECT digest FROM key_checks WHERE purpose = 'totp'"
        rows = self._read(query)
        if not rows:
            with self._db(bump=False) as db:
                db.execute(
                    "INSERT INTO key_checks (purpose, digest) VALUES ('totp', ?)"
                    " ON CONFLICT (purpose) DO NOTHING",
                    (mark,),
                )
                rows = db.execute(query).fetchall()
        if not hmac.compare_digest(str(rows[0][0]), mark):
            raise ConfigError(
                f"{self.db.describe()} was set up with another TOTP service key than this"
                " host's (TILESERVER_HOME/keys/service/totp.key): every server sharing a"
                " database needs the same service keys"
            )

    @contextmanager
    def _db(self, *, bump: bool = True) -> Iterator[Transaction]:
        """A write transaction, serial with every other one on every host (read-modify-write
        code such as the login throttle relies on it); ``bump=False`` only for writes no
        authorization answer depends on (see the module docstring)."""
        marking = self._changes.writing() if bump and self._changes else nullcontext()
        with marking, self.db.transaction(serial="accounts") as tx:
            yield tx
            if bump:
                tx.execute("UPDATE generation SET n = n + 1 WHERE id = 1")

    def generation(self) -> int:
        """The change counter: unchanged means no write since that could change a principal,
        a grant, a slide's collection or a token (read on every authenticated request; on
        SQLite from the file only when the change mark moved since the last read)."""
        mark = self._changes.settled() if self._changes else None
        seen = self._seen
        if mark is not None and seen is not None and seen[0] == mark:
            return seen[1]
        n = int(self._read("SELECT n FROM generation WHERE id = 1")[0][0])
        if mark is not None:
            self._seen = (mark, n)
        return n

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Row]:
        return self.db.read(sql, args)

    # -- TOTP secrets ------------------------------------------------------------------------
    def seal_totp(self, user: str, secret: bytes) -> bytes:
        return self._sealer.seal(secret, f"tileserver-totp/v1\x00{user}".encode())

    def open_totp(self, user: str, sealed: bytes) -> bytes:
        return self._sealer.open(sealed, f"tileserver-totp/v1\x00{user}".encode(), f"{user}: TOTP")

    # -- users -------------------------------------------------------------------------------
    def user(self, name: str) -> User | None:
        rows = self._read(
            "SELECT name, role, pw_hash, totp_sealed, totp_last_step, disabled FROM users"
            " WHERE name = ?",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return User(str(r[0]), str(r[1]), r[2], r[3], r[4], bool(r[5]))

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
            # New credentials: failures counted against the old ones (or the name) are moot.
            db.execute("DELETE FROM login_throttle WHERE tag=?", (self.name_tag(name),))

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
                db.execute('DELETE FROM sessions WHERE "user"=?', (name,))
            else:  # an administrator re-enabling a locked account gives it a fresh budget
                db.execute("DELETE FROM login_throttle WHERE tag=?", (self.name_tag(name),))

    def reset(self, name: str) -> None:
        """Forget the password and TOTP secret and end every session (re-enrolment follows)."""
        with self._db() as db:
            if not db.execute(
                "UPDATE users SET pw_hash=NULL, totp_sealed=NULL, totp_last_step=NULL,"
                " failures=0, next_attempt=0 WHERE name=?",
                (name,),
            ).rowcount:
                raise AccountError(f"no user {name!r}")
            db.execute('DELETE FROM sessions WHERE "user"=?', (name,))
            db.execute("DELETE FROM login_throttle WHERE tag=?", (self.name_tag(name),))

    # -- login throttling, per user-name string --------------------------------------------------
    def name_tag(self, name: str) -> str:
        """A keyed hash of a user-name string: the throttle's key, and what the audit trail
        shows for a name that is not an account (it may be a password typed in the wrong box)."""
        data = name.encode("utf-8", "surrogatepass")
        return hmac.new(self._tag_key, data, hashlib.sha256).hexdigest()

    def begin_attempt(
        self, name: str, known: bool, now: float, delay: Callable[[int], float]
    ) -> Attempt:
        """Count a login attempt before any credential is checked, atomically.

        The read and the write are one write transaction (BEGIN IMMEDIATE holds SQLite's write
        lock across processes), so concurrent attempts are counted one after another and at
        most the allowed number get past the back-off. The attempt is counted as a failure up
        front; a success clears the count (``clear_attempts``). ``delay(guesses)`` is the
        back-off policy: seconds to wait after that many checked failures.
        """
        tag = self.name_tag(name)
        with self._db(bump=False) as db:
            row = db.execute(
                "SELECT failures, guesses, next_attempt FROM login_throttle WHERE tag=?", (tag,)
            ).fetchone()
            failures, guesses, next_attempt = (
                (0, 0, 0.0) if row is None else (int(row[0]), int(row[1]), float(row[2]))
            )
            failures += 1
            allowed = next_attempt <= now
            if allowed:
                guesses += 1
                next_attempt = now + delay(guesses)
            db.execute(
                "INSERT INTO login_throttle (tag, known, failures, guesses, next_attempt, updated)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(tag) DO UPDATE SET known=excluded.known,"
                " failures=excluded.failures, guesses=excluded.guesses,"
                " next_attempt=excluded.next_attempt, updated=excluded.updated",
                (tag, int(known), failures, guesses, next_attempt, now),
            )
            if now - self._pruned > PRUNE_EVERY:
                # Names that are not accounts (random guesses) must not grow the table forever.
                self._pruned = now
                db.execute(
                    "DELETE FROM login_throttle WHERE known=0 AND updated < ?",
                    (now - UNKNOWN_NAME_MEMORY,),
                )
        return Attempt(allowed, failures, guesses, next_attempt)

    def clear_attempts(self, name: str) -> None:
        """A successful login: the consecutive-failure count starts again."""
        with self._db(bump=False) as db:
            db.execute("DELETE FROM login_throttle WHERE tag=?", (self.name_tag(name),))

    def attempts(self, name: str) -> tuple[int, int]:
        """(consecutive failures, of which credential checks) counted for a user-name string."""
        rows = self._read(
            "SELECT failures, guesses FROM login_throttle WHERE tag=?", (self.name_tag(name),)
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

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
                'INSERT INTO one_time (hash, purpose, "user", role, expires)'
                " VALUES (?, ?, ?, ?, ?)",
                (digest(token), purpose, user, role, self.now() + ttl),
            )
        return token

    def issue_bootstrap(self, ttl: float) -> str | None:
        """The one live setup link for the first administrator; None once there are users.

        One transaction, serial across hosts: it retires any earlier unused link, so two
        operators (or hosts) asking at once leave one valid link, never two.
        """
        token = new_secret()
        with self._db() as db:
            if db.execute("SELECT 1 FROM users LIMIT 1").fetchone():
                return None
            db.execute("UPDATE one_time SET used=1 WHERE purpose='bootstrap' AND used=0")
            db.execute(
                "INSERT INTO one_time (hash, purpose, role, expires) VALUES (?, 'bootstrap', ?, ?)",
                (digest(token), "admin", self.now() + ttl),
            )
        return token

    def peek_one_time(
        self, token: str, purposes: tuple[str, ...]
    ) -> tuple[str, str | None, str | None, bytes | None] | None:
        """(purpose, user, role, pending TOTP) of a valid, unused token; None otherwise."""
        rows = self._read(
            'SELECT purpose, "user", role, totp_sealed FROM one_time WHERE hash=? AND used=0'
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
                'UPDATE one_time SET totp_sealed=?, "user"=? WHERE hash=? AND used=0',
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
        # No bump: a new session changes no cached answer (only known callers are cached),
        # and each login would otherwise empty every server's cache.
        with self._db(bump=False) as db:
            db.execute(
                'INSERT INTO sessions (hash, "user", created, last_seen) VALUES (?, ?, ?, ?)',
                (digest(session), user, now, now),
            )
        return session

    def session_user(self, session: str, idle: float, absolute: float) -> Session | None:
        """The live session of an enabled user, else None."""
        h = digest(session)
        rows = self._read(
            'SELECT s."user", u.role, s.created, s.last_seen FROM sessions s'
            ' JOIN users u ON u.name = s."user" WHERE s.hash=? AND u.disabled=0',
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
            with self._db(bump=False) as db:
                db.execute("UPDATE sessions SET last_seen=? WHERE hash=?", (now, h))
            last_seen = now
        return Session(str(user), str(role), h, float(created), float(last_seen))

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
        scope_set = frozenset(str(scopes).split(","))
        until = None if expires is None else float(expires)
        return Principal("token", str(name), "service", scope_set, limited, expires=until)

    def revoke_token(self, name: str) -> None:
        with self._db() as db:
            if not db.execute("DELETE FROM tokens WHERE name=?", (name,)).rowcount:
                raise AccountError(f"no token named {name!r}")

    def tokens(self) -> list[tuple[str, str, str | None, float | None]]:
        rows = self._read("SELECT name, scopes, collections, expires FROM tokens ORDER BY name")
        return [(str(n), str(s), c, e) for n, s, c, e in rows]

    # -- signing keys of signed URLs (servers sharing a database) ---------------------------
    def url_keys(self) -> dict[str, bytes]:
        """Key ID -> key, every key that still verifies."""
        rows = self._read("SELECT kid, sealed FROM url_keys ORDER BY kid")
        return {
            str(kid): self._url_sealer.open(sealed, _url_aad(kid), "url key")
            for kid, sealed in rows
        }

    def add_url_key(self, *, only_if_none: bool = False) -> str:
        """A new signing key (the highest ID signs); with ``only_if_none``, the first one,
        made once however many servers ask at once."""
        with self._db() as db:
            row = db.execute("SELECT max(kid) FROM url_keys").fetchone()
            newest = None if row is None or row[0] is None else int(row[0])
            if only_if_none and newest is not None:
                return str(newest)
            kid = 1 if newest is None else newest + 1
            sealed = self._url_sealer.seal(secrets.token_bytes(32), _url_aad(kid))
            db.execute("INSERT INTO url_keys (kid, sealed) VALUES (?, ?)", (kid, sealed))
        return str(kid)

    def retire_url_key(self, kid: str) -> None:
        """Destroy a signing key: URLs it signed are refused from the next request."""
        with self._db() as db:
            if (
                not kid.isdecimal()
                or not db.execute("DELETE FROM url_keys WHERE kid = ?", (int(kid),)).rowcount
            ):
                raise AccountError(f"no url key {kid[:12]!r}")

    # -- suspensions (detector responses) -------------------------------------------------------
    def suspend(self, principal: str, reason: str, alert_id: str) -> None:
        """Refuse ``principal`` ("kind:name") on every request until cleared; the first
        suspension's reason and alert are kept."""
        with self._db() as db:
            db.execute(
                "INSERT INTO suspensions (principal, reason, alert_id, created)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (principal) DO NOTHING",
                (principal, reason, alert_id, self.now()),
            )

    def suspensions(self) -> list[tuple[str, str, str, float]]:
        """(principal, reason, alert ID, created) of every suspension."""
        rows = self._read(
            "SELECT principal, reason, alert_id, created FROM suspensions ORDER BY created"
        )
        return [(str(p), str(r), str(a), float(c)) for p, r, a, c in rows]

    def clear_suspensions(
        self, *, alert_id: str | None = None, principal: str | None = None
    ) -> list[str]:
        """Lift the suspensions of one alert or one principal; the principals cleared."""
        with self._db() as db:
            rows = db.execute(
                "SELECT principal FROM suspensions WHERE alert_id = ? OR principal = ?",
                (alert_id, principal),
            ).fetchall()
            db.execute(
                "DELETE FROM suspensions WHERE alert_id = ? OR principal = ?",
                (alert_id, principal),
            )
        return [str(r[0]) for r in rows]

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
                'INSERT INTO grants ("user", collection, labels) VALUES (?, ?, ?)'
                ' ON CONFLICT("user", collection) DO UPDATE SET labels=excluded.labels',
                (user, collection, int(labels)),
            )

    def revoke_grant(self, user: str, collection: str) -> None:
        with self._db() as db:
            db.execute('DELETE FROM grants WHERE "user"=? AND collection=?', (user, collection))

    def grant_of(self, user: str, collection: str) -> tuple[bool, bool]:
        """(may view, may see labels) of a user in a collection."""
        rows = self._read(
            'SELECT labels FROM grants WHERE "user"=? AND collection=?', (user, collection)
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
            ' WHERE g."user" = ?',
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
