"""Deterministic synthetic fluorescence slides and z-stacks, written tile by tile.

``render_channel`` evaluates one channel of a procedural immunofluorescence image at
absolute level-0 coordinates: sparse bright nuclei (DAPI) inside tissue islands on a dark
background, and per marker a subset of cells positive in the nucleus, the membrane or the
cytoplasm. Any region of any level and focal plane renders on its own and tiles are
seamless. ``write_fluorescence`` streams tiles (one channel and plane at a time, a small
thread pool ahead) into a pyramidal OME-TIFF, so a 20000 x 20000 x 8-channel 16-bit slide
needs tens of megabytes of memory, not 6 GB. ``write_rgb_z_stack`` writes the synthetic H&E
at several focal planes (a crude defocus away from the middle one).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sample_data.synthetic import render_tile, tiff_levels

__all__ = [
    "PANEL",
    "FluorChannel",
    "panel",
    "render_channel",
    "write_fluorescence",
    "write_rgb_z_stack",
]

_BUFFERSIZE = 16 * 2**20  # bytes of raw tiles tifffile may hold before compressing them
_CELL = 24  # level-0 pixels per cell of the nucleus lattice
_ISLAND = 3072  # level-0 pixels per cell of the tissue-island lattice
_M32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class FluorChannel:
    name: str
    color: str  # "RRGGBB"
    emission_nm: float


# A typical multiplex immunofluorescence panel (Opal dyes), DAPI first.
PANEL = (
    FluorChannel("DAPI", "0000ff", 461.0),
    FluorChannel("Opal 520", "00ff00", 520.0),
    FluorChannel("Opal 570", "ffff00", 570.0),
    FluorChannel("Opal 690", "ff0000", 690.0),
    FluorChannel("Opal 620", "ff8000", 620.0),
    FluorChannel("Opal 480", "00ffff", 480.0),
    FluorChannel("Opal 780", "ff00ff", 780.0),
    FluorChannel("Autofluorescence", "808080", 540.0),
)


def panel(count: int) -> tuple[FluorChannel, ...]:
    """``count`` channels: the panel above, then numbered markers."""
    if count < 1:
        raise ValueError(f"need at least one channel, got {count}")
    extra = tuple(
        FluorChannel(f"Marker {i}", PANEL[i % len(PANEL)].color, 500.0 + 10 * i)
        for i in range(len(PANEL), count)
    )
    return (PANEL + extra)[:count]


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """32-bit integer hash of lattice coordinates (as uint64 arrays of values < 2**32)."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B1)) & _M32
    h = h ^ ((iy.astype(np.uint64) * np.uint64(0x85EBCA77) + np.uint64(salt)) & _M32)
    h = ((h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)) & _M32
    h = ((h ^ (h >> np.uint64(12))) * np.uint64(0x297A2D39)) & _M32
    out: np.ndarray = h ^ (h >> np.uint64(15))
    return out


