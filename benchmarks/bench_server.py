"""Tile-serving benchmark: ours against the OpenSlide DeepZoom baseline and a static server.

Run from the repository root::

    .venv/bin/python benchmarks/bench_server.py [--size 20000x15000] [--ours URL]
        [--traces pan,random] [--concurrency 1,8,32] [--max-requests 2000] [--max-seconds 60]

1. Generates (or reuses, from ``benchmarks/.data/``) a deterministic synthetic Aperio SVS,
   and pre-renders its DeepZoom tiles once for the static server (also cached there).
2. For every server, trace and concurrency level ("cell"), runs a cold pass then a warm pass
   of the trace with ``tileserver.bench.load``. The comparators are started afresh for every
   cell (``tileserver.bench.comparators``) so each cold pass is cold; ours (``--ours``, a
   ``.dzi`` or IIIF ``info.json`` URL of the same slide) runs as it is, so its cold passes
   after the first cell may hit its caches.
3. Writes ``benchmarks/results/server.json``, ``server-latency-cdf.png`` and
   ``server-throughput.png``, and rewrites the ``server`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from tileserver.bench import comparators, report
from tileserver.bench.client import ClientOptions, parse_header
from tileserver.bench.load import LoadSettings, measure_cell
from tileserver.bench.traces import TRACES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / ".data"
OUT = HERE / "results"
RESULTS = HERE / "RESULTS.md"
SEED = 1


def log(msg: str) -> None:
    print(f"[bench_server] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def ensure_slide(size: tuple[int, int]) -> Path:
    """The cached synthetic SVS (same name as bench_convert.py's), generated when missing."""
    w, h = size
    path = DATA / f"synthetic-{w}x{h}-seed{SEED}.svs"
    if path.is_file():
        log(f"reusing {path.relative_to(ROOT)}")
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    log(f"generating {path.relative_to(ROOT)}")
    cmd = [sys.executable, "-m", "sample_data", "svs", str(part), "--size", f"{w}x{h}"]
    subprocess.run([*cmd, "--seed", str(SEED)], cwd=ROOT, check=True)
    part.replace(path)
    return path


def convert_once(slide: Path, name: str = "stores", *extra: str) -> tuple[Path, Path, str]:
    """A store of the slide in benchmarks/.data/{name}-{slide} (converted once, then reused;
    encrypted unless ``extra`` says ``--no-encrypt``): (stores, TILESERVER_HOME, slide ID)."""
    home = DATA / "tileserver-home"
    stores = DATA / f"{name}-{slide.stem}"
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    cli = [sys.executable, "-m", "tileserver.cli"]
    subprocess.run([*cli, "keys", "init"], check=True, env=env, capture_output=True)
    subprocess.run(
        [*cli, "convert", "--quiet", str(slide), "--out", str(stores), *extra],
        check=True,
        env=env,
        capture_output=True,
    )
    ids = [p.name for p in stores.iterdir() if (p / "tileserver-complete.json").exists()]
    return stores, home, ids[0]


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "tileserver")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def run_server(
    name: str,
    start: Any,
    settings: LoadSettings,
    options: ClientOptions,
) -> dict[str, Any]:
    """Every trace x concurrency cell against one server; ``start()`` gives a fresh one."""
    runs: list[dict[str, Any]] = []
    url, target = "", {}
    seen: set[str] = set()
    for trace in settings.traces:
        for c in settings.concurrency:
            with start() as server:
                url = server.url if hasattr(server, "url") else server
                log(f"{name}: {trace} at concurrency {c} ({url})")
                target, cell = measure_cell(url, trace, c, settings, options, seen)
            for r in cell:
                log(
                    f"  {r['pass']:4}: {r['requests']} req, {r['errors']} err, "
                    f"{r['tiles_per_s']} tiles/s, p50 {(r['latency_ms'] or {}).get('p50')} ms, "
                    f"p99 {(r['latency_ms'] or {}).get('p99')} ms, {r['stopped_by']}"
                )
            runs += cell
    return {"url": url, "target": target, "runs": runs}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--slide", type=Path, help="use this slide instead of a synthetic one")
    p.add_argument("--ours", metavar="URL", help="our server's .dzi or info.json URL")
    p.add_argument("--ours-note", default="given by --ours, not restarted between cells")
    p.add_argument("--header", action="append", default=[], help="for --ours, repeatable")
    p.add_argument("--insecure", action="store_true", help="for --ours: skip TLS verification")
    p.add_argument("--cafile", help="for --ours: CA bundle")
    p.add_argument("--traces", default="pan,random", help=f"of {','.join(TRACES)}")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-requests", type=int, default=2000, help="per pass")
    p.add_argument("--max-seconds", type=float, default=60.0, help="per pass")
    p.add_argument("--no-ours", action="store_true", help="skip our server on a converted store")
    p.add_argument("--ours-workers", type=int, default=2, help="processes (one per core)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-static", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    p.add_argument("--out", type=Path, default=OUT, help="JSON and plots (benchmarks/results)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = LoadSettings(
        traces=tuple(args.traces.split(",")),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
    )
    slide = args.slide.resolve() if args.slide else ensure_slide(args.size)
    local = ClientOptions()
    servers: dict[str, dict[str, Any]] = {}

    if args.ours:
        ours_options = ClientOptions(
            headers=tuple(parse_header(h) for h in args.header),
            insecure=args.insecure,
            cafile=args.cafile,
        )

        def ours() -> AbstractContextManager[str]:
            return nullcontext(args.ours)

        servers["ours"] = run_server("ours", ours, settings, ours_options)
        servers["ours"]["note"] = args.ours_note
    if not args.no_ours:
        stores, home, slide_id = convert_once(slide)
        workers = ("--workers", str(args.ours_workers))
        servers["ours"] = run_server(
            "ours",
            lambda: comparators.ours_server(stores, home, slide_id, *workers),
            settings,
            local,
        )
        servers["ours"]["note"] = (
            f"tileserver serve --workers {args.ours_workers} on an encrypted store, the store's "
            "own grid (240 px, overlap 0, level-0 tiles passed through), HTTP without auth on "
            "loopback, restarted per cell"
        )
    if not args.no_static or comparators.nginx_available():
        tiles = DATA / f"static-{slide.stem}"
        started = time.perf_counter()
        comparators.prerender(slide, tiles)
        log(f"static tiles ready in {tiles} ({time.perf_counter() - started:.1f} s)")
        if not args.no_static:
            servers["static"] = run_server(
                "static", lambda: comparators.static_server(tiles), settings, local
            )
            servers["static"]["note"] = (
                "pre-rendered tiles (same JPEG bytes as the baseline) via aiohttp web.static"
            )
        if comparators.nginx_available():
            servers["nginx"] = run_server(
                "nginx", lambda: comparators.nginx_server(tiles), settings, local
            )
            servers["nginx"]["note"] = "the same pre-rendered tiles behind /usr/sbin/nginx"
    if not args.no_baseline:
        servers["baseline"] = run_server(
            "baseline", lambda: comparators.baseline_server(slide), settings, local
        )
        servers["baseline"]["note"] = (
            "OpenSlide DeepZoomGenerator(254, 1, limit_bounds=False) + JPEG q75 per request, "
            "aiohttp + thread pool"
        )
    from openslide import OpenSlide

    with OpenSlide(str(slide)) as osr:
        width, height = osr.dimensions
    for name, server in servers.items():
        size = (server["target"].get("width"), server["target"].get("height"))
        if size != (width, height):
            log(
                f"WARNING: {name} serves a {size[0]}x{size[1]} image, the slide is {width}x{height}"
            )
            server["note"] += f" (WARNING: {size[0]}x{size[1]}, not the slide's size)"
    machine = report.machine_facts() | {"tileserver": git_state()}
    results = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/bench_server.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine,
        "slide": {
            "file": slide.name,
            "bytes": slide.stat().st_size,
            "width": width,
            "height": height,
        },
        "settings": {
            "traces": list(settings.traces),
            "concurrency": list(settings.concurrency),
            "max_requests": settings.max_requests,
            "max_seconds": settings.max_seconds,
        },
        "servers": servers,
    }
    out = args.out.resolve()
    report.write_json(results, out / "server.json")
    log(f"wrote {out / 'server.json'}")
    images: list[str] = []
    if not args.no_plots:
        images = [os.path.relpath(p, HERE) for p in report.plot(results, out)]
        log(f"wrote {', '.join(images)}")
    text = report.markdown(results, images)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "server", text))
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    errors = sum(r["errors"] for s in servers.values() for r in s["runs"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
