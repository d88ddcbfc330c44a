"""Channel (fluorescence) and z-stack stores written and read back through the real writer,
reader and zarr-python: keys per channel and plane, uint16 samples, dark background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tileserver.errors import IntegrityError, RegionError, StoreError, UnsupportedFeature
from tileserver.geometry import Region, Size
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.store.chunks import decode_channel_chunk, encode_channel_chunk, encode_chunk
from tileserver.store.layout import ChannelInfo, StoreLayout, pyramid_sizes
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader
from tileserver.store.writer import StoreWriter

TILE = 32


def _layout(slide_id: str, c: int, planes: int, dtype: str, size: Size) -> StoreLayout:
    return StoreLayout(
        slide_id,
        pyramid_sizes(size, TILE),
        TILE,
        "zstd",
        0,
        shard=2,
        dtype=dtype,
        channels=c,
        planes=planes,
        kind="channels",
        channel_info=tuple(ChannelInfo(f"c{i}", "00FF00", None, (1.0, 200.0)) for i in range(c)),
        plane_offsets=tuple(0.5 * z for z in range(planes)) if planes > 1 else (),
        default_plane=planes - 1,
    )


def _write(root: Path, layout: StoreLayout, data: np.ndarray, keyring: KeyRing | None) -> None:
    """``data`` is (planes, levels...) -> here one array per level: (C, Z, h, w)."""
    writer = StoreWriter.create(LocalObjects(root), layout, {"mpp": None}, keyring)
    for z in range(layout.planes):
        for level in range(len(layout.levels)):
            pixels = data if level == 0 else data[:, :, :: 2**level, :: 2**level]
            grid = layout.grid(level)
            for t_row in range(grid.height):
                for t_col in range(grid.width):
                    for c in range(layout.channels):
                        chunk = np.zeros((TILE, TILE), layout.dtype)
                        part = pixels[c, z, t_row * TILE : (t_row + 1) * TILE]
                        part = part[:, t_col * TILE : (t_col + 1) * TILE]
                        chunk[: part.shape[0], : part.shape[1]] = part
                        if chunk.any():  # all-dark chunks are background
                            writer.write_chunk(
                                level, t_col, t_row, encode_channel_chunk(chunk), c=c, z=z
                            )
                writer.end_row(level, t_row, z=z)
    assert writer.finish({"slide_id": layout.slide_id})


def _data(c: int, planes: int, dtype: str, size: Size, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    data = rng.integers(0, top, (c, planes, size.height, size.width), dtype=dtype, endpoint=True)
    data[:, :, : TILE + 5, : TILE * 2] = 0  # a dark corner: chunks never written
    return data


@pytest.mark.parametrize(("planes", "dtype"), [(1, "uint16"), (3, "uint16"), (2, "uint8")])
@pytest.mark.parametrize("encrypted", [False, True])
def test_channel_store_reads_back_every_channel_and_plane(
    tmp_path: Path, planes: int, dtype: str, encrypted: bool
) -> None:
    size, c = Size(150, 90), 4
    slide_id = new_slide_id()
    layout = _layout(slide_id, c, planes, dtype, size)
    data = _data(c, planes, dtype, size)
    keyring = KeyRing(tmp_path / "home") if encrypted else None
    if keyring:
        keyring.initialise()
    _write(tmp_path / slide_id, layout, data, keyring)
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id, keyring)
    assert reader.layout == layout
    for z in range(planes):
        for level in range(len(layout.levels)):
            expected = data[:, z, :: 2**level, :: 2**level]
            h, w = expected.shape[1:]
            got = reader.read_channels(level, Region(0, 0, w, h), [3, 0, 2], z)
            assert got.dtype == np.dtype(dtype)
            assert np.array_equal(got, expected[[3, 0, 2]].transpose(1, 2, 0))
    # Outside the level is dark; a region may reach past it.
    part = reader.read_channels(0, Region(140, 80, 20, 20), [1], planes - 1)
    assert np.array_equal(part[:10, :10, 0], data[1, planes - 1, 80:90, 140:150])
    assert not part[10:].any() and not part[:, 10:].any()
    chunk = reader.read_channel_chunk(0, 0, 0, 1, 0)
    assert chunk.shape == (TILE, TILE) and not chunk.any()  # background, never written
    described = reader.summary()
    assert described["kind"] == "channels" and described["dtype"] == dtype
    assert described["default_plane"] == planes - 1
    assert [ch["window"] for ch in described["channels"]] == [[1.0, 200.0]] * c


def test_plaintext_channel_store_opens_with_zarr(tmp_path: Path) -> None:
    size, c, planes = Size(100, 70), 3, 2
    slide_id = new_slide_id()
    layout = _layout(slide_id, c, planes, "uint16", size)
    data = _data(c, planes, "uint16", size)
    _write(tmp_path / slide_id, layout, data, None)
    group = zarr.open_group(tmp_path / slide_id, mode="r")
    assert np.array_equal(np.asarray(group["0"][:]), data)
    assert np.array_equal(np.asarray(group["1"][:]), data[:, :, ::2, ::2])
    flat_id = new_slide_id()
    _write(
        tmp_path / flat_id, _layout(flat_id, c, 1, "uint8", size), _data(c, 1, "uint8", size), None
    )
    flat = zarr.open_group(tmp_path / flat_id, mode="r")
    assert np.array_equal(np.asarray(flat["0"][:]), _data(c, 1, "uint8", size)[:, 0])


def test_rgb_z_stack_reads_each_plane_and_opens_with_zarr(tmp_path: Path) -> None:
    slide_id = new_slide_id()
    layout = StoreLayout(
        slide_id, pyramid_sizes(Size(40, 40), TILE), TILE, "zstd", 0, shard=2,
        planes=2, plane_offsets=(-1.0, 1.0), default_plane=1,
    )  # fmt: skip
    writer = StoreWriter.create(LocalObjects(tmp_path / slide_id), layout, {"mpp": None}, None)
    planes = [np.full((TILE, TILE, 3), (10 * z, 20, 30), np.uint8) for z in range(2)]
    for z in range(2):
        writer.write_chunk(0, 0, 0, encode_chunk(planes[z], "zstd", 0), z=z)
        writer.end_row(0, 0, z=z)
        writer.end_row(0, 1, z=z)
        writer.write_chunk(1, 0, 0, encode_chunk(planes[z], "zstd", 0), z=z)
        writer.end_row(1, 0, z=z)
    assert writer.finish({"slide_id": slide_id})
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id)
    for z in range(2):
        assert np.array_equal(reader.read_chunk(0, 0, 0, z), planes[z])
        assert np.array_equal(reader.read_region(0, Region(0, 0, 32, 32), z), planes[z])
    assert (reader.read_region(0, Region(32, 32, 8, 8), 1) == 255).all()  # background: white
    with pytest.raises(RegionError, match="plane 2"):
        reader.read_chunk(0, 0, 0, 2)
    with pytest.raises(UnsupportedFeature):
        reader.read_channels(0, Region(0, 0, 8, 8), [0])
    group = zarr.open_group(tmp_path / slide_id, mode="r")
    assert np.array_equal(np.asarray(group["0"][:, 1, :32, :32]).transpose(1, 2, 0), planes[1])


def test_bad_channel_requests_and_chunks_are_typed_errors(tmp_path: Path) -> None:
    size, c = Size(64, 64), 2
    slide_id = new_slide_id()
    layout = _layout(slide_id, c, 1, "uint16", size)
    _write(tmp_path / slide_id, layout, _data(c, 1, "uint16", size), None)
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id)
    for bad in ([2], [-1], []):
        with pytest.raises(RegionError):
            reader.read_channels(0, Region(0, 0, 8, 8), bad)
    with pytest.raises(RegionError, match="plane 1"):
        reader.read_channels(0, Region(0, 0, 8, 8), [0], 1)
    with pytest.raises(RegionError, match="cap"):
        reader.read_channels(0, Region(0, 0, 1 << 15, 1 << 15), [0, 1])
    with pytest.raises(UnsupportedFeature):
        reader.read_region(0, Region(0, 0, 8, 8))
    with pytest.raises(UnsupportedFeature):
        reader.read_chunk(0, 0, 0)
    with pytest.raises(StoreError, match="undecodable"):
        reader.decode_channel(0, 0, 0, b"not zstd")
    too_big = encode_channel_chunk(np.zeros((TILE * 2, TILE), np.uint16))  # a zstd "bomb"
    with pytest.raises(StoreError):
        decode_channel_chunk(too_big, "uint16", TILE)
    with pytest.raises(StoreError, match="bytes"):
        decode_channel_chunk(encode_channel_chunk(np.zeros((TILE, TILE), np.uint8)), "uint16", TILE)


def test_a_swapped_channel_shard_is_an_integrity_error(tmp_path: Path) -> None:
    size, c = Size(64, 64), 2
    slide_id = new_slide_id()
    keyring = KeyRing(tmp_path / "home")
    keyring.initialise()
    layout = _layout(slide_id, c, 1, "uint16", size)
    data = _data(c, 1, "uint16", size)
    data[:, :, :, :] = np.arange(1, c + 1, dtype=np.uint16)[:, None, None, None]
    _write(tmp_path / slide_id, layout, data, keyring)
    root = tmp_path / slide_id / "0"
    a, b = root / "c.0.0.0", root / "c.1.0.0"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id, keyring)
    with pytest.raises(IntegrityError):
        reader.read_channel_chunk(0, 0, 0, 0)


def test_only_the_root_document_may_be_rewritten(tmp_path: Path) -> None:
    """The builder's window rewrite cannot change what the arrays are."""
    import dataclasses

    slide_id = new_slide_id()
    layout = _layout(slide_id, 2, 1, "uint16", Size(64, 64))
    writer = StoreWriter.create(LocalObjects(tmp_path / slide_id), layout, {"mpp": None}, None)
    with pytest.raises(ValueError, match="attributes"):
        writer.rewrite_group_metadata(dataclasses.replace(layout, dtype="uint8"), {"mpp": None})
    windows = tuple(dataclasses.replace(c, window=(5.0, 6.0)) for c in layout.channel_info)
    writer.rewrite_group_metadata(dataclasses.replace(layout, channel_info=windows), {})
    for t_row in range(2):
        writer.end_row(0, t_row)
    writer.end_row(1, 0)
    assert writer.finish({"slide_id": slide_id})
    reader = StoreReader.open(LocalObjects(tmp_path / slide_id), slide_id)
    assert [c.window for c in reader.layout.channel_info] == [(5.0, 6.0)] * 2
