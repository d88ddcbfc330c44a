"""DICOMweb at viewer speed, and DICOM export against conversion, in one run each.

    .venv/bin/python benchmarks/bench_dicomweb.py [--size 40000x30000] [--rounds 3]
        [--groups 256] [--concurrency 8] [--pairs 3] [--wrk-seconds 5] [--wrk-warmup 2]
        [--export-size 40000x30000] [--export-repeats 3] [--skip-frames] [--skip-export]

1. Frames. The synthetic slide's encrypted store (``bench_server.py``'s, cached in
   ``benchmarks/.data/``) is served by ``tileserver serve --workers 2`` over HTTPS with a
   bearer token scoped to tiles (``https_ours.py``; the same flags as bench_secure_path's
   ``secure`` server: authentication, authorization, audit and the detector all run). The
   chunks: ``--groups`` runs of 8 horizontally adjacent stored chunks (pass-through: edge
   chunks, which DeepZoom crops and re-encodes, and background chunks, never stored, left
   out) of the two finest levels, drawn with a fixed seed. Three ways to fetch exactly those
   chunks: ``tiles`` (DeepZoom tiles), ``frames`` (one WADO-RS frame per request,
   ``Accept: multipart/related; type="image/jpeg"``) and ``batch`` (8 frames per request,
   ``frames/n1,...,n8``). Per round, in a rotating order: a cold pass of each way on a
   freshly started server (every chunk once, in order, ``--concurrency`` requests in flight,
   through ``tileserver.bench.client``: our caches cold, the page cache warm); then one more
   server for the warm figures: each way warmed up, then ``--pairs`` alternations of a short
   wrk run of each (``random_tiles.lua``, the same paths, the token from the environment,
   the Accept header by ``-H``), so neighbouring runs share the shared machine's noise. The
   server's CPU time per chunk comes from /proc. Before the rounds, one server is checked:
   the first group's tiles, single frames and batch parts must all equal the store's chunks.
2. Export. ``tileserver export SLIDE_ID --dicom OUT`` of the ``--export-size`` slide's store
   against ``tileserver convert SLIDE --workers 2`` of the same slide (``bench_convert.py``'s
   runner: a fresh process, wall time, peak RSS from ``os.wait4``), interleaved, alternating
   which goes first; outputs are deleted only at the end (see ``bench_convert.py`` on why).
3. Writes ``benchmarks/results/dicomweb.json`` and the ``dicomweb`` section of
   ``benchmarks/RESULTS.md``. A skipped part keeps its previous figures (from the JSON).

Target (issue 16): single-frame requests >= 0.9x DeepZoom tiles/s for the same chunks.
Needs Debian's ``wrk`` (``scripts/setup-services.sh``). About 6 minutes with the defaults
on 2 cores (frames ~4.5, export ~1.5), plus a conversion of the slide the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_convert import fmt_bytes, load_now, run_child, run_ours, tileserver_exe, warm_cache
from bench_secure_path import NO_LIMIT, NO_SUSPEND, run_wrk  # sibling scripts (same folder)
from bench_server import DATA, OUT, RESULTS, convert_once, ensure_slide, git_state, parse_size
from https_ours import bench_token, cpu_seconds, ours_https

from tileserver.bench import report
from tileserver.bench.client import ClientOptions, TileClient
from tileserver.bench.load import open_target, summarize
from tileserver.bench.traces import Tile
from tileserver.protocols.dicom import derive_uids
from tileserver.security.keys import KeyRing
from tileserver.security.tls import ensure_certificate
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader

MODES = ("tiles", "frames", "batch")
BATCH = 8  # frames per multipart request: the viewer's batch of the issue
FRAMES_ACCEPT = 'multipart/related; type="image/jpeg"'
TARGET = 0.90  # single-frame chunks/s over DeepZoom tiles/s, at least
SEED = 16
JSON_OUT = OUT / "dicomweb.json"


def log(msg: str) -> None:
    print(f"[bench_dicomweb {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the chunks and their paths ----------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    level: int  # store level (0 = full resolution)
    col: int
    row: int


@dataclass(frozen=True)
class Plan:
    groups: list[list[Chunk]]  # runs of BATCH horizontally adjacent stored chunks
    paths: dict[str, list[str]]  # mode -> request paths (batch: one per group)
    candidates: int  # interior runs considered
    background_runs: int  # of those, runs holding a background chunk (left out)


def pick_groups(
    reader: StoreReader, groups: int, levels: int = 2
) -> tuple[list[list[Chunk]], int, int]:
    """``groups`` runs of BATCH stored, interior, adjacent chunks of the ``levels`` finest
    levels, in a random (seeded) order; and how many runs were considered / had background."""
    runs: list[list[Chunk]] = []
    for level in range(min(levels, len(reader.layout.levels))):
        grid = reader.layout.grid(level)
        # Interior only: the last column and row are cropped by DeepZoom (decoded, re-encoded).
        for row in range(grid.height - 1):
            for start in range(0, grid.width - 1 - BATCH + 1, BATCH):
                runs.append([Chunk(level, start + i, row) for i in range(BATCH)])
    random.Random(SEED).shuffle(runs)
    chosen: list[list[Chunk]] = []
    background = 0
    for run in runs:
        if len(chosen) == groups:
            break
        if any(reader.chunk_bytes(c.level, c.col, c.row) is None for c in run):
            background += 1
            continue
        chosen.append(run)
    if len(chosen) < groups:
        log(f"only {len(chosen)} runs of {BATCH} stored chunks (asked for {groups})")
    return chosen, len(chosen) + background, background


def frame_number(reader: StoreReader, chunk: Chunk) -> int:
    """TILED_FULL: frames numbered from 1, row by row over the level's chunk grid."""
    return chunk.row * reader.layout.grid(chunk.level).width + chunk.col + 1