def _unit(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) per lattice point."""
    return (_hash(ix, iy, salt) & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(1 << 24)


def _islands(u: np.ndarray, v: np.ndarray, salt: int) -> np.ndarray:
    """Smooth value noise in [0, 1) over level-0 coordinates: tissue where it is high."""
    fu, fv = u / _ISLAND, v / _ISLAND
    iu, iv = np.floor(fu), np.floor(fv)
    tu, tv = fu - iu, fv - iv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    iu64, iv64 = (iu + (1 << 20)).astype(np.uint64), (iv + (1 << 20)).astype(np.uint64)
    one = np.uint64(1)
    top = _unit(iu64, iv64, salt) * (1 - tu) + _unit(iu64 + one, iv64, salt) * tu
    bottom = _unit(iu64, iv64 + one, salt) * (1 - tu) + _unit(iu64 + one, iv64 + one, salt) * tu
    return top * (1 - tv) + bottom * tv


@lru_cache(maxsize=64)
def _noise(salt: int) -> np.ndarray:
    """A 251 x 257 table of noise in 0..63 (float32)."""
    iy, ix = np.meshgrid(np.arange(251, dtype=np.uint64), np.arange(257, dtype=np.uint64))
    table: np.ndarray = (_hash(ix.T, iy.T, salt) & np.uint64(63)).astype(np.float32)
    return table


def render_channel(
    channel: int,
    x0: int,
    y0: int,
    width: int,
    height: int,
    downsample: float = 1.0,
    *,
    dtype: str = "uint16",
    z: int = 0,
    planes: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """The (height, width) samples of one channel of the synthetic fluorescence slide.

    The region starts at ``(x0, y0)`` in the pixels of a level with ``downsample``
    (level-0 = level x downsample), at focal plane ``z`` of ``planes`` (cells are sharpest
    near their own depth, blurred and dimmer away from it). Pure and deterministic.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"region size must be positive, got {width}x{height}")
    if not downsample > 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype!r}")
    if not 0 <= z < planes:
        raise ValueError(f"plane {z} outside 0..{planes - 1}")
    top = float(np.iinfo(dtype).max)
    salt = (int(seed) * 2654435761 + 0x5BD1E995) % (2**31)
    ds = np.float32(downsample)
    # Level-0 coordinates of pixel centres, and the nucleus-lattice cell of each.
    u = ((np.arange(width, dtype=np.float32) + np.float32(x0) + 0.5) * ds)[None, :]
    v = ((np.arange(height, dtype=np.float32) + np.float32(y0) + 0.5) * ds)[:, None]
    cu, cv = np.floor(u / _CELL).astype(np.int64), np.floor(v / _CELL).astype(np.int64)
    ju, jv = cu - cu.min(), cv - cv.min()  # indices into the per-cell grids below
    # Per cell (on the small grid of cells the region touches; lattice offset to stay
    # positive): a nucleus inside tissue or not, its radius, centre, depth, brightness.
    gu = np.arange(cu.min(), cu.max() + 1)[None, :]
    gv = np.arange(cv.min(), cv.max() + 1)[:, None]
    iu, iv = (gu + (1 << 20)).astype(np.uint64), (gv + (1 << 20)).astype(np.uint64)

    def cell(param: int) -> np.ndarray:
        return _unit(iu, iv, salt + param)

    centre_u = ((gu + 0.5) * _CELL).astype(np.float32)
    centre_v = ((gv + 0.5) * _CELL).astype(np.float32)
    tissue_cells = _islands(centre_u, centre_v, salt) > 0.45
    present_cells = tissue_cells & (cell(1) < 0.55)
    radius_cells = 4.0 + 4.0 * cell(2)
    room = _CELL / 2 - radius_cells - 1.5
    cx = (centre_u + (2 * cell(3) - 1) * room)[jv, ju]
    cy = (centre_v + (2 * cell(4) - 1) * room)[jv, ju]
    radius = radius_cells[jv, ju]
    dist = np.sqrt(np.square(u - cx) + np.square(v - cy))
    soft: np.ndarray | np.float32 = np.float32(max(0.75 * float(ds), 1.0))  # edge, level-0 px
    focus: np.ndarray | float = 1.0
    if planes > 1:
        defocus = np.abs(np.float32(z) - cell(5) * np.float32(planes - 1))
        soft = np.maximum(soft, 1.0 + 2.0 * defocus)[jv, ju]
        focus = 1.0 / (1.0 + 0.35 * defocus**2)

    def disc(r: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.clip((r - dist) / soft + np.float32(0.5), 0.0, 1.0)
        return out

    if channel == 0:  # DAPI: every nucleus
        shown = present_cells
        amplitude = 0.35 + 0.5 * cell(6)
        signal = disc(radius)
    else:  # a quarter of the cells carry each marker
        shown = present_cells & (cell(16 + channel) < 0.25)
        amplitude = 0.2 + 0.7 * cell(32 + channel)
        kind = channel % 3
        if kind == 1:  # nuclear marker
            signal = disc(radius)
        elif kind == 2:  # membrane: a ring around the cell
            signal = disc(radius * 1.7) - disc(radius * 1.35)
        else:  # cytoplasm
            signal = disc(radius * 1.6) - disc(radius)
    weight = (shown * amplitude * focus * np.float32(top))[jv, ju]
    # Dark background, a little brighter in tissue, with camera noise of a few counts
    # (a fixed noise table indexed with coprime periods: cheap and seamless).
    noise = _noise(salt + 64 + channel)[
        (np.arange(height) + y0)[:, None] % 251, (np.arange(width) + x0)[None, :] % 257
    ]
    base = ((0.004 + 0.006 * tissue_cells) * top).astype(np.float32)[jv, ju]
    value = base + noise * np.float32(top / 8192) + signal * weight
    pixels: np.ndarray = np.clip(value, 0, top).astype(dtype)
    return pixels


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _ahead(jobs: Iterator[Callable[[], np.ndarray]], label: str | None) -> Iterator[np.ndarray]:
    """Run jobs on a thread pool a few ahead, yielding results in order (NumPy frees the
    GIL for most of the work)."""
    workers = _workers()
    bar: Any = None
    if label is not None:
        from tqdm import tqdm

        bar = tqdm(desc=label, unit="tile", file=sys.stderr)
    pending: deque[Future[np.ndarray]] = deque()
    try:
        with ThreadPoolExecutor(workers) as pool:
            for job in jobs:
                pending.append(pool.submit(job))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
                    if bar is not None:
                        bar.update()
            while pending:
                yield pending.popleft().result()
    finally:
        if bar is not None:
            bar.close()


def _ome_color(rgb: str) -> int:
    """OME's Color: RGBA packed into a signed 32-bit integer."""
    return int.from_bytes(bytes.fromhex(rgb + "ff"), "big", signed=True)


def write_fluorescence(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    channels: int = 8,
    dtype: str = "uint16",
    planes: int = 1,
    tile: int = 512,
    seed: int = 0,
    mpp: float = 0.5,
    z_step: float = 1.0,
    compression: str = "zstd",
    pyramid: bool = True,
    progress: bool = False,
) -> Path:
    """Write a pyramidal (levels at 2x steps in SubIFDs) OME-TIFF of ``channels`` channels
    (a page per channel and plane) of ``dtype``, with ``planes`` focal planes ``z_step`` um
    apart. ``pyramid=False`` writes level 0 only (a flat OME-TIFF). Channel names, colours
    and emission wavelengths come from ``panel(channels)``. Returns the path written."""
    if width <= 0 or height <= 0:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if planes < 1 or not mpp > 0 or not z_step > 0:
        raise ValueError("planes must be >= 1, mpp and z_step positive")
    chans = panel(channels)
    render_channel(0, 0, 0, 16, 16, dtype=dtype)  # validate before opening the file
    path = Path(path)
    levels = tiff_levels(width, height, tile) if pyramid else [(width, height, 1)]
    codec = None if compression == "none" else compression
    bigtiff = width * height * channels * planes * np.dtype(dtype).itemsize > 2**31
    metadata: dict[str, Any] = {
        "axes": "CZYX" if planes > 1 else "CYX",
        "Name": "synthetic immunofluorescence",
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
        "Channel": {
            "Name": [c.name for c in chans],
            "Color": [_ome_color(c.color) for c in chans],
            "EmissionWavelength": [c.emission_nm for c in chans],
            "EmissionWavelengthUnit": ["nm"] * channels,
        },
    }
    if planes > 1:
        metadata.update(PhysicalSizeZ=z_step, PhysicalSizeZUnit="µm")
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=True) as tif:
        for index, (w, h, ds) in enumerate(levels):

            def jobs(w: int = w, h: int = h, ds: int = ds) -> Iterator[Callable[[], np.ndarray]]:
                for c in range(channels):
                    for z in range(planes):
                        for y in range(0, h, tile):
                            for x in range(0, w, tile):
                                yield partial(
                                    render_channel,
                                    c,
                                    x,
                                    y,
                                    tile,
                                    tile,
                                    float(ds),
                                    dtype=dtype,
                                    z=z,
                                    planes=planes,
                                    seed=seed,
                                )

            shape = (channels, planes, h, w) if planes > 1 else (channels, h, w)
            extra: dict[str, Any] = (
                {"subifds": len(levels) - 1, "metadata": metadata}
                if index == 0
                else {"subfiletype": 1, "metadata": None}
            )
            tif.write(
                _ahead(jobs(), f"level {index}" if progress else None),
                shape=shape,
                dtype=dtype,
                tile=(tile, tile),
                photometric="minisblack",
                compression=codec,
                maxworkers=_workers(),
                buffersize=_BUFFERSIZE,
                resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)),
                resolutionunit="CENTIMETER",
                **extra,
            )
    return path


