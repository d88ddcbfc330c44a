"""Authentication + authorization per request, before and after the cache (pytest-benchmark;
not part of the default test run):

    .venv/bin/pytest benchmarks/bench_authz.py --benchmark-only --benchmark-columns=median,mean,ops

``uncached_*``: what every tile request cost before (``Accounts`` lookups: the token or
session, then the slide's collection and the grant). ``cached_*``: the same answer with a
warm ``AuthzCache`` (one read of the change counter, hashing the credential, dictionary
lookups), as the auth middleware does it on the event loop. ``counter_read``: that read
alone, through the change mark (nothing written since) and from SQLite (after a write).
``executor_hop[hop]`` minus ``executor_hop[none]``: handing a no-op to a worker thread and
back, the price of moving the counter read off the event loop. ``detector_tiles``: the
detector's work for 2000 tiles of one token fetched at random (a crawl, the detector's
dearest case), one event at a time (``observe``, as every tile paid before) against the
server's batches of 200 (``observe_tiles``); divide by 2000 for a tile.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tileserver.security.accounts import Accounts
from tileserver.security.audit import AuditLog
from tileserver.security.authz_cache import Lookup
from tileserver.security.crypto import new_key
from tileserver.security.detector import TILE, Detector, Event
from tileserver.security.login import Authenticator

SLIDE = "a" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authenticator, str, str]:
    root: Path = tmp_path_factory.mktemp("authz")
    accounts = Accounts(root / "auth.db", new_key())
    auth = Authenticator(accounts, AuditLog(root / "audit.jsonl", new_key()))
    accounts.assign(SLIDE, "case-1")
    accounts.add_pending("alice", "pathologist")
    accounts.grant("alice", "case-1", labels=False)
    token = accounts.create_token("lis", frozenset({"tiles"}), frozenset({"case-1"}), None)
    return auth, token, accounts.create_session("alice")


def _uncached(auth: Authenticator, session: str | None, bearer: str | None) -> bool:
    principal = auth.principal(session, bearer)
    assert principal is not None
    return auth.accounts.allows(principal, SLIDE, "tiles")


def _cached(auth: Authenticator, session: str | None, bearer: str | None) -> bool:
    generation = auth.authz.generation()
    principal = auth.cached_principal(session, bearer, None, generation)
    assert principal is not None and principal is not Lookup.MISS
    return auth.authz.allows(principal, SLIDE, "tiles", generation)


def _warm(auth: Authenticator, session: str | None, bearer: str | None) -> None:
    generation = auth.authz.generation()
    principal = auth.principal(session, bearer, None, generation)
    assert principal is not None
    auth.authz.learn(principal, SLIDE, generation)


def test_uncached_token(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, token, _ = world
    assert benchmark(_uncached, auth, None, token)


def test_cached_token(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, token, _ = world
    _warm(auth, None, token)
    assert benchmark(_cached, auth, None, token)


def test_uncached_session(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, _, session = world
    assert benchmark(_uncached, auth, session, None)


def test_cached_session(benchmark, world) -> None:  # type: ignore[no-untyped-def]
    auth, _, session = world
    _warm(auth, session, None)
    assert benchmark(_cached, auth, session, None)


@pytest.mark.parametrize("via", ["mark", "sqlite"])
def test_counter_read(benchmark, world, via: str) -> None:  # type: ignore[no-untyped-def]
    auth, _, _ = world
    if via == "mark":  # what a request pays while nothing was written (change_mark.py)
        benchmark(auth.accounts.generation)
    else:  # what it pays after a write: SQLite's read
        benchmark(auth.accounts._read, "SELECT n FROM generation WHERE id = 1")


@pytest.mark.parametrize("work", ["none", "hop"])
def test_executor_hop(benchmark, work: str) -> None:  # type: ignore[no-untyped-def]
    """``hop`` minus ``none``: a worker-thread round trip from the event loop."""
    loop = asyncio.new_event_loop()

    async def step() -> None:
        if work == "hop":
            await loop.run_in_executor(None, int)

    try:
        loop.run_until_complete(step())  # the executor's thread is started before timing
        benchmark(lambda: loop.run_until_complete(step()))
    finally:
        loop.close()


@pytest.mark.parametrize("feed", ["one_by_one", "batches"])
def test_detector_tiles(benchmark, feed: str) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    tiles = [
        Event(1e9 + i / 2000, TILE, "token:b", "127.0.0.1", SLIDE, 17, rng.randrange(80), y)
        for i, y in enumerate(rng.randrange(60) for _ in range(2000))
    ]

    def run(detector: Detector) -> None:
        if feed == "batches":
            for start in range(0, len(tiles), 200):
                detector.observe_tiles(tiles[start : start + 200])
        else:
            for tile in tiles:
                detector.observe(tile)

    benchmark.pedantic(run, setup=lambda: ((Detector(),), {}), rounds=30)
