"""The service's channel and plane parameters (issue 15), against the Pyramid protocol.

``ChannelPyramid`` below is a real, if small, implementation of the protocol: an in-memory
channel (or RGB z-stack) pyramid whose level k is level 0 decimated by 2**k. The composite
expected is computed independently with the NumPy twin over the same samples.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar, cast

import numpy as np
import pytest

from tileserver.geometry import Region, Size
from tileserver.library import SlideLibrary
from tileserver.protocols.display import DisplayChannel, DisplayError, SlideDisplay
from tileserver.render.composite import composite_reference
from tileserver.render.encode import decode
from tileserver.service import Encoded, NotModified, ServiceSettings, SlideService

T = TypeVar("T")
TILE = 64
SLIDE_ID = "ab" * 16


class ChannelPyramid:
    """(C, Z, H, W) samples in memory, served as single-channel chunks; with ``rgb``, an RGB
    z-stack of (3, Z, H, W) uint8 served as RGB chunks."""

    # The requested format: were the view plain RGB, its chunks would be passed through.
    codec: str | None = "png"
    generation = "g1"
    icc_profile: bytes | None = None

    def __init__(self, samples: np.ndarray, display: SlideDisplay, rgb: bool = False) -> None:
        self.slide_id = SLIDE_ID
        self.metadata: dict[str, Any] = {"mpp": [0.5, 0.5]}
        self.tile = TILE
        self.rgb = rgb
        self.display = display
        self.data = [samples]
        while max(self.data[-1].shape[2:]) > TILE:
            self.data.append(self.data[-1][:, :, ::2, ::2])
        self.levels = tuple(Size(d.shape[3], d.shape[2]) for d in self.data)
        self.reads: list[tuple[object, ...]] = []

    @property
    def associated(self) -> tuple[str, ...]:
        return ()

    def _cut(self, level: int, t_col: int, t_row: int, c: int | slice, z: int) -> np.ndarray:
        plane = self.data[level][c, z]
        fill = 255 if self.rgb else 0
        out = np.full((*plane.shape[:-2], TILE, TILE), fill, plane.dtype)
        part = plane[..., t_row * TILE : (t_row + 1) * TILE, t_col * TILE : (t_col + 1) * TILE]
        out[..., : part.shape[-2], : part.shape[-1]] = part
        return out

    def read_chunk(self, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        assert self.rgb, "a channel store has no RGB chunks"
        self.reads.append(("rgb", level, t_col, t_row, z))
        return np.moveaxis(self._cut(level, t_col, t_row, slice(None), z), 0, -1).copy()

    def read_channel_chunk(
        self, level: int, t_col: int, t_row: int, c: int, z: int = 0
    ) -> np.ndarray:
        assert not self.rgb
        self.reads.append(("c", level, t_col, t_row, c, z))
        return self._cut(level, t_col, t_row, c, z)

    def chunk_bytes(self, level: int, t_col: int, t_row: int) -> bytes | None:
        raise AssertionError("channel and z-stack slides are never passed through")

    async def chunk_bytes_async(self, level: int, t_col: int, t_row: int) -> bytes | None:
        raise AssertionError("channel and z-stack slides are never passed through")

    def read_associated(self, name: str) -> np.ndarray:
        raise AssertionError(name)


class OneSlide:
    """The library's lookups, for one pyramid."""

    def __init__(self, pyramid: ChannelPyramid) -> None:
        self.pyramid = pyramid

    def peek(self, slide_id: str) -> ChannelPyramid | None:
        return self.pyramid if slide_id == SLIDE_ID else None

    def get(self, slide_id: str) -> ChannelPyramid:
        return self.pyramid


CHANNELS = SlideDisplay(
    channels=(
        DisplayChannel("DAPI", (0, 0, 255), (100.0, 3000.0)),
        DisplayChannel("FITC", (0, 255, 0), (0.0, 5000.0), active=False),
        DisplayChannel("Cy3", (255, 255, 0), (200.0, 60000.0)),
        DisplayChannel("Cy5", (255, 0, 0), (0.0, 65535.0), active=False),
    ),
    dtype="uint16",
    planes=(-1.0, 0.0, 1.0),
    default_plane=1,
)


