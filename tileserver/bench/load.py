"""Run viewer traces against a DeepZoom or IIIF server and summarise what it took.

Concurrency ``c`` means ``c`` viewer tasks share one session with at most ``c`` requests in
flight. Each task takes the next group of the trace (a viewport, or one random tile), issues
all its tiles at once and waits for the last one: that wait is the time until the whole
viewport is sharp. Within a pass a tile is requested once (a viewer keeps the tiles it has),
so the first (cold) pass asks for every tile for the first time and the second (warm) pass
asks for exactly the same tiles again. A pass stops by itself at ``max_requests`` tiles or
``max_seconds`` (no new viewport after that; requests still in flight get the request
timeout, then are abandoned).
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tileserver.bench.client import (
    BenchError,
    ClientOptions,
    Fetch,
    TileClient,
    check_target,
    describe,
)
from tileserver.bench.traces import (
    PASSES,
    TRACES,
    Group,
    Pyramid,
    Tile,
    deepzoom_pyramid,
    deepzoom_url,
    first_requests,
    iiif_url,
    limit_requests,
    make_trace,
    parse_dzi,
    parse_iiif_info,
)

CDF_POINTS = 101  # latency percentiles 0..100 kept per pass, for plots


@dataclass(frozen=True)
class Target:
    url: str
    protocol: str  # "deepzoom" or "iiif"
    pyramid: Pyramid
    tile_url: Callable[[Tile], str]
    tile_size: tuple[int, int]

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "protocol": self.protocol,
            "width": self.pyramid.width,
            "height": self.pyramid.height,
            "tile": list(self.tile_size),
            "levels": len(self.pyramid.levels),
        }


@dataclass(frozen=True)
class LoadSettings:
    traces: tuple[str, ...] = ("pan",)
    concurrency: tuple[int, ...] = (1, 8, 32)
    passes: tuple[str, ...] = PASSES
    max_requests: int = 2000  # per pass
    max_seconds: float = 60.0  # per pass
    seed: int = 0
    random_count: int = 2000
    centres: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if bad := [t for t in self.traces if t not in TRACES]:
            raise BenchError(f"unknown trace {bad[0]!r}; choose from {', '.join(TRACES)}")
        if bad_p := [p for p in self.passes if p not in PASSES]:
            raise BenchError(f"unknown pass {bad_p[0]!r}; choose from cold, warm")
        if not self.concurrency or min(self.concurrency) < 1:
            raise BenchError("concurrency levels must be positive integers")
        if self.max_requests < 1 or self.max_seconds <= 0:
            raise BenchError("max-requests and max-seconds must be positive")


@dataclass
class _PassLog:
    fetches: list[Fetch] = field(default_factory=list)
    viewport_seconds: list[float] = field(default_factory=list)
    groups_done: int = 0
    cpu_seconds: float = 0.0


# -- pure summaries -----------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default), ``q`` in 0..100."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ms(values: Sequence[float], qs: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)
    return {f"p{q:g}": round(percentile(s, q) * 1000, 3) for q in qs} | {
        "max": round(s[-1] * 1000, 3)
    }


def summarize(
    fetches: Sequence[Fetch],
    viewport_seconds: Sequence[float] | None,
    duration: float,
    *,
    first_requests: int,
    stopped_by: str,
    client_cpu_s: float | None = None,
) -> dict[str, Any]:
    """One pass's figures; latency percentiles over successful requests only.

    ``client_cpu_fraction`` is the load client's own CPU time over the wall time: near 1 the
    client, not the server, is the bottleneck.
    """
    ok = [f for f in fetches if f.ok]
    latencies = sorted(f.seconds for f in ok)
    errors = [f for f in fetches if not f.ok]
    nbytes = sum(f.nbytes for f in ok)
    return {
        "requests": len(fetches),
        "ok": len(ok),
        "errors": len(errors),
        "statuses": {str(k): v for k, v in sorted(Counter(f.status for f in fetches).items())},
        "error_samples": sorted({f.error or "" for f in errors})[:5],
        "bytes": nbytes,
        "duration_s": round(duration, 4),
        "tiles_per_s": round(len(ok) / duration, 2) if duration > 0 else None,
        "mb_per_s": round(nbytes / duration / 1e6, 3) if duration > 0 else None,
        "latency_ms": _ms(latencies, (50, 95, 99)),
        "latency_cdf_ms": [
            round(percentile(latencies, 100 * i / (CDF_POINTS - 1)) * 1000, 3)
            for i in range(CDF_POINTS)
        ]
        if latencies
        else [],
        "viewports": len(viewport_seconds) if viewport_seconds is not None else None,
        "viewport_ms": _ms(viewport_seconds, (50, 95)) if viewport_seconds else None,
        "first_request_fraction": round(first_requests / len(fetches), 4) if fetches else None,
        "stopped_by": stopped_by,
        "client_cpu_fraction": round(client_cpu_s / duration, 3)
        if client_cpu_s is not None and duration > 0
        else None,
    }


# -- the async shell ----------------------------------------------------------------------
async def open_target(client: TileClient, url: str) -> Target:
    """Read the ``.dzi`` or ``info.json`` at ``url`` and build the tile URL function."""
    path = urlsplit(url).path
    text = await client.get_text(url)
    try:
        if path.endswith(".dzi"):
            dzi = parse_dzi(text)
            pyramid = deepzoom_pyramid(dzi.width, dzi.height, dzi.tile_size)
            return Target(
                url,
                "deepzoom",
                pyramid,
                deepzoom_url(url, dzi.format),
                (dzi.tile_size, dzi.tile_size),
            )
        if path.endswith("info.json"):
            image_id, pyramid = parse_iiif_info(text)
            # Tiles go to the id's host: it must pass the same loopback check.
            check_target(image_id + "/", allow_remote=client.options.allow_remote)
            finest = pyramid.levels[0]
            return Target(
                url,
                "iiif",
                pyramid,
                iiif_url(image_id, pyramid),
                (finest.tile_width, finest.tile_height),
            )
    except (ValueError, KeyError) as exc:
        raise BenchError(f"{url}: unreadable descriptor: {exc}") from None
    raise BenchError(f"{url}: expected a DeepZoom .dzi or an IIIF info.json URL")


async def run_pass(
    client: TileClient, target: Target, groups: Sequence[Group], max_seconds: float
) -> tuple[_PassLog, float, str]:
    """Issue ``groups`` with ``client.concurrency`` viewer tasks; returns log, seconds, why."""
    log = _PassLog()
    cpu = time.process_time()
    queue = iter(groups)
    start = time.perf_counter()
    deadline = start + max_seconds
    timed_out = False

    async def one(tile: Tile) -> Fetch:
        fetch = await client.fetch(target.tile_url(tile))
        log.fetches.append(fetch)
        return fetch

    async def viewer() -> None:
        nonlocal timed_out
        for group in queue:
            if time.perf_counter() >= deadline:
                timed_out = True
                return
            t0 = time.perf_counter()
            await asyncio.gather(*(one(t) for t in group.tiles))
            log.viewport_seconds.append(time.perf_counter() - t0)
            log.groups_done += 1

    tasks = [asyncio.ensure_future(viewer()) for _ in range(client.concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max_seconds + client.options.timeout)
    except TimeoutError:
        timed_out = True
    duration = time.perf_counter() - start
    log.cpu_seconds = time.process_time() - cpu
    if timed_out:
        return log, duration, "max_seconds"
    return log, duration, "complete"


async def run_cell(
    client: TileClient,
    target: Target,
    trace_name: str,
    settings: LoadSettings,
    seen: set[str],
) -> list[dict[str, Any]]:
    """Every pass of one trace at the client's concurrency. ``seen`` spans cells."""
    trace = make_trace(
        trace_name,
        target.pyramid,
        centres=settings.centres,
        seed=settings.seed,
        count=settings.random_count,
    )
    plan = first_requests(trace.groups)
    full = sum(len(g.tiles) for g in plan)
    plan = limit_requests(plan, settings.max_requests)
    capped = sum(len(g.tiles) for g in plan) < full
    results = []
    for name in settings.passes:
        log, duration, stopped_by = await run_pass(client, target, plan, settings.max_seconds)
        if stopped_by == "complete" and capped:
            stopped_by = "max_requests"
        urls = [target.tile_url(t) for g in plan for t in g.tiles]
        issued = urls[: len(log.fetches)]
        first = sum(1 for u in issued if u not in seen)
        seen.update(issued)
        summary = summarize(
            log.fetches,
            log.viewport_seconds if trace.viewports else None,
            duration,
            first_requests=first,
            stopped_by=stopped_by,
            client_cpu_s=log.cpu_seconds,
        )
        results.append(
            {"trace": trace_name, "concurrency": client.concurrency, "pass": name} | summary
        )
        # A later pass repeats only what this one got through, so it stays warm.
        plan = plan[: log.groups_done] if stopped_by == "max_seconds" else plan
    return results


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


