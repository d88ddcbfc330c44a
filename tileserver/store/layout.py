"""The store format as pure functions: keys, zarr v3 metadata, OME-Zarr 0.5 multiscales.

One store per slide, named by a random slide ID. Arrays are (c, y, x) uint8 with c = 3
(OME-Zarr orders channel before space), chunked (3, tile, tile), unsharded, fill value
white. A ``transpose`` codec turns each chunk into (tile, tile, 3) pixels before the image
codec, so a stored chunk is an ordinary JPEG (or zstd-compressed RGB) tile.
The completion marker is written last; a store without it is never served.
Spec: docs/format.md.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from tileserver.errors import StoreError
from tileserver.geometry import Size, tile_count

FORMAT = "tileserver-store"
FORMAT_VERSION = 1
OME_VERSION = "0.5"
COMPLETE_MARKER = "tileserver-complete.json"
GROUP_METADATA = "zarr.json"
FILL_VALUE = 255
CODECS = ("jpeg", "zstd")
JPEG_CODEC_NAME = "tileserver.jpeg"  # our zarr v3 codec; see tileserver.store.zarr_codec

_SLIDE_ID = re.compile(r"[0-9a-f]{32}")


def new_slide_id() -> str:
    """128 random bits, hex: names a store without revealing anything about the slide."""
    return secrets.token_hex(16)


def is_slide_id(text: str) -> bool:
    return _SLIDE_ID.fullmatch(text) is not None


def pyramid_sizes(l0_size: Size, tile: int) -> tuple[Size, ...]:
    """Level sizes halving (rounding up) from level 0 until the level fits in one tile."""
    sizes = [l0_size]
    while sizes[-1].width > tile or sizes[-1].height > tile:
        last = sizes[-1]
        sizes.append(Size(-(-last.width // 2), -(-last.height // 2)))
    return tuple(sizes)


@dataclass(frozen=True)
class StoreLayout:
    """Everything needed to name and describe a store's objects."""

    slide_id: str
    levels: tuple[Size, ...]  # level pixels; level k is level 0 downsampled by 2**k
    tile: int  # chunk edge in level pixels
    codec: str  # "jpeg" or "zstd"
    quality: int  # JPEG quality used for chunks we encode

    def grid(self, level: int) -> Size:
        """Chunks across and down at a level."""
        return tile_count(self.levels[level], Size(self.tile, self.tile))

    def chunk_key(self, level: int, t_col: int, t_row: int) -> str:
        return f"{level}/c/0/{t_row}/{t_col}"

    def array_metadata(self, level: int) -> dict[str, Any]:
        size = self.levels[level]
        if self.codec == "jpeg":
            image_codecs: list[dict[str, Any]] = [
                {"name": JPEG_CODEC_NAME, "configuration": {"quality": self.quality}}
            ]
        else:
            image_codecs = [
                {"name": "bytes"},
                {"name": "zstd", "configuration": {"level": 3, "checksum": False}},
            ]
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [3, size.height, size.width],
            "data_type": "uint8",
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [3, self.tile, self.tile]},
            },
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": FILL_VALUE,
            "codecs": [
                {"name": "transpose", "configuration": {"order": [1, 2, 0]}},
                *image_codecs,
            ],
            "dimension_names": ["c", "y", "x"],
            "attributes": {},
        }

    def group_metadata(self, source: dict[str, Any]) -> dict[str, Any]:
        """Root group: OME-Zarr multiscales plus our own attributes (allowlisted only)."""
        mpp = source.get("mpp")
        unit = {"unit": "micrometer"} if mpp else {}
        mpp_x, mpp_y = mpp if mpp else (1.0, 1.0)
        datasets = [
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, mpp_y * 2**level, mpp_x * 2**level]}
                ],
            }
            for level in range(len(self.levels))
        ]
        multiscale = {
            "name": self.slide_id,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **unit},
                {"name": "x", "type": "space", **unit},
            ],
            "datasets": datasets,
            "type": "mean",
        }
        return {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {
                "ome": {"version": OME_VERSION, "multiscales": [multiscale]},
                "tileserver": {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "slide_id": self.slide_id,
                    "tile": self.tile,
                    "codec": self.codec,
                    "levels": [list(size) for size in self.levels],
                    "source": source,
                },
            },
        }

    @classmethod
    def from_group_metadata(cls, doc: dict[str, Any]) -> tuple[StoreLayout, dict[str, Any]]:
        """Parse a root ``zarr.json``; raises StoreError naming what is wrong."""
        try:
            ours = doc["attributes"]["tileserver"]
            if ours["format"] != FORMAT or ours["format_version"] != FORMAT_VERSION:
                raise StoreError(f"unknown store format {ours['format']} v{ours['format_version']}")
            levels = tuple(Size(int(w), int(h)) for w, h in ours["levels"])
            layout = cls(
                slide_id=str(ours["slide_id"]),
                levels=levels,
                tile=int(ours["tile"]),
                codec=str(ours["codec"]),
                quality=0,
            )
            source = dict(ours["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"malformed store metadata: {exc!r}") from exc
        if not is_slide_id(layout.slide_id) or layout.codec not in CODECS or not levels:
            raise StoreError("malformed store metadata: bad slide ID, codec or levels")
        if (
            layout.tile <= 0
            or layout.tile % 2
            or any(s.width <= 0 or s.height <= 0 for s in levels)
        ):
            raise StoreError("malformed store metadata: bad tile or level sizes")
        return layout, source
