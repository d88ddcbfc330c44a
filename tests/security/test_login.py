"""Login use cases with an injected clock: throttling, lockout, sessions' timeouts."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from tileserver.security import passwords, totp
from tileserver.security.accounts import Accounts
from tileserver.security.audit import SECURITY_ALERT, USER_AUTHENTICATION, AuditLog
from tileserver.security.crypto import new_key
from tileserver.security.login import (
    ABSOLUTE_TIMEOUT,
    BACKOFF_AFTER,
    IDLE_TIMEOUT,
    LOCK_AFTER,
    Authenticator,
    LoginFailed,
    backoff_delay,
)

PASSWORD = "an unguessable test phrase"  # generated for this test
T = TypeVar("T")


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
    auth.refusals.flush(everything=True)
    assert refused_in_audit(audit) >= LOCK_AFTER  # every refusal, alone or in a summary


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
    _, _, secret, _ = setup
    path = tmp_path / "auth.db"
    db = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # with the WAL
    assert secret not in db and totp.b32(secret).encode() not in db
    assert b"$argon2id$" in db and PASSWORD.encode() not in db


def test_login_is_fast_enough_to_measure() -> None:
    started = time.perf_counter()
    passwords.hash_password(PASSWORD)
    assert time.perf_counter() - started < 5  # sanity, not a benchmark


# -- findings of the second security review (issue 14) ------------------------------------------


def refused_in_audit(audit: AuditLog, source_ip: str | None = None) -> int:
    """Refused logins the audit trail accounts for: single records and summaries' counts."""
    total = 0
    for r in audit.records():
        if r["event_id"] != USER_AUTHENTICATION or not r["outcome"]:
            continue
        if source_ip is not None and r["source_ip"] != source_ip:
            continue
        total += r["detail"]["refused"] if r["detail"].get("aggregated") else 1
    return total


class Checks:
    """Counts Argon2 verifications, real or dummy (monkeypatched into login's view)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._lock = threading.Lock()
        real_verify, real_dummy = passwords.verify_password, passwords.dummy_verify

        def verify(hash: str, password: str) -> bool:
            self._tick()
            return real_verify(hash, password)

        def dummy(password: str) -> None:
            self._tick()
            real_dummy(password)

        monkeypatch.setattr(passwords, "verify_password", verify)
        monkeypatch.setattr(passwords, "dummy_verify", dummy)

    def _tick(self) -> None:
        with self._lock:
            self.count += 1


def attempt(auth: Authenticator, user: str, password: str, code: str, ip: str) -> LoginFailed:
    with pytest.raises(LoginFailed) as caught:
        auth.login(user, password, code, ip)
    return caught.value


def at_once(threads: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """``call(i)`` in ``threads`` threads released together; results or exceptions."""
    barrier = threading.Barrier(threads)

    def run(i: int) -> T | BaseException:
        barrier.wait(timeout=30)
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))


def test_concurrent_wrong_passwords_are_all_counted(
    setup: tuple[Authenticator, Clock, bytes, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 2: 50 guesses at once (from 50 addresses) move the count by 50, and only the
    guesses before the back-off have a password checked."""
    auth, clock, secret, _ = setup
    checks = Checks(monkeypatch)
    results = at_once(
        50, lambda i: auth.login("carol", f"guess {i}", code(secret, clock), f"198.51.100.{i}")
    )
    assert all(isinstance(r, LoginFailed) for r in results)
    assert checks.count <= BACKOFF_AFTER, f"{checks.count} passwords checked at once"
    throttled = [r for r in results if isinstance(r, LoginFailed) and r.retry_after]
    assert len(throttled) == 50 - checks.count
    assert auth.accounts.attempts("carol") == (50, checks.count)


