"""A slide held in memory: a real ``SlideSource`` (not a mock) over a (Z, H, W, S) array, so
builder tests can convert channel slides and z-stacks of any shape without a file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tileserver.errors import SlideNotFound, UnsupportedFeature
from tileserver.geometry import Region, Size
from tileserver.sources.base import Channel, Level, SlideInfo, SlideSource


class ArraySource(SlideSource):
    """``data`` is (planes, height, width, samples): channel samples of ``channels`` (uint8 or
    uint16), or uint8 RGB when ``channels`` is empty. One level, as a flat file has."""

    backend = "array"

    def __init__(
        self,
        data: np.ndarray,
        channels: tuple[Channel, ...] = (),
        planes: tuple[float, ...] = (),
        best_plane: int | None = None,
        path: Path = Path("in-memory.ome.tif"),  # a file that exists, where one must
    ) -> None:
        _, height, width, _ = data.shape
        info = SlideInfo(
            backend=self.backend,
            vendor="synthetic",
            levels=(Level(Size(width, height), 1.0, None),),
            mpp=(0.5, 0.5),
            objective_power=20.0,
            associated=(),
            icc_profile=None,
            channels=channels,
            dtype=str(data.dtype),
            planes=planes,
            best_plane=best_plane,
        )
        super().__init__(path, info)
        self.data = data

    def _read(self, level: int, l_region: Region, z: int, fill: int) -> np.ndarray:
        self.check_region(level, l_region, z)
        out = np.full((l_region.height, l_region.width, self.data.shape[3]), fill, self.data.dtype)
        inside = l_region.intersect(self.info.dimensions)
        if inside.width and inside.height:
            y, x = inside.y - l_region.y, inside.x - l_region.x
            out[y : y + inside.height, x : x + inside.width] = self.data[
                z, inside.y : inside.y + inside.height, inside.x : inside.x + inside.width
            ]
        return out

    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        if self.info.channels:
            raise UnsupportedFeature(f"{self.name}: a channel slide has no RGB pixels")
        return self._read(level, l_region, z, 255)

    def read_channels(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        if not self.info.channels:
            raise UnsupportedFeature(f"{self.name}: an RGB slide has no channels to read")
        return self._read(level, l_region, z, 0)

    def read_associated(self, name: str) -> np.ndarray:
        raise SlideNotFound(f"{self.name}: no associated image {name!r}")


def fluorescence(
    planes: int, height: int, width: int, channels: int, dtype: str, seed: int = 0
) -> np.ndarray:
    """Sparse bright nuclei on a dark, faintly noisy background; a dark margin (never-written
    chunks) on the left. Each channel and plane differs."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    data = rng.integers(0, top // 50, (planes, height, width, channels), endpoint=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for z in range(planes):
        for c in range(channels):
            for _ in range(12):
                cy, cx = rng.integers(0, height), rng.integers(width // 4, width)
                r = rng.integers(4, 20)
                disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                data[z, :, :, c][disk] = rng.integers(top // 4, top, endpoint=True)
    data[:, :, : width // 4] = 0
    return data.astype(dtype)
