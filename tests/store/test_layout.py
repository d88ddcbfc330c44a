"""The layout of channel and z-stack stores: keys, array and group metadata, parsing back."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tileserver.errors import StoreError
from tileserver.geometry import Size
from tileserver.store.layout import ChannelInfo, StoreLayout

SLIDE = "ab" * 16
LEVELS = (Size(1000, 700), Size(500, 350), Size(250, 175))
SOURCE = {"vendor": "ome", "mpp": [0.5, 0.5], "objective_power": 20.0, "properties": {}}


def channel_layout(planes: int = 1, channels: int = 3, dtype: str = "uint16") -> StoreLayout:
    infos = tuple(
        ChannelInfo(f"ch{i}", ["0000FF", "00FF00", "FF0000"][i % 3], 450.0 + i, (10.0 + i, 900.0))
        for i in range(channels)
    )
    return StoreLayout(
        SLIDE,
        LEVELS,
        256,
        "zstd",
        0,
        dtype=dtype,
        channels=channels,
        planes=planes,
        kind="channels",
        channel_info=infos,
        plane_offsets=tuple(float(z) for z in range(planes)) if planes > 1 else (),
        default_plane=planes // 2,
    )


def roundtrip(layout: StoreLayout) -> StoreLayout:
    doc = json.loads(json.dumps(layout.group_metadata(SOURCE)))
    parsed, source = StoreLayout.from_group_metadata(doc)
    assert source == SOURCE
    return parsed


def test_rgb_single_plane_keys_and_metadata_are_unchanged() -> None:
    layout = StoreLayout(SLIDE, LEVELS, 256, "jpeg", 85)
    assert layout.chunk_key(1, 2, 3) == "1/c/0/3/2"
    assert layout.locate(0, 17, 33) == ("0/c.0.2.1", 1 * 16 + 1)
    ours = layout.group_metadata(SOURCE)["attributes"]["tileserver"]
    assert "kind" not in ours and "omero" not in layout.group_metadata(SOURCE)["attributes"]["ome"]
    assert layout.array_metadata(0)["shape"] == [3, 700, 1000]
    assert roundtrip(layout) == dataclasses.replace(layout, quality=0)


def test_channel_keys_name_channel_and_plane() -> None:
    flat, stack = channel_layout(), channel_layout(planes=3)
    assert flat.chunk_key(2, 1, 0, c=2) == "2/c/2/0/1"
    assert flat.locate(0, 17, 1, c=1) == ("0/c.1.0.1", 1 * 16 + 1)
    assert stack.chunk_key(2, 1, 0, c=2, z=1) == "2/c/2/1/0/1"
    assert stack.locate(0, 3, 40, c=1, z=2) == ("0/c.1.2.2.0", 8 * 16 + 3)
    assert list(flat.chunk_channels) == [0, 1, 2]
    rgb_stack = StoreLayout(SLIDE, LEVELS, 256, "jpeg", 85, planes=2, plane_offsets=(0.0, 1.5))
    assert rgb_stack.chunk_key(0, 1, 2, z=1) == "0/c/0/1/2/1"
    assert list(rgb_stack.chunk_channels) == [0]


def test_channel_arrays_are_lossless_one_channel_per_chunk() -> None:
    meta = channel_layout(planes=3).array_metadata(1)
    assert meta["shape"] == [3, 3, 350, 500]
    assert meta["data_type"] == "uint16"
    assert meta["fill_value"] == 0
    assert meta["dimension_names"] == ["c", "z", "y", "x"]
    sharding = meta["codecs"][0]["configuration"]
    assert sharding["chunk_shape"] == [1, 1, 256, 256]
    assert [c["name"] for c in sharding["codecs"]] == ["bytes", "zstd"]
    assert sharding["codecs"][0]["configuration"] == {"endian": "little"}
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1, 4096, 4096]
    flat = channel_layout().array_metadata(0)
    assert flat["codecs"][0]["configuration"]["chunk_shape"] == [1, 256, 256]


def test_group_metadata_carries_omero_and_our_channels() -> None:
    layout = channel_layout(planes=3)
    attrs = layout.group_metadata(SOURCE)["attributes"]
    multiscale = attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert multiscale["axes"][1] == {"name": "z", "type": "space", "unit": "micrometer"}
    assert multiscale["datasets"][1]["coordinateTransformations"][0]["scale"] == [
        1.0,
        1.0,
        1.0,
        1.0,
    ]
    omero = attrs["ome"]["omero"]
    assert omero["rdefs"] == {"defaultZ": 1, "model": "color"}
    assert omero["channels"][1] == {
        "label": "ch1",
        "color": "00FF00",
        "active": True,
        "window": {"min": 0, "max": 65535, "start": 11.0, "end": 900.0},
    }
    ours = attrs["tileserver"]
    assert ours["kind"] == "channels" and ours["dtype"] == "uint16"
    assert ours["planes"] == [0.0, 1.0, 2.0] and ours["default_plane"] == 1
    assert ours["channels"][2]["emission_nm"] == 452.0


@pytest.mark.parametrize("planes", [1, 4])
def test_channel_layouts_parse_back_to_themselves(planes: int) -> None:
    layout = channel_layout(planes=planes, channels=5)
    assert roundtrip(layout) == layout
    rgb = StoreLayout(SLIDE, LEVELS, 256, "jpeg", 0, planes=2, plane_offsets=(-1.0, 1.0))
    assert roundtrip(rgb) == rgb


def _bad(change: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(channel_layout(planes=2).group_metadata(SOURCE)))
    change(doc["attributes"]["tileserver"])
    return doc


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.update(kind="hyperspectral"),
        lambda t: t.update(dtype="float32"),
        lambda t: t.update(dtype="uint8"),  # windows beyond 255
        lambda t: t.update(codec="jpeg"),
        lambda t: t.update(channels=[]),
        lambda t: t.update(channels="abc"),
        lambda t: t["channels"][0].update(color="blue"),
        lambda t: t["channels"][0].update(window=[900, 10]),
        lambda t: t["channels"][0].update(window=[0]),
        lambda t: t["channels"][0].pop("name"),
        lambda t: t.update(default_plane=2),
        lambda t: t.update(planes=[]),
        lambda t: t.update(planes=[0, "nan"]),
        lambda t: t.update(kind="rgb"),  # 3 uint16 channels are not RGB
    ],
)
def test_bad_channel_metadata_is_a_store_error(change: Any) -> None:
    with pytest.raises(StoreError, match="malformed store metadata"):
        StoreLayout.from_group_metadata(_bad(change))
