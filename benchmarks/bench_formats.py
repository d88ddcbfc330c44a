"""Serving from store format 2 (shards) against format 1 (one object per chunk), same run.

    .venv/bin/python benchmarks/bench_formats.py [--size 20000x15000] [--traces pan,random]
        [--concurrency 1,8,32] [--caches 0] [--rounds 7] [--max-requests 3000]
        [--random-tiles 2000] [--max-seconds 30]

1. Converts the synthetic slide once (format 2, encrypted; ``bench_server.convert_once``) and
   writes its format-1 twin (``v1_store.py``: the same sealed chunk bytes, one object each).
2. Counts the backend reads and seal openings each pass asks of either store, and times
   those reads in-process (``store_reads.py``: no server, no client, so far less noise):
   pass-through must stay one read and one open per tile.
3. For every round, cache setting, trace and concurrency, serves each store with a freshly
   started ``tileserver serve --workers 2`` over HTTPS with authentication on (a bearer
   token scoped to tiles; ``https_ours.py``) and runs a cold then a warm pass
   (``tileserver.bench.load.measure_cell``). The two formats alternate which goes first, so
   each round gives a pair measured back to back; the server's CPU time per tile (its
   processes' user + system time over both passes) is recorded too, being less sensitive
   than tiles/s to what else runs on a shared machine.
4. Target: format 2's cold and warm tiles/s within 10 % of format 1's (median over the
   rounds of the paired ratios >= 0.90). Rewrites the ``formats`` section of
   benchmarks/RESULTS.md and writes benchmarks/results/formats.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_convert import load_now  # sibling scripts (same folder)
from bench_server import DATA, OUT, RESULTS, convert_once, ensure_slide, git_state, parse_size
from https_ours import bench_token, cpu_seconds, ours_https
from store_reads import ReadCount, count_reads, pass_chunks, time_reads
from v1_store import rewrite_as_v1

from tileserver.bench import report
from tileserver.bench.load import LoadSettings, measure_cell
from tileserver.security.keys import KeyRing
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader

FORMATS = ("v2", "v1")
TARGET = 0.90  # format 2 / format 1 tiles/s
Key = tuple[str, str, int]  # cache setting, trace, concurrency
# {cell: {format: [per round: {"cold": pass, "warm": pass, "cpu_ms_per_tile": float}]}}
Runs = dict[Key, dict[str, list[dict[str, Any]]]]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_args(cache: str) -> tuple[str, ...]:
    return () if cache == "default" else ("--cache-mb", cache)


def prepare(slide: Path) -> tuple[dict[str, Path], Path, str]:
    """({format: stores directory}, TILESERVER_HOME, slide ID)."""
    stores, home, slide_id = convert_once(slide)
    marker = stores / slide_id / "tileserver-complete.json"
    reader = StoreReader.open(LocalObjects(stores / slide_id), slide_id, KeyRing(home))
    if reader.layout.format_version != 2:
        raise SystemExit(f"{marker.parent} is format {reader.layout.format_version}: delete it")
    v1_root = DATA / f"stores-v1-{slide.stem}"
    started = time.perf_counter()
    rewrite_as_v1(stores / slide_id, v1_root, home)
    log(f"format-1 twin in {v1_root} ({time.perf_counter() - started:.1f} s)")
    return {"v2": stores, "v1": v1_root}, home, slide_id


def load_settings(args: argparse.Namespace) -> LoadSettings:
    """The passes' settings: ``--pan-centres`` centres on the slide's diagonal, each one a
    zoom-in and a pan of its own (longer passes than the one default centre gives)."""
    w, h = args.size
    n = args.pan_centres
    centres = tuple((w * (i + 0.5) / n, h * (i + 0.5) / n) for i in range(n))
    return LoadSettings(
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
        random_count=args.random_tiles,
        centres=centres,
    )


def measure(
    roots: dict[str, Path], home: Path, slide_id: str, args: argparse.Namespace
) -> tuple[Runs, list[str]]:
    """Every round of every cell for both formats; machine load samples."""
    token = bench_token(home, [slide_id])
    runs: Runs = {}
    loads = [load_now()]
    cells = list(
        itertools.product(
            args.caches.split(","),
            args.traces.split(","),
            (int(v) for v in args.concurrency.split(",")),
        )
    )
    for r in range(args.rounds):
        for i, (cache, trace, c) in enumerate(cells):
            settings = dataclasses.replace(load_settings(args), traces=(trace,), concurrency=(c,))
            for fmt in FORMATS if (r + i) % 2 == 0 else FORMATS[::-1]:
                extra = ("--workers", "2", *cache_args(cache))
                with ours_https(roots[fmt], home, slide_id, token, *extra) as server:
                    cpu = cpu_seconds(server.pid)
                    _, passes = measure_cell(server.url, trace, c, settings, server.options)
                    cpu = cpu_seconds(server.pid) - cpu
                record = {p["pass"]: p for p in passes}
                record["cpu_ms_per_tile"] = 1000 * cpu / max(1, sum(p["ok"] for p in passes))
                runs.setdefault((cache, trace, c), {}).setdefault(fmt, []).append(record)
                rates = " / ".join(f"{p['tiles_per_s']:.0f}" for p in passes)
                errors = sum(p["errors"] for p in passes)
                log(
                    f"round {r + 1} caches={cache} {trace} c={c} {fmt}: {rates} tiles/s, "
                    f"{record['cpu_ms_per_tile']:.2f} CPU ms/tile ({errors} err)"
                )
        loads.append(load_now())
        log(f"round {r + 1} done: {loads[-1]}")
    return runs, loads


def total_errors(runs: Runs) -> int:
    return sum(
        record[p]["errors"]
        for by_format in runs.values()
        for records in by_format.values()
        for record in records
        for p in ("cold", "warm")
    )


def values(rounds: list[dict[str, Any]], pass_: str, *path: str) -> list[float]:
    out = []
    for record in rounds:
        value: Any = record[pass_]
        for key in path:
            value = value[key]
        out.append(float(value))
    return out


def paired(by_format: dict[str, list[dict[str, Any]]], pass_: str) -> list[float]:
    """v2/v1 tiles/s of each round (the two measured back to back)."""
    v2, v1 = (values(by_format[f], pass_, "tiles_per_s") for f in FORMATS)
    return [a / b for a, b in zip(v2, v1, strict=True)]


Timings = dict[str, dict[str, dict[str, list[float]]]]  # trace -> format -> pass -> us/tile


def timing_table(timings: Timings) -> list[str]:
    lines = [
        "| trace | pass of a fresh reader | us per tile v2 / v1 (median) | **speed v2/v1** "
        "[range over repeats] |",
        "|---|---|---:|---:|",
    ]
    for trace, by_format in timings.items():
        for pass_ in ("first", "second"):
            v2, v1 = by_format["v2"][pass_], by_format["v1"][pass_]
            speed = [b / a for a, b in zip(v2, v1, strict=True)]
            lines.append(
                f"| {trace} | {pass_} | {statistics.median(v2):.1f} / "
                f"{statistics.median(v1):.1f} | {spread(speed)} |"
            )
    return lines


def reads_table(counts: dict[tuple[str, str], ReadCount]) -> list[str]:
    lines = [
        "| trace | format | tiles (stored + background) | backend reads | seals opened "
        "| reads per tile | opens per stored tile |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (trace, fmt), c in counts.items():
        lines.append(
            f"| {trace} | {fmt} | {c.tiles} + {c.background} | {c.reads} | {c.opens} | "
            f"{c.reads_per_tile:.3f} | {c.opens_per_tile:.3f} |"
        )
    return lines


def spread(ratios: list[float]) -> str:
    return f"**{statistics.median(ratios):.2f}** [{min(ratios):.2f}-{max(ratios):.2f}]"


def throughput_table(runs: Runs) -> tuple[list[str], dict[str, bool]]:
    lines = [
        "| caches | trace | c | cold tiles/s v2 / v1 | **cold v2/v1** [range] "
        "| warm tiles/s v2 / v1 | **warm v2/v1** [range] | cold p99 ms v2 / v1 "
        "| server CPU ms/tile v2 / v1 | **CPU v1/v2** [range] | verdict tiles/s; CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    passed = {"tiles/s": True, "CPU": True}
    for (cache, trace, c), by_format in runs.items():
        med = {
            (fmt, p): statistics.median(values(by_format[fmt], p, "tiles_per_s"))
            for fmt in FORMATS
            for p in ("cold", "warm")
        }
        ratios = {p: paired(by_format, p) for p in ("cold", "warm")}
        cpu_pairs = [
            b["cpu_ms_per_tile"] / a["cpu_ms_per_tile"]
            for a, b in zip(by_format["v2"], by_format["v1"], strict=True)
        ]
        ok = all(statistics.median(r) >= TARGET for r in ratios.values())
        cpu_ok = statistics.median(cpu_pairs) >= TARGET
        passed["tiles/s"] &= ok
        passed["CPU"] &= cpu_ok
        p99 = [
            statistics.median(values(by_format[f], "cold", "latency_ms", "p99")) for f in FORMATS
        ]
        cpu = [statistics.median(r["cpu_ms_per_tile"] for r in by_format[f]) for f in FORMATS]
        lines.append(
            f"| {cache} | {trace} | {c} | {med['v2', 'cold']:,.0f} / {med['v1', 'cold']:,.0f} | "
            f"{spread(ratios['cold'])} | {med['v2', 'warm']:,.0f} / {med['v1', 'warm']:,.0f} | "
            f"{spread(ratios['warm'])} | {p99[0]:.1f} / {p99[1]:.1f} | "
            f"{cpu[0]:.2f} / {cpu[1]:.2f} | {spread(cpu_pairs)} | "
            f"{'pass' if ok else '**FAIL**'}; {'pass' if cpu_ok else '**FAIL**'} |"
        )
    return lines, passed


def markdown(
    args: argparse.Namespace,
    slide: Path,
    counts: dict[tuple[str, str], ReadCount],
    timings: Timings,
    runs: Runs,
    loads: list[str],
    command: str,
) -> str:
    facts = report.machine_facts()
    table, passed = throughput_table(runs)
    errors = total_errors(runs)
    return "\n".join(
        [
            "## Serving format 2 against format 1 (`benchmarks/bench_formats.py`)",
            "",
            "Target (store format v2 issue): serving from a format-2 store (shards of 16 x 16 "
            "chunks) keeps cold and warm tiles/s within 10 % of format 1 (one object per "
            "chunk): v2/v1 >= 0.90; a pass-through tile stays one read and one open.",
            "",
            f"Command: `{command}`; {facts['date']}; tileserver {git_state()}; machine: "
            f"{facts['CPU']}, {facts['cores']} cores, Python {facts['Python']}.",
            "",
            f"Slide: synthetic {slide.stem.split('-')[1]} SVS, converted once (encrypted, "
            "format 2); its format-1 twin is written by `benchmarks/v1_store.py` (the same "
            "sealed chunk bytes, one object per chunk, checked chunk by chunk). Each cell "
            f"starts `tileserver serve --workers 2` afresh over **HTTPS with authentication "
            f"on** (bearer token scoped to tiles) for each format, formats alternating which "
            f"goes first; cold = first pass of the fresh server (page cache warm), warm = the "
            f"same tiles again. {args.rounds} rounds; tiles/s, p99 and CPU are medians over "
            "the rounds; v2/v1 is the median of the rounds' back-to-back pairs [lowest-highest "
            f"pair]. Each pass capped at {args.max_requests} requests (random: "
            f"{args.random_tiles} distinct tiles of the two finest levels; pan: "
            f"{args.pan_centres} centres on the slide's diagonal, each zoomed into and "
            "panned around) and "
            f"{args.max_seconds:g} s. Caches `0` = `--cache-mb 0`: every request, warm ones "
            "included, reads the store; `default` = the encoded-response cache on, so a warm "
            "pass never reaches the store. Server CPU ms/tile = user + system time of the "
            "serve process and its workers over both passes / tiles served; unlike tiles/s it "
            "hardly moves when other work shares the machine (compare the ranges).",
            "",
            *table,
            "",
            "Verdicts: tiles/s (every row's cold and warm v2/v1 >= "
            f"{TARGET:.2f}): **{'pass' if passed['tiles/s'] else 'FAIL'}**; server CPU per "
            f"tile (every row's v1/v2 >= {TARGET:.2f}, i.e. format 2 costs the server at most "
            f"~10 % more per tile): **{'pass' if passed['CPU'] else 'FAIL'}**; "
            f"{errors} errors in all passes.",
            "",
            "Store reads per pass, counted in-process (not timed) on one fresh reader, for the "
            "same tiles a pass asks for (`benchmarks/store_reads.py`): format 1 reads one "
            "object per tile (a miss for background) and opens one seal per stored tile; "
            "format 2 reads one range and opens one seal per stored tile, plus each touched "
            "shard's index once (background tiles of a listed shard cost no read).",
            "",
            *reads_table(counts),
            "",
            f"The same reads timed in-process ({args.micro_repeats} repeats, each on fresh "
            "readers of both stores in alternating order; first pass = index cache empty, "
            "as in a freshly started server; speed v2/v1 = v1 time / v2 time of a repeat):",
            "",
            *timing_table(timings),
            "",
            "Machine load before the first and after each round: " + "; ".join(loads) + ".",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--traces", default="pan,random")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--caches", default="0", help="'default' and/or --cache-mb values")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--random-tiles", type=int, default=2000, help="tiles in the random trace")
    p.add_argument("--pan-centres", type=int, default=4, help="zoom-and-pan centres (pan)")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--micro-repeats", type=int, default=15, help="in-process timing repeats")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    slide = ensure_slide(args.size)
    roots, home, slide_id = prepare(slide)
    counts = {
        (trace, fmt): count_reads(roots[fmt] / slide_id, home, trace, load_settings(args))
        for trace in args.traces.split(",")
        for fmt in FORMATS
    }
    timings: Timings = {}
    for trace in args.traces.split(","):
        reader_of = {f: (LocalObjects(roots[f] / slide_id), slide_id) for f in FORMATS}
        layout = StoreReader.open(*reader_of["v2"], KeyRing(home)).layout
        chunks, _ = pass_chunks(layout, trace, load_settings(args))
        timings[trace] = time_reads(reader_of, home, chunks, args.micro_repeats)
    runs, loads = measure(roots, home, slide_id, args)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_formats.py", *sys.argv[1:]])
    text = markdown(args, slide, counts, timings, runs, loads, command)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    dump = {
        "command": command,
        "reads": {f"{t}/{f}": vars(c) for (t, f), c in counts.items()},
        "in_process_us_per_tile": timings,
        "runs": {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in runs.items()},
        "load": loads,
    }
    (OUT / "formats.json").write_text(json.dumps(dump, indent=1) + "\n")
    if not args.no_write:
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "formats", text))
        log(f"wrote {RESULTS}")
    return 1 if total_errors(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
