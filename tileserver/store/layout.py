"""The store format as pure functions: keys, zarr v3 metadata, OME-Zarr 0.5 multiscales.

One store per slide, named by a random slide ID. Two kinds of store:
- "rgb" (brightfield): arrays are (c, y, x) uint8 with c = 3 (OME-Zarr orders channel
  before space), chunked (3, tile, tile), fill value white. A ``transpose`` codec turns each
  chunk into (tile, tile, 3) pixels before the image codec, so a stored chunk is an ordinary
  JPEG (or zstd-compressed RGB) tile.
- "channels" (fluorescence, multiplex): arrays are (C, y, x) uint8 or uint16, chunked
  (1, tile, tile): one channel per chunk, so a composite of 3 of 40 channels reads 3 chunks.
  Lossless only (little-endian bytes + zstd), fill value 0 (dark background).
Either kind may have focal planes: a z axis after c, one plane per chunk. Format 2 groups chunks
into shards of ``shard`` x ``shard`` chunks (zarr's ``sharding_indexed``, index first);
format 1 stored one object per chunk and is only read (``tileserver migrate`` rewrites it).
The completion marker is written last; a store without it is never served.
Spec: docs/format.md.
"""

from __future__ import annotations

import math
import re
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
FILL_VALUE = 255  # RGB background (white glass)
CHANNEL_FILL_VALUE = 0  # fluorescence background (dark)
CODECS = ("jpeg", "zstd")
KINDS = ("rgb", "channels")
DTYPES = ("uint8", "uint16")
MAX_CHANNELS = 1024  # far beyond any multiplex panel; bounds what metadata can make us allocate
MAX_PLANES = 1024
# Channel chunks: zstd level 1 encodes noisy 16-bit samples ~3.5x faster than level 3 for
# ~13% more bytes (decoding speed is the same), and conversion speed is what limits here.
CHANNEL_ZSTD_LEVEL = 1
ZSTD_CODEC: dict[str, Any] = {
    "name": "zstd",
    "configuration": {"level": CHANNEL_ZSTD_LEVEL, "checksum": False},
}
DEFAULT_ACTIVE = 4  # channels shown by default: the first few (a 40-plex panel at once is mush)
_HEX = re.compile(r"[0-9A-Fa-f]{6}")
JPEG_CODEC_NAME = "tileserver.jpeg"  # our zarr v3 codec; see tileserver.store.zarr_codec


