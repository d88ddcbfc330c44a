"""The secure path at engine speed: ours over HTTPS with a bearer token against ours over
plain HTTP without authentication and against lighttpd serving the same tiles as files over
HTTPS, in one run, interleaved.

    .venv/bin/python benchmarks/bench_secure_path.py [--size 20000x15000] [--rounds 5]
        [--sessions 8] [--connections 32] [--wrk-seconds 15]

1. The synthetic slide and its encrypted store are made once (``bench_server.py``'s, cached
   in ``benchmarks/.data/``). Every tile of our DeepZoom grid is fetched once from ours and
   written as a file (``benchmarks/.data/secure-path-export-<slide>/``, reused), so lighttpd
   serves byte for byte what ours serves, under the same paths.
2. Each round starts every server afresh, in a rotating order: ``secure`` (``tileserver
   serve --workers 2`` over HTTPS, a bearer token scoped to tiles of the slide's collection,
   the token rate limit raised out of the way with ``--rate-limit-tokens``, the detector's
   bulk-crawl rule set to alert instead of suspending the crawling token), ``tls-open``
   (the same over HTTPS with ``--no-auth --rate-limit 0``: what authentication alone costs),
   ``open`` (over plain HTTP with ``--no-auth --rate-limit 0``) and ``lighttpd`` (2 worker
   processes, HTTPS with the same certificate and TLS policy, HTTP/1.1 like ours).
3. Against each: the viewer pan trace with ``--sessions`` viewer tasks (``tileserver.bench``;
   a cold then a warm pass), then wrk with ``random_tiles.lua`` (random tiles of the two
   finest levels; the token from the environment), after an unrecorded warm-up of the same.
   The servers' CPU time (their processes and children, from /proc) is recorded per tile.
4. Writes ``benchmarks/results/secure_path.json`` and the ``secure_path`` section of
   ``benchmarks/RESULTS.md``: per-round ratios secure/open and secure/lighttpd and their
   medians, against the targets (tiles/s secure >= 0.9x open; pan viewport p95 at 8
   sessions secure <= 1.25x lighttpd).

Needs Debian's ``lighttpd``, ``lighttpd-mod-openssl`` and ``wrk``: ``scripts/setup-services.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_convert import load_now  # sibling scripts (same folder)
from bench_server import DATA, OUT, RESULTS, convert_once, ensure_slide, git_state, parse_size
from https_ours import bench_token, cpu_seconds, ours_https

from tileserver.bench import comparators, report
from tileserver.bench.client import ClientOptions, TileClient
from tileserver.bench.load import LoadSettings, measure_cell, open_target
from tileserver.bench.traces import Tile
from tileserver.security.tls import ensure_certificate

HERE = Path(__file__).resolve().parent
LUA = HERE / "random_tiles.lua"
SERVERS = ("secure", "tls-open", "open", "lighttpd")
TARGET_TILES = 0.90  # secure / open tiles per second, at least
TARGET_P95 = 1.25  # secure / lighttpd pan viewport p95, at most
NO_LIMIT = "1000000/1000000"  # requests per second per token: out of the benchmark's way
# The detector runs (its cost is part of the secure path) but only alerts: the benchmark is
# a bulk crawl, which it would otherwise suspend.
NO_SUSPEND = ("--detect-response", "bulk_crawl=alert")


def log(msg: str) -> None:
    print(f"[bench_secure_path] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Running:
    url: str  # the slide's .dzi
    options: ClientOptions
    pid: int
    token: str | None  # for wrk (through the environment)


# -- the tiles as files ------------------------------------------------------------------------
def export_tiles(url: str, out: Path, slide_id: str) -> list[str]:
    """Every tile of ours at ``url`` (a .dzi, plain HTTP) written under ``out`` at its URL
    path, once; the paths of the two finest levels' tiles (the random load's list)."""

    async def go() -> list[str]:
        async with TileClient(ClientOptions(), 8) as client:
            target = await open_target(client, url)
            levels = target.pyramid.levels
            tiles = [
                Tile(level.key, col, row)
                for level in levels
                for row in range(level.rows)
                for col in range(level.cols)
            ]
            finest = {level.key for level in levels[:2]}
            paths = [urlsplit(target.tile_url(t)).path for t in tiles if t.level in finest]
            marker = out / ".complete"
            if marker.exists() and marker.read_text() == f"{slide_id} {len(tiles)}\n":
                return paths
            text = await client.get_text(url)
            dzi = out / urlsplit(url).path.lstrip("/")
            dzi.parent.mkdir(parents=True, exist_ok=True)
            dzi.write_text(text)

            async def one(tile: Tile) -> None:
                tile_url = target.tile_url(tile)
                async with client.session.get(tile_url) as reply:
                    if reply.status != 200:
                        raise RuntimeError(f"export: {tile_url}: HTTP {reply.status}")
                    body = await reply.read()
                path = out / urlsplit(tile_url).path.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)

            for start in range(0, len(tiles), 256):
                await asyncio.gather(*(one(t) for t in tiles[start : start + 256]))
            marker.write_text(f"{slide_id} {len(tiles)}\n")
            return paths

    return asyncio.run(go())


# -- the servers --------------------------------------------------------------------------------
def starters(
    stores: Path, home: Path, slide_id: str, token: str, export: Path
) -> dict[str, Callable[[], AbstractContextManager[Running]]]:
    cert, key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    workers = ("--workers", "2")

    @contextmanager
    def secure() -> Iterator[Running]:
        extra = (*workers, "--rate-limit-tokens", NO_LIMIT, *NO_SUSPEND)
        with ours_https(stores, home, slide_id, token, *extra, detect=True) as server:
            yield Running(server.url, server.options, server.pid, token)

    @contextmanager
    def tls_open() -> Iterator[Running]:
        extra = (*workers, "--no-auth", "--rate-limit", "0")
        with ours_https(stores, home, slide_id, token, *extra) as server:
            yield Running(server.url, ClientOptions(cafile=str(cert)), server.pid, None)

    @contextmanager
    def open_() -> Iterator[Running]:
        extra = (*workers, "--rate-limit", "0")
        with comparators.ours_server(stores, home, slide_id, *extra) as server:
            yield Running(server.url, ClientOptions(), server.pid, None)

    @contextmanager
    def lighttpd() -> Iterator[Running]:
        dzi = f"/deepzoom/{slide_id}.dzi"
        with comparators.lighttpd_server(export, dzi, cert, key, workers=2) as server:
            yield Running(server.url, ClientOptions(cafile=str(cert)), server.pid, None)

    return {"secure": secure, "tls-open": tls_open, "open": open_, "lighttpd": lighttpd}


def run_wrk(
    base: str,
    paths_file: Path,
    token: str | None,
    args: argparse.Namespace,
    headers: Sequence[str] = (),
) -> Any:
    """One wrk run against ``base`` (``headers``: extra "Name: value" request headers): its
    RESULT line as a dict."""
    cmd = ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections)]
    cmd += [arg for header in headers for arg in ("-H", header)]
    cmd += ["-d", f"{args.wrk_seconds}s", "--timeout", "10s", "-s", str(LUA), base]
    cmd += ["--", str(paths_file)]
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TOKEN"}
    if token is not None:
        env["BENCH_TOKEN"] = token
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.wrk_seconds + 60
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["errors"] = sum(
        result[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    ok = result["requests"] - result["status_errors"]
    result["tiles_per_s"] = round(ok / (result["duration_us"] / 1e6), 1)
    return result


def measure_server(
    name: str,
    start: Callable[[], AbstractContextManager[Running]],
    paths_file: Path,
    settings: LoadSettings,
    args: argparse.Namespace,
) -> dict[str, Any]:
    with start() as server:
        base = "{0.scheme}://{0.netloc}".format(urlsplit(server.url))
        cpu = cpu_seconds(server.pid)
        _, passes = measure_cell(server.url, "pan", args.sessions, settings, server.options)
        pan_cpu = cpu_seconds(server.pid) - cpu
        warmup = argparse.Namespace(**{**vars(args), "wrk_seconds": args.wrk_warmup})
        run_wrk(base, paths_file, server.token, warmup)
        cpu = cpu_seconds(server.pid)
        wrk = run_wrk(base, paths_file, server.token, args)
        wrk_cpu = cpu_seconds(server.pid) - cpu
    pan = {p["pass"]: p for p in passes}
    pan_ok = sum(p["ok"] for p in passes)
    record = {
        "pan": pan,
        "pan_cpu_ms_per_tile": round(1000 * pan_cpu / max(1, pan_ok), 3),
        "wrk": wrk,
        "wrk_cpu_ms_per_tile": round(1000 * wrk_cpu / max(1, wrk["requests"]), 3),
    }
    log(
        f"{name}: pan {pan['cold']['tiles_per_s']:.0f}/{pan['warm']['tiles_per_s']:.0f} tiles/s "
        f"(cold/warm), viewport p95 {pan['cold']['viewport_ms']['p95']:.0f}/"
        f"{pan['warm']['viewport_ms']['p95']:.0f} ms; wrk {wrk['tiles_per_s']:.0f} tiles/s, "
        f"p99 {wrk['p99_us'] / 1000:.1f} ms, {record['wrk_cpu_ms_per_tile']:.3f} CPU ms/tile, "
        f"{wrk['errors']} errors; pan errors "
        f"{pan['cold']['errors'] + pan['warm']['errors']}"
    )
    return record


# -- figures -----------------------------------------------------------------------------------
METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "wrk_tiles": ("wrk random tiles/s", lambda r: float(r["wrk"]["tiles_per_s"])),
    "pan_cold_tiles": ("pan cold tiles/s", lambda r: float(r["pan"]["cold"]["tiles_per_s"])),
    "pan_warm_tiles": ("pan warm tiles/s", lambda r: float(r["pan"]["warm"]["tiles_per_s"])),
    "pan_cold_p95": (
        "pan cold viewport p95 ms",
        lambda r: float(r["pan"]["cold"]["viewport_ms"]["p95"]),
    ),
    "pan_warm_p95": (
        "pan warm viewport p95 ms",
        lambda r: float(r["pan"]["warm"]["viewport_ms"]["p95"]),
    ),
    "wrk_p99": ("wrk p99 ms", lambda r: r["wrk"]["p99_us"] / 1000),
    "wrk_cpu": ("server CPU ms per wrk tile", lambda r: float(r["wrk_cpu_ms_per_tile"])),
}


def ratios(rounds: list[dict[str, Any]], metric: str, top: str, bottom: str) -> list[float]:
    value = METRICS[metric][1]
    return [round(value(r[top]) / value(r[bottom]), 3) for r in rounds]


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> dict[str, Any]:
        return {"median": round(statistics.median(values), 3), "rounds": values}

    out: dict[str, Any] = {"medians": {}, "ratios": {}}
    for metric, (_, value) in METRICS.items():
        out["medians"][metric] = {
            s: round(statistics.median(value(r[s]) for r in rounds), 3) for s in SERVERS
        }
    for metric in ("wrk_tiles", "pan_cold_tiles", "pan_warm_tiles"):
        for bottom in ("open", "tls-open", "lighttpd"):
            out["ratios"][f"{metric} secure/{bottom}"] = med(
                ratios(rounds, metric, "secure", bottom)
            )
    out["ratios"]["wrk_cpu secure/tls-open"] = med(ratios(rounds, "wrk_cpu", "secure", "tls-open"))
    out["ratios"]["wrk_cpu tls-open/open"] = med(ratios(rounds, "wrk_cpu", "tls-open", "open"))
    for metric in ("pan_cold_p95", "pan_warm_p95"):
        out["ratios"][f"{metric} secure/lighttpd"] = med(
            ratios(rounds, metric, "secure", "lighttpd")
        )
        out["ratios"][f"{metric} secure/open"] = med(ratios(rounds, metric, "secure", "open"))
    # The bound: the same server over HTTPS with no authentication at all. Authentication only
    # adds work, so secure can meet a target only where tls-open meets it.
    for metric in ("wrk_tiles", "pan_cold_tiles", "pan_warm_tiles"):
        out["ratios"][f"{metric} tls-open/open"] = med(ratios(rounds, metric, "tls-open", "open"))
    for metric in ("pan_cold_p95", "pan_warm_p95"):
        out["ratios"][f"{metric} tls-open/lighttpd"] = med(
            ratios(rounds, metric, "tls-open", "lighttpd")
        )
    return out


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**fail**"


def markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    med = s["medians"]
    r = s["ratios"]
    a = results["args"]
    lines = [
        "## The secure path at engine speed (`benchmarks/bench_secure_path.py`)",
        "",
        f"Measured {results['machine']['date']} with `{results['command']}` "
        f"(tileserver {results['machine']['tileserver']}; {results['machine']['CPU']}, "
        f"{results['machine']['cores']}). Slide {results['slide']}, "
        f"{results['tiles']} tiles exported; {a['rounds']} rounds, servers restarted for each "
        "and taken in a rotating order.",
        "",
        "- **secure**: `tileserver serve --workers 2` over HTTPS (its self-signed P-256 "
        "certificate), a bearer token scoped to tiles of the slide's collection, every request "
        f"authenticated, authorized and seen by the detector (`--rate-limit-tokens {NO_LIMIT}`: "
        "the per-token limit out of the benchmark's way; `--detect-response bulk_crawl=alert`: "
        "the crawl is alerted, not suspended).",
        "- **tls-open**: the same server over HTTPS with `--no-auth --rate-limit 0` (what "
        "authentication and authorization alone cost: secure/tls-open).",
        "- **open**: the same server over plain HTTP with `--no-auth --rate-limit 0`.",
        "- **lighttpd**: Debian's lighttpd, 2 worker processes, HTTPS with the same certificate "
        "and TLS policy (TLS 1.2+, ECDHE + AEAD, P-256), HTTP/1.1, serving the tiles ours "
        "serves as files under the same paths.",
        f"- Pan: the viewer pan trace ({a['pan_centres']} centres) with {a['sessions']} viewer "
        "sessions (`tileserver.bench.load`), a cold then a warm pass; viewport p95 = time "
        "until a whole screenful is sharp. wrk: `random_tiles.lua`, random tiles of the two "
        f"finest levels, {a['wrk_threads']} threads, {a['connections']} connections, "
        f"{a['wrk_seconds']} s after a {a['wrk_warmup']} s warm-up.",
        "",
        "Medians over the rounds:",
        "",
        "| metric | secure | tls-open | open | lighttpd |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric, (label, _) in METRICS.items():
        m = med[metric]
        lines.append(f"| {label} | " + " | ".join(f"{m[s]:g}" for s in SERVERS) + " |")
    lines += [
        "",
        "Ratios (median of the rounds' ratios, then each round's):",
        "",
        "| ratio | median | rounds | target | verdict |",
        "|---|---:|---|---|---|",
    ]
    targets: dict[str, tuple[str, Callable[[float], bool]]] = {
        "wrk_tiles secure/open": (f">= {TARGET_TILES}", lambda v: v >= TARGET_TILES),
        "pan_cold_tiles secure/open": (f">= {TARGET_TILES}", lambda v: v >= TARGET_TILES),
        "pan_warm_tiles secure/open": (f">= {TARGET_TILES}", lambda v: v >= TARGET_TILES),
        "pan_cold_p95 secure/lighttpd": (f"<= {TARGET_P95}", lambda v: v <= TARGET_P95),
        "pan_warm_p95 secure/lighttpd": (f"<= {TARGET_P95}", lambda v: v <= TARGET_P95),
    }
    for name, value in r.items():
        bound = "tls-open/" in name  # the same target, met by no authentication at all?
        target, check = targets.get(name.replace("tls-open/", "secure/"), ("", lambda v: True))
        if not target:
            judged = "(information)"
        else:
            judged = ("bound: " if bound else "") + verdict(check(value["median"]))
        rounds = ", ".join(f"{v:g}" for v in value["rounds"])
        lines.append(f"| {name} | {value['median']:g} | {rounds} | {target} | {judged} |")
    lines += [
        "",
        "A `bound` row is the target's ratio for tls-open: the same server over HTTPS with no "
        "authentication at all, the best any authentication could reach.",
        "",
        f"Errors: {results['errors']} (wrk non-2xx, socket errors and timeouts, and failed "
        "pan requests, all servers). Machine load: " + "; ".join(results["loads"]) + ".",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sessions", type=int, default=8, help="viewer sessions of the pan trace")
    p.add_argument("--pan-centres", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=3000, help="per pan pass")
    p.add_argument("--max-seconds", type=float, default=30.0, help="per pan pass")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-seconds", type=int, default=15)
    p.add_argument("--wrk-warmup", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [tool for tool in ("wrk",) if shutil.which(tool) is None]
    if not comparators.lighttpd_available():
        missing.append("lighttpd with mod_openssl")
    if missing:
        log(f"missing {', '.join(missing)}: run scripts/setup-services.sh (as root)")
        return 2
    slide = ensure_slide(args.size)
    stores, home, slide_id = convert_once(slide)
    ensure_certificate(home, ["localhost", "127.0.0.1"])
    token = bench_token(home, [slide_id], name="bench-secure-path")
    export = DATA / f"secure-path-export-{slide.stem}"
    with comparators.ours_server(stores, home, slide_id, "--rate-limit", "0") as server:
        paths = export_tiles(server.url, export, slide_id)
    tiles = sum(1 for p in export.rglob("*.jpeg"))
    log(f"{tiles} tiles in {export}; {len(paths)} in the random list")
    w, h = args.size
    n = args.pan_centres
    settings = LoadSettings(
        traces=("pan",),
        concurrency=(args.sessions,),
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
        centres=tuple((w * (i + 0.5) / n, h * (i + 0.5) / n) for i in range(n)),
    )
    start = starters(stores, home, slide_id, token, export)
    rounds: list[dict[str, Any]] = []
    loads = [load_now()]
    with tempfile.TemporaryDirectory(prefix="bench-secure-") as tmp:
        paths_file = Path(tmp) / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        for r in range(args.rounds):
            order = SERVERS[r % len(SERVERS) :] + SERVERS[: r % len(SERVERS)]
            log(f"round {r + 1}/{args.rounds}: {', '.join(order)}")
            rounds.append(
                {s: measure_server(s, start[s], paths_file, settings, args) for s in order}
            )
            loads.append(load_now())
    errors = sum(
        rec["wrk"]["errors"] + rec["pan"]["cold"]["errors"] + rec["pan"]["warm"]["errors"]
        for rnd in rounds
        for rec in rnd.values()
    )
    results = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/bench_secure_path.py", *(argv or sys.argv[1:])]
        ),
        "machine": report.machine_facts() | {"tileserver": git_state()},
        "slide": f"{w} x {h} synthetic SVS (`{slide.name}`), encrypted store",
        "tiles": tiles,
        "args": {k: v for k, v in vars(args).items() if k != "size"},
        "rounds": rounds,
        "summary": summary(rounds),
        "errors": errors,
        "loads": loads,
    }
    report.write_json(results, OUT / "secure_path.json")
    text = markdown(results)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "secure_path", text))
        log(f"wrote {RESULTS}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
