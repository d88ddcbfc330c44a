"""Channel slides and z-stacks converted end to end: every level, channel and plane equals a
reference pyramid (the NumPy twins), zarr-python reads the same, display windows come from
the window level's histogram, a stopped conversion resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.pyramid.array_source import ArraySource, fluorescence
from tileserver.errors import UnsupportedFeature
from tileserver.geometry import Region
from tileserver.library import SourcePyramid, StorePyramid
from tileserver.pyramid import reference
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.pyramid.windows import display_window, window_level
from tileserver.slide_ids import new_slide_id
from tileserver.sources.base import Channel
from tileserver.store.layout import COMPLETE_MARKER
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader

TILE = 64
OPTIONS = ConvertOptions(tile=TILE, shard=2)  # codec jpeg: channel slides are zstd anyway


def reference_pyramid(plane: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level k of one plane (h, w, samples), by the NumPy twin of the builder's kernel."""
    out = [plane]
    for _ in range(levels - 1):
        src = out[-1]
        dst = np.empty(((src.shape[0] + 1) // 2, (src.shape[1] + 1) // 2, src.shape[2]), src.dtype)
        reference.downsample_2x(np.ascontiguousarray(src), dst)
        out.append(dst)
    return out


def _convert(source: ArraySource, root: Path, options: ConvertOptions = OPTIONS) -> StoreReader:
    slide_id = new_slide_id()
    convert(source, LocalObjects(root / slide_id), slide_id, options, None)
    return StoreReader.open(LocalObjects(root / slide_id), slide_id)


CHANNELS = (
    Channel("DAPI", "0000ff", 461.0),
    Channel("CD3", None, 520.0),
    Channel("CD8", "FF0000", None),
    Channel("", None, None),
    Channel("PanCK", "ffff00", 670.0),
)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return fluorescence(3, 600, 1100, 5, "uint16", seed=4)


def test_five_channel_16_bit_three_plane_round_trip(stack: np.ndarray, tmp_path: Path) -> None:
    source = ArraySource(stack, CHANNELS, planes=(-2.0, 0.0, 2.0))
    reader = _convert(source, tmp_path)
    layout = reader.layout
    assert (layout.kind, layout.dtype, layout.channels, layout.planes) == (
        "channels",
        "uint16",
        5,
        3,
    )
    assert layout.codec == "zstd" and layout.default_plane == 1
    group = zarr.open_group(str(tmp_path / layout.slide_id), mode="r")
    for z in range(3):
        expected = reference_pyramid(stack[z], len(layout.levels))
        for level, want in enumerate(expected):
            h, w = want.shape[:2]
            got = reader.read_channels(level, Region(0, 0, w, h), range(5), z)
            np.testing.assert_array_equal(got, want, err_msg=f"level {level} plane {z}")
            assert np.array_equal(np.asarray(group[str(level)][:, z]), want.transpose(2, 0, 1))
    # Windows: percentiles of the default plane's window level, written before the marker.
    level = window_level(layout.levels)
    assert level == 1
    want_level = reference_pyramid(stack[1], level + 1)[level]
    for c, info in enumerate(layout.channel_info):
        counts = np.bincount(want_level[:, :, c].ravel(), minlength=65536)
        assert info.window == display_window(counts)
        assert 0 < info.window[0] < info.window[1] <= 65535
    names = [info.name for info in layout.channel_info]
    assert names == ["DAPI", "CD3", "CD8", "Channel 3", "PanCK"]
    assert [info.color for info in layout.channel_info][::2] == ["0000FF", "FF0000", "FFFF00"]
    assert [info.active for info in layout.channel_info] == [True] * 4 + [False]
    from ome_zarr_models.v05.image import Image as OmeImage

    multiscale = OmeImage.from_zarr(group).ome_attributes.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["c", "z", "y", "x"]
    assert multiscale.datasets[1].coordinateTransformations[0].scale == [1.0, 2.0, 1.0, 1.0]
    omero = group.attrs["ome"]["omero"]
    assert omero["rdefs"]["defaultZ"] == 1
    assert omero["channels"][0]["window"]["end"] == layout.channel_info[0].window[1]
    counts = reader.summary()["chunks"]
    assert counts["background"] > 0 and counts["written"] > 0


def test_store_and_source_pyramids_read_the_same_channels(
    stack: np.ndarray, tmp_path: Path
) -> None:
    marker = tmp_path / "slide.ome.tif"  # SourcePyramid stats its file for ETags
    marker.write_bytes(b"")
    source = ArraySource(stack[:2, :200, :300], CHANNELS, planes=(0.0, 1.0), path=marker)
    slide_id = new_slide_id()
    convert(source, LocalObjects(tmp_path / slide_id), slide_id, OPTIONS, None)
    stored = StorePyramid(LocalObjects(tmp_path / slide_id), slide_id, None)
    direct = SourcePyramid(slide_id, source)
    for z in range(2):
        for c in (0, 4):  # chunks of their own tile size (64 stored, 256 read directly)
            stored_chunk = stored.read_channel_chunk(0, 2, 1, c, z)
            np.testing.assert_array_equal(stored_chunk, stack[z, 64:128, 128:192, c])
            direct_chunk = direct.read_channel_chunk(0, 1, 0, c, z)  # past the edge: dark
            np.testing.assert_array_equal(direct_chunk[:200, :44], stack[z, :200, 256:300, c])
            assert not direct_chunk[200:].any() and not direct_chunk[:, 44:].any()
        region = Region(50, 30, 200, 150)
        np.testing.assert_array_equal(
            stored.read_channels(0, region, [4, 1], z), direct.read_channels(0, region, [4, 1], z)
        )
    with pytest.raises(UnsupportedFeature):
        stored.read_chunk(0, 0, 0)
    # Level 1 read directly: a box resize of level 0, within rounding of the stored level.
    region = Region(0, 0, 150, 100)
    direct_1 = direct.read_channels(1, region, [0, 3], 1).astype(int)
    stored_1 = stored.read_channels(1, region, [0, 3], 1).astype(int)
    assert np.abs(direct_1 - stored_1).max() <= 1


def test_single_8_bit_channel_is_white_and_exact(tmp_path: Path) -> None:
    data = fluorescence(1, 300, 200, 1, "uint8", seed=9)
    reader = _convert(ArraySource(data, (Channel("GFP"),)), tmp_path)
    assert reader.layout.dtype == "uint8" and reader.layout.channel_info[0].color == "FFFFFF"
    assert not reader.layout.stacked
    for level, want in enumerate(reference_pyramid(data[0], len(reader.layout.levels))):
        h, w = want.shape[:2]
        np.testing.assert_array_equal(reader.read_channels(level, Region(0, 0, w, h), [0]), want)


def test_rgb_z_stack_converts_plane_by_plane(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 200, (2, 150, 170, 3), dtype=np.uint8)
    source = ArraySource(data, planes=(0.0, 1.5), best_plane=0)
    options = dataclasses.replace(OPTIONS, codec="zstd", background_tolerance=0)
    reader = _convert(source, tmp_path, options)
    assert reader.layout.kind == "rgb" and reader.layout.planes == 2
    assert reader.layout.default_plane == 0 and reader.layout.plane_offsets == (0.0, 1.5)
    for z in range(2):
        for level, want in enumerate(reference_pyramid(data[z], len(reader.layout.levels))):
            h, w = want.shape[:2]
            np.testing.assert_array_equal(reader.read_region(level, Region(0, 0, w, h), z), want)
    group = zarr.open_group(str(tmp_path / reader.layout.slide_id), mode="r")
    np.testing.assert_array_equal(np.asarray(group["0"][:, 1]).transpose(1, 2, 0), data[1])
    from ome_zarr_models.v05.image import Image as OmeImage

    axes = OmeImage.from_zarr(group).ome_attributes.multiscales[0].axes
    assert [(a.name, a.type) for a in axes][:2] == [("c", "channel"), ("z", "space")]


def test_a_stopped_channel_conversion_resumes_with_the_same_pixels(
    stack: np.ndarray, tmp_path: Path
) -> None:
    source = ArraySource(stack[:, :300, :400], CHANNELS, planes=(-2.0, 0.0, 2.0))
    slide_id = new_slide_id()
    store = LocalObjects(tmp_path / slide_id)
    convert(source, store, slide_id, OPTIONS, None)
    first = StoreReader.open(store, slide_id)
    store.delete(COMPLETE_MARKER)  # as if stopped after the windows, before the marker
    result = convert(source, store, slide_id, OPTIONS, None)
    assert result.chunks["kept"] > 0 and result.chunks["written"] == 0
    again = StoreReader.open(store, slide_id)
    assert again.layout == first.layout
    for z in range(3):
        region = Region(0, 0, 400, 300)
        np.testing.assert_array_equal(
            again.read_channels(0, region, range(5), z), stack[z, :300, :400]
        )


def test_plan_bounds_the_shard_rows_a_wide_channel_slide_holds() -> None:
    """8 x 16-bit x 20k wide: a level-0 chunk row is 82 MB of samples, so a shard is at most
    3 chunks tall (256 MiB pending per shard row, however badly zstd does)."""
    from tileserver.geometry import Size
    from tileserver.pyramid.plan import plan_layout
    from tileserver.sources.base import Level, SlideInfo

    def info(channels: int, dtype: str = "uint16") -> SlideInfo:
        return SlideInfo(
            "array", "synthetic", (Level(Size(20000, 20000), 1.0, None),), None, None, (),
            None, channels=tuple(Channel(f"c{i}") for i in range(channels)), dtype=dtype,
        )  # fmt: skip

    wide, _ = plan_layout(info(8), None, ConvertOptions(), new_slide_id())
    assert wide.shard == 3 and wide.codec == "zstd" and wide.tile == 256
    narrow, _ = plan_layout(info(1, "uint8"), None, ConvertOptions(shard=8), new_slide_id())
    assert narrow.shard == 8


def test_channels_beyond_the_band_budget_convert_in_passes(
    stack: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 2 channels' bands, 5 channels take 3 passes per plane: same store."""
    from tileserver.pyramid import builder

    data = stack[:2, :300, :500]
    per_channel = 4 * TILE * 500 * 2
    monkeypatch.setattr(builder, "CHANNEL_BANDS_BYTES", 2 * per_channel + 1)
    seen: list[tuple[int, int]] = []
    source = ArraySource(data, CHANNELS, planes=(0.0, 1.0))
    slide_id = new_slide_id()
    convert(
        source, LocalObjects(tmp_path / slide_id), slide_id, OPTIONS, None,
        lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id)
    assert [list(g) for g in builder.channel_groups(reader.layout)] == [[0, 1], [2, 3], [4]]
    grid = reader.layout.grid(0)
    assert sum(done for done, _ in seen) == seen[0][1] == grid.pixels * 2 * 3
    whole = ArraySource(data, CHANNELS, planes=(0.0, 1.0))
    reference_id = new_slide_id()
    monkeypatch.setattr(builder, "CHANNEL_BANDS_BYTES", 1 << 30)
    convert(whole, LocalObjects(tmp_path / reference_id), reference_id, OPTIONS, None)
    one_pass = StoreReader.open(LocalObjects(tmp_path / reference_id), reference_id)
    assert [info.window for info in reader.layout.channel_info] == [
        info.window for info in one_pass.layout.channel_info
    ]
    for z in range(2):
        for level, size in enumerate(reader.layout.levels):
            region = Region(0, 0, size.width, size.height)
            np.testing.assert_array_equal(
                reader.read_channels(level, region, range(5), z),
                one_pass.read_channels(level, region, range(5), z),
            )


def test_jpeg_z_stack_opens_with_zarr_through_our_codec(tmp_path: Path) -> None:
    """The tileserver.jpeg zarr codec takes (1, tile, tile, 3) plane chunks."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 200, (3, 100, 130, 3), dtype=np.uint8)
    reader = _convert(ArraySource(data, planes=(0.0, 1.0, 2.0)), tmp_path)
    assert reader.layout.codec == "jpeg" and reader.layout.default_plane == 1
    group = zarr.open_group(str(tmp_path / reader.layout.slide_id), mode="r")
    for z in range(3):
        ours = reader.read_region(0, Region(0, 0, 130, 100), z)
        np.testing.assert_array_equal(np.asarray(group["0"][:, z]).transpose(1, 2, 0), ours)
        assert np.abs(ours.astype(int) - data[z]).mean() < 12  # JPEG of noise, still that plane
