"""The auth database under concurrency: the single-use TOTP claim and the login throttle's
count are atomic, so threads released at the same instant cannot share one code or one
failure count (each round starts every thread together at a barrier)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from tileserver.security.accounts import Accounts
from tileserver.security.crypto import new_key
from tileserver.security.login import BACKOFF_AFTER, backoff_delay

T = TypeVar("T")
THREADS = 12
ROUNDS = 25
NOW = 1_800_000_000.0


def all_at_once(threads: int, call: Callable[[], T]) -> list[T]:
    """``call`` in ``threads`` threads released together."""
    barrier = threading.Barrier(threads)

    def run() -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: run(), range(threads)))


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    accounts = Accounts(tmp_path / "auth.db", new_key(), now=lambda: NOW)
    accounts.create_user("carol", "pathologist", "$argon2id$not-used-here", b"sealed", step=0)
    return accounts


def test_one_totp_step_is_claimed_once_under_concurrency(accounts: Accounts) -> None:
    """RFC 6238 §5.2 single use: of threads claiming one step at once, exactly one wins.
    A read-then-write claim lets several through in the first rounds."""
    for step in range(1, ROUNDS + 1):
        won = all_at_once(THREADS, lambda s=step: accounts.claim_totp_step("carol", s))
        assert won.count(True) == 1, f"step {step} claimed {won.count(True)} times"
        assert not accounts.claim_totp_step("carol", step)  # and never again afterwards


def test_concurrent_attempts_are_each_counted(accounts: Accounts) -> None:
    """Every attempt moves the failure count by one, and only the attempts before the
    back-off get a credential check, however many arrive together."""
    for name in ("carol", "not-an-account"):
        outcomes = all_at_once(
            50, lambda n=name: accounts.begin_attempt(n, n == "carol", NOW, backoff_delay)
        )
        assert accounts.attempts(name) == (50, BACKOFF_AFTER)
        assert sorted(a.failures for a in outcomes) == list(range(1, 51))
        assert sum(a.allowed for a in outcomes) == BACKOFF_AFTER
        accounts.clear_attempts(name)
        assert accounts.attempts(name) == (0, 0)


def test_new_credentials_or_re_enabling_clear_the_count(accounts: Accounts) -> None:
    for _ in range(7):
        accounts.begin_attempt("carol", True, NOW, backoff_delay)
    accounts.set_disabled("carol", True)
    assert accounts.attempts("carol") == (7, BACKOFF_AFTER)
    accounts.set_disabled("carol", False)  # an administrator's decision: a fresh budget
    assert accounts.attempts("carol") == (0, 0)
    accounts.begin_attempt("carol", True, NOW, backoff_delay)
    accounts.reset("carol")
    assert accounts.attempts("carol") == (0, 0)


def test_names_are_stored_as_keyed_hashes(accounts: Accounts, tmp_path: Path) -> None:
    typed = "Correct-Horse-Battery-9!"  # a password typed into the user-name box
    accounts.begin_attempt(typed, False, NOW, backoff_delay)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("auth.db*"))
    assert typed.encode() not in stored
    assert accounts.name_tag(typed).encode() in stored
    other = Accounts(tmp_path / "other.db", new_key())
    assert other.name_tag(typed) != accounts.name_tag(typed)  # keyed: not a plain digest


def test_unknown_names_are_forgotten_after_a_quiet_day(tmp_path: Path) -> None:
    clock = [NOW]
    accounts = Accounts(tmp_path / "auth.db", new_key(), now=lambda: clock[0])
    accounts.create_user("carol", "viewer", "$argon2id$x", b"sealed", step=0)
    accounts.begin_attempt("random-guess", False, NOW, backoff_delay)
    accounts.begin_attempt("carol", True, NOW, backoff_delay)
    later = NOW + 2 * 24 * 3600
    accounts.begin_attempt("another-guess", False, later, backoff_delay)
    assert accounts.attempts("random-guess") == (0, 0)  # pruned
    assert accounts.attempts("carol") == (1, 1)  # an account's count is kept
