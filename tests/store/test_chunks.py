"""JPEG chunks we encode: 4:4:4 chroma, and an error bound on real H&E and fluorescence."""

from __future__ import annotations

import numpy as np
import pytest

from tests.corpus import require_corpus
from tileserver.geometry import Region
from tileserver.pyramid.plan import ConvertOptions
from tileserver.sources import open_slide
from tileserver.sources.codestreams import jpeg_is_frame_header, jpeg_segments
from tileserver.store.chunks import decode_chunk, encode_chunk

TILE = 256


def sampling(data: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of each component in the JPEG's SOF."""
    for marker, body in jpeg_segments(data):
        if jpeg_is_frame_header(marker):
            count = body[5]
            return [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count)]
    raise AssertionError("no frame header")


def test_encoded_chunks_are_444() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
    data = encode_chunk(pixels, "jpeg", ConvertOptions().quality)
    assert sampling(data) == [(1, 1)] * 3
    # the reader of the SOF is right: 4:2:0 is 2x2 luma against 1x1 chroma
    assert sampling(encode_chunk(pixels, "jpeg", 85, subsampling="420")) == [(2, 2), (1, 1), (1, 1)]


def corpus_tiles(name: str, count: int) -> list[np.ndarray]:
    """``count`` non-background 256 x 256 level-0 tiles spread over a corpus slide."""
    with open_slide(require_corpus() / name) as source:
        size = source.info.dimensions
        grid = [
            (x, y)
            for y in range(0, size.height - TILE + 1, TILE)
            for x in range(0, size.width - TILE + 1, TILE)
        ]
        out = []
        for x, y in grid[:: max(1, len(grid) // count)]:
            pixels = source.read_region(0, Region(x, y, TILE, TILE))
            if pixels.min() < 252:
                out.append(np.ascontiguousarray(pixels))
    return out[:count]


def errors(tiles: list[np.ndarray], channel: int, **encode: object) -> tuple[int, float]:
    """Max and mean absolute error of one channel after a JPEG round trip."""
    worst, total = 0, 0.0
    for pixels in tiles:
        data = encode_chunk(pixels, "jpeg", **encode)  # type: ignore[arg-type]
        diff = np.abs(
            decode_chunk(data, "jpeg", TILE)[..., channel].astype(int) - pixels[..., channel]
        )
        worst, total = max(worst, int(diff.max())), total + float(diff.mean())
    return worst, total / len(tiles)


# (corpus slide, channel, max abs bound, mean abs bound): the bounds of the default chunks,
# from benchmarks/bench_quality.py (measured 4:4:4 Q90 over 64 tiles: red max 19 mean 0.97
# on CMU-1; DAPI max 11 mean 0.27), with room for the tiles sampled here.
BOUNDS = [
    ("svs/CMU-1-Small-Region.svs", 0, 24, 1.2),
    ("ndpi/test3-DAPI-2-(387).ndpi", 2, 16, 0.5),
]


@pytest.mark.parametrize(("name", "channel", "max_bound", "mean_bound"), BOUNDS)
def test_default_chunks_err_within_the_bound(
    name: str, channel: int, max_bound: int, mean_bound: float
) -> None:
    tiles = corpus_tiles(name, 24)
    assert len(tiles) >= 12
    worst, mean = errors(tiles, channel, quality=ConvertOptions().quality)
    assert worst <= max_bound and mean <= mean_bound, (worst, mean)
    # the bound tells the choice apart: the old default (4:2:0, Q85) breaks it
    old_worst, old_mean = errors(tiles, channel, quality=85, subsampling="420")
    assert old_worst > max_bound and old_mean > mean, (old_worst, old_mean)
