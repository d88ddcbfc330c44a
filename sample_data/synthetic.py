"""Deterministic synthetic H&E whole-slide images, written tile by tile with bounded memory.

``render_tile`` evaluates a procedural tissue texture at absolute level-0 coordinates, so any
region of any pyramid level can be rendered on its own and tiles are seamless.  ``write_svs``
and ``write_tiff`` stream tiles from a small thread pool (the Numba kernel releases the GIL)
straight into :class:`tifffile.TiffWriter`; no level is ever held in memory.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sample_data._associated import make_label, make_macro
from sample_data._kernel import THRESHOLD, render_kernel

__all__ = [
    "APERIO_HEADER",
    "CANARY_BARCODE",
    "CANARY_PATIENT",
    "render_tile",
    "svs_levels",
    "tiff_levels",
    "write_svs",
    "write_tiff",
]

CANARY_PATIENT: str = "SMITH^JOHN"
CANARY_BARCODE: str = "S24-12345"
APERIO_HEADER: str = "Aperio Image Library v12.0.15"

_BUFFERSIZE = 16 * 2**20  # bytes of raw tiles tifffile may hold before compressing them
_MAX_SVS_LEVELS = 4
_THUMBNAIL_MAX = 1024


def _salt(seed: int) -> int:
    """Map any integer seed to a 31-bit salt (leaving room for per-octave offsets)."""
    return (int(seed) * 2654435761 + 0x5BD1E995) % (2**31 - 64)


def render_tile(
    x0: int, y0: int, width: int, height: int, downsample: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Return the (height, width, 3) uint8 RGB pixels of the synthetic slide.

    The region starts at ``(x0, y0)`` in the pixel frame of a level with the given
    ``downsample`` (level-0 coordinate = level coordinate x downsample).  Pure and
    deterministic: the same arguments always give the same pixels.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"tile size must be positive, got {width}x{height}")
    if not downsample > 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    out = np.empty((int(height), int(width), 3), np.uint8)
    render_kernel(out, int(x0), int(y0), float(downsample), _salt(seed), THRESHOLD)
    return out


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _tiles(
    width: int, height: int, tile: int, downsample: float, seed: int, progress: str | None
) -> Iterator[np.ndarray]:
    """Yield the tiles of one level in row-major order, rendered ahead by a thread pool."""
    ny, nx = -(-height // tile), -(-width // tile)
    workers = _workers()
    lookahead = 4 * workers
    bar: Any = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=nx * ny, desc=progress, unit="tile", file=sys.stderr)

    def take() -> np.ndarray:
        result = pending.popleft().result()
        if bar is not None:
            bar.update()
        return result

    pending: deque[Future[np.ndarray]] = deque()
    try:
        with ThreadPoolExecutor(workers) as pool:
            for ty in range(ny):
                for tx in range(nx):
                    pending.append(
                        pool.submit(render_tile, tx * tile, ty * tile, tile, tile, downsample, seed)
                    )
                    if len(pending) >= lookahead:
                        yield take()
            while pending:
                yield take()
    finally:
        if bar is not None:
            bar.close()


def _check(width: int, height: int, tile: int, quality: int, mpp: float) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")


def _bigtiff(width: int, height: int) -> bool:
    # raw RGB size of level 0 plus pyramid; above ~2 GiB leave the 4 GiB classic-TIFF limit alone
    return width * height * 3 * 4 // 3 > 2**31


def svs_levels(width: int, height: int, tile: int = 240) -> list[tuple[int, int, int]]:
    """(width, height, downsample) of the SVS pyramid: 4x steps, >= one tile, <= 4 levels."""
    levels = [(width, height, 1)]
    ds = 4
    while len(levels) < _MAX_SVS_LEVELS:
        w, h = width // ds, height // ds
        if max(w, h) < tile:
            break
        levels.append((w, h, ds))
        ds *= 4
    return levels


def tiff_levels(width: int, height: int, tile: int = 256) -> list[tuple[int, int, int]]:
    """(width, height, downsample) of the generic/OME pyramid: 2x steps down to ~one tile."""
    return _levels(width, height, tile, 2)


def _levels(width: int, height: int, tile: int, step: int) -> list[tuple[int, int, int]]:
    """(width, height, downsample) levels at ``step``x steps, down to about one tile."""
    levels = [(width, height, 1)]
    ds = step
    while max(width // ds, height // ds) >= tile and min(width // ds, height // ds) >= 1:
        levels.append((width // ds, height // ds, ds))
        ds *= step
    return levels


def _macro(width: int, height: int, seed: int, label: np.ndarray | None = None) -> np.ndarray:
    """The glass-slide photo: the (canary) label beside the slide's texture."""
    if label is None:
        label = make_label(CANARY_PATIENT, CANARY_BARCODE)
    return make_macro(label, (width, height), lambda w, h, ds: render_tile(0, 0, w, h, ds, seed))


def _thumbnail(width: int, height: int, seed: int, longest: int) -> np.ndarray:
    ds = max(1.0, max(width, height) / longest)
    w, h = max(1, round(width / ds)), max(1, round(height / ds))
    return render_tile(0, 0, w, h, ds, seed)


