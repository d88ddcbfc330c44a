"""Login use cases with an injected clock: throttling, lockout, sessions' timeouts."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tileserver.security import passwords, totp
from tileserver.security.accounts import Accounts
from tileserver.security.audit import SECURITY_ALERT, USER_AUTHENTICATION, AuditLog
from tileserver.security.crypto import new_key
from tileserver.security.login import (
    ABSOLUTE_TIMEOUT,
    IDLE_TIMEOUT,
    LOCK_AFTER,
    Authenticator,
    LoginFailed,
)

PASSWORD = "an unguessable test phrase"  # generated for this test


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Authenticator, Clock, bytes, AuditLog]:
    clock = Clock()
    accounts = Accounts(tmp_path / "auth.db", new_key(), now=clock)
    audit = AuditLog(tmp_path / "audit.jsonl", new_key(), now=clock)
    secret = totp.new_secret()
    accounts.create_user(
        "carol",
        "pathologist",
        passwords.hash_password(PASSWORD),
        accounts.seal_totp("carol", secret),
        step=0,
    )
    return Authenticator(accounts, audit, now=clock), clock, secret, audit


def code(secret: bytes, clock: Clock) -> str:
    return totp.code_at(secret, totp.step_of(clock()))


def test_backoff_then_lockout(setup: tuple[Authenticator, Clock, bytes, AuditLog]) -> None:
    auth, clock, secret, audit = setup
    retry_afters = []
    wrong = 0
    while wrong < 120:  # 120 wrong passwords actually checked
        clock.t += 31  # a fresh TOTP step each time
        try:
            auth.login("carol", "wrong password guess", code(secret, clock), "192.0.2.7")
        except LoginFailed as exc:
            if exc.retry_after is not None:
                retry_afters.append(exc.retry_after)
                clock.t += exc.retry_after  # the attacker waits as told
                continue
            wrong += 1
        else:
            pytest.fail("logged in with a wrong password")
    assert retry_afters, "no back-off"
    assert retry_afters == sorted(retry_afters) or max(retry_afters) == 15 * 60
    clock.t += 3600
    with pytest.raises(LoginFailed):  # locked: even the right password gets nothing
        auth.login("carol", PASSWORD, code(secret, clock), "192.0.2.7")
    events = [r["event_id"] for r in audit.records()]
    assert events.count(SECURITY_ALERT) == 1
    failures = [r for r in audit.records() if r["event_id"] == USER_AUTHENTICATION and r["outcome"]]
    assert len(failures) >= LOCK_AFTER


def test_back_off_does_not_lock_out_quickly(
    setup: tuple[Authenticator, Clock, bytes, AuditLog],
) -> None:
    """An attacker hammering without waiting gets 429s, not a locked-out clinician."""
    auth, clock, secret, _ = setup
    for _ in range(500):
        with contextlib.suppress(LoginFailed):
            auth.login("carol", "wrong password guess", "123456", "192.0.2.9")
    clock.t += 15 * 60 + 1
    session = auth.login("carol", PASSWORD, code(secret, clock), "10.0.0.5")
    assert session


def test_unknown_user_and_wrong_password_look_alike(
    setup: tuple[Authenticator, Clock, bytes, AuditLog],
) -> None:
    auth, clock, secret, _ = setup
    messages = set()
    for user in ("carol", "nobody"):
        with pytest.raises(LoginFailed) as caught:
            auth.login(user, "wrong password guess", code(secret, clock), "192.0.2.1")
        messages.add((str(caught.value), caught.value.retry_after))
    assert len(messages) == 1


def test_session_timeouts(setup: tuple[Authenticator, Clock, bytes, AuditLog]) -> None:
    auth, clock, secret, _ = setup
    session = auth.login("carol", PASSWORD, code(secret, clock), "127.0.0.1")
    assert auth.principal(session, None) is not None
    clock.t += IDLE_TIMEOUT - 60
    assert auth.principal(session, None) is not None  # activity keeps it alive
    clock.t += IDLE_TIMEOUT + 1
    assert auth.principal(session, None) is None  # idle
    clock.t += 31
    session = auth.login("carol", PASSWORD, code(secret, clock), "127.0.0.1")
    for _ in range(int(ABSOLUTE_TIMEOUT // (IDLE_TIMEOUT / 2)) + 2):
        clock.t += IDLE_TIMEOUT / 2
        auth.principal(session, None)
    assert auth.principal(session, None) is None  # absolute lifetime


def test_totp_secret_is_sealed_at_rest(
    tmp_path: Path, setup: tuple[Authenticator, Clock, bytes, AuditLog]
) -> None:
    auth, _, secret, _ = setup
    path = auth.accounts.path
    db = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # with the WAL
    assert secret not in db and totp.b32(secret).encode() not in db
    assert b"$argon2id$" in db and PASSWORD.encode() not in db


def test_login_is_fast_enough_to_measure() -> None:
    started = time.perf_counter()
    passwords.hash_password(PASSWORD)
    assert time.perf_counter() - started < 5  # sanity, not a benchmark
