"""What colour management costs per image: ``icc=srgb`` and ``icc=embed`` beside ``icc=none``
(the comparator: today's render) on the same requests, in the same run.

    .venv/bin/python benchmarks/bench_icc.py [--size 4096] [--rounds 5] [--results]

One encrypted store converted from a synthetic SVS tagged with the wide-gamut profile of
sample_data/icc.py (240-px JPEG tiles, level 0 copied). Every request goes to the real
SlideService (no HTTP): each request once untimed (its chunks read and decoded), then the
three choices in turn, whichever goes first rotating, so machine noise falls on all alike;
the response cache is off (every request renders or passes through), decoded chunks stay
cached as in a warm server. Requests:

- ``region 512``: REST regions of 512 x 512 level-0 pixels as JPEG (decode, compose,
  [convert], encode);
- ``thumbnail 1024``: the whole slide fitting 1024 px, JPEG;
- ``tile (pass-through)``: aligned DeepZoom level-0 tiles: ``none`` is the stored bytes,
  ``embed`` splices the profile into them, ``srgb`` decodes, converts and encodes.

A first round is discarded (warm process: transforms built, page cache). ``--results``
rewrites the section between ``<!-- icc:start -->`` and ``<!-- icc:end -->`` in RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sample_data.icc import write_icc  # noqa: E402
from tileserver.bench.report import load_now, replace_section  # noqa: E402
from tileserver.geometry import Region, Size  # noqa: E402
from tileserver.library import SlideLibrary  # noqa: E402
from tileserver.pyramid.builder import convert  # noqa: E402
from tileserver.pyramid.plan import ConvertOptions  # noqa: E402
from tileserver.security.keys import KeyRing  # noqa: E402
from tileserver.service import ServiceSettings, SlideService  # noqa: E402
from tileserver.slide_ids import new_slide_id  # noqa: E402
from tileserver.sources import open_slide  # noqa: E402
from tileserver.store.local import LocalObjects  # noqa: E402

CHOICES = ("none", "embed", "srgb")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


SIZE = [4096]  # the slide's edge (set by main)


def _region(service: SlideService, slide: str, icc: str, i: int) -> Awaitable[Any]:
    n = SIZE[0] // 512 - 1
    region = Region(i % n * 512, i // n % n * 512, 512, 512)
    return service.region(slide, region, Size(512, 512), "jpeg", (), None, icc=icc)


def _thumbnail(service: SlideService, slide: str, icc: str, i: int) -> Awaitable[Any]:
    return service.thumbnail(slide, 1024, "jpeg", (), None, icc=icc)


def _tile(service: SlideService, slide: str, icc: str, i: int) -> Awaitable[Any]:
    top = math.ceil(math.log2(SIZE[0]))  # DeepZoom's full-resolution level
    n = SIZE[0] // 240 - 2  # inner tiles: whole stored chunks
    return service.deepzoom_tile(slide, top, 1 + i % n, 1 + i // n % n, "jpeg", (), icc=icc)


KINDS: dict[str, tuple[Any, int]] = {
    "region 512": (_region, 24),
    "thumbnail 1024": (_thumbnail, 4),
    "tile (pass-through)": (_tile, 96),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(directory: Path, keyring: KeyRing, slide: str, rounds: int) -> dict[str, Any]:
    times: dict[tuple[str, str], list[float]] = {}
    stats: dict[str, int] = {}
    for r in range(rounds + 1):
        library = SlideLibrary(directory, sources=False, keyring=keyring)
        service = SlideService(library, ServiceSettings(response_cache_bytes=0))
        try:
            await service.pyramid(slide)
            for kind, (request, count) in KINDS.items():
                for i in range(count):
                    await request(service, slide, "none", i)  # chunks read and decoded
                    for k in range(len(CHOICES)):  # whoever goes first changes each time
                        icc = CHOICES[(i + k) % len(CHOICES)]
                        started = time.perf_counter()
                        await request(service, slide, icc, i)
                        if r:  # the first round warms up
                            times.setdefault((kind, icc), []).append(time.perf_counter() - started)
            stats = dict(service.stats)
        finally:
            service.close()
    return {"times": times, "stats": stats}


def report(times: dict[tuple[str, str], list[float]], args: argparse.Namespace, load: str) -> str:
    lines = [
        "## Colour management: cost of `icc=srgb` and `icc=embed` (`benchmarks/bench_icc.py`)",
        "",
        f"Measured with `.venv/bin/python benchmarks/bench_icc.py --size {args.size} "
        f"--rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}; {load}. A "
        f"{args.size} x {args.size} synthetic SVS tagged with sample_data/icc.py's wide-gamut "
        "profile, converted into an encrypted store; requests to the real SlideService, each "
        "once untimed (chunks decoded), then the three choices in rotating order, response "
        "cache off. Comparator: "
        "`icc=none` (the render as it was before colour management).",
        "",
        "| request | icc | median ms | p95 ms | median vs none |",
        "|---|---|---:|---:|---:|",
    ]
    for kind in KINDS:
        base = percentile(times[(kind, "none")], 0.5)
        for icc in CHOICES:
            values = times[(kind, icc)]
            median, p95 = percentile(values, 0.5), percentile(values, 0.95)
            lines.append(
                f"| {kind} | {icc} | {median * 1e3:.2f} | {p95 * 1e3:.2f} | {median / base:.2f}x |"
            )
    lines += [
        "",
        "Rendered images (the REST and IIIF defaults are `srgb`) pay the LittleCMS transform "
        "after resizing; pass-through tiles stay the stored bytes unless `srgb` is asked "
        "(then every tile is decoded, converted and encoded: the viewer should ask `embed`).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="slide edge in pixels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    SIZE[0] = args.size
    with tempfile.TemporaryDirectory(prefix="bench-icc-") as tmp:
        root = Path(tmp)
        os.environ["TILESERVER_HOME"] = str(root / "home")
        keyring = KeyRing(root / "home")
        keyring.initialise()
        slide_file = write_icc(root / "icc.svs", args.size, args.size, fmt="svs", seed=7)
        slide = new_slide_id()
        with open_slide(slide_file) as source:
            convert(source, LocalObjects(root / "stores" / slide), slide, ConvertOptions(), keyring)
        before = load_now()
        result = asyncio.run(measure(root / "stores", keyring, slide, args.rounds))
        load = f"{before} before, {load_now()} after"
    section = report(result["times"], args, load)
    print(section)
    if args.results:
        RESULTS.write_text(replace_section(RESULTS.read_text(), "icc", section))


if __name__ == "__main__":
    main()
