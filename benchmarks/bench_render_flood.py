"""Another user's tiles and thumbnails while one principal floods expensive renders.

Run from the repository root::

    .venv/bin/python benchmarks/bench_render_flood.py [--baseline REV] [--rounds 2]
        [--quiet-seconds 15] [--flood-seconds 30] [--size 20000x15000] [--no-write]

Issue 14, finding 3: full-slide 8192-px PNGs took 4-14 s each, four at once starved every
other user (a thumbnail took 9.8 s) and took the server to 1.4 GiB. For this tree (and for
``--baseline REV``, whose ``tileserver/`` is exported with ``git archive`` and run with the
same venv from a neutral directory), ``tileserver serve`` runs over HTTPS with
authentication, one process, caches off (``--cache-mb 0``: every request renders), on the
store of ``bench_server.py``'s synthetic slide. Two bearer tokens: a viewer's and a
flooder's. Each server gets ``--rounds`` rounds of, in the same run (then a wait until
the server is idle again, as abandoned renders run on):

1. quiet: the viewer alone for ``--quiet-seconds``: a pass-through DeepZoom tile every
   25 ms, an IIIF tile that must be rendered (WebP, scale factor 2) every 50 ms and a
   ``thumbnail?max=N`` every 250 ms, each stream one request at a time;
2. flood: the same viewer while the flooder keeps 4 requests in flight for
   ``--flood-seconds``: ``full/max`` PNGs (8192 px), ``0,0,100,100/^max`` PNGs and REST
   full-slide regions at ``max=8192``, retrying a 429 or 503 after at most 0.25 s
   (ignoring a longer Retry-After, as a hostile client would).

Reported: the viewer's p50/p95 per stream in each phase (all rounds pooled) and the
flood/quiet p95 ratio (pooled, and per round),
the flooder's answers by status, and the server's peak RSS (sampled every 100 ms) per
phase. Target: the viewer's p95 under the flood within 3x its quiet p95. Writes
``benchmarks/results/render_flood.json`` and the ``render-flood`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_server import convert_once, ensure_slide, git_state, parse_size
from https_ours import CLI, COLLECTION, answers, bench_token, cpu_seconds, free_port

from tileserver.bench import report
from tileserver.bench.client import ClientOptions, TileClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
OUT = HERE / "results" / "render_flood.json"
START_TIMEOUT = 90.0
TARGET_RATIO = 3.0
FLOOD_CONCURRENCY = 4
SETTLE_LIMIT = 120.0  # seconds to wait for the server to be idle between rounds


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Server:
    base: str
    pid: int
    cafile: Path


@contextmanager
def serve(
    stores: Path, home: Path, slide_id: str, token: str, pythonpath: str | None
) -> Iterator[Server]:
    """``tileserver serve`` over HTTPS with authentication, caches off, on 127.0.0.1; the
    baseline's package through ``pythonpath``, run from a neutral working directory."""
    port = free_port()
    cmd = [*CLI, "serve", str(stores), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--cache-mb", "0"]
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cafile = home / "tls" / "cert.pem"
    base = f"https://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not answers(f"{base}/deepzoom/{slide_id}.dzi", token, cafile):
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    tail = out.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"serve did not answer (exit {proc.poll()}): {tail}")
                time.sleep(0.1)
            yield Server(base, proc.pid, cafile)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class RssSampler:
    """The server's resident set size every 100 ms, from /proc, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Stream:
    name: str
    interval: float  # seconds between request starts (one in flight at a time)
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


async def viewer(client: TileClient, stream: Stream, urls: Iterator[str], until: float) -> None:
    loop = asyncio.get_running_loop()
    next_start = loop.time()
    while loop.time() < until:
        got = await client.fetch(next(urls))
        if got.ok:
            stream.latencies.append(got.seconds)
        else:
            stream.failures[got.error or str(got.status)] += 1
        next_start = max(next_start + stream.interval, loop.time())
        await asyncio.sleep(max(0.0, next_start - loop.time()))


async def flooder(
    client: TileClient, urls: Iterator[str], until: float, seen: Counter[str]
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        remaining = until - loop.time()
        try:
            got = await asyncio.wait_for(client.fetch(next(urls)), remaining)
        except TimeoutError:
            seen["unfinished at the end"] += 1
            return
        seen[str(got.status)] += 1
        if got.status in (429, 503):
            await asyncio.sleep(0.25)  # shorter than any Retry-After the server gives


def viewer_urls(
    base: str, slide_id: str, width: int, height: int, seed: int
) -> dict[str, Iterator[str]]:
    """A pathologist panning: tiles in reading order from a random start, each next to the
    one before (random access would look like a crawler to the detector), at full
    resolution (pass-through) and at scale factor 2 as WebP (rendered); thumbnails of
    random sizes (each a render, caches being off)."""
    rng = random.Random(seed)
    tile = 240  # the store's chunk edge

    def pan(cols: int, rows: int) -> Iterator[tuple[int, int]]:
        index = rng.randrange(cols * rows)
        while True:
            yield index % cols, index // cols % rows
            index += 1

    def passthrough() -> Iterator[str]:
        top = (max(width, height) - 1).bit_length()  # the DeepZoom level of full resolution
        for col, row in pan(-(-width // tile), -(-height // tile)):
            yield f"{base}/deepzoom/{slide_id}_files/{top}/{col}_{row}.jpeg"

    def rendered() -> Iterator[str]:
        span = 2 * tile  # scale factor 2: one level-1 chunk, encoded as WebP
        for col, row in pan(width // span, height // span):
            region = f"{col * span},{row * span},{span},{span}"
            yield f"{base}/iiif/3/{slide_id}/{region}/{tile},/0/default.webp"

    def thumbnails() -> Iterator[str]:
        while True:
            yield f"{base}/api/slides/{slide_id}/thumbnail?max={rng.randrange(256, 513)}"

    return {
        "tile (pass-through)": passthrough(),
        "tile (rendered)": rendered(),
        "thumbnail": thumbnails(),
    }


def flood_urls(base: str, slide_id: str, width: int, height: int) -> Iterator[str]:
    paths = [
        f"/iiif/3/{slide_id}/full/max/0/default.png",
        f"/iiif/3/{slide_id}/0,0,100,100/^max/0/default.png",
        f"/api/slides/{slide_id}/region?x=0&y=0&width={width}&height={height}&max=8192&format=png",
    ]
    while True:
        yield from (base + path for path in paths)


def summary(latencies: list[float]) -> dict[str, float | int | None]:
    if not latencies:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ms[-1], 1),
    }


@dataclass
class PhaseRun:
    streams: dict[str, Stream]
    flood: Counter[str]
    rss_peak: int
    cpu_s: float


async def phase(
    server: Server,
    slide_id: str,
    size: tuple[int, int],
    viewer_token: str,
    flood_token: str | None,
    seconds: float,
    seed: int,
) -> PhaseRun:
    width, height = size
    intervals = {"tile (pass-through)": 0.025, "tile (rendered)": 0.05, "thumbnail": 0.25}
    streams = {name: Stream(name, interval) for name, interval in intervals.items()}
    urls = viewer_urls(server.base, slide_id, width, height, seed)
    seen: Counter[str] = Counter()

    def options(token: str) -> ClientOptions:
        auth = (("Authorization", f"Bearer {token}"),)
        return ClientOptions(headers=auth, cafile=str(server.cafile), timeout=120.0)

    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as rss:
        async with TileClient(options(viewer_token), len(streams)) as viewing:
            loop = asyncio.get_running_loop()
            until = loop.time() + seconds
            tasks = [viewer(viewing, streams[n], urls[n], until) for n in streams]
            if flood_token is not None:
                async with TileClient(options(flood_token), FLOOD_CONCURRENCY) as flooding:
                    flood = flood_urls(server.base, slide_id, width, height)
                    floods = [
                        flooder(flooding, flood, until, seen) for _ in range(FLOOD_CONCURRENCY)
                    ]
                    await asyncio.gather(*tasks, *floods)
            else:
                await asyncio.gather(*tasks)
    return PhaseRun(streams, seen, rss.peak, cpu_seconds(server.pid) - cpu_before)


def settle(pid: int, limit: float = SETTLE_LIMIT) -> float:
    """Seconds until the server is idle again (under 0.3 s of CPU a second, twice running):
    renders the flood abandoned keep running after their clients have gone."""
    started, quiet_seconds = time.monotonic(), 0
    while quiet_seconds < 2 and time.monotonic() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        quiet_seconds = quiet_seconds + 1 if cpu_seconds(pid) - before < 0.3 else 0
    return round(time.monotonic() - started, 1)


def combine(runs: list[PhaseRun]) -> dict[str, Any]:
    names = runs[0].streams
    latencies = {n: [x for r in runs for x in r.streams[n].latencies] for n in names}
    failures = {n: sum((r.streams[n].failures for r in runs), Counter()) for n in names}
    return {
        "viewer": {n: summary(latencies[n]) | {"failures": dict(failures[n])} for n in names},
        "flood": dict(sum((r.flood for r in runs), Counter())),
        "rss_peak_mib": round(max(r.rss_peak for r in runs) / 2**20),
        "server_cpu_s": round(sum(r.cpu_s for r in runs), 1),
    }


def p95_ratios(quiet: dict[str, Any], flood: dict[str, Any]) -> dict[str, float | None]:
    ratios = {}
    for name in quiet["viewer"]:
        q, f = quiet["viewer"][name]["p95_ms"], flood["viewer"][name]["p95_ms"]
        ratios[name] = round(f / q, 2) if q and f else None
    return ratios


def measure(
    label: str,
    stores: Path,
    home: Path,
    slide_id: str,
    size: tuple[int, int],
    tokens: dict[str, str],
    pythonpath: str | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``args.rounds`` rounds of quiet then flood (then waiting for the server to be idle),
    so the machine's changing load falls on both phases alike."""
    quiet: list[PhaseRun] = []
    flood: list[PhaseRun] = []
    rounds = []
    with serve(stores, home, slide_id, tokens["viewer"], pythonpath) as server:
        for n in range(args.rounds):
            log(f"{label}: round {n + 1}: quiet for {args.quiet_seconds:g} s")
            viewer_token = tokens["viewer"]
            quiet.append(
                asyncio.run(
                    phase(server, slide_id, size, viewer_token, None, args.quiet_seconds, 2 * n)
                )
            )
            log(f"{label}: round {n + 1}: flood for {args.flood_seconds:g} s")
            flood.append(
                asyncio.run(
                    phase(
                        server,
                        slide_id,
                        size,
                        viewer_token,
                        tokens["flood"],
                        args.flood_seconds,
                        2 * n + 1,
                    )
                )
            )
            waited = settle(server.pid)
            ratios = p95_ratios(combine(quiet[-1:]), combine(flood[-1:]))
            log(f"{label}: round {n + 1}: p95 flood/quiet {ratios}; idle after {waited} s")
            rounds.append({"p95_ratio": ratios, "settle_s": waited})
    result: dict[str, Any] = {"quiet": combine(quiet), "flood": combine(flood), "rounds": rounds}
    result["p95_ratio"] = p95_ratios(result["quiet"], result["flood"])
    log(f"{label}: p95 flood/quiet {result['p95_ratio']}, flood answers {result['flood']['flood']}")
    return result