def write_svs(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    tile: int = 240,
    quality: int = 80,
    seed: int = 0,
    mpp: float = 0.25,
    app_mag: int = 40,
    progress: bool = False,
    iccprofile: bytes | None = None,
) -> Path:
    """Write an Aperio-style SVS (tiled JPEG pyramid + thumbnail, label and macro images).

    The ImageDescription carries planted identifiers (``Filename = CANARY_PATIENT``,
    ``Barcode = CANARY_BARCODE``, date, user, ...) and the label/macro images show them as
    text, for de-identification tests.  ``iccprofile`` tags level 0 (sample_data.icc).
    Returns the path written.
    """
    _check(width, height, tile, quality, mpp)
    path = Path(path)
    levels = svs_levels(width, height, tile)
    first = f"{APERIO_HEADER} \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    meta = (
        f"AppMag = {app_mag}|MPP = {mpp}|Filename = {CANARY_PATIENT}|Date = 03/14/24"
        f"|Time = 09:26:53|User = jdoe|ScanScope ID = SS1234|Barcode = {CANARY_BARCODE}"
        "|Foo = CANARY42"
    )
    jpeg: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "software": False,
    }
    tiled: dict[str, Any] = {
        **jpeg,
        "dtype": np.uint8,
        "tile": (tile, tile),
        "maxworkers": _workers(),
        "buffersize": _BUFFERSIZE,
    }
    render_tile(0, 0, 16, 16, 1.0, seed)  # compile the kernel before the pool starts
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(width, height)) as tif:
        for index, (w, h, ds) in enumerate(levels):
            if index == 0:
                desc = f"{first} JPEG/RGB Q={quality}|{meta}"
            else:
                desc = f"{first} -> {w}x{h} JPEG/RGB Q={quality}"
            bar = f"SVS level {index}" if progress else None
            tif.write(
                _tiles(w, h, tile, float(ds), seed, bar),
                shape=(h, w, 3),
                description=desc,
                iccprofile=iccprofile if index == 0 else None,
                **tiled,
            )
            if index == 0:  # OpenSlide takes the second directory as the thumbnail
                thumb = _thumbnail(width, height, seed, _THUMBNAIL_MAX)
                th, tw = thumb.shape[:2]
                desc = f"{APERIO_HEADER} \r\n{width}x{height} -> {tw}x{th} - |{meta}"
                tif.write(thumb, description=desc, **jpeg)
        label = make_label(CANARY_PATIENT, CANARY_BARCODE)
        lh, lw = label.shape[:2]
        tif.write(
            label,
            description=f"{APERIO_HEADER}\r\nlabel {lw}x{lh}",
            photometric="rgb",
            compression="lzw",
            subfiletype=1,
            metadata=None,
            software=False,
        )
        macro = _macro(width, height, seed, label)
        mh, mw = macro.shape[:2]
        tif.write(macro, description=f"{APERIO_HEADER}\r\nmacro {mw}x{mh}", subfiletype=9, **jpeg)
    return path


def write_tiff(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    tile: int = 256,
    quality: int = 80,
    seed: int = 0,
    mpp: float = 0.25,
    ome: bool = False,
    compression: str = "jpeg",
    progress: bool = False,
    iccprofile: bytes | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF (levels at 2x steps) or, with ``ome=True``, an OME-TIFF.

    Plain TIFF: every level is its own page, lower ones with ``subfiletype=1`` (OpenSlide
    opens it as ``generic-tiff``).  OME-TIFF: lower levels live in SubIFDs of the full-size
    page (``tifffile.TiffFile(path).series[0].levels``).  ``compression`` is ``"jpeg"``
    (with ``quality``), ``"zlib"``, ``"none"`` or any other codec name tifffile accepts.
    Resolution tags (and OME PhysicalSize) are set from ``mpp``; ``iccprofile`` tags level 0
    (sample_data.icc).  Returns the path written.
    """
    _check(width, height, tile, quality, mpp)
    path = Path(path)
    levels = tiff_levels(width, height, tile)
    codec = compression.lower()
    opts: dict[str, Any] = {
        "photometric": "rgb",
        "dtype": np.uint8,
        "tile": (tile, tile),
        "maxworkers": _workers(),
        "buffersize": _BUFFERSIZE,
        "resolutionunit": "CENTIMETER",
        "compression": None if codec == "none" else codec,
    }
    if codec == "jpeg":
        opts["compressionargs"] = {"level": quality}
    render_tile(0, 0, 16, 16, 1.0, seed)  # compile the kernel before the pool starts
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(width, height), ome=ome) as tif:
        for index, (w, h, ds) in enumerate(levels):
            res = 1e4 / (mpp * ds)
            extra: dict[str, Any]
            if index == 0 and ome:
                extra = {
                    "subifds": len(levels) - 1,
                    "metadata": {
                        "axes": "YXS",
                        "Name": "synthetic H&E",
                        "PhysicalSizeX": mpp,
                        "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": mpp,
                        "PhysicalSizeYUnit": "µm",
                    },
                }
            elif index == 0:
                extra = {"metadata": None, "description": "synthetic H&E pyramid"}
            else:
                extra = {"subfiletype": 1, "metadata": None}
            tif.write(
                _tiles(w, h, tile, float(ds), seed, f"TIFF level {index}" if progress else None),
                shape=(h, w, 3),
                resolution=(res, res),
                iccprofile=iccprofile if index == 0 else None,
                **opts,
                **extra,
            )
    return path