def test_unknown_names_are_throttled_like_accounts(
    setup: tuple[Authenticator, Clock, bytes, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 6: the same answers in the same order, with the same Argon2 work each time,
    whether the name is an account or not (AUTH-05)."""
    auth, clock, secret, _ = setup
    checks = Checks(monkeypatch)
    start = clock.t
    seen = {}
    for name in ("carol", "no-such-user"):
        clock.t, answers = start, []
        for i in range(12):
            clock.t += 0.7
            before = checks.count
            guess = code(secret, clock)
            failed = attempt(auth, name, "wrong password guess", guess, f"192.0.2.{i}")
            answers.append((str(failed), failed.retry_after, checks.count - before))
        seen[name] = answers
    assert seen["carol"] == seen["no-such-user"]
    assert any(retry for _, retry, _ in seen["carol"]), "no back-off at all"
    assert [work for _, retry, work in seen["carol"] if retry is None] == [1] * 7


def test_address_flood_is_refused_before_any_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 7: random names from one address cost no Argon2 once its bucket is empty;
    other addresses are unaffected, an IPv6 client is one /64, and successes give back."""
    clock = Clock()
    accounts = Accounts(tmp_path / "auth.db", new_key(), now=clock)
    audit = AuditLog(tmp_path / "audit.jsonl", new_key(), now=clock)
    secret = totp.new_secret()
    accounts.create_user(
        "carol", "viewer", passwords.hash_password(PASSWORD), accounts.seal_totp("carol", secret), 0
    )
    auth = Authenticator(accounts, audit, now=clock, address_rate=0.01, address_burst=10)
    checks = Checks(monkeypatch)
    refused = [attempt(auth, f"user{i}", "x" * 20, "000000", "203.0.113.9") for i in range(40)]
    assert checks.count == 10
    assert all(r.retry_after for r in refused[10:]) and not any(r.retry_after for r in refused[:10])
    attempt(auth, "someone", "x" * 20, "000000", "203.0.113.10")
    assert checks.count == 11
    for i in range(10):
        attempt(auth, f"v6 user{i}", "x" * 20, "000000", f"2001:db8:1:2::{i + 1:x}")
    assert attempt(auth, "v6", "x" * 20, "000000", "2001:db8:1:2:ffff::1").retry_after
    for _ in range(15):  # more logins than the burst, from one address: all succeed
        clock.t += 31
        assert auth.login("carol", PASSWORD, code(secret, clock), "192.0.2.200")


def test_refused_logins_are_audited_per_address_and_minute(
    setup: tuple[Authenticator, Clock, bytes, AuditLog],
) -> None:
    """Finding 7: a flood leaves one record at once and one summary per address and minute;
    names that are no account appear only as keyed hashes."""
    auth, clock, _, audit = setup
    clock.t = 1_800_000_000.0 // 60 * 60 + 1  # the start of a minute
    typed = [f"Tr0ub4dor&{i}-horse" for i in range(20)]  # passwords in the user-name box
    for name in typed:
        attempt(auth, name, "x" * 20, "000000", "203.0.113.7")
    attempt(auth, "carol", "wrong password guess", "000000", "203.0.113.7")
    records = [r for r in audit.records() if r["source_ip"] == "203.0.113.7"]
    assert len(records) == 1 and records[0]["detail"]["reason"] == "invalid_credentials"
    assert records[0]["user"] == "unknown:" + auth.accounts.name_tag(typed[0])[:16]
    clock.t += 60  # the minute is over: the next login writes its summary
    attempt(auth, "someone-else", "x" * 20, "000000", "192.0.2.99")
    summaries = [r for r in audit.records() if r["detail"].get("aggregated")]
    assert len(summaries) == 1
    detail = summaries[0]["detail"]
    assert summaries[0]["source_ip"] == "203.0.113.7"
    assert detail["refused"] == detail["invalid_credentials"] == 20
    assert detail["distinct_users"] == 20 and "carol" in detail["users"]
    assert refused_in_audit(audit, "203.0.113.7") == 21
    text = audit.path.read_text()
    assert not any(name in text for name in typed)


def test_concurrent_logins_with_one_code_open_one_session(
    setup: tuple[Authenticator, Clock, bytes, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 8: the right password and one valid code, sent by several clients at once:
    exactly one session (the TOTP code is single use, RFC 6238 §5.2). The password checks
    end together at a barrier, so the claims race as closely as they can; a claim that
    reads, then writes, lets a second session through within a few rounds."""
    auth, clock, secret, _ = setup
    barrier = threading.Barrier(BACKOFF_AFTER)  # every attempt of a round gets a check
    real_verify = passwords.verify_password

    def verify_then_wait(hash: str, password: str) -> bool:
        matched = real_verify(hash, password)
        barrier.wait(timeout=30)
        return matched

    monkeypatch.setattr(passwords, "verify_password", verify_then_wait)
    for _ in range(8):
        clock.t += 31  # a fresh step each round
        the_code = code(secret, clock)
        results = at_once(
            BACKOFF_AFTER, lambda i, c=the_code: auth.login("carol", PASSWORD, c, f"192.0.2.{i}")
        )
        sessions = [r for r in results if isinstance(r, str)]
        assert len(sessions) == 1, results
        assert all(isinstance(r, LoginFailed) for r in results if not isinstance(r, str))


def test_backoff_delay_is_bounded() -> None:
    assert backoff_delay(BACKOFF_AFTER - 1) == 0
    assert backoff_delay(BACKOFF_AFTER) == 1
    assert backoff_delay(10_000) == 15 * 60  # no OverflowError after a long siege
