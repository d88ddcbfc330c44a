"""The auth database on PostgreSQL: every operation answers as on SQLite, and servers on
different hosts (here: separate Accounts, each with its own pool) act as one."""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.synchronize
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.security.test_accounts import (  # the same contract, on PostgreSQL
    all_at_once,
    test_concurrent_attempts_are_each_counted,
    test_new_credentials_or_re_enabling_clear_the_count,
    test_one_totp_step_is_claimed_once_under_concurrency,
)
from tileserver.errors import ConfigError
from tileserver.security import passwords, totp
from tileserver.security.accounts import MIGRATIONS, AccountError, Accounts, Principal
from tileserver.security.audit import AuditLog
from tileserver.security.authz_cache import Lookup
from tileserver.security.crypto import new_key
from tileserver.security.database import DatabaseConflict, open_database
from tileserver.security.login import BACKOFF_AFTER, Authenticator, backoff_delay
from tileserver.security.signed_urls import SharedUrlKeys, SignatureRejected, check

__all__ = [
    "test_concurrent_attempts_are_each_counted",
    "test_new_credentials_or_re_enabling_clear_the_count",
    "test_one_totp_step_is_claimed_once_under_concurrency",
]

NOW = 1_800_000_000.0
KEY = bytes(range(32))  # the TOTP service key every "host" shares (a test value)
PASSWORD = "an unguessable test phrase"  # generated for this test
SLIDE_A, SLIDE_B = "a" * 32, "b" * 32