def make_plan(reader: StoreReader, dzi_url: str, options: ClientOptions, groups: int) -> Plan:
    chosen, candidates, background = pick_groups(reader, groups)
    uids = derive_uids(reader.name, len(reader.layout.levels))

    async def tile_urls() -> list[str]:
        async with TileClient(options, 1) as client:
            target = await open_target(client, dzi_url)
        # The bench pyramid lists DeepZoom levels finest first: store level k is levels[k].
        keys = [lv.key for lv in target.pyramid.levels]
        return [
            urlsplit(target.tile_url(Tile(keys[c.level], c.col, c.row))).path
            for run in chosen
            for c in run
        ]

    def instance(level: int) -> str:
        return (
            f"/dicomweb/studies/{uids.study}/series/{uids.series}"
            f"/instances/{uids.instances[level]}/frames/"
        )

    frames = [instance(c.level) + str(frame_number(reader, c)) for run in chosen for c in run]
    batch = [
        instance(run[0].level) + ",".join(str(frame_number(reader, c)) for c in run)
        for run in chosen
    ]
    paths = {"tiles": asyncio.run(tile_urls()), "frames": frames, "batch": batch}
    return Plan(chosen, paths, candidates, background)


# -- checking what is measured -----------------------------------------------------------------
def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a multipart/related body (RFC 2046 framing)."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"').encode()
    if not boundary:
        raise RuntimeError(f"no boundary in {content_type!r}")
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary)
    parts = []
    for section in sections[1:]:
        if section.startswith(b"--"):
            break
        _, sep, payload = section.partition(b"\r\n\r\n")
        if not sep:
            raise RuntimeError("a multipart part without a header/body separator")
        parts.append(payload)
    return parts