def export(rev: str, into: Path) -> None:
    """``tileserver/`` as of ``rev`` under ``into`` (no checkout, no change to the repo)."""
    archive = subprocess.run(
        ["git", "archive", rev, "tileserver"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def baseline_home(home: Path, into: Path, slide_id: str, pythonpath: str) -> dict[str, str]:
    """A TILESERVER_HOME for the baseline under ``into``: a copy of the key ring and the
    certificate, and an auth database of its own (an older revision refuses the newer
    schema), with the two tokens made by the baseline's own CLI."""
    into.mkdir(mode=0o700)
    for part in ("keys", "tls"):
        shutil.copytree(home / part, into / part)
    env = {**os.environ, "TILESERVER_HOME": str(into), "PYTHONPATH": pythonpath}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*CLI, *args], env=env, cwd=into, capture_output=True, text=True, check=True
        )
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    cli("slides", "assign", COLLECTION, slide_id)
    return {
        role: cli(
            "tokens", "create", f"flood-bench-{role}", "--scope", scope, "--collection", COLLECTION
        )
        for role, scope in (("viewer", "tiles,thumbnails"), ("flood", "tiles,thumbnails,regions"))
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "## Render flood: another user's tiles and thumbnails (`benchmarks/bench_render_flood.py`)",
        "",
        f"Command: `{results['command']}`  ",
        f"Tree: {results['tileserver']}; slide {results['slide']}; "
        f"{results['machine']['CPU']}, {results['machine']['cores']}, {results['machine']['RAM']}; "
        f"load average {results['load_before']} before, {results['load_after']} after "
        "(other work shares the machine).",
        "",
        "One `serve` process over HTTPS with bearer tokens, caches off. The viewer's streams "
        "run one request at a time (a pass-through DeepZoom tile every 25 ms, a rendered "
        "IIIF WebP tile every 50 ms, a 256-512 px thumbnail every 250 ms); the flooder keeps "
        f"{FLOOD_CONCURRENCY} requests in flight (full/max 8192-px PNGs, 0,0,100,100/^max "
        "PNGs, full-slide REST regions at max=8192), retrying refusals after 0.25 s.",
        "",
        "| server | stream | quiet p50 / p95 ms | flood p50 / p95 ms | p95 flood / quiet |",
        "|---|---|---|---|---|",
    ]
    for label, run in results["servers"].items():
        for name, quiet in run["quiet"]["viewer"].items():
            flood = run["flood"]["viewer"][name]
            failures = flood["failures"]
            note = f" ({sum(failures.values())} failed)" if failures else ""
            lines.append(
                f"| {label} | {name} | {quiet['p50_ms']} / {quiet['p95_ms']} | "
                f"{flood['p50_ms']} / {flood['p95_ms']}{note} | {run['p95_ratio'][name]} |"
            )
    lines += [
        "",
        "| server | flood answers (status: count) | RSS peak quiet / flood MiB "
        "| server CPU s quiet / flood |",
        "|---|---|---|---|",
    ]
    for label, run in results["servers"].items():
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(run["flood"]["flood"].items()))
        lines.append(
            f"| {label} | {answers} | {run['quiet']['rss_peak_mib']} / "
            f"{run['flood']['rss_peak_mib']} | {run['quiet']['server_cpu_s']} / "
            f"{run['flood']['server_cpu_s']} |"
        )
    lines += ["", "p95 flood / quiet per round:"]
    for label, run in results["servers"].items():
        per_round = "; ".join(
            ", ".join(f"{name} {ratio}" for name, ratio in r["p95_ratio"].items())
            for r in run["rounds"]
        )
        lines.append(f"- {label}: {per_round}")
    ours = results["servers"]["this tree"]["p95_ratio"]
    worst = max((r for r in ours.values() if r is not None), default=None)
    verdict = "met" if worst is not None and worst <= TARGET_RATIO else "NOT met"
    lines += [
        "",
        f"Target: the viewer's p95 under the flood within {TARGET_RATIO:g}x its quiet p95, "
        f"every stream: **{verdict}** for this tree (worst ratio {worst}).",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--baseline", help="also measure this git revision, in the same run")
    p.add_argument("--quiet-seconds", type=float, default=15.0)
    p.add_argument("--flood-seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=2, help="quiet + flood rounds per server")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    slide = ensure_slide(args.size)
    stores, home, slide_id = convert_once(slide)
    tokens = {
        "viewer": bench_token(home, [slide_id], "flood-bench-viewer", "tiles,thumbnails"),
        "flood": bench_token(home, [slide_id], "flood-bench-flooder", "tiles,thumbnails,regions"),
    }
    load_before = round(os.getloadavg()[0], 1)
    servers: dict[str, Any] = {}
    servers["this tree"] = measure(
        "this tree", stores, home, slide_id, args.size, tokens, None, args
    )
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "src"
            source.mkdir()
            export(args.baseline, source)
            old_home = Path(tmp) / "home"
            old_tokens = baseline_home(home, old_home, slide_id, str(source))
            rev = subprocess.run(
                ["git", "rev-parse", "--short", args.baseline],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            servers[f"baseline {rev}"] = measure(
                f"baseline {rev}",
                stores,
                old_home,
                slide_id,
                args.size,
                old_tokens,
                str(source),
                args,
            )
    results = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/bench_render_flood.py", *sys.argv[1:]]
        ),
        "machine": report.machine_facts(),
        "tileserver": git_state(),
        "slide": f"{slide.name} ({args.size[0]}x{args.size[1]})",
        "servers": servers,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 1),
    }
    report.write_json(results, OUT)
    text = markdown(results)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "render-flood", text))
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
