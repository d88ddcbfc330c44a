"""Composite tiles of channel slides: 3 of 8 uint16 channels per DeepZoom tile, beside the RGB
tile render of the same size (issue 15: p95 per tile at c = 8 under 20 ms, warm).

    .venv/bin/python benchmarks/bench_composite.py [--size 2048] [--rounds 5] [--results]

Two encrypted stores of the same size and tile (256), written through the real store writer
(tests/channel_stores.py): an 8-channel uint16 fluorescence slide (sparse bright nuclei on a
dark, noisy background) and an RGB slide stored losslessly (zstd), so both sides read,
unseal and decompress their chunks and neither is a pass-through copy. Every level-0 tile is
asked of the real SlideService (no HTTP), one at a time, ours and the comparator alternating
tile by tile so machine noise falls on both alike:

- ``rgb``: the comparator: RGB chunk -> JPEG tile.
- ``composite``: channels=0,3,6 (3 chunks read, composited by the Numba kernel) -> JPEG.
- ``composite, display change``: the same tiles again with other windows (a slider moved):
  the decoded chunks come from the service's chunk cache, only composite + encode remain.

"Warm" means the process is warm (kernels compiled, a first round discarded) and the store
files are in the page cache; each round opens a fresh service, so decoded-chunk and response
caches start empty (the display-change pass excepted, by design). ``--results`` rewrites the
section between ``<!-- composite:start -->`` and ``<!-- composite:end -->`` in RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.channel_stores import write_store  # noqa: E402
from tileserver.bench.load import percentile as sorted_percentile  # noqa: E402
from tileserver.bench.report import load_now, replace_section  # noqa: E402
from tileserver.library import SlideLibrary  # noqa: E402
from tileserver.render.composite import composite  # noqa: E402
from tileserver.security.keys import KeyRing  # noqa: E402
from tileserver.service import Encoded, ServiceSettings, SlideService  # noqa: E402
from tileserver.slide_ids import new_slide_id  # noqa: E402
from tileserver.store.layout import ChannelInfo  # noqa: E402

TILE = 256
CHANNELS = 8
CHOSEN = "0,3,6"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def fluorescence(size: int, seed: int = 15) -> np.ndarray:
    """(8, 1, size, size) uint16: per channel a few hundred bright round nuclei (different
    ones per channel) on a dark background with sensor noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((CHANNELS, 1, size, size), np.uint16)
    yy, xx = np.mgrid[-12:13, -12:13]
    blob = np.exp(-(xx**2 + yy**2) / 50.0)
    for c in range(CHANNELS):
        plane = rng.normal(300, 60, (size, size)).clip(0)
        for _ in range(size * size // 20000):
            y, x = rng.integers(12, size - 13, 2)
            plane[y - 12 : y + 13, x - 12 : x + 13] += blob * rng.uniform(4000, 30000)
        out[c, 0] = plane.clip(0, 65535).astype(np.uint16)
    return out


def brightfield(size: int, seed: int = 16) -> np.ndarray:
    """(3, 1, size, size) uint8: pink stain texture (compresses like tissue, not noise)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (3, 1, size // 32 + 1, size // 32 + 1)).astype(np.float64)
    smooth = np.kron(low, np.ones((1, 1, 32, 32)))[:, :, :size, :size]
    base = np.array([220.0, 160.0, 200.0])[:, None, None, None]
    pixels = base * 0.7 + smooth * 0.3 + rng.normal(0, 6, (3, 1, size, size))
    return pixels.clip(0, 255).astype(np.uint8)


def percentile(values: list[float], q: float) -> float:
    return sorted_percentile(sorted(values), q)


async def measure(
    root: Path, keyring: KeyRing, fluor: str, rgb: str, size: int, rounds: int
) -> dict[str, list[float]]:
    tiles = size // TILE
    level = (size - 1).bit_length()  # the DeepZoom level of level 0
    times: dict[str, list[float]] = {"rgb": [], "composite": [], "display change": []}
    for round_ in range(rounds + 1):  # round 0 warms up and is discarded
        library = SlideLibrary(root, sources=False, keyring=keyring)
        service = SlideService(library, ServiceSettings(chunk_cache_items=4096))
        await service.pyramid(fluor)
        await service.pyramid(rgb)
        windows = f"{100 + round_}-20000,{100 + round_}-20000,{100 + round_}-20000"
        for row in range(tiles):
            for col in range(tiles):
                for name, slide, display in (
                    ("rgb", rgb, {}),
                    ("composite", fluor, {"channels": CHOSEN, "windows": windows}),
                ):
                    started = time.perf_counter()
                    tile = await service.deepzoom_tile(slide, level, col, row, "jpeg", (), display)
                    elapsed = time.perf_counter() - started
                    assert isinstance(tile, Encoded)
                    if round_:
                        times[name].append(elapsed)
        # The same tiles after a slider moved: chunks from the cache.
        changed = {"channels": CHOSEN, "windows": "500-9000,500-9000,500-9000"}
        for row in range(tiles):
            for col in range(tiles):
                started = time.perf_counter()
                await service.deepzoom_tile(fluor, level, col, row, "jpeg", (), changed)
                if round_:
                    times["display change"].append(time.perf_counter() - started)
        service.close()
    return times


def kernel_time(repeat: int = 200) -> float:
    """Median seconds of the composite kernel alone on one 256 x 256 x 3 uint16 tile."""
    samples = fluorescence(TILE)[:3, 0].copy()
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    windows = [(100.0, 20000.0)] * 3
    composite(samples, colors, windows)  # compiled (or loaded from the cache) first
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        composite(samples, colors, windows)
        runs.append(time.perf_counter() - started)
    return float(np.median(runs))


def report(
    times: dict[str, list[float]], kernel: float, args: argparse.Namespace, load: str
) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    rgb95 = percentile(times["rgb"], 95)
    lines = [
        f"### Composite tiles (3 of 8 uint16 channels) vs RGB tile render, at {commit}",
        "",
        f"`.venv/bin/python benchmarks/bench_composite.py --size {args.size} "
        f"--rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}; {load}. "
        f"{args.size} x {args.size} slides, {TILE}-px DeepZoom tiles of level 0 as JPEG "
        f"through SlideService (no HTTP), encrypted stores, {len(times['rgb'])} tiles per row "
        "below, ours and the comparator alternating tile by tile.",
        "",
        "| tile | p50 ms | p95 ms | mean ms | p95 / RGB p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("rgb", "RGB render (comparator): 1 chunk, unseal + zstd + JPEG"),
        ("composite", "composite 3 of 8: 3 chunks, unseal + zstd + kernel + JPEG"),
        ("display change", "composite 3 of 8 after a window change (chunks cached)"),
    ):
        values = times[name]
        p95 = percentile(values, 95)
        lines.append(
            f"| {label} | {percentile(values, 50) * 1e3:.2f} | {p95 * 1e3:.2f} | "
            f"{np.mean(values) * 1e3:.2f} | {p95 / rgb95:.2f}x |"
        )
    verdict = "met" if percentile(times["composite"], 95) < 0.020 else "MISSED"
    lines += [
        "",
        f"Composite kernel alone (256 x 256 x 3 uint16 -> RGB): {kernel * 1e6:.0f} µs median. "
        f"Target p95 < 20 ms per composite tile warm: {verdict}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="slide edge in pixels")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after 1 warm-up)")
    parser.add_argument("--results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.size % TILE or args.size < TILE:
        parser.error(f"--size must be a multiple of {TILE}")
    with tempfile.TemporaryDirectory(prefix="bench-composite-") as tmp:
        root = Path(tmp) / "stores"
        keyring = KeyRing(Path(tmp) / "home")
        keyring.initialise()
        fluor, rgb = new_slide_id(), new_slide_id()
        info = tuple(
            ChannelInfo(f"c{c}", "0000FF00FF00FF0000"[(c % 3) * 6 :][:6], None, (100.0, 20000.0))
            for c in range(CHANNELS)
        )
        print(f"writing {args.size}x{args.size} stores ...", flush=True)
        write_store(root, fluor, fluorescence(args.size), tile=TILE, channels=info, keyring=keyring)
        write_store(root, rgb, brightfield(args.size), tile=TILE, keyring=keyring)
        load = load_now()
        times = asyncio.run(measure(root, keyring, fluor, rgb, args.size, args.rounds))
        load = f"{load} before, {load_now()} after"
    section = report(times, kernel_time(), args, load)
    print(section)
    if args.results:
        RESULTS.write_text(replace_section(RESULTS.read_text(), "composite", section))


if __name__ == "__main__":
    main()