def check_plan(plan: Plan, reader: StoreReader, base: str, options: ClientOptions) -> None:
    """The first group's tiles, frames and batch must be the store's chunks, byte for byte."""
    run = plan.groups[0]
    expected = [reader.chunk_bytes(c.level, c.col, c.row) for c in run]

    async def go() -> None:
        async with TileClient(options, 1) as client:

            async def get(path: str, accept: str | None) -> tuple[str, bytes]:
                headers = {"Accept": accept} if accept else {}
                async with client.session.get(base + path, headers=headers) as reply:
                    body = await reply.read()
                    if reply.status != 200:
                        raise RuntimeError(f"check: {path}: HTTP {reply.status}: {body[:200]!r}")
                    return reply.headers.get("Content-Type", ""), body

            for i, want in enumerate(expected):
                _, tile = await get(plan.paths["tiles"][i], None)
                ctype, frame = await get(plan.paths["frames"][i], FRAMES_ACCEPT)
                if tile != want or multipart_parts(ctype, frame) != [want]:
                    raise RuntimeError(f"check: chunk {run[i]}: tile or frame != stored chunk")
            ctype, body = await get(plan.paths["batch"][0], FRAMES_ACCEPT)
            if multipart_parts(ctype, body) != expected:
                raise RuntimeError(f"check: batch {plan.paths['batch'][0]}: parts != chunks")

    asyncio.run(go())


# -- measuring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    base: str  # https://127.0.0.1:PORT
    options: ClientOptions  # bearer token, our certificate
    pid: int


def with_accept(options: ClientOptions, mode: str) -> ClientOptions:
    if mode == "tiles":
        return options
    headers = (*options.headers, ("Accept", FRAMES_ACCEPT))
    return ClientOptions(headers=headers, cafile=options.cafile)


def wrk_headers(mode: str) -> tuple[str, ...]:
    return () if mode == "tiles" else (f"Accept: {FRAMES_ACCEPT}",)


def cold_pass(paths: Sequence[str], base: str, options: ClientOptions, c: int) -> dict[str, Any]:
    """Every path once, ``c`` requests in flight: requests/s from a fresh server's caches."""

    async def go() -> dict[str, Any]:
        async with TileClient(options, c) as client:
            cpu, start = time.process_time(), time.perf_counter()
            fetches = await asyncio.gather(*(client.fetch(base + p) for p in paths))
            duration = time.perf_counter() - start
            cpu = time.process_time() - cpu
        return summarize(
            fetches, None, duration, first_requests=len(paths), stopped_by="done", client_cpu_s=cpu
        )

    return asyncio.run(go())


def measure_cold(
    mode: str, start: Callable[[], AbstractContextManager[Served]], paths: Sequence[str], c: int
) -> dict[str, Any]:
    """A fresh server's first pass over the chunks: chunks/s and server CPU per chunk."""
    per = BATCH if mode == "batch" else 1
    with start() as server:
        cpu = cpu_seconds(server.pid)
        cold = cold_pass(paths, server.base, with_accept(server.options, mode), c)
        cpu = cpu_seconds(server.pid) - cpu
    record = {
        "pass": cold,
        "chunks_per_s": round(cold["tiles_per_s"] * per, 1),
        "cpu_ms_per_chunk": round(1000 * cpu / max(1, cold["ok"] * per), 3),
        "errors": cold["errors"],
    }
    log(
        f"cold {mode}: {record['chunks_per_s']:.0f} chunks/s, p50 "
        f"{(cold['latency_ms'] or {}).get('p50')} ms/request, {record['cpu_ms_per_chunk']:.3f} "
        f"server CPU ms/chunk, load client CPU/wall {cold['client_cpu_fraction']}, "
        f"{cold['errors']} errors"
    )
    return record


