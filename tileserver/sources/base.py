"""The one interface every slide backend implements.

A source parses everything at open into a frozen ``SlideInfo``; afterwards only the read
methods do I/O, and they are safe to call from many threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from tileserver.errors import RegionError, UnsupportedFeature
from tileserver.geometry import Region, Size

# A region read allocates width*height*3 bytes: refuse sizes that would exhaust memory.
MAX_REGION_PIXELS = 1 << 28
# One decode (a tile, a strip, an associated image): far above any real slide's, far below
# what a codestream header can claim (65500 x 65500 JPEG, 2**32 x 2**32 JPEG 2000).
MAX_DECODE_PIXELS = 1 << 26


@dataclass(frozen=True)
class Level:
    """One pyramid level as the file stores it."""

    size: Size  # level pixels
    downsample: float  # level-0 pixels per level pixel
    tile: Size | None  # the file's tile (or strip) size, when it is chunked


# Sample types a channel slide may hold; anything else is refused at open.
CHANNEL_DTYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class Channel:
    """One channel of a fluorescence / multiplex slide (one sample per pixel)."""

    name: str
    color: str | None = None  # "RRGGBB" hex display colour, when the file gives one
    emission_nm: float | None = None  # emission wavelength in nanometres, when given


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is, parsed once at open. ``properties`` holds allowlisted metadata only.

    ``channels`` empty means an RGB (brightfield) slide; otherwise each pixel holds one
    sample per channel, of ``dtype``. ``planes`` are the focal planes' z offsets in
    micrometres (empty: one plane).
    """

    backend: str
    vendor: str
    levels: tuple[Level, ...]
    mpp: tuple[float, float] | None  # micrometres per level-0 pixel, (x, y)
    objective_power: float | None
    associated: tuple[str, ...]
    icc_profile: bytes | None = field(repr=False)
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    channels: tuple[Channel, ...] = ()
    dtype: str = "uint8"  # of read_channels' samples: one of CHANNEL_DTYPES
    planes: tuple[float, ...] = ()
    best_plane: int | None = None  # the declared best focus, if any

    @property
    def dimensions(self) -> Size:
        return self.levels[0].size

    @property
    def plane_count(self) -> int:
        return max(1, len(self.planes))

    @property
    def default_plane(self) -> int:
        """The plane shown by default: the declared best focus, else the middle one."""
        if self.best_plane is not None and 0 <= self.best_plane < self.plane_count:
            return self.best_plane
        return (self.plane_count - 1) // 2


@dataclass(frozen=True)
class RawTile:
    """A tile exactly as the file stores it, made standalone (e.g. JPEG tables merged in)."""

    data: bytes = field(repr=False)
    codec: str  # "jpeg"
    size: Size  # the encoded tile size; edge tiles are encoded at full size, like the file


class SlideSource(ABC):
    """An open slide. Immutable after open; read methods are thread-safe."""

    backend: ClassVar[str]

    def __init__(self, path: Path, info: SlideInfo) -> None:
        self.path = path
        self.info = info
        self.files: tuple[Path, ...] = (path,)  # what the slide is read from (a series: all)

    @property
    def name(self) -> str:
        return self.path.name

    @abstractmethod
    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        """uint8 RGB pixels (height, width, 3) of a region in level pixels, of plane ``z``.

        Parts outside the level are white. Raises ``RegionError`` for a bad level, plane or
        an oversized region and ``CorruptSlide`` when the file's pixel data is broken.
        Channel slides raise ``UnsupportedFeature``: their pixels come from read_channels.
        """

    def read_channels(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        """(height, width, C) samples of ``info.dtype`` of a region in level pixels, of plane
        ``z``; C = len(info.channels). Parts outside the level are 0 (dark background).
        Only channel slides have channels: RGB sources raise ``UnsupportedFeature``."""
        raise UnsupportedFeature(f"{self.name}: an RGB slide has no channels to read")

    @abstractmethod
    def read_associated(self, name: str) -> np.ndarray:
        """uint8 RGB pixels of an associated image (thumbnail, label, macro)."""

    def raw_tile(self, level: int, t_col: int, t_row: int) -> RawTile | None:
        """The stored compressed tile, when the backend can give it without decoding."""
        return None

    def raw_tile_codec(self, level: int) -> str | None:
        """The codec ``raw_tile`` returns for this level, or None when it returns nothing."""
        return None

    def identifying_properties(self) -> dict[str, str]:
        """Every vendor property, identifying fields included. Only for explicit requests."""
        return dict(self.info.properties)

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release the file handles."""

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_region(self, level: int, l_region: Region, z: int = 0) -> None:
        """Validate a read request before allocating anything."""
        if not 0 <= level < len(self.info.levels):
            last = len(self.info.levels) - 1
            raise RegionError(f"{self.name}: level {level} out of range 0..{last}")
        if not 0 <= z < self.info.plane_count:
            raise RegionError(f"{self.name}: plane {z} out of range 0..{self.info.plane_count - 1}")
        if l_region.width <= 0 or l_region.height <= 0:
            raise RegionError(f"{self.name}: empty region {l_region.width}x{l_region.height}")
        # The cap is on bytes allocated: RGB's 3 bytes a pixel, so wide or 16-bit channel
        # slides allow proportionally fewer pixels.
        per_pixel = max(3, len(self.info.channels)) * np.dtype(self.info.dtype).itemsize
        cap = MAX_REGION_PIXELS * 3 // per_pixel
        if l_region.width * l_region.height > cap:
            raise RegionError(
                f"{self.name}: region {l_region.width}x{l_region.height} exceeds the cap of "
                f"{cap} pixels"
            )


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) from gray, gray+extra, RGB or RGB+extra samples.

    Extra samples are dropped, as OpenSlide does: in slide files they are unassociated
    alpha or masks, not transparency the viewer should blend.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    color = pixels[:, :, :1] if pixels.shape[2] in (1, 2) else pixels[:, :, :3]
    if color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    return np.ascontiguousarray(color)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) from non-premultiplied RGBA: transparent parts become white."""
    alpha = rgba[:, :, 3:].astype(np.uint16)
    color = rgba[:, :, :3].astype(np.uint16)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
