"""Rate-limit budgets shared through the database: the limit holds across processes and
hosts, and requests are answered from local leases, not a database write each."""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.synchronize
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tileserver.security.budgets import REFILL, SharedBudgets
from tileserver.security.database import Args, Database, Row, open_database

RATE, BURST = 10.0, 20.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Counting:
    """The database, counting the statements that reach it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.dialect
        self.statements = 0

    def read(self, sql: str, args: Args = ()) -> list[Row]:
        return self.db.read(sql, args)

    def execute(self, sql: str, args: Args = ()) -> list[Row]:
        self.statements += 1
        return self.db.execute(sql, args)

    def transaction(self, serial: str | None = "tileserver"):  # type: ignore[no-untyped-def]
        return self.db.transaction(serial)

    def describe(self) -> str:
        return self.db.describe()

    def close(self) -> None:
        self.db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def hosts(target: str) -> Iterator[tuple[Clock, list[SharedBudgets]]]:
    clock = Clock()
    budgets = [SharedBudgets(open_database(target), now=clock) for _ in range(3)]
    yield clock, budgets
    for each in budgets:
        each.db.close()


def test_the_burst_and_the_rate_hold_across_hosts(
    hosts: tuple[Clock, list[SharedBudgets]],
) -> None:
    clock, budgets = hosts
    turns = itertools.cycle(budgets)
    allowed = [next(turns).take("user:alice", RATE, BURST) is None for _ in range(100)]
    assert sum(allowed) == BURST  # one burst in all, not one per host
    clock.t += 1.0
    allowed = [next(turns).take("user:alice", RATE, BURST) is None for _ in range(100)]
    assert sum(allowed) == RATE  # a second's worth, in all
    assert budgets[0].take("user:bob", RATE, BURST) is None  # keys are separate


def test_a_refused_request_says_how_long_to_wait(
    hosts: tuple[Clock, list[SharedBudgets]],
) -> None:
    clock, (a, b, _) = hosts
    while a.take("token:lis", RATE, BURST) is None:
        pass
    wait = b.take("token:lis", RATE, BURST)
    assert wait is not None and 0 < wait <= 1 / RATE
    clock.t += wait
    assert b.take("token:lis", RATE, BURST) is None


def test_requests_spend_leases_not_database_writes(target: str) -> None:
    clock = Clock()
    db = Counting(open_database(target))
    budgets = SharedBudgets(db, now=clock)
    rate = 2000.0  # a lease is 200 requests
    for _ in range(1000):
        assert budgets.take("user:alice", rate, 4000.0) is None
    assert db.statements == 5
    while budgets.take("user:alice", rate, 4000.0) is None:
        pass
    before = db.statements
    for _ in range(1000):  # refused: answered locally until the bucket will have refilled
        assert budgets.spend("user:alice") not in (None, REFILL)
    assert db.statements == before
    db.close()


def _hammer(target: str, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    budgets = SharedBudgets(open_database(target))
    barrier.wait()
    started = time.time()
    allowed = 0
    while time.time() - started < 1.5:
        allowed += budgets.take("token:lis", 40.0, 60.0) is None
    Path(out).write_text(f"{allowed} {started} {time.time()}")
    budgets.db.close()


def test_processes_hammering_at_once_share_one_budget(target: str, tmp_path: Path) -> None:
    SharedBudgets(open_database(target)).db.close()  # the table, before the race
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    outs = [str(tmp_path / f"out{i}") for i in range(3)]
    procs = [context.Process(target=_hammer, args=(target, barrier, out)) for out in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    results = [Path(out).read_text().split() for out in outs]
    allowed = sum(int(r[0]) for r in results)
    elapsed = max(float(r[2]) for r in results) - min(float(r[1]) for r in results)
    assert 60 <= allowed <= 60 + 40 * elapsed + 1  # one burst and the rate, for all three