def measure_warm(
    order: tuple[str, ...],
    start: Callable[[], AbstractContextManager[Served]],
    files: dict[str, Path],
    token: str,
    args: argparse.Namespace,
) -> dict[str, list[dict[str, Any]]]:
    """One server, every mode warmed up, then ``args.pairs`` alternations of a short wrk run
    of each mode: neighbouring runs share the machine's noise."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    with start() as server:
        warmup = argparse.Namespace(**{**vars(args), "wrk_seconds": args.wrk_warmup})
        for mode in order:
            run_wrk(server.base, files[mode], token, warmup, wrk_headers(mode))
        for i in range(args.pairs):
            for mode in order[i % len(order) :] + order[: i % len(order)]:
                per = BATCH if mode == "batch" else 1
                cpu = cpu_seconds(server.pid)
                wrk = run_wrk(server.base, files[mode], token, args, wrk_headers(mode))
                cpu = cpu_seconds(server.pid) - cpu
                ok = (wrk["requests"] - wrk["status_errors"]) * per
                runs[mode].append(
                    {
                        "wrk": wrk,
                        "chunks_per_s": round(wrk["tiles_per_s"] * per, 1),
                        "cpu_ms_per_chunk": round(1000 * cpu / max(1, ok), 3),
                        "errors": wrk["errors"],
                    }
                )
        line = ", ".join(
            f"{m} {statistics.median(r['chunks_per_s'] for r in runs[m]):.0f}" for m in order
        )
        log(f"warm chunks/s (median of {args.pairs} runs each): {line}")
    return runs


def round_record(cold: dict[str, Any], warm: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One round: the cold pass and the median of the warm runs, per mode."""
    out: dict[str, Any] = {}
    for mode in MODES:
        runs = warm[mode]
        out[mode] = {
            "cold": cold[mode],
            "warm_runs": runs,
            "warm_chunks_per_s": statistics.median(r["chunks_per_s"] for r in runs),
            "warm_cpu_ms_per_chunk": statistics.median(r["cpu_ms_per_chunk"] for r in runs),
            "warm_p50_ms": statistics.median(r["wrk"]["p50_us"] / 1000 for r in runs),
            "warm_p99_ms": statistics.median(r["wrk"]["p99_us"] / 1000 for r in runs),
            "errors": cold[mode]["errors"] + sum(r["errors"] for r in runs),
        }
    return out


FRAME_METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "cold": ("cold pass chunks/s", lambda r: float(r["cold"]["chunks_per_s"])),
    "warm": ("warm (wrk) chunks/s", lambda r: float(r["warm_chunks_per_s"])),
    "warm_p50": ("warm p50 ms per request", lambda r: float(r["warm_p50_ms"])),
    "warm_p99": ("warm p99 ms per request", lambda r: float(r["warm_p99_ms"])),
    "cold_cpu": ("server CPU ms per chunk, cold", lambda r: float(r["cold"]["cpu_ms_per_chunk"])),
    "warm_cpu": ("server CPU ms per chunk, warm", lambda r: float(r["warm_cpu_ms_per_chunk"])),
    "client_cpu": (
        "load client CPU / wall, cold",
        lambda r: float(r["cold"]["pass"]["client_cpu_fraction"] or 0),
    ),
}
RATIOS = (  # (name, metric, top, bottom, target)
    ("frames/tiles cold", "cold", "frames", "tiles", TARGET),
    ("frames/tiles warm", "warm", "frames", "tiles", TARGET),
    ("batch/tiles cold", "cold", "batch", "tiles", None),
    ("batch/tiles warm", "warm", "batch", "tiles", None),
    ("frames/tiles server CPU per chunk, cold", "cold_cpu", "frames", "tiles", None),
    ("frames/tiles server CPU per chunk, warm", "warm_cpu", "frames", "tiles", None),
    ("batch/tiles server CPU per chunk, warm", "warm_cpu", "batch", "tiles", None),
)


TARGETS = {name: target for name, _, _, _, target in RATIOS if target is not None}


def frames_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    medians = {
        metric: {m: round(statistics.median(value(r[m]) for r in rounds), 3) for m in MODES}
        for metric, (_, value) in FRAME_METRICS.items()
    }
    ratios = {}
    for name, metric, top, bottom, _ in RATIOS:
        value = FRAME_METRICS[metric][1]
        per_round = [round(value(r[top]) / value(r[bottom]), 3) for r in rounds]
        ratios[name] = {"median": round(statistics.median(per_round), 3), "rounds": per_round}
    # Every warm alternation on its own (run i of frames over run i of tiles, same server).
    pairs = [
        round(f["chunks_per_s"] / t["chunks_per_s"], 3)
        for r in rounds
        for f, t in zip(r["frames"]["warm_runs"], r["tiles"]["warm_runs"], strict=True)
    ]
    ratios["frames/tiles warm, every alternation"] = {
        "median": round(statistics.median(pairs), 3),
        "rounds": pairs,
    }
    return {"medians": medians, "ratios": ratios}