def _defocused(x0: int, y0: int, size: int, ds: float, blur: int, seed: int) -> np.ndarray:
    """The H&E tile rendered ``2**blur`` times coarser and enlarged back: a crude defocus
    that stays seamless because tile corners fall on the coarse grid."""
    if blur == 0:
        return render_tile(x0, y0, size, size, ds, seed)
    f = 1 << blur
    coarse = render_tile(x0 // f, y0 // f, -(-size // f), -(-size // f), ds * f, seed)
    return np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)[:size, :size]


def write_rgb_z_stack(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    planes: int = 3,
    tile: int = 256,
    seed: int = 0,
    mpp: float = 0.25,
    z_step: float = 1.0,
    compression: str = "zlib",
) -> Path:
    """Write the synthetic H&E as an OME-TIFF z-stack (axes ZYXS, level 0 only): the middle
    plane in focus, others coarser the further they are from it. Returns the path."""
    if planes < 1 or tile <= 0 or tile % 16:
        raise ValueError("planes must be >= 1 and tile a positive multiple of 16")
    path = Path(path)
    middle = (planes - 1) // 2

    def jobs() -> Iterator[Callable[[], np.ndarray]]:
        for z in range(planes):
            for y in range(0, height, tile):
                for x in range(0, width, tile):
                    yield partial(_defocused, x, y, tile, 1.0, min(abs(z - middle), 4), seed)

    render_tile(0, 0, 16, 16, 1.0, seed)  # compile the kernel before the pool starts
    metadata = {
        "axes": "ZYXS",
        "Name": "synthetic H&E z-stack",
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeZ": z_step,
        "PhysicalSizeZUnit": "µm",
    }
    with tifffile.TiffWriter(path, ome=True, bigtiff=width * height * 3 * planes > 2**31) as tif:
        tif.write(
            _ahead(jobs(), None),
            shape=(planes, height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="rgb",
            compression=None if compression == "none" else compression,
            metadata=metadata,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
    return path
