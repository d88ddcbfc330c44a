"""Reading a DICOM WSI series: the wsidicom backend (``tileserver/sources/dicom.py``) against
OpenSlide on the same files, in the same run.

The series is the corpus's ``dicom/jcupitt-cmu-1-small-region`` (12 files, one per level,
500 x 500 JPEG frames declared RGB but encoded YCbCr), and the reference is the SVS it was
made from. Per backend: time to open the series, then every 256 x 256 region of level 0 and
level 1 read as ``serve --sources`` reads them (two passes: the first cold for the backend's
caches, the second warm), and the mean absolute difference from the SVS on tissue (exact,
not timed: OpenSlide shows the YCbCr samples as RGB).

    .venv/bin/python benchmarks/bench_dicom_source.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tileserver.geometry import Region, Size
from tileserver.sources import dicom, open_slide

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "slides"
SERIES = SLIDES / "dicom/jcupitt-cmu-1-small-region"
FILE = SERIES / "level-0-frames-0-30.dcm"
SVS = SLIDES / "svs/CMU-1-Small-Region.svs"
TILE = 256
TISSUE = Region(800, 1000, 512, 512)


def tiles(size: Size) -> list[Region]:
    width, height = size.width, size.height
    return [
        Region(x, y, min(TILE, width - x), min(TILE, height - y))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]


def run(backend: str) -> dict[str, float]:
    dicom._HEADERS.clear()  # every open as a server's first: no header read before
    start = time.perf_counter()
    source = open_slide(SERIES if backend == "dicom" else FILE, backend=backend)
    opened = time.perf_counter() - start
    passes = []
    with source:
        regions = [(lv, r) for lv in (0, 1) for r in tiles(source.info.levels[lv].size)]
        for _ in range(2):
            start = time.perf_counter()
            for level, region in regions:
                source.read_region(level, region)
            passes.append((time.perf_counter() - start) / len(regions) * 1000)
        with open_slide(SVS) as svs:
            diff = np.abs(
                source.read_region(0, TISSUE).astype(np.int16)
                - svs.read_region(0, TISSUE).astype(np.int16)
            )
    return {
        "open_ms": opened * 1000,
        "cold_ms": passes[0],
        "warm_ms": passes[1],
        "mad": float(diff.mean()),
        "tiles": len(regions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per backend")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"dicom": [], "openslide": []}
    for _ in range(args.rounds):  # alternate, so load changes hit both alike
        for backend in results:
            results[backend].append(run(backend))
    load = os.getloadavg()
    print(f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; medians of {args.rounds} rounds")
    print("| backend | open ms | cold ms/tile | warm ms/tile | mean abs diff vs SVS |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for backend, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        medians[backend] = med
        print(
            f"| {backend} | {med['open_ms']:.0f} | {med['cold_ms']:.2f} | {med['warm_ms']:.2f} "
            f"| {med['mad']:.1f} |"
        )
    d, o = medians["dicom"], medians["openslide"]
    print(
        f"ratios openslide/dicom (>1: dicom faster): open {o['open_ms'] / d['open_ms']:.2f}x, "
        f"cold {o['cold_ms'] / d['cold_ms']:.2f}x, warm {o['warm_ms'] / d['warm_ms']:.2f}x "
        f"({int(d['tiles'])} tiles of levels 0-1)"
    )


if __name__ == "__main__":
    main()