def measure_frames(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_dicomweb: wrk is missing: run scripts/setup-services.sh (as root)")
    slide = ensure_slide(args.size)
    stores, home, slide_id = convert_once(slide)
    ensure_certificate(home, ["localhost", "127.0.0.1"])
    token = bench_token(home, [slide_id], name="bench-dicomweb")
    reader = StoreReader.open(LocalObjects(stores / slide_id), slide_id, KeyRing(home))
    extra = ("--workers", "2", "--rate-limit-tokens", NO_LIMIT, *NO_SUSPEND)

    @contextmanager
    def start() -> Iterator[Served]:
        with ours_https(stores, home, slide_id, token, *extra, detect=True) as server:
            base = "{0.scheme}://{0.netloc}".format(urlsplit(server.url))
            yield Served(base, server.options, server.pid)

    with start() as server:
        dzi = f"{server.base}/deepzoom/{slide_id}.dzi"
        plan = make_plan(reader, dzi, server.options, args.groups)
        check_plan(plan, reader, server.base, server.options)
    chunks = sum(len(g) for g in plan.groups)
    log(
        f"{chunks} chunks in {len(plan.groups)} runs of {BATCH} ({plan.background_runs} of "
        f"{plan.candidates} runs tried held background); tiles, frames and batch agree"
    )
    rounds: list[dict[str, Any]] = []
    loads = [load_now()]
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        files = {}
        for mode in MODES:
            files[mode] = Path(tmp) / f"{mode}.txt"
            files[mode].write_text("\n".join(plan.paths[mode]) + "\n")
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            log(f"round {r + 1}/{args.rounds}: {', '.join(order)}")
            cold = {m: measure_cold(m, start, plan.paths[m], args.concurrency) for m in order}
            warm = measure_warm(order, start, files, token, args)
            rounds.append(round_record(cold, warm))
            loads.append(load_now())
    w, h = args.size
    return {
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_dicomweb.py", *argv]),
        "machine": report.machine_facts() | {"tileserver": git_state()},
        "slide": f"{w} x {h} synthetic SVS (`{slide.name}`), encrypted store, "
        f"{reader.layout.tile}-px chunks",
        "chunks": chunks,
        "runs": len(plan.groups),
        "runs_tried": plan.candidates,
        "runs_with_background": plan.background_runs,
        "example_paths": {m: plan.paths[m][0] for m in MODES},
        "args": {
            k: v
            for k, v in vars(args).items()
            if k
            in (
                "rounds",
                "groups",
                "concurrency",
                "pairs",
                "wrk_threads",
                "wrk_seconds",
                "wrk_warmup",
            )
        },
        "rounds": rounds,
        "summary": frames_summary(rounds),
        "errors": sum(rec["errors"] for rnd in rounds for rec in rnd.values()),
        "loads": loads,
    }


# -- export against convert --------------------------------------------------------------------
def run_export(stores: Path, slide_id: str, work: Path) -> dict[str, Any]:
    out = work / "dicom"
    cmd = [
        tileserver_exe(),
        "export",
        slide_id,
        "--dicom",
        str(out),
        "--store",
        str(stores),
        "--quiet",
    ]
    seconds, rss, _ = run_child(cmd, work / "export.log")
    files = sorted(p for p in out.iterdir() if p.is_file())
    if not files:
        raise RuntimeError(f"export wrote nothing into {out}")
    return {
        "seconds": round(seconds, 2),
        "max_rss": rss,
        "files": len(files),
        "out_bytes": sum(p.stat().st_size for p in files),
    }


def measure_export(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    slide = ensure_slide(args.export_size)
    stores, _, slide_id = convert_once(slide)
    warm_cache(slide)
    for f in (stores / slide_id).rglob("*"):
        if f.is_file():
            warm_cache(f)
    runs: dict[str, list[dict[str, Any]]] = {"convert": [], "export": []}
    loads = [load_now()]
    with tempfile.TemporaryDirectory(dir=DATA, prefix="bench-dicom-export-") as tmp:
        for rep in range(args.export_repeats):
            for method in ("convert", "export") if rep % 2 == 0 else ("export", "convert"):
                work = Path(tmp) / f"{method}-{rep}"
                work.mkdir()
                if method == "convert":
                    done = run_ours(slide, work)
                    run = {
                        "seconds": round(done.seconds, 2),
                        "max_rss": done.max_rss,
                        "out_bytes": done.detail["out_bytes"],
                    }
                else:
                    run = run_export(stores, slide_id, work)
                runs[method].append(run)
                loads.append(load_now())
                log(
                    f"repeat {rep + 1}/{args.export_repeats} {method}: {run['seconds']:.1f} s, "
                    f"peak RSS {fmt_bytes(run['max_rss'])} ({loads[-1]})"
                )
    w, h = args.export_size
    med = {m: statistics.median(r["seconds"] for r in runs[m]) for m in runs}
    return {
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_dicomweb.py", *argv]),
        "machine": report.machine_facts() | {"tileserver": git_state()},
        "slide": f"{w} x {h} synthetic SVS (`{slide.name}`)",
        "commands": {
            "convert": "tileserver convert SLIDE --out DIR --workers 2 --quiet",
            "export": "tileserver export SLIDE_ID --dicom DIR --store STORES --quiet",
        },
        "runs": runs,
        "median_s": med,
        "ratio_export_convert": round(med["export"] / med["convert"], 3),
        "ratios": [
            round(e["seconds"] / c["seconds"], 3)
            for e, c in zip(runs["export"], runs["convert"], strict=True)
        ],
        "loads": loads,
    }


# -- report ------------------------------------------------------------------------------------
def verdict(value: float, target: float | None) -> str:
    if target is None:
        return "(information)"
    return "**pass**" if value >= target else "**fail**"


def frames_markdown(f: dict[str, Any]) -> list[str]:
    a = f["args"]
    m, r = f["summary"]["medians"], f["summary"]["ratios"]
    lines = [
        "### WADO-RS frames against DeepZoom tiles",
        "",
        f"Measured {f['machine']['date']} with `{f['command']}` (tileserver "
        f"{f['machine']['tileserver']}; {f['machine']['CPU']}, {f['machine']['cores']}). "
        f"Slide {f['slide']}. {f['chunks']} chunks: {f['runs']} runs of {BATCH} horizontally "
        "adjacent stored chunks of the two finest levels (interior only; "
        f"{f['runs_with_background']} of {f['runs_tried']} runs drawn held a background chunk "
        "and were left out), checked first: tile, single frame and batch part equal the "
        "stored chunk byte for byte.",
        "",
        "- Server: `tileserver serve --workers 2` over HTTPS, a bearer token scoped to tiles, "
        f"`--rate-limit-tokens {NO_LIMIT} --detect-response bulk_crawl=alert` (as "
        "bench_secure_path's `secure`): authentication, authorization, audit and the detector "
        f"all run. {a['rounds']} rounds, modes in a rotating order.",
        f"- **tiles**: `{f['example_paths']['tiles']}`; **frames**: "
        f"`{f['example_paths']['frames']}` with `Accept: {FRAMES_ACCEPT}`; **batch**: "
        f"`{f['example_paths']['batch']}` ({BATCH} frames a request, same Accept).",
        f"- Cold: each mode on a freshly started server, every chunk once, in order, "
        f"{a['concurrency']} requests in flight (`tileserver.bench.client`, aiohttp; our caches "
        "cold, the page cache warm). Warm: then one more server, each mode warmed up "
        f"({a['wrk_warmup']} s of wrk), then {a['pairs']} alternations of a "
        f"{a['wrk_seconds']} s wrk run of each mode (`random_tiles.lua` over the same paths, "
        f"{a['wrk_threads']} threads, {a['concurrency']} connections); a round's warm figure is "
        "the median of its runs. A chunk = a tile, a frame, or one eighth of a batch request.",
        "",
        "Medians over the rounds:",
        "",
        "| metric | tiles | frames | batch |",
        "|---|---:|---:|---:|",
    ]
    for metric, (label, _) in FRAME_METRICS.items():
        lines.append(f"| {label} | " + " | ".join(f"{m[metric][x]:g}" for x in MODES) + " |")
    lines += [
        "",
        "| ratio | median | rounds | target | verdict |",
        "|---|---:|---|---|---|",
    ]
    for name, v in r.items():
        target = TARGETS.get(name)
        rounds = ", ".join(f"{x:g}" for x in v["rounds"])
        shown = f">= {target}" if target is not None else ""
        lines.append(
            f"| {name} | {v['median']:g} | {rounds} | {shown} | {verdict(v['median'], target)} |"
        )
    cpu = r["frames/tiles server CPU per chunk, warm"]["median"]
    lines += [
        "",
        f"Server CPU per chunk, warm, frames over tiles: {cpu:g}x, so a server that is the "
        f"bottleneck would give single frames about {1 / cpu:.2f}x the tiles' throughput; the "
        "throughput ratios above move with whatever else the machine runs (see its load "
        "below), the CPU per chunk much less.",
        "",
        f"Errors: {f['errors']} (failed requests of the cold passes, wrk non-2xx, socket errors "
        "and timeouts). Machine load: " + "; ".join(f["loads"]) + ".",
    ]
    return lines


def export_markdown(e: dict[str, Any]) -> list[str]:
    lines = [
        "### `tileserver export --dicom` against `tileserver convert`",
        "",
        f"Measured {e['machine']['date']} with `{e['command']}` (tileserver "
        f"{e['machine']['tileserver']}). Slide {e['slide']}; each run a fresh process "
        "(`bench_convert.run_child`: wall time with start-up, peak RSS from `os.wait4`), "
        f"{len(e['runs']['export'])} repeats interleaved, alternating which goes first; the "
        "store and the slide read once beforehand (page cache warm).",
        "",
        f"- convert: `{e['commands']['convert']}` (encrypted store, format 2)",
        f"- export: `{e['commands']['export']}` (the same slide's encrypted store; "
        "de-identified, the default)",
        "",
        "| command | median s | min s | max s | peak RSS (max) | output |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, runs in e["runs"].items():
        s = [x["seconds"] for x in runs]
        lines.append(
            f"| {method} | {statistics.median(s):.1f} | {min(s):.1f} | {max(s):.1f} | "
            f"{fmt_bytes(max(x['max_rss'] for x in runs))} | {fmt_bytes(runs[0]['out_bytes'])} |"
        )
    ratios = ", ".join(f"{x:g}" for x in e["ratios"])
    lines += [
        "",
        f"export / convert wall time: **{e['ratio_export_convert']:g}x** (medians; per repeat "
        f"{ratios}). Machine load: " + "; ".join(e["loads"]) + ".",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = ["## DICOMweb frames and DICOM export (`benchmarks/bench_dicomweb.py`)", ""]
    if "frames" in results:
        lines += [*frames_markdown(results["frames"]), ""]
    if "export" in results:
        lines += export_markdown(results["export"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(40_000, 30_000), metavar="WxH")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--groups", type=int, default=256, help=f"runs of {BATCH} chunks")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=3, help="warm alternations per round")
    p.add_argument("--wrk-seconds", type=int, default=5, help="per warm run")
    p.add_argument("--wrk-warmup", type=int, default=2, help="per mode, unrecorded")
    p.add_argument("--export-size", type=parse_size, default=(40_000, 30_000), metavar="WxH")
    p.add_argument("--export-repeats", type=int, default=3)
    p.add_argument("--skip-frames", action="store_true")
    p.add_argument("--skip-export", action="store_true")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # wrk's connections are the load's concurrency (run_wrk reads args.connections).
    args.connections = args.concurrency
    results: dict[str, Any] = json.loads(JSON_OUT.read_text()) if JSON_OUT.exists() else {}
    if not args.skip_frames:
        results["frames"] = measure_frames(args, argv)
    if not args.skip_export:
        results["export"] = measure_export(args, argv)
    report.write_json(results, JSON_OUT)
    text = markdown(results)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "dicomweb", text))
        log(f"wrote {RESULTS}")
    errors = results.get("frames", {}).get("errors", 0) if not args.skip_frames else 0
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
