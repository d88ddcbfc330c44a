"""Stores on S3 against the same stores on local disk: conversion, cold tiles, cold thumbnails.

    .venv/bin/python benchmarks/bench_s3.py [--size 20000x15000] [--convert-size 40000x30000]
        [--convert-repeats 3] [--rounds 5] [--thumbnails 15] [--max-requests 3000]

The S3 server is SeaweedFS on loopback (``tests/s3server.py``: the ``weed`` binary of the
dev extras, free ports, keys made at run time, data in a temporary directory under
``benchmarks/.data``), started here and stopped at the end; the AWS_* variables of every
child point at it. Every request stays on 127.0.0.1.

1. Conversion: ``tileserver convert SLIDE --out s3://bucket/prefix`` against ``--out DIR`` on
   local disk, same slide, interleaved (S3 / local / S3 / ...), each into a fresh prefix or
   directory; wall time of the whole CLI process.
2. Cold tiles: the ``--size`` slide converted once to each place; per round a freshly
   started ``tileserver serve --workers 2`` (HTTPS, authentication on, ``https_ours.py``)
   over each, the random trace at concurrency 8, cold pass only (the server's caches are
   empty; the local page cache and SeaweedFS's own caches are not); order alternates.
   Tiles/s and p99, and the ratio S3 / local per back-to-back pair.
3. Cold thumbnails: ``thumbnail?max=512`` as the first request of a freshly started server
   (``bench_store.cold_thumbnails``), from each place. Target: p95 < 100 ms from S3.
Rewrites the ``s3`` section of benchmarks/RESULTS.md and writes benchmarks/results/s3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_convert import load_now  # sibling scripts (same folder)
from bench_server import DATA, OUT, RESULTS, ROOT, ensure_slide, git_state, parse_size
from bench_store import cold_thumbnails
from https_ours import CLI, bench_token, cpu_seconds, ours_https
from store_reads import pass_chunks, time_reads

from tileserver.bench import report
from tileserver.bench.load import LoadSettings, measure_cell
from tileserver.security.keys import KeyRing
from tileserver.store.location import open_location
from tileserver.store.reader import StoreReader

sys.path.insert(0, str(ROOT))  # tests/ is not installed: the S3 server helpers live there
from tests.s3server import S3Server, seaweedfs

HOME = DATA / "tileserver-home"
PLACES = ("s3", "local")
THUMBNAIL_TARGET_MS = 100.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def convert(slide: Path, out: str) -> tuple[float, str]:
    """Wall seconds of one ``tileserver convert`` into ``out``; the slide ID it made."""
    env = {**os.environ, "TILESERVER_HOME": str(HOME)}
    cmd = [*CLI, "convert", "--quiet", "--workers", "2", "--timeout", "900", str(slide)]
    started = time.perf_counter()
    done = subprocess.run([*cmd, "--out", out], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "kept from an earlier run" not in done.stdout:
        raise RuntimeError(f"convert --out {out} failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    return seconds, done.stdout.split(": ", 1)[1].split()[0]


def measure_conversion(slide: Path, bucket: str, local: Path, repeats: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {p: [] for p in PLACES}
    for r in range(repeats):
        for place in PLACES if r % 2 == 0 else PLACES[::-1]:
            out = f"s3://{bucket}/convert-{r}" if place == "s3" else str(local / f"convert-{r}")
            seconds, _ = convert(slide, out)
            times[place].append(seconds)
            log(f"convert {r + 1}/{repeats} to {place}: {seconds:.1f} s ({load_now()})")
    return times


def child_pid(name: str) -> int:
    """The pid of this process's child called ``name`` (SeaweedFS's ``weed``)."""
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/comm") as comm:
                    if comm.read().strip() == name:
                        return int(pid)
    raise RuntimeError(f"no child process {name}")


def measure_tiles(
    roots: dict[str, str], ids: dict[str, str], rounds: int, max_requests: int
) -> dict[str, list[dict[str, Any]]]:
    """Cold random passes at c=8, with the CPU time per tile of the server and of SeaweedFS."""
    weed = child_pid("weed")
    token = bench_token(HOME, list(ids.values()))
    settings = LoadSettings(
        traces=("random",), concurrency=(8,), passes=("cold",), max_requests=max_requests
    )
    cells: dict[str, list[dict[str, Any]]] = {p: [] for p in PLACES}
    for r in range(rounds):
        for place in PLACES if r % 2 == 0 else PLACES[::-1]:
            with ours_https(roots[place], HOME, ids[place], token, "--workers", "2") as server:
                cpu = cpu_seconds(server.pid), cpu_seconds(weed)
                _, (cold,) = measure_cell(server.url, "random", 8, settings, server.options)
                used = cpu_seconds(server.pid) - cpu[0], cpu_seconds(weed) - cpu[1]
            cold["server_cpu_ms_per_tile"] = 1000 * used[0] / max(1, cold["ok"])
            cold["s3_cpu_ms_per_tile"] = 1000 * used[1] / max(1, cold["ok"])
            cells[place].append(cold)
            log(
                f"round {r + 1} {place}: {cold['tiles_per_s']:.0f} tiles/s, p99 "
                f"{cold['latency_ms']['p99']:.1f} ms, CPU ms/tile: server "
                f"{cold['server_cpu_ms_per_tile']:.2f}, SeaweedFS "
                f"{cold['s3_cpu_ms_per_tile']:.2f} ({cold['errors']} err)"
            )
    return cells


def measure_reads(
    roots: dict[str, str], ids: dict[str, str], max_requests: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """In-process ``chunk_bytes`` of the random pass's chunks, one thread, one at a time."""
    stores = {p: (open_location(roots[p]).child(f"{ids[p]}/"), ids[p]) for p in PLACES}
    layout = StoreReader.open(*stores["local"], KeyRing(HOME)).layout
    chunks, _ = pass_chunks(layout, "random", LoadSettings(max_requests=max_requests))
    timings = time_reads(stores, HOME, chunks, repeats)
    for place in PLACES:
        first = statistics.median(timings[place]["first"])
        log(f"in-process reads from {place}: {first:.0f} us per tile (first pass)")
    return timings


