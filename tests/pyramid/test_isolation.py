"""CFG-07: each slide converts in a child process under memory, CPU and wall-clock limits."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tileserver.errors import CorruptSlide, ResourceLimit, TileserverError
from tileserver.pyramid.isolation import Limits, run_limited


def _loop_forever() -> None:
    while True:
        pass


def _raise_corrupt() -> None:
    raise CorruptSlide("x.svs: level 0 tile (1, 2) is corrupt")


def _allocate(n: int) -> int:
    return len(bytearray(n))


def test_the_result_comes_back() -> None:
    assert run_limited(lambda: ("done", os.getpid()), Limits(), "x")[0] == "done"
    assert run_limited(lambda: os.getpid(), Limits(), "x") != os.getpid()  # really a child


def test_typed_errors_come_back_as_they_were() -> None:
    with pytest.raises(CorruptSlide, match=r"level 0 tile \(1, 2\)"):
        run_limited(_raise_corrupt, Limits(), "x.svs")


def test_a_converter_that_loops_forever_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ResourceLimit, match=r"x.svs: stopped after 0.5 s \(wall-clock limit\)"):
        run_limited(_loop_forever, Limits(seconds=0.5), "x.svs")
    assert time.monotonic() - started < 5


def _address_space() -> int:
    """This process's virtual size: what a forked child starts with (the test runner's grows
    with everything the suite imported)."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1])
        << 10
    )


def test_memory_is_capped() -> None:
    limits = Limits(memory_bytes=_address_space() + (1 << 30))
    assert run_limited(lambda: _allocate(256 << 20), limits, "x") == 256 << 20
    with pytest.raises(ResourceLimit, match="out of memory"):
        run_limited(lambda: _allocate(3 << 30), limits, "x")


def test_the_child_runs_under_the_limits() -> None:
    """What /proc says about the converter process itself."""
    limits_file = Path("/proc/self/limits")
    text = run_limited(limits_file.read_text, Limits(3 << 30, 60), "x")
    address = next(line for line in text.splitlines() if line.startswith("Max address space"))
    assert address.split()[3:5] == [str(3 << 30), str(3 << 30)]
    cpu = next(line for line in text.splitlines() if line.startswith("Max cpu time"))
    assert cpu.split()[3] == str(60 * (os.cpu_count() or 1) + 1)


def test_a_child_killed_by_a_signal_is_reported() -> None:
    with pytest.raises(ResourceLimit, match="the converter died \\(SIGKILL\\)"):
        run_limited(lambda: os.kill(os.getpid(), signal.SIGKILL), Limits(), "x")


def test_unexpected_errors_are_one_line() -> None:
    with pytest.raises(TileserverError, match="unexpected ZeroDivisionError"):
        run_limited(lambda: 1 // 0, Limits(), "x")
