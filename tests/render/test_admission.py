"""Render admission by estimated memory: a ceiling, a share per principal, bounded waits."""

from __future__ import annotations

import asyncio

import pytest

from tileserver.errors import Overloaded
from tileserver.render.admission import (
    MIB,
    RenderBusy,
    RenderGate,
    RenderTooLarge,
    estimate_bytes,
)


def gate(ceiling_mib: int = 100, per_key: int = 1, wait: float = 5.0) -> RenderGate:
    # 2 small slots of 10 MiB: 80 MiB for large renders.
    return RenderGate(ceiling_mib * MIB, small=10 * MIB, small_slots=2, per_key=per_key, wait=wait)


def test_estimate_counts_what_is_read_and_made() -> None:
    # The full-slide render measured in admission.py: 10000x7500 read, 8192x6144 made.
    assert estimate_bytes(10_000 * 7_500, 8192 * 6144) // MIB == 956
    assert estimate_bytes(256 * 256, 256 * 256) == MIB  # a tile: 1 MiB


def test_a_render_larger_than_the_ceiling_leaves_is_refused_at_once() -> None:
    async def main() -> None:
        g = gate()
        with pytest.raises(RenderTooLarge) as refused:
            await g.acquire("user:a", 81 * MIB)
        assert "81 MiB" in str(refused.value) and "100 MiB" in str(refused.value)
        assert isinstance(refused.value, ValueError)  # a client error (400), not a retry
        await g.acquire("user:a", 80 * MIB)  # exactly what is left: fine
        g.release("user:a", 80 * MIB)
        assert g.used == 0

    asyncio.run(main())


def test_small_renders_never_wait_and_are_not_counted() -> None:
    async def main() -> None:
        g = gate()
        await g.acquire("user:flood", 80 * MIB)  # the large share is full
        for _ in range(50):  # tiles and thumbnails of anyone, the flooder's included
            await asyncio.wait_for(g.acquire("user:flood", 10 * MIB), 0.5)
            await asyncio.wait_for(g.acquire(None, MIB), 0.5)
        assert g.used == 80 * MIB
        g.release(None, MIB)
        assert g.used == 80 * MIB

    asyncio.run(main())


def test_large_renders_wait_for_room_and_are_woken_by_a_release() -> None:
    async def main() -> None:
        g = gate()
        await g.acquire("user:a", 50 * MIB)
        waiting = asyncio.create_task(g.acquire("user:b", 40 * MIB))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # 50 + 40 > 80
        g.release("user:a", 50 * MIB)
        await asyncio.wait_for(waiting, 1)
        assert g.used == 40 * MIB

    asyncio.run(main())


def test_one_principal_holds_at_most_its_share_of_large_renders() -> None:
    async def main() -> None:
        g = gate(per_key=1)
        await g.acquire("user:flood", 20 * MIB)
        second = asyncio.create_task(g.acquire("user:flood", 20 * MIB))
        await asyncio.sleep(0.05)
        assert not second.done()  # room enough, but the flooder has its one
        await asyncio.wait_for(g.acquire("user:other", 20 * MIB), 0.5)  # others are not held
        await asyncio.wait_for(g.acquire(None, 20 * MIB), 0.5)  # nor work with no principal
        g.release("user:flood", 20 * MIB)
        await asyncio.wait_for(second, 1)

    asyncio.run(main())


def test_the_wait_is_bounded_and_says_when_to_retry() -> None:
    async def main() -> None:
        g = gate(wait=0.2)
        await g.acquire("user:a", 70 * MIB)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RenderBusy) as busy:
            await g.acquire("user:b", 20 * MIB)
        assert loop.time() - started < 2  # bounded (0.2 s asked; slack for a busy machine)
        assert isinstance(busy.value, Overloaded) and busy.value.retry_after == 1
        assert "70 of the 80 MiB" in str(busy.value)
        with pytest.raises(RenderBusy) as busy:
            await g.acquire("user:a", 11 * MIB)  # room for it, but not its share
        assert "already has 1 large render" in str(busy.value)
        assert g.used == 70 * MIB  # the refused ones took nothing

    asyncio.run(main())


def test_an_abandoned_wait_takes_nothing() -> None:
    async def main() -> None:
        g = gate()
        await g.acquire("user:a", 70 * MIB)
        waiting = asyncio.create_task(g.acquire("user:b", 20 * MIB))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        g.release("user:a", 70 * MIB)
        assert g.used == 0
        await g.acquire("user:b", 80 * MIB)

    asyncio.run(main())


def test_a_ceiling_without_room_for_large_renders_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        RenderGate(29 * MIB, small=10 * MIB, small_slots=2, per_key=1, wait=1)
    with pytest.raises(ValueError):
        RenderGate(100 * MIB, small=10 * MIB, small_slots=2, per_key=0, wait=1)
