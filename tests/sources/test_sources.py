"""The source contract on real files: thread safety, stored tiles, metadata allowlist, caps."""

from __future__ import annotations

import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.corpus import require_corpus
from tileserver.cli import slide_summary
from tileserver.errors import RegionError, SlideNotFound, UnsupportedFormat
from tileserver.geometry import Region
from tileserver.sources import open_slide

BACKENDS = ["tifffile", "openslide"]
CMU = "svs/CMU-1-Small-Region.svs"
# Identifying values in CMU-1-Small-Region's description (file name, date, user, scanner).
CMU_IDENTIFIERS = ["CMU-1", "12/29/09", "b414003d-95c6-48b0-9369-8010ed517ba7", "CPAPERIOCS"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_threads_agree_with_one(backend: str) -> None:
    path = require_corpus() / CMU
    rng = random.Random(1)
    with open_slide(path, backend) as source:
        size = source.info.dimensions
        regions = [
            Region(rng.randrange(-50, size.width), rng.randrange(-50, size.height), 97, 131)
            for _ in range(64)
        ]
        serial = [source.read_region(0, r) for r in regions]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(3):
                parallel = list(pool.map(lambda r: source.read_region(0, r), regions))
                for a, b in zip(serial, parallel, strict=True):
                    assert np.array_equal(a, b)


def test_outside_the_slide_is_white() -> None:
    path = require_corpus() / CMU
    for backend in BACKENDS:
        with open_slide(path, backend) as source:
            size = source.info.dimensions
            pixels = source.read_region(0, Region(size.width - 10, size.height - 10, 30, 30))
            assert (pixels[15:, :] == 255).all() and (pixels[:, 15:] == 255).all()
            assert (pixels[:10, :10] != 255).any()


def test_raw_tiles_are_standalone_jpegs_with_the_same_pixels() -> None:
    path = require_corpus() / CMU
    with open_slide(path, "tifffile") as source:
        assert source.raw_tile_codec(0) == "jpeg"
        tile = source.info.levels[0].tile
        assert tile is not None
        grid = (
            -(-source.info.dimensions.width // tile.width),
            -(-source.info.dimensions.height // tile.height),
        )
        for t_col, t_row in [(0, 0), (3, 5), (grid[0] - 1, grid[1] - 1)]:
            raw = source.raw_tile(0, t_col, t_row)
            assert raw is not None and raw.codec == "jpeg" and raw.size == tile
            decoded = np.asarray(Image.open(io.BytesIO(raw.data)).convert("RGB"))
            assert decoded.shape == (tile.height, tile.width, 3)
            expected = source.read_region(
                0, Region(t_col * tile.width, t_row * tile.height, tile.width, tile.height)
            )
            inside = source.info.dimensions
            h = min(tile.height, inside.height - t_row * tile.height)
            w = min(tile.width, inside.width - t_col * tile.width)
            assert np.array_equal(decoded[:h, :w], expected[:h, :w])
    with open_slide(path, "openslide") as source:
        assert source.raw_tile(0, 0, 0) is None and source.raw_tile_codec(0) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_identifying_metadata_stays_in_the_source(backend: str) -> None:
    path = require_corpus() / CMU
    with open_slide(path, backend) as source:
        summary = slide_summary(source)
        del summary["file"]  # the operator's own file name, echoed back to them by `info`
        public = json.dumps(summary)
        for value in CMU_IDENTIFIERS:
            assert value not in public
        assert source.info.properties["aperio.AppMag"] == "20"
        assert source.info.properties["aperio.MPP"] == "0.4990"
        explicit = json.dumps(source.identifying_properties())
        assert all(value in explicit for value in CMU_IDENTIFIERS)


def test_bad_requests() -> None:
    path = require_corpus() / CMU
    with open_slide(path) as source:
        with pytest.raises(RegionError, match="level 1 out of range"):
            source.read_region(1, Region(0, 0, 10, 10))
        with pytest.raises(RegionError, match="empty region"):
            source.read_region(0, Region(0, 0, 0, 10))
        with pytest.raises(RegionError, match="exceeds the cap"):
            source.read_region(0, Region(0, 0, 100_000, 100_000))
    with pytest.raises(SlideNotFound, match=r"missing\.svs"):
        open_slide(path.parent / "missing.svs")
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        open_slide(path.parent)
    with pytest.raises(ValueError, match="unknown backend"):
        open_slide(path, "vips")
