"""Authorization lookups per tile request, SQLite against PostgreSQL (pytest-benchmark; not
part of the default test run; PostgreSQL is Debian's, a throwaway cluster on loopback as in
the tests):

    .venv/bin/pytest benchmarks/bench_database.py --benchmark-only \\
        --benchmark-columns=median,mean,ops --benchmark-group-by=func

Every case runs on both engines in the same run, so each figure has its comparator:

- ``counter_read``: the change counter alone, the one read every authenticated request makes;
- ``cached_request``: a tile request as the auth middleware serves it with a warm cache. On
  SQLite on the event loop (counter read, cache lookups); on PostgreSQL everything in one
  worker-thread hop (server/auth.py), timed here from an event loop, hop included;
- ``uncached_token`` / ``uncached_session``: the caller and its right to the slide straight
  from the database (a cache miss: after any change, or a new credential);
- ``rate_limit``: the per-principal limit shared through the database (``SharedBudgets``):
  a request from the local lease, and the statement that takes a new lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import postgresql
from tileserver.security.accounts import Accounts
from tileserver.security.audit import AuditLog
from tileserver.security.authz_cache import Lookup
from tileserver.security.budgets import SharedBudgets
from tileserver.security.crypto import new_key
from tileserver.security.login import Authenticator

SLIDE = "a" * 32


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgresql() as server:
        yield server.dsn(server.create_database())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Authenticator, str, str]]:
    root: Path = tmp_path_factory.mktemp("db")
    target = root / "auth.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    accounts = Accounts(target, new_key())
    auth = Authenticator(accounts, AuditLog(root / "audit.jsonl", new_key()))
    accounts.assign(SLIDE, "case-1")
    accounts.add_pending("alice", "pathologist")
    accounts.grant("alice", "case-1", labels=False)
    token = accounts.create_token("lis", frozenset({"tiles"}), frozenset({"case-1"}), None)
    yield auth, token, accounts.create_session("alice")
    accounts.db.close()


def _lookups(auth: Authenticator, bearer: str) -> bool:
    """What the middleware and ``authorize`` ask, from the cache where it can."""
    generation = auth.authz.generation()
    principal = auth.cached_principal(None, bearer, None, generation)
    if principal is Lookup.MISS:
        principal = auth.principal(None, bearer, None, generation)
    assert principal is not None
    return auth.authz.allows(principal, SLIDE, "tiles", generation)


def test_counter_read(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, _, _ = world
    benchmark(auth.accounts.generation)


def test_cached_request(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, token, _ = world
    loop = asyncio.new_event_loop()

    async def request() -> bool:
        if auth.accounts.remote:
            return await loop.run_in_executor(None, _lookups, auth, token)
        return _lookups(auth, token)

    try:
        assert loop.run_until_complete(request())  # warms the cache and the thread
        assert benchmark(lambda: loop.run_until_complete(request()))
    finally:
        loop.close()


def test_uncached_token(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, token, _ = world

    def lookup() -> bool:
        principal = auth.principal(None, token)
        assert principal is not None
        return auth.accounts.allows(principal, SLIDE, "tiles")

    assert benchmark(lookup)


def test_uncached_session(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, _, session = world

    def lookup() -> bool:
        principal = auth.principal(session, None)
        assert principal is not None
        return auth.accounts.allows(principal, SLIDE, "tiles")

    assert benchmark(lookup)


@pytest.mark.parametrize("step", ["spend", "refill"])
def test_rate_limit(benchmark, world, step: str) -> None:  # type: ignore[no-untyped-def]
    """``spend``: a request answered from the local lease (no I/O); ``refill``: taking a new
    lease (one statement). At 2000 requests/s a lease is 200 requests, so a request costs
    ``spend + refill / 200``. The rate here is huge so that the bucket never runs dry."""
    auth, _, _ = world
    budgets = SharedBudgets(auth.accounts.db)
    rate = 1e9
    budgets.refill("token:lis", rate, rate)
    if step == "spend":
        assert benchmark(budgets.spend, "token:lis") is None
    else:
        assert benchmark(budgets.refill, "token:lis", rate, rate) is None
