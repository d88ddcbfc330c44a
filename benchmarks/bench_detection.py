"""What the detector costs on the serving path: the same server with and without it.

    .venv/bin/python benchmarks/bench_detection.py [--size 20000x15000] [--rounds 4]

One encrypted store of a synthetic slide, served over HTTPS with authentication (a scoped
bearer token), in paired rounds, detector on (``--detect-response bulk_crawl=alert``, so the
rules run in full but nothing is suspended mid-measurement) and off (``--no-detect``), in
ABBA order, a fresh server each time. Each server runs the load client's pan trace at
concurrency 8, cold then warm; the figures are warm-pass tiles/s and the server's CPU time per
tile over both passes. Also in process: the detector's own time per tile event
(``Monitor.observe``) next to the view aggregator's (``SlideViewAggregator.record_tile``),
which every tile already paid before. Results replace the ``detection`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_server import convert_once, ensure_slide  # sibling scripts (same folder)
from https_ours import bench_token, cpu_seconds, ours_https

from tileserver.bench import report
from tileserver.bench.load import LoadSettings, measure_cell
from tileserver.security.alerts import AlertOptions, build_monitor
from tileserver.security.audit import AuditLog, SlideViewAggregator
from tileserver.security.detector import TILE, Event

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
KEY = b"b" * 32


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def served(
    stores: Path, home: Path, slide_id: str, token: str, detect: bool
) -> tuple[float, float]:
    """(warm tiles/s, server CPU ms per tile) of one fresh server."""
    extra = ("--detect-response", "bulk_crawl=alert") if detect else ()
    with ours_https(stores, home, slide_id, token, *extra, detect=detect) as server:
        settings = LoadSettings(traces=("pan",), concurrency=(8,), max_requests=3000)
        cpu = cpu_seconds(server.pid)
        _, runs = measure_cell(server.url, "pan", 8, settings, server.options)
        cpu = cpu_seconds(server.pid) - cpu
    statuses = {k: v for run in runs for k, v in run["statuses"].items()}
    if set(statuses) != {"200"}:
        raise RuntimeError(f"not every tile was served: {statuses}")
    tiles = sum(run["requests"] for run in runs)
    warm = next(run for run in runs if run["pass"] == "warm")
    return float(warm["tiles_per_s"]), 1000 * cpu / tiles


def per_event(n: int = 200_000) -> tuple[float, float]:
    """(detector µs per tile event, view aggregator µs per tile), in process."""
    scratch = tempfile.TemporaryDirectory()
    audit = AuditLog(Path(scratch.name) / "audit.jsonl", KEY)
    monitor = build_monitor(AlertOptions(), audit, None, KEY)
    monitor.responder.lines = ()
    views = SlideViewAggregator(KEY)
    start = 1_780_304_400.0
    events = [
        Event(
            start + i / 50,
            TILE,
            f"user:u{i % 8}",
            f"10.0.0.{i % 8}",
            "s" * 32,
            16,
            i % 40,
            i // 40 % 30,
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for e in events:
        monitor.observe(e)
    detector = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e in events:
        views.record_tile(
            e.principal or "", e.principal, "pathologist", e.source_ip, "s" * 32, 16, e.time
        )
    aggregator = time.perf_counter() - t0
    monitor.close()
    scratch.cleanup()
    return 1e6 * detector / n, 1e6 * aggregator / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="20000x15000")
    parser.add_argument("--rounds", type=int, default=4, help="ABBA pairs")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    width, _, height = args.size.partition("x")
    slide = ensure_slide((int(width), int(height)))
    stores, home, slide_id = convert_once(slide)
    token = bench_token(home, [slide_id], name="bench-detection")
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for pair in range(args.rounds):
        order = (True, False) if pair % 2 == 0 else (False, True)
        for detect in order:
            figures[detect].append(served(stores, home, slide_id, token, detect))
            log(f"round {pair} detect={detect}: {figures[detect][-1]}")
    detector_us, aggregator_us = per_event()
    on_tps = statistics.median(t for t, _ in figures[True])
    off_tps = statistics.median(t for t, _ in figures[False])
    on_cpu = statistics.median(c for _, c in figures[True])
    off_cpu = statistics.median(c for _, c in figures[False])
    facts = report.machine_facts()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_detection.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Cost of the detector (`benchmarks/bench_detection.py`)",
        "",
        f"Command: `{command}`; slide: synthetic {args.size} SVS, encrypted store, HTTPS + "
        f"bearer token, pan trace at c=8 (cold then warm), fresh server per round, "
        f"{args.rounds} ABBA pairs; machine: {facts['CPU']}, {facts['cores']} cores; {when}.",
        "",
        "| figure | detector on | `--no-detect` | on / off |",
        "|---|---:|---:|---:|",
        f"| warm tiles/s (median) | {on_tps:.0f} | {off_tps:.0f} | {on_tps / off_tps:.3f} |",
        f"| server CPU ms per tile (median) | {on_cpu:.3f} | {off_cpu:.3f} | "
        f"{on_cpu / off_cpu:.3f} |",
        f"| in process, µs per tile event: `Monitor.observe` / `record_tile` | "
        f"{detector_us:.1f} | {aggregator_us:.1f} | {detector_us / aggregator_us:.2f} |",
        "",
        f"Rounds (tiles/s, CPU ms/tile): on {[(round(t), round(c, 3)) for t, c in figures[True]]}, "
        f"off {[(round(t), round(c, 3)) for t, c in figures[False]]}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "detection", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