@pytest.fixture
def accounts(pg_dsn: str) -> Iterator[Accounts]:
    """What tests/security/test_accounts.py runs against, on PostgreSQL."""
    accounts = Accounts(pg_dsn, new_key(), now=lambda: NOW)
    accounts.create_user("carol", "pathologist", "$argon2id$not-used-here", b"sealed", step=0)
    yield accounts
    accounts.db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Accounts]:
    target = (
        tmp_path / "auth.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    )
    accounts = Accounts(target, KEY, now=lambda: NOW)
    yield accounts
    accounts.db.close()


def test_every_operation_answers_the_same_on_both_engines(either: Accounts) -> None:
    a = either
    assert not a.has_users() and a.issue_bootstrap(600) is not None
    a.create_user("alice", "admin", "$argon2id$x", b"\x00sealed\xff", step=3)
    assert a.issue_bootstrap(600) is None  # there are users now
    a.add_pending("bob", "viewer")
    with pytest.raises(AccountError):
        a.create_user("x", "god", "h", b"", 0)
    with pytest.raises(DatabaseConflict):  # typed alike on both engines
        a.add_pending("bob", "viewer")
    alice = a.user("alice")
    assert alice is not None and alice.totp_sealed == b"\x00sealed\xff" and not alice.disabled
    assert [u.name for u in a.users()] == ["alice", "bob"]
    assert a.claim_totp_step("alice", 4) and not a.claim_totp_step("alice", 4)

    attempt = a.begin_attempt("alice", True, NOW, backoff_delay)
    assert attempt.allowed and a.attempts("alice") == (1, 1)
    a.clear_attempts("alice")
    assert a.attempts("alice") == (0, 0)

    link = a.issue_one_time("enrol", "bob", "viewer", 600)
    assert a.peek_one_time(link, ("enrol",)) == ("enrol", "bob", "viewer", None)
    a.stage_totp(link, "bob", b"pending")
    assert a.peek_one_time(link, ("enrol",)) == ("enrol", "bob", "viewer", b"pending")
    assert a.consume_one_time(link) and not a.consume_one_time(link)

    session = a.create_session("alice")
    live = a.session_user(session, 900, 43200)
    assert live is not None and (live.user, live.role) == ("alice", "admin")
    a.end_session(session)
    assert a.session_user(session, 900, 43200) is None

    token = a.create_token("lis", frozenset({"thumbnails"}), frozenset({"CASE-1"}), NOW + 60)
    lis = a.token_principal(token)
    assert lis is not None and lis.collections == frozenset({"CASE-1"})
    assert a.certificate_principal("lis") == lis
    assert a.tokens() == [("lis", "thumbnails", "CASE-1", NOW + 60)]

    a.assign(SLIDE_A, "CASE-1")
    a.assign(SLIDE_B, "CASE-2")
    assert a.collection_of(SLIDE_A) == "CASE-1" and a.collection_of("c" * 32) is None
    a.grant("bob", "CASE-2", labels=True)
    assert a.grant_of("bob", "CASE-2") == (True, True)
    bob = Principal("user", "bob", "viewer", frozenset({"tiles", "labels"}), None)
    assert a.visible_slides(bob) == {SLIDE_B} and a.visible_slides(lis) == {SLIDE_A}
    assert a.allows(bob, SLIDE_B, "labels") and not a.allows(bob, SLIDE_A, "tiles")
    assert a.allows(lis, SLIDE_A, "thumbnails") and not a.allows(lis, SLIDE_A, "tiles")
    a.revoke_grant("bob", "CASE-2")
    assert not a.allows(bob, SLIDE_B, "tiles")

    a.suspend("token:lis", "bulk crawl", "alert-1")
    assert a.suspensions() == [("token:lis", "bulk crawl", "alert-1", NOW)]
    assert a.clear_suspensions(alert_id="alert-1") == ["token:lis"]

    before = a.generation()
    a.revoke_token("lis")
    assert a.token_principal(token) is None and a.generation() == before + 1
    with pytest.raises(AccountError):
        a.revoke_token("lis")
    a.set_disabled("alice", True)
    assert a.user("alice").disabled  # type: ignore[union-attr]
    a.reset("alice")
    assert a.user("alice").pw_hash is None  # type: ignore[union-attr]


def _host(dsn: str, tmp_path: Path, name: str) -> Authenticator:
    """One server host: its own pool, audit log and caches, the shared database."""
    return Authenticator(Accounts(dsn, KEY), AuditLog(tmp_path / f"{name}.jsonl", KEY))


def test_a_login_on_one_host_is_valid_on_another_until_revoked(pg_dsn: str, tmp_path: Path) -> None:
    a, b = _host(pg_dsn, tmp_path, "a"), _host(pg_dsn, tmp_path, "b")
    secret = totp.new_secret()
    a.accounts.create_user(
        "carol",
        "pathologist",
        passwords.hash_password(PASSWORD),
        a.accounts.seal_totp("carol", secret),
        step=0,
    )
    session = a.login("carol", PASSWORD, totp.code_at(secret, totp.step_of(a.now())), "10.0.0.1")
    generation = b.authz.generation()
    found = b.principal(session, None, None, generation)
    assert found is not None and found.name == "carol"  # cached on b from here on
    assert b.cached_principal(session, None, None, generation) == found

    a.accounts.set_disabled("carol", True)  # on host a
    generation = b.authz.generation()  # host b's next request reads the counter ...
    assert b.cached_principal(session, None, None, generation) is Lookup.MISS
    assert b.principal(session, None, None, generation) is None  # ... and refuses at once

    token = b.accounts.create_token("lis", frozenset({"tiles"}), None, None)
    assert a.principal(None, token, None, a.authz.generation()) is not None
    b.accounts.revoke_token("lis")
    generation = a.authz.generation()
    assert a.cached_principal(None, token, None, generation) is Lookup.MISS
    assert a.principal(None, token, None, generation) is None
    for host in (a, b):
        host.accounts.db.close()


def test_cached_answers_die_with_a_change_on_another_host(pg_dsn: str, tmp_path: Path) -> None:
    a, b = _host(pg_dsn, tmp_path, "a"), _host(pg_dsn, tmp_path, "b")
    token = a.accounts.create_token("lis", frozenset({"tiles"}), None, None)
    a.accounts.assign(SLIDE_A, "CASE-1")
    generation = b.authz.generation()
    lis = b.principal(None, token, None, generation)
    assert lis is not None and b.authz.allows(lis, SLIDE_A, "tiles", generation)
    a.accounts.revoke_token("lis")
    generation = b.authz.generation()
    assert b.cached_principal(None, token, None, generation) is Lookup.MISS
    assert b.principal(None, token, None, generation) is None
    for host in (a, b):
        host.accounts.db.close()


def test_wrong_passwords_on_two_hosts_at_once_are_counted_exactly(pg_dsn: str) -> None:
    hosts = [Accounts(pg_dsn, KEY, now=lambda: NOW) for _ in range(2)]
    turns = itertools.cycle(hosts)  # half the attempts through each host's pool
    outcomes = all_at_once(50, lambda: next(turns).begin_attempt("carol", True, NOW, backoff_delay))
    assert hosts[0].attempts("carol") == (50, BACKOFF_AFTER)
    assert sum(o.allowed for o in outcomes) == BACKOFF_AFTER
    for host in hosts:
        host.db.close()


def _start(dsn: str, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    barrier.wait()
    accounts = Accounts(dsn, KEY)  # migrates an empty database, like a server starting
    token = accounts.issue_bootstrap(600)
    Path(out).write_text(token or "")
    accounts.db.close()


def test_servers_starting_together_make_one_schema_and_one_setup_link(
    pg_dsn: str, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    outs = [str(tmp_path / f"out{i}") for i in range(3)]
    starts = [context.Process(target=_start, args=(pg_dsn, barrier, out)) for out in outs]
    for start in starts:
        start.start()
    for start in starts:
        start.join(120)
    assert [s.exitcode for s in starts] == [0, 0, 0]
    db = open_database(pg_dsn)
    assert db.read("SELECT component, version FROM schema_version") == [
        ("accounts", MIGRATIONS[-1].version)
    ]
    live = db.read("SELECT count(*) FROM one_time WHERE purpose = 'bootstrap' AND used = 0")
    assert live == [(1,)]  # three asked, the last one's link is the only valid one
    db.close()
    accounts = Accounts(pg_dsn, KEY)
    valid = [
        t for t in (Path(o).read_text() for o in outs) if accounts.peek_one_time(t, ("bootstrap",))
    ]
    assert len(valid) == 1
    accounts.db.close()


# The schema of auth.db files written before schemas were versioned (before login_throttle,
# the change counter and suspensions existed): such a file opens, keeps its data, and gains
# the tables added since.
OLD_SCHEMA = """
CREATE TABLE users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT, totp_sealed BLOB,
    totp_last_step INTEGER, disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE one_time (
    hash TEXT PRIMARY KEY, purpose TEXT NOT NULL, user TEXT, role TEXT, expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, totp_sealed BLOB);
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, scopes TEXT NOT NULL,
    collections TEXT, expires REAL, revoked INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE slides (slide_id TEXT PRIMARY KEY, collection TEXT NOT NULL);
CREATE TABLE grants (
    user TEXT NOT NULL, collection TEXT NOT NULL, labels INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, collection));
INSERT INTO users (name, role, pw_hash, created) VALUES ('alice', 'admin', 'h', 1);
INSERT INTO slides VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'CASE-1');
INSERT INTO grants VALUES ('alice', 'CASE-1', 1);
"""


def test_an_auth_db_from_before_versioning_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
    accounts = Accounts(path, KEY, now=lambda: NOW)
    assert accounts.grant_of("alice", "CASE-1") == (True, True)  # data kept
    assert accounts.begin_attempt("alice", True, NOW, backoff_delay).allowed  # new tables
    accounts.suspend("user:alice", "test", "alert-1")
    assert accounts.generation() >= 1
    assert accounts.db.read("SELECT component, version FROM schema_version") == [
        ("accounts", MIGRATIONS[-1].version)
    ]
    accounts.db.close()


def test_a_host_with_another_totp_key_refuses_to_start(pg_dsn: str) -> None:
    Accounts(pg_dsn, KEY).db.close()
    with pytest.raises(ConfigError, match="same service keys") as refused:
        Accounts(pg_dsn, new_key())
    password = urlsplit(pg_dsn).password
    assert password and password not in str(refused.value)  # the URL is masked
    Accounts(pg_dsn, KEY).db.close()  # the right key still opens it


def test_url_signing_keys_in_the_database_are_shared_and_sealed(pg_dsn: str) -> None:
    a, b = (SharedUrlKeys(Accounts(pg_dsn, KEY, now=lambda: NOW)) for _ in range(2))
    assert a.kids() == []  # listing makes no key
    a.refresh()  # the first key, made on first use
    exp = int(NOW) + 600
    pairs = list(parse_qsl(a.sign(SLIDE_A, "tiles", exp)))
    b.refresh()
    check(pairs, SLIDE_A, "tiles", NOW, b.key_of)  # signed on one host, valid on another
    key = b.key_of("1")
    sealed = a.accounts.db.read("SELECT sealed FROM url_keys")
    assert key is not None and all(key not in bytes(row[0]) for row in sealed)

    assert b.rotate() == "2"
    a.refresh()
    assert a.current()[0] == "2" and b.kids() == ["1", "2"]
    check(pairs, SLIDE_A, "tiles", NOW, a.key_of)  # older keys still verify
    a.retire("1")
    b.refresh()
    with pytest.raises(SignatureRejected, match="retired"):
        check(pairs, SLIDE_A, "tiles", NOW, b.key_of)
    with pytest.raises(SignatureRejected):
        b.retire("1")
    for keys in (a, b):
        keys.accounts.db.close()
