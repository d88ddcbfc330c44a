"""The builder end to end on synthetic and real slides: copied tiles, level pixels, interop."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from tests.corpus import require_corpus
from tests.stores import complete_stores, open_reader
from tileserver.geometry import Region
from tileserver.pyramid import reference
from tileserver.pyramid.builder import ConvertResult, convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.chunks import encode_chunk
from tileserver.store.layout import COMPLETE_MARKER
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader


def build(slide: Path, out: Path, **options: object) -> ConvertResult:
    slide_id = new_slide_id()
    with open_slide(slide) as source:
        return convert(
            source, LocalObjects(out / slide_id), slide_id, ConvertOptions(**options), None
        )  # type: ignore[arg-type]


def whole(reader: StoreReader, level: int) -> np.ndarray:
    size = reader.layout.levels[level]
    return reader.read_region(level, Region(0, 0, size.width, size.height))


def test_level0_tiles_are_copied_byte_for_byte(synthetic_svs: Path, tmp_path: Path) -> None:
    result = build(synthetic_svs, tmp_path)
    reader = open_reader(result.store)
    assert reader.layout.tile == 240
    assert result.chunks["copied"] > 0 and result.chunks["background"] > 0
    with open_slide(synthetic_svs) as source:
        grid = reader.layout.grid(0)
        for t_row in range(grid.height):
            for t_col in range(grid.width):
                stored = reader.chunk_bytes(0, t_col, t_row)
                raw = source.raw_tile(0, t_col, t_row)
                assert raw is not None
                if stored is None:  # background: the source tile is white
                    tile = source.read_region(0, Region(t_col * 240, t_row * 240, 240, 240))
                    assert np.abs(tile.astype(int) - 255).max() <= 3
                else:
                    assert stored == raw.data


def test_levels_match_a_reference_downsample(synthetic_svs: Path, tmp_path: Path) -> None:
    reader = open_reader(build(synthetic_svs, tmp_path).store)
    sizes = reader.layout.levels
    assert sizes[0] == (3000, 2000) and sizes[1] == (1500, 1000) and sizes[-1].width <= 240
    expected = whole(reader, 0)
    for level in range(1, len(sizes)):
        h, w = expected.shape[:2]
        smaller = np.empty(((h + 1) // 2, (w + 1) // 2, 3), np.uint8)
        reference.downsample_2x(expected, smaller)
        expected = smaller
        diff = np.abs(whole(reader, level).astype(int) - expected).mean()
        # JPEG tolerance: what encoding the expected pixels at the store's quality costs.
        roundtrip = np.asarray(Image.open(io.BytesIO(encode_chunk(expected, "jpeg", 85))))
        tolerance = np.abs(roundtrip.astype(int) - expected).mean()
        assert diff <= tolerance * 1.1 + 0.3, (level, diff, tolerance)


def test_store_opens_with_zarr_and_validates_as_ome_zarr(
    synthetic_svs: Path, tmp_path: Path
) -> None:
    from ome_zarr_models.v05.image import Image as OmeImage

    result = build(synthetic_svs, tmp_path)
    group = zarr.open_group(result.store, mode="r")
    image = OmeImage.from_zarr(group)
    multiscale = image.ome_attributes.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["c", "y", "x"]
    assert multiscale.datasets[1].coordinateTransformations[0].scale == [1.0, 0.5, 0.5]
    reader = open_reader(result.store)
    for level in (0, 2):
        via_zarr = np.asarray(group[str(level)][:]).transpose(1, 2, 0)
        assert np.array_equal(via_zarr, whole(reader, level))


def test_lossless_store_is_exact_and_needs_only_builtin_codecs(
    synthetic_tiff: Path, tmp_path: Path
) -> None:
    result = build(synthetic_tiff, tmp_path, codec="zstd", tile=128, background_tolerance=0)
    group = zarr.open_group(result.store, mode="r")
    (sharding,) = group["0"].metadata.to_dict()["codecs"]
    assert sharding["name"] == "sharding_indexed"
    inner = {c["name"] for c in sharding["configuration"]["codecs"]}
    index = {c["name"] for c in sharding["configuration"]["index_codecs"]}
    assert inner == {"transpose", "bytes", "zstd"} and index == {"bytes", "crc32c"}
    with open_slide(synthetic_tiff) as source:
        original = source.read_region(0, Region(0, 0, 1500, 1100))
    assert np.array_equal(np.asarray(group["0"][:]).transpose(1, 2, 0), original)


def test_incomplete_store_is_not_listed_or_opened(synthetic_tiff: Path, tmp_path: Path) -> None:
    result = build(synthetic_tiff, tmp_path)
    assert complete_stores(tmp_path) == [result.slide_id]
    (Path(result.store) / COMPLETE_MARKER).unlink()
    assert complete_stores(tmp_path) == []
    with pytest.raises(Exception, match="incomplete"):
        open_reader(result.store)


def test_real_slides_convert(tmp_path: Path) -> None:
    corpus = require_corpus()
    for name in ("svs/CMU-1-Small-Region.svs", "ndpi/test3-DAPI-2-(387).ndpi"):
        result = build(corpus / name, tmp_path)
        reader = open_reader(result.store)
        with open_slide(corpus / name) as source:
            region = Region(700, 900, 400, 300)
            diff = np.abs(reader.read_region(0, region).astype(int) - source.read_region(0, region))
        assert diff.mean() < 2.0, name