def _samples(shape: tuple[int, ...], dtype: type, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def service_for(pyramid: ChannelPyramid) -> SlideService:
    return SlideService(cast(SlideLibrary, OneSlide(pyramid)), ServiceSettings())


def png(result: Encoded | NotModified) -> np.ndarray:
    assert isinstance(result, Encoded) and result.media_type == "image/png"
    return decode(result.data)


@pytest.fixture
def channel_slide() -> ChannelPyramid:
    return ChannelPyramid(_samples((4, 3, 200, 300), np.uint16), CHANNELS)


def expected(
    p: ChannelPyramid,
    level: int,
    region: Region,
    channels: list[int],
    z: int,
    colors: list[tuple[int, int, int]],
) -> np.ndarray:
    samples = p.data[level][channels, z][
        :, region.y : region.y + region.height, region.x : region.x + region.width
    ]
    windows = [CHANNELS.channels[c].window for c in channels]
    return composite_reference(samples, colors, windows)


def test_default_tile_is_the_stored_display(channel_slide: ChannelPyramid) -> None:
    service = service_for(channel_slide)
    # DeepZoom level 9 of a 300x200 slide is store level 0; tile (1, 0) is x 64..127.
    tile = png(run(service.deepzoom_tile(SLIDE_ID, 9, 1, 0, "png", ())))
    want = expected(
        channel_slide, 0, Region(64, 0, 64, 64), [0, 2], 1, [(0, 0, 255), (255, 255, 0)]
    )
    np.testing.assert_array_equal(tile, want)
    # Only the active channels' chunks, of the default plane, were read: none passed through.
    assert {r[4:] for r in channel_slide.reads} == {(0, 1), (2, 1)}
    assert service.stats["passthrough"] == 0


def test_parameters_choose_channels_colours_windows_plane(channel_slide: ChannelPyramid) -> None:
    service = service_for(channel_slide)
    query = {"channels": "3,1", "colors": "ff00ff,00ffff", "windows": "0-40000,100-900", "z": "2"}
    tile = png(run(service.deepzoom_tile(SLIDE_ID, 9, 0, 1, "png", (), query)))
    samples = channel_slide.data[0][[3, 1], 2][:, 64:128, 0:64]
    want = composite_reference(
        samples, [(255, 0, 255), (0, 255, 255)], [(0.0, 40000.0), (100.0, 900.0)]
    )
    np.testing.assert_array_equal(tile, want)


def test_each_display_has_its_own_etag(channel_slide: ChannelPyramid) -> None:
    service = service_for(channel_slide)

    def etag(query: Mapping[str, str]) -> str:
        result = run(service.deepzoom_tile(SLIDE_ID, 9, 0, 0, "png", (), query))
        assert isinstance(result, Encoded)
        return result.etag

    default = etag({})
    assert etag({"channels": "0,2"}) == default  # the same display, spelled out
    assert etag({"channels": "0"}) != default
    assert etag({"z": "0"}) != default
    assert etag({"windows": "100-3001,200-60000"}) != default
    # The client's copy is still good for the same display only.
    again = run(service.deepzoom_tile(SLIDE_ID, 9, 0, 0, "png", {default}, {}))
    assert isinstance(again, NotModified)


@pytest.mark.parametrize(
    ("query", "name"),
    [({"channels": "4"}, "channels"), ({"z": "3"}, "z"), ({"colors": "ff"}, "colors")],
)
def test_bad_parameters_name_themselves(
    channel_slide: ChannelPyramid, query: dict[str, str], name: str
) -> None:
    service = service_for(channel_slide)
    with pytest.raises(DisplayError, match=f"'{name}'"):
        run(service.deepzoom_tile(SLIDE_ID, 9, 0, 0, "png", (), query))
    with pytest.raises(DisplayError, match=f"'{name}'"):
        run(service.thumbnail(SLIDE_ID, 64, "png", (), None, query))


def test_region_and_thumbnail_take_the_parameters(channel_slide: ChannelPyramid) -> None:
    service = service_for(channel_slide)
    region = Region(10, 20, 100, 50)
    query = {"channels": "1", "colors": "00ff00", "z": "0"}
    got = png(run(service.region(SLIDE_ID, region, region.size, "png", (), None, query)))
    want = expected(channel_slide, 0, region, [1], 0, [(0, 255, 0)])
    np.testing.assert_array_equal(got, want)
    thumb = png(run(service.thumbnail(SLIDE_ID, 150, "png", (), None, query)))
    assert thumb.shape == (100, 150, 3)
    assert thumb[..., 0].max() == 0 and thumb[..., 1].max() > 0  # green only


def test_iiif_serves_the_default_composite(channel_slide: ChannelPyramid) -> None:
    service = service_for(channel_slide)
    got = png(run(service.iiif_image(SLIDE_ID, ("0,0,64,64", "max", "0", "default", "png"), ())))
    want = expected(channel_slide, 0, Region(0, 0, 64, 64), [0, 2], 1, [(0, 0, 255), (255, 255, 0)])
    np.testing.assert_array_equal(got, want)


def test_describe_lists_channels_and_planes(channel_slide: ChannelPyramid) -> None:
    doc = run(service_for(channel_slide).describe(SLIDE_ID))
    assert doc["kind"] == "channels" and doc["dtype"] == "uint16"
    assert doc["channels"][0] == {
        "index": 0,
        "name": "DAPI",
        "color": "0000ff",
        "emission_nm": None,
        "window": [100.0, 3000.0],
        "active": True,
    }
    assert [c["active"] for c in doc["channels"]] == [True, False, True, False]
    assert doc["planes"] == [-1.0, 0.0, 1.0] and doc["default_plane"] == 1


def test_rgb_z_stack_selects_the_plane() -> None:
    planes = _samples((3, 2, 100, 100), np.uint8, seed=3)
    p = ChannelPyramid(planes, SlideDisplay(planes=(0.0, 1.5), default_plane=0), rgb=True)
    service = service_for(p)
    with pytest.raises(DisplayError, match="'channels'"):
        run(service.deepzoom_tile(SLIDE_ID, 7, 0, 0, "png", (), {"channels": "0"}))
    for z in (0, 1):
        tile = png(run(service.deepzoom_tile(SLIDE_ID, 7, 0, 0, "png", (), {"z": str(z)})))
        np.testing.assert_array_equal(tile, np.moveaxis(planes[:, z, :64, :64], 0, -1))
    default = png(run(service.deepzoom_tile(SLIDE_ID, 7, 0, 0, "png", ())))
    np.testing.assert_array_equal(default, np.moveaxis(planes[:, 0, :64, :64], 0, -1))
    assert service.stats["passthrough"] == 0
    doc = run(service.describe(SLIDE_ID))
    assert doc["kind"] == "rgb" and doc["planes"] == [0.0, 1.5] and doc["channels"] == []