async def run_load(url: str, settings: LoadSettings, options: ClientOptions) -> dict[str, Any]:
    """Every trace x concurrency x pass against ``url``; returns the JSON report."""
    async with TileClient(options, 1) as client:
        target = await open_target(client, url)
    seen: set[str] = set()
    runs: list[dict[str, Any]] = []
    for trace_name in settings.traces:
        for concurrency in settings.concurrency:
            async with TileClient(options, concurrency) as client:
                runs += await run_cell(client, target, trace_name, settings, seen)
    return {
        "tool": "tileserver bench load",
        "format": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": target.describe(),
        "settings": {
            "traces": list(settings.traces),
            "concurrency": list(settings.concurrency),
            "passes": list(settings.passes),
            "max_requests": settings.max_requests,
            "max_seconds": settings.max_seconds,
            "seed": settings.seed,
            "random_count": settings.random_count,
            "centres": [list(c) for c in settings.centres] if settings.centres else None,
            "client": describe(options),
        },
        "environment": environment(),
        "runs": runs,
    }


def run(url: str, settings: LoadSettings, options: ClientOptions) -> dict[str, Any]:
    """Synchronous entry point: check the target, then ``run_load`` in a fresh loop."""
    check_target(url, allow_remote=options.allow_remote)  # before any connection
    return asyncio.run(run_load(url, settings, options))


def measure_cell(
    url: str,
    trace_name: str,
    concurrency: int,
    settings: LoadSettings,
    options: ClientOptions,
    seen: set[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trace at one concurrency (every pass) in a fresh loop: ``(target, runs)``.

    For harnesses that restart the server between cells so each cold pass is cold.
    """
    check_target(url, allow_remote=options.allow_remote)

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with TileClient(options, 1) as client:
            target = await open_target(client, url)
        async with TileClient(options, concurrency) as client:
            runs = await run_cell(
                client, target, trace_name, settings, set() if seen is None else seen
            )
        return target.describe(), runs

    return asyncio.run(go())