def pyramid_sizes(l0_size: Size, tile: int) -> tuple[Size, ...]:
    """Level sizes halving (rounding up) from level 0 until the level fits in one tile."""
    sizes = [l0_size]
    while sizes[-1].width > tile or sizes[-1].height > tile:
        last = sizes[-1]
        sizes.append(Size(-(-last.width // 2), -(-last.height // 2)))
    return tuple(sizes)


def dtype_max(dtype: str) -> int:
    return 65535 if dtype == "uint16" else 255


@dataclass(frozen=True)
class ChannelInfo:
    """One channel of a "channels" store: what it is and how it is shown by default."""

    name: str
    color: str  # "RRGGBB"
    emission_nm: float | None = None
    window: tuple[float, float] | None = None  # display (start, end); None: the dtype's range
    active: bool = True

    def display_window(self, dtype: str) -> tuple[float, float]:
        return self.window if self.window is not None else (0.0, float(dtype_max(dtype)))

    def to_json(self, dtype: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "color": self.color,
            "emission_nm": self.emission_nm,
            "window": list(self.display_window(dtype)),
            "active": self.active,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], dtype: str) -> ChannelInfo:
        """Raises KeyError/TypeError/ValueError on a malformed entry (the caller names it)."""
        emission = doc.get("emission_nm")
        start, end = (float(v) for v in doc["window"])
        color = str(doc["color"])
        if not _HEX.fullmatch(color):
            raise ValueError(f"bad channel colour {color!r}")
        if not (0 <= start < end <= dtype_max(dtype)):
            raise ValueError(f"bad channel window {[start, end]}")
        return cls(
            name=str(doc["name"]),
            color=color.upper(),
            emission_nm=None if emission is None else float(emission),
            window=(start, end),
            active=bool(doc.get("active", True)),
        )


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
    dtype: str = "uint8"  # "uint8", or "uint16" (channels only)
    channels: int = 3  # samples per pixel: 3 for "rgb"
    planes: int = 1  # focal planes (z); > 1 adds a z axis
    kind: str = "rgb"  # "rgb" or "channels"
    channel_info: tuple[ChannelInfo, ...] = ()  # "channels": one per channel
    plane_offsets: tuple[float, ...] = ()  # z offsets in micrometres, one per plane (planes > 1)
    default_plane: int = 0  # the plane shown when none is asked for

    @property
    def fill_value(self) -> int:
        return FILL_VALUE if self.kind == "rgb" else CHANNEL_FILL_VALUE

    @property
    def stacked(self) -> bool:
        """Whether the arrays have a z axis."""
        return self.planes > 1

    @property
    def plain_rgb(self) -> bool:
        """An RGB single-plane store: metadata exactly as before channels and planes existed."""
        return self.kind == "rgb" and not self.stacked

    def grid(self, level: int) -> Size:
        """Chunks across and down at a level."""
        return tile_count(self.levels[level], Size(self.tile, self.tile))

    def shard_grid(self, level: int) -> Size:
        """Shards across and down at a level (the last ones may reach past its edge)."""
        return tile_count(self.grid(level), Size(self.shard, self.shard))

    def chunk_key(self, level: int, t_col: int, t_row: int, *, c: int = 0, z: int = 0) -> str:
        """A chunk's own key: its object in format 1, what its seal is bound to in format 2.
        RGB chunks hold all three samples, so their ``c`` is always 0."""
        if self.stacked:
            return f"{level}/c/{c}/{z}/{t_row}/{t_col}"
        return f"{level}/c/{c}/{t_row}/{t_col}"

    def shard_key(self, level: int, s_col: int, s_row: int, *, c: int = 0, z: int = 0) -> str:
        # "." separates the indices so shard keys never collide with format-1 chunk keys,
        # which lets `migrate` write format 2 next to format 1 in place.
        if self.stacked:
            return f"{level}/c.{c}.{z}.{s_row}.{s_col}"
        return f"{level}/c.{c}.{s_row}.{s_col}"

    @property
    def chunks_per_shard(self) -> int:
        return self.shard * self.shard

    @property
    def chunk_channels(self) -> range:
        """The ``c`` indices chunks are stored under: one per channel, or only 0 for RGB."""
        return range(self.channels) if self.kind == "channels" else range(1)

    def locate(
        self, level: int, t_col: int, t_row: int, *, c: int = 0, z: int = 0
    ) -> tuple[str, int]:
        """(shard key, index of the chunk inside the shard, C order)."""
        s_col, s_row = divmod(t_col, self.shard), divmod(t_row, self.shard)
        key = self.shard_key(level, s_col[0], s_row[0], c=c, z=z)
        return key, s_row[1] * self.shard + s_col[1]

    def array_metadata(self, level: int) -> dict[str, Any]:
        size = self.levels[level]
        if self.kind == "channels":
            return self._channel_array_metadata(size)
        if self.codec == "jpeg":
            image_codecs: list[dict[str, Any]] = [
                {"name": JPEG_CODEC_NAME, "configuration": {"quality": self.quality}}
            ]
        else:
            image_codecs = [
                {"name": "bytes"},
                {"name": "zstd", "configuration": {"level": 3, "checksum": False}},
            ]
        if not self.stacked:
            chunk_codecs = [
                {"name": "transpose", "configuration": {"order": [1, 2, 0]}},
                *image_codecs,
            ]
            return self._array(size, [3, self.tile, self.tile], chunk_codecs)
        # (3, 1, tile, tile) chunks: the transpose drops the plane axis to the front, where
        # it has length 1, so the image codec still sees (tile, tile, 3) pixels in C order.
        chunk_codecs = [
            {"name": "transpose", "configuration": {"order": [1, 2, 3, 0]}},
            *image_codecs,
        ]
        return self._array(size, [3, 1, self.tile, self.tile], chunk_codecs)

    def _channel_array_metadata(self, size: Size) -> dict[str, Any]:
        chunk_codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, ZSTD_CODEC]
        inner = [1, *([1] if self.stacked else []), self.tile, self.tile]
        return self._array(size, inner, chunk_codecs)

    def _array(
        self, size: Size, inner: list[int], chunk_codecs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """An array's document: ``inner`` is one chunk's shape, (c[, z], tile, tile)."""
        if self.format_version == 1:
            grid, separator, codecs = inner, "/", chunk_codecs
        else:
            grid = [*inner[:-2], self.shard * self.tile, self.shard * self.tile]
            separator = "."
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
        planes = [self.planes] if self.stacked else []
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [self.channels, *planes, size.height, size.width],
            "data_type": self.dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
            "fill_value": self.fill_value,
            "codecs": codecs,
            "dimension_names": ["c", *(["z"] if self.stacked else []), "y", "x"],
            "attributes": {},
        }

    @property
    def plane_spacing(self) -> float:
        """The z scale: the mean step between planes in micrometres (1.0 when unknown)."""
        offsets = self.plane_offsets
        if len(offsets) < 2 or offsets[-1] == offsets[0]:
            return 1.0
        return abs(offsets[-1] - offsets[0]) / (len(offsets) - 1)

    def group_metadata(self, source: dict[str, Any]) -> dict[str, Any]:
        """Root group: OME-Zarr multiscales plus our own attributes (allowlisted only)."""
        mpp = source.get("mpp")
        unit = {"unit": "micrometer"} if mpp else {}
        mpp_x, mpp_y = mpp if mpp else (1.0, 1.0)
        z_scale = [self.plane_spacing] if self.stacked else []
        datasets = [
            {
                "path": str(level),
                "coordinateTransformations": [
                    {
                        "type": "scale",
                        "scale": [1.0, *z_scale, mpp_y * 2**level, mpp_x * 2**level],
                    }
                ],
            }
            for level in range(len(self.levels))
        ]
        z_axis = [{"name": "z", "type": "space", "unit": "micrometer"}] if self.stacked else []
        multiscale = {
            "name": self.slide_id,
            "axes": [
                {"name": "c", "type": "channel"},
                *z_axis,
                {"name": "y", "type": "space", **unit},
                {"name": "x", "type": "space", **unit},
            ],
            "datasets": datasets,
            "type": "mean",
        }
        ome: dict[str, Any] = {"version": OME_VERSION, "multiscales": [multiscale]}
        if self.kind == "channels":
            ome["omero"] = self._omero()
        return {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {
                "ome": ome,
                "tileserver": {
                    "format": FORMAT,
                    "format_version": self.format_version,
                    "slide_id": self.slide_id,
                    "tile": self.tile,
                    **({"shard": self.shard} if self.format_version >= 2 else {}),
                    "codec": self.codec,
                    "levels": [list(size) for size in self.levels],
                    "source": source,
                    **({} if self.plain_rgb else self.image_attributes()),
                },
            },
        }

    def _omero(self) -> dict[str, Any]:
        top = dtype_max(self.dtype)
        channels = []
        for info in self.channel_info:
            start, end = info.display_window(self.dtype)
            window = {"min": 0, "max": top, "start": start, "end": end}
            channels.append(
                {"label": info.name, "color": info.color, "active": info.active, "window": window}
            )
        return {
            "channels": channels,
            "rdefs": {"defaultZ": self.default_plane, "model": "color"},
        }

    def image_attributes(self) -> dict[str, Any]:
        """What a channel or z-stack store adds to ``attributes.tileserver`` (and what the
        reader's ``describe()`` says of any store)."""
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "channels": [info.to_json(self.dtype) for info in self.channel_info],
            "planes": list(self.plane_offsets) if self.stacked else [0.0],
            "default_plane": self.default_plane,
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
                **_image_fields(ours),
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
        layout.check_image_fields()
        return layout, source

    def check_image_fields(self) -> None:
        """Kind, dtype, channels and planes agree with each other; StoreError naming the first
        that does not (so a reader never sizes a buffer from an impossible description)."""
        problem = None
        if self.kind not in KINDS:
            problem = f"unknown kind {self.kind!r}"
        elif self.dtype not in DTYPES:
            problem = f"unsupported dtype {self.dtype!r}"
        elif self.kind == "rgb" and (self.dtype != "uint8" or self.channels != 3):
            problem = "an RGB store is 3 channels of uint8"
        elif self.kind == "channels" and (
            self.codec != "zstd"
            or not 1 <= self.channels <= MAX_CHANNELS
            or len(self.channel_info) != self.channels
        ):
            problem = "a channel store is zstd with 1..1024 described channels"
        elif not 1 <= self.planes <= MAX_PLANES or (
            self.stacked and len(self.plane_offsets) != self.planes
        ):
            problem = f"bad planes {self.planes} (offsets {list(self.plane_offsets)})"
        elif not 0 <= self.default_plane < self.planes:
            problem = f"default plane {self.default_plane} outside {self.planes} planes"
        elif not all(math.isfinite(z) for z in self.plane_offsets):
            problem = "plane offsets must be finite"
        if problem:
            raise StoreError(f"malformed store metadata: {problem}")


def _image_fields(ours: dict[str, Any]) -> dict[str, Any]:
    """kind, dtype, channels and planes from ``attributes.tileserver`` (absent: RGB, one
    plane, as every store before them)."""
    if "kind" not in ours:
        return {}
    kind, dtype = str(ours["kind"]), str(ours["dtype"])
    offsets = tuple(float(z) for z in ours["planes"])
    fields: dict[str, Any] = {
        "kind": kind,
        "dtype": dtype,
        "planes": len(offsets),
        "plane_offsets": offsets if len(offsets) > 1 else (),
        "default_plane": int(ours["default_plane"]),
    }
    if kind == "channels":
        entries = ours["channels"]
        if not isinstance(entries, list) or len(entries) > MAX_CHANNELS:
            raise ValueError("channels must be a list of at most 1024 entries")
        fields["channel_info"] = tuple(ChannelInfo.from_json(e, dtype) for e in entries)
        fields["channels"] = len(entries)
    return fields
