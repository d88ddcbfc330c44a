"""The store format as pure functions: keys, zarr v3 metadata, OME-Zarr 0.5 multiscales.

One store per slide, named by a random slide ID. Arrays are (c, y, x) uint8 with c = 3
(OME-Zarr orders channel before space), chunked (3, tile, tile), fill value white. A
``transpose`` codec turns each chunk into (tile, tile, 3) pixels before the image codec, so
a stored chunk is an ordinary JPEG (or zstd-compressed RGB) tile. Format 2 groups chunks
into shards of ``shard`` x ``shard`` chunks (zarr's ``sharding_indexed``, index first);
format 1 stored one object per chunk and is only read (``tileserver migrate`` rewrites it).
The completion marker is written last; a store without it is never served.
Spec: docs/format.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tileserver.errors import StoreError
from tileserver.geometry import Size, tile_count
from tileserver.slide_ids import is_slide_id

FORMAT = "tileserver-store"
FORMAT_VERSION = 2  # what the converter writes; 1 is still read
READABLE_VERSIONS = (1, 2)
DEFAULT_SHARD = 16  # chunks per shard edge: ~1000 objects for a 100k x 100k slide
OME_VERSION = "0.5"
COMPLETE_MARKER = "tileserver-complete.json"
# The slide's data key wrapped by a key-encryption key (plain JSON: docs/format.md).
KEY_OBJECT = "tileserver-key.json"
GROUP_METADATA = "zarr.json"
FILL_VALUE = 255
CODECS = ("jpeg", "zstd")
JPEG_CODEC_NAME = "tileserver.jpeg"  # our zarr v3 codec; see tileserver.store.zarr_codec


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
    shard: int = DEFAULT_SHARD  # chunks per shard edge (format 2)
    format_version: int = FORMAT_VERSION

    def grid(self, level: int) -> Size:
        """Chunks across and down at a level."""
        return tile_count(self.levels[level], Size(self.tile, self.tile))

    def shard_grid(self, level: int) -> Size:
        """Shards across and down at a level (the last ones may reach past its edge)."""
        return tile_count(self.grid(level), Size(self.shard, self.shard))

    def chunk_key(self, level: int, t_col: int, t_row: int) -> str:
        """A chunk's own key: its object in format 1, what its seal is bound to in format 2."""
        return f"{level}/c/0/{t_row}/{t_col}"

    def shard_key(self, level: int, s_col: int, s_row: int) -> str:
        # "." separates the indices so shard keys never collide with format-1 chunk keys,
        # which lets `migrate` write format 2 next to format 1 in place.
        return f"{level}/c.0.{s_row}.{s_col}"

    @property
    def chunks_per_shard(self) -> int:
        return self.shard * self.shard

    def locate(self, level: int, t_col: int, t_row: int) -> tuple[str, int]:
        """(shard key, index of the chunk inside the shard, C order)."""
        s_col, s_row = divmod(t_col, self.shard), divmod(t_row, self.shard)
        return self.shard_key(level, s_col[0], s_row[0]), s_row[1] * self.shard + s_col[1]

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
        chunk_codecs = [{"name": "transpose", "configuration": {"order": [1, 2, 0]}}, *image_codecs]
        inner = [3, self.tile, self.tile]
        if self.format_version == 1:
            grid, separator, codecs = inner, "/", chunk_codecs
        else:
            grid, separator = [3, self.shard * self.tile, self.shard * self.tile], "."
            codecs = [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": inner,
                        "codecs": chunk_codecs,
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                        "index_location": "start",
                    },
                }
            ]
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [3, size.height, size.width],
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
            "fill_value": FILL_VALUE,
            "codecs": codecs,
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
                    "format_version": self.format_version,
                    "slide_id": self.slide_id,
                    "tile": self.tile,
                    **({"shard": self.shard} if self.format_version >= 2 else {}),
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
            version = ours["format_version"]
            if ours["format"] != FORMAT or version not in READABLE_VERSIONS:
                raise StoreError(f"unknown store format {ours['format']} v{version}")
            levels = tuple(Size(int(w), int(h)) for w, h in ours["levels"])
            layout = cls(
                slide_id=str(ours["slide_id"]),
                levels=levels,
                tile=int(ours["tile"]),
                codec=str(ours["codec"]),
                quality=0,
                shard=int(ours.get("shard", 1)),
                format_version=int(version),
            )
            source = dict(ours["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"malformed store metadata: {exc!r}") from exc
        if not is_slide_id(layout.slide_id) or layout.codec not in CODECS or not levels:
            raise StoreError("malformed store metadata: bad slide ID, codec or levels")
        if (
            layout.tile <= 0
            or layout.tile % 2
            or not 1 <= layout.shard <= 256
            or any(s.width <= 0 or s.height <= 0 for s in levels)
        ):
            raise StoreError("malformed store metadata: bad tile or level sizes")
        return layout, source
