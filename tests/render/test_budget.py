"""Render budgets: output-pixel token buckets per principal, on a hand-stepped clock."""

from __future__ import annotations

import pytest

from tileserver.errors import Overloaded
from tileserver.render.budget import MAX_KEYS, BudgetExceeded, RenderBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    budget = RenderBudget(rate_mpx=2, burst_mpx=10, clock=clock)
    for _ in range(10):
        budget.charge("user:a", 1_000_000)
    with pytest.raises(BudgetExceeded) as refused:
        budget.charge("user:a", 1_000_000)
    assert refused.value.retry_after == 1  # 1 MPx at 2 MPx/s: 0.5 s, rounded up
    assert "1.0 megapixels" in str(refused.value) and "2 megapixels per second" in str(
        refused.value
    )
    clock.now += 0.5
    budget.charge("user:a", 1_000_000)
    clock.now += 2.0  # 4 MPx back
    for _ in range(4):
        budget.charge("user:a", 1_000_000)
    with pytest.raises(BudgetExceeded):
        budget.charge("user:a", 1)


def test_principals_have_their_own_buckets() -> None:
    budget = RenderBudget(rate_mpx=1, burst_mpx=5, clock=Clock())
    budget.charge("user:flood", 5_000_000)
    with pytest.raises(BudgetExceeded):
        budget.charge("user:flood", 100_000)
    budget.charge("user:other", 5_000_000)  # untouched by the flood
    budget.charge("token:lis", 65_536)


def test_a_render_over_the_burst_is_admitted_once_from_full_and_paid_back() -> None:
    # 67 MPx (8192 x 8192) with a 10 MPx burst: a full bucket admits it, then it is owed.
    clock = Clock()
    budget = RenderBudget(rate_mpx=4, burst_mpx=10, clock=clock)
    budget.charge("user:a", 8192 * 8192)
    with pytest.raises(BudgetExceeded) as refused:
        budget.charge("user:a", 65_536)
    # Debt of 57.1 MPx plus the 0.066 asked for, at 4 MPx/s.
    assert refused.value.retry_after == 15
    clock.now += 14.3
    budget.charge("user:a", 65_536)
    with pytest.raises(BudgetExceeded) as refused:
        budget.charge("user:a", 8192 * 8192)  # needs a full bucket again: 2.5 s more
    assert refused.value.retry_after == 3


def test_retry_after_is_honest() -> None:
    clock = Clock()
    budget = RenderBudget(rate_mpx=1, burst_mpx=4, clock=clock)
    budget.charge("k", 4_000_000)
    with pytest.raises(BudgetExceeded) as refused:
        budget.charge("k", 3_000_000)
    assert isinstance(refused.value, Overloaded)
    clock.now += refused.value.retry_after - 0.01
    with pytest.raises(BudgetExceeded):
        budget.charge("k", 3_000_000)
    clock.now += 0.01
    budget.charge("k", 3_000_000)


def test_refund_returns_a_charge_that_never_rendered() -> None:
    budget = RenderBudget(rate_mpx=1, burst_mpx=4, clock=Clock())
    budget.charge("k", 4_000_000)
    budget.refund("k", 4_000_000)
    budget.charge("k", 4_000_000)
    budget.refund("k", 40_000_000)  # never above the burst
    budget.charge("k", 4_000_000)
    with pytest.raises(BudgetExceeded):
        budget.charge("k", 1)
    budget.refund("unknown", 5)  # nothing to give back to


def test_rate_zero_turns_budgets_off() -> None:
    budget = RenderBudget(rate_mpx=0, burst_mpx=1, clock=Clock())
    for _ in range(100):
        budget.charge("k", 8192 * 8192)
    assert len(budget) == 0


def test_refilled_buckets_are_forgotten_when_there_are_too_many() -> None:
    clock = Clock()
    budget = RenderBudget(rate_mpx=1, burst_mpx=1, clock=clock)
    for n in range(MAX_KEYS):
        budget.charge(f"url:{n}", 1_000_000)
    clock.now += 0.5
    budget.charge("url:0", 500_000)  # empty again
    clock.now += 0.6  # every bucket but url:0's is full again
    budget.charge("url:new", 1)
    assert len(budget) == 2
    with pytest.raises(BudgetExceeded):  # url:0 kept its state
        budget.charge("url:0", 1_000_000)


@pytest.mark.parametrize(("rate", "burst"), [(-1, 1), (1, 0), (1, -5)])
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RenderBudget(rate_mpx=rate, burst_mpx=burst)