def percentile95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def markdown(
    args: argparse.Namespace,
    s3: S3Server,
    conversion: dict[str, list[float]],
    tiles: dict[str, list[dict[str, Any]]],
    reads: dict[str, dict[str, list[float]]],
    thumbs: dict[str, list[float]],
    loads: list[str],
    command: str,
) -> str:
    facts = report.machine_facts()
    conv = {p: statistics.median(conversion[p]) for p in PLACES}
    rate = {p: statistics.median(c["tiles_per_s"] for c in tiles[p]) for p in PLACES}
    p99 = {p: statistics.median(c["latency_ms"]["p99"] for c in tiles[p]) for p in PLACES}
    pairs = [
        a["tiles_per_s"] / b["tiles_per_s"]
        for a, b in zip(tiles["s3"], tiles["local"], strict=True)
    ]
    p95 = {p: percentile95(thumbs[p]) for p in PLACES}
    cpu = {
        (p, k): statistics.median(c[f"{k}_cpu_ms_per_tile"] for c in tiles[p])
        for p in PLACES
        for k in ("server", "s3")
    }
    us = {(p, k): statistics.median(reads[p][k]) for p in PLACES for k in ("first", "second")}
    verdict = "**pass**" if p95["s3"] < THUMBNAIL_TARGET_MS else "**FAIL**"
    errors = sum(c["errors"] for p in PLACES for c in tiles[p])
    cw, ch = args.convert_size
    sw, sh = args.size
    return "\n".join(
        [
            "## Stores on S3 (`benchmarks/bench_s3.py`)",
            "",
            f"Command: `{command}`; {facts['date']}; tileserver {git_state()}; machine: "
            f"{facts['CPU']}, {facts['cores']} cores. S3 = SeaweedFS (`weed` from the dev "
            f"extras, started by the benchmark on loopback: ready in {s3.start_seconds:.1f} s) "
            "on the same 2-core machine as the converter or server and the load client, so "
            "it competes with them for CPU; local = the same machine's disk.",
            "",
            "| figure | S3 | local disk | S3 / local | target |",
            "|---|---:|---:|---:|---|",
            f"| `tileserver convert` {cw} x {ch}, wall s (median of "
            f"{len(conversion['s3'])}) | {conv['s3']:.1f} | {conv['local']:.1f} | "
            f"{conv['s3'] / conv['local']:.2f}x the time | |",
            f"| cold random tiles/s, c=8, {sw} x {sh} (median of {args.rounds}) | "
            f"{rate['s3']:,.0f} | {rate['local']:,.0f} | {statistics.median(pairs):.2f} "
            f"[{min(pairs):.2f}-{max(pairs):.2f}] | |",
            f"| cold random p99 ms, c=8 | {p99['s3']:.1f} | {p99['local']:.1f} | "
            f"{p99['s3'] / p99['local']:.2f} | |",
            f"| server CPU ms per tile, same passes | {cpu['s3', 'server']:.2f} | "
            f"{cpu['local', 'server']:.2f} | {cpu['s3', 'server'] / cpu['local', 'server']:.2f} "
            "| |",
            f"| SeaweedFS CPU ms per tile, same passes | {cpu['s3', 's3']:.2f} | "
            f"{cpu['local', 's3']:.2f} | | |",
            f"| in-process `chunk_bytes`, one thread, us per tile, fresh reader / again "
            f"(median of {len(reads['s3']['first'])}) | {us['s3', 'first']:.0f} / "
            f"{us['s3', 'second']:.0f} | {us['local', 'first']:.0f} / "
            f"{us['local', 'second']:.0f} | {us['s3', 'first'] / us['local', 'first']:.0f}x / "
            f"{us['s3', 'second'] / us['local', 'second']:.0f}x the time | |",
            f"| cold `thumbnail?max=512` p50 / p95 / max ms ({args.thumbnails} fresh servers) | "
            f"{statistics.median(thumbs['s3']):.1f} / {p95['s3']:.1f} / {max(thumbs['s3']):.1f} "
            f"| {statistics.median(thumbs['local']):.1f} / {p95['local']:.1f} / "
            f"{max(thumbs['local']):.1f} | {p95['s3'] / p95['local']:.2f} (p95) | "
            f"S3 p95 < {THUMBNAIL_TARGET_MS:.0f} ms: {verdict} |",
            "",
            "Conversion: each run a fresh `tileserver convert --workers 2` process into a "
            "fresh prefix (S3) or directory (local), interleaved; wall time includes start-up. "
            "Cold tiles: per round a fresh `tileserver serve --workers 2` over HTTPS with "
            "authentication on (bearer token scoped to tiles) over each store, the random "
            f"trace ({args.max_requests} requests cap, 2000 distinct tiles of the two finest "
            "levels) at concurrency 8, cold pass only, S3 and local back to back in "
            "alternating order; S3 / local tiles/s is the median of the rounds' pairs "
            "[lowest-highest]. Thumbnails: the first request of a freshly started server "
            "(one process, HTTPS, token scoped to thumbnails), so opening the store is part "
            f"of it. CPU ms per tile: user + system time of the serve process and its workers, "
            "and of SeaweedFS's one process, over the cold passes / tiles served. In-process: "
            "`StoreReader.chunk_bytes` over the same random pass's chunks, no server, one "
            f"request at a time. {errors} errors in all tile passes.",
            "",
            f"Runs: conversion s { {p: [round(t, 1) for t in conversion[p]] for p in PLACES} }; "
            "tiles/s "
            f"{ {p: [c['tiles_per_s'] for c in tiles[p]] for p in PLACES} }; thumbnail ms "
            f"{ {p: [round(t, 1) for t in thumbs[p]] for p in PLACES} }.",
            "",
            "Machine load before and after each part: " + "; ".join(loads) + ".",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--convert-size", type=parse_size, default=(40_000, 30_000), metavar="WxH")
    p.add_argument("--convert-repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--thumbnails", type=int, default=15)
    p.add_argument("--read-repeats", type=int, default=5, help="in-process read timing")
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_s3.py", *sys.argv[1:]])
    serve_slide, convert_slide = ensure_slide(args.size), ensure_slide(args.convert_size)
    subprocess.run([*CLI, "keys", "init"], env={**os.environ, "TILESERVER_HOME": str(HOME)},
                   check=True, capture_output=True)  # fmt: skip
    with (
        tempfile.TemporaryDirectory(dir=DATA, prefix="bench-s3-") as tmp,
        seaweedfs(Path(tmp) / "seaweedfs") as s3,
    ):
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(name, None)
        os.environ.update(s3.env())
        os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        bucket = s3.create_bucket("bench")
        local = Path(tmp) / "local"
        log(f"SeaweedFS at {s3.endpoint} (ready in {s3.start_seconds:.1f} s)")
        loads = [load_now()]
        conversion = measure_conversion(convert_slide, bucket, local, args.convert_repeats)
        loads.append(load_now())
        prefix = f"serve-{secrets.token_hex(4)}"
        # Each place gives the slide its own ID (and data key): IDs are per conversion.
        roots = {"s3": f"s3://{bucket}/{prefix}", "local": str(local / prefix)}
        ids = {place: convert(serve_slide, roots[place])[1] for place in PLACES}
        tiles = measure_tiles(roots, ids, args.rounds, args.max_requests)
        reads = measure_reads(roots, ids, args.max_requests, args.read_repeats)
        loads.append(load_now())
        thumbs = {
            place: cold_thumbnails(roots[place], HOME, ids[place], args.thumbnails)
            for place in PLACES
        }
        loads.append(load_now())
        text = markdown(args, s3, conversion, tiles, reads, thumbs, loads, command)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    dump = {
        "command": command,
        "conversion_s": conversion,
        "tiles": tiles,
        "in_process_us_per_tile": reads,
        "thumbnails": thumbs,
    }
    (OUT / "s3.json").write_text(json.dumps(dump, indent=1) + "\n")
    if not args.no_write:
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "s3", text))
        log(f"wrote {RESULTS}")
    return 1 if any(c["errors"] for p in PLACES for c in tiles[p]) else 0


if __name__ == "__main__":
    sys.exit(main())
