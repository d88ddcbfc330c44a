"""Each slide converts in a child process under limits (CFG-07): a slide that makes a decoder
loop, or claims a size that would exhaust memory, costs that slide, never the batch or the
machine.

The child is forked after the imports (no interpreter start-up per slide) and before the
parent has started any thread of its own. Limits: address space (RLIMIT_AS), CPU time
(RLIMIT_CPU, a backstop) and wall-clock time (the parent kills the child).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from tileserver.errors import ResourceLimit, TileserverError

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 8 << 30  # address space: a conversion peaks near 1 GiB of it
    seconds: float = 3600.0  # wall clock; CPU time is capped at this times the cores


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child(work: Callable[[], Any], limits: Limits, parent: int, send: Connection) -> None:
    # Die with the parent (killed, or stopped by a service manager): an orphan would go on
    # writing into a store that a re-run is resuming.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    _lower(resource.RLIMIT_AS, limits.memory_bytes)
    _lower(resource.RLIMIT_CPU, int(limits.seconds * (os.cpu_count() or 1)) + 1)
    try:
        outcome: tuple[bool, Any] = (True, work())
    except TileserverError as exc:
        outcome = (False, exc)
    except MemoryError:
        outcome = (False, ResourceLimit(f"out of memory (limit {limits.memory_bytes >> 20} MiB)"))
    except KeyboardInterrupt:
        os._exit(130)  # the parent reports the interruption
    except Exception as exc:  # a bug or a library's own error: one line, not a traceback
        outcome = (False, TileserverError(f"unexpected {type(exc).__name__}: {exc}"))
    send.send(outcome)
    send.close()


def _lower(which: int, value: int) -> None:
    # Under a stricter hard limit already (a test harness, a service manager), keep that one:
    # raising it is not allowed.
    hard = resource.getrlimit(which)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def run_limited(work: Callable[[], T], limits: Limits, what: str) -> T:
    """``work()`` run in a forked child under ``limits``; its result, or its TileserverError
    re-raised here, or ResourceLimit naming ``what`` when the child is stopped."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, limits, os.getpid(), send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(limits.seconds):
            raise ResourceLimit(f"{what}: stopped after {limits.seconds:g} s (wall-clock limit)")
        try:
            ok, payload = receive.recv()
        except EOFError:
            child.join()
            raise ResourceLimit(f"{what}: the converter died ({_death(child.exitcode)})") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if not ok:
        raise payload
    return payload  # type: ignore[no-any-return]


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"{name}: CPU-time limit" if name == "SIGXCPU" else name
    return f"exit code {exitcode}"
