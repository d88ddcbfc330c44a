"""Decompression bombs: TIFF files of about a kilobyte whose compressed tiles (or associated
images) declare far more pixels than the TIFF geometry has room for. For tests of the
"check declared sizes before decoding" rule (security requirement DOS-06); never commit the
files themselves, generate them.

A decoder trusts the codestream header: the JPEG frame header (SOF) or the JPEG 2000 image
header (SIZ) below claims ``claim x claim`` pixels, so decoding one 256-pixel tile would
allocate ``claim**2 * 3`` bytes (12 GiB at the default 65500).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

__all__ = [
    "BOMB_CLAIM",
    "bomb_j2k",
    "bomb_jpeg",
    "write_j2k_bomb",
    "write_jpeg_bomb",
    "write_label_bomb",
]

BOMB_CLAIM = 65500  # the largest size a JPEG frame header can hold
_TILE = 256
_APERIO = "Aperio Image Library v12.0.15"
_APERIO_JP2000_RGB = 33005


def _small_pixels() -> np.ndarray:
    return np.full((16, 16, 3), (230, 200, 220), np.uint8)


def bomb_jpeg(claim: int = BOMB_CLAIM) -> bytes:
    """A valid 16x16 baseline JPEG whose frame header is rewritten to ``claim x claim``."""
    out = io.BytesIO()
    Image.fromarray(_small_pixels()).save(out, "JPEG", quality=50)
    data = bytearray(out.getvalue())
    i = 2
    while i < len(data):
        marker = data[i + 1]
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker == 0xC0:  # SOF0: length, precision, then height and width
            struct.pack_into(">HH", data, i + 5, claim, claim)
            return bytes(data)
        i += 2 + length
    raise AssertionError("Pillow wrote a JPEG without an SOF0 marker")


def bomb_j2k(claim: int = BOMB_CLAIM) -> bytes:
    """A valid 16x16 JPEG 2000 codestream whose SIZ marker claims ``claim x claim`` pixels in
    one tile of that size."""
    data = bytearray(imagecodecs.jpeg2k_encode(_small_pixels(), level=0, codecformat="j2k"))
    if data[:4] != b"\xff\x4f\xff\x51":
        raise AssertionError("expected a bare codestream: SOC, SIZ")
    # SIZ: marker, Lsiz, Rsiz, then Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz (32 bits each).
    struct.pack_into(">II", data, 8, claim, claim)
    struct.pack_into(">II", data, 24, claim, claim)
    return bytes(data)


def _one(segment: bytes) -> Iterator[bytes]:
    yield segment


def _write_tile(tif: tifffile.TiffWriter, segment: bytes, compression: Any, **extra: Any) -> None:
    tif.write(
        _one(segment),
        shape=(_TILE, _TILE, 3),
        dtype=np.uint8,
        tile=(_TILE, _TILE),
        compression=compression,
        photometric="rgb",
        metadata=None,
        software=False,
        **extra,
    )


def write_jpeg_bomb(path: str | os.PathLike[str], claim: int = BOMB_CLAIM) -> Path:
    """A 256x256 generic TIFF of one JPEG tile that declares ``claim x claim`` pixels."""
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        _write_tile(tif, bomb_jpeg(claim), "jpeg")
    return path


def write_j2k_bomb(path: str | os.PathLike[str], claim: int = BOMB_CLAIM) -> Path:
    """A 256x256 Aperio-style SVS of one JPEG 2000 tile that declares ``claim x claim``."""
    path = Path(path)
    desc = f"{_APERIO}\r\n{_TILE}x{_TILE} [0,0 {_TILE}x{_TILE}] ({_TILE}x{_TILE}) J2K/KDU Q=30"
    with tifffile.TiffWriter(path) as tif:
        _write_tile(tif, bomb_j2k(claim), _APERIO_JP2000_RGB, description=desc)
    return path


def write_label_bomb(
    path: str | os.PathLike[str], *, declared: int = _TILE, claim: int = BOMB_CLAIM
) -> Path:
    """An Aperio-style SVS with a sound level 0 and thumbnail whose label is one JPEG strip:
    the TIFF tags say ``declared x declared``, the strip's JPEG says ``claim x claim``.

    ``declared=claim`` makes the tags themselves the bomb (a reader that allocates what the
    tags say); the default makes the strip the bomb (a reader that decodes what it finds)."""
    path = Path(path)
    tile = io.BytesIO()
    Image.fromarray(np.full((_TILE, _TILE, 3), 220, np.uint8)).save(tile, "JPEG", quality=50)
    desc = f"{_APERIO}\r\n{_TILE}x{_TILE} [0,0 {_TILE}x{_TILE}] ({_TILE}x{_TILE}) JPEG/RGB Q=50"
    jpeg: dict[str, Any] = {
        "compression": "jpeg",
        "photometric": "rgb",
        "metadata": None,
        "software": False,
    }
    # A classic TIFF cannot hold the byte count a huge uncompressed strip would have.
    with tifffile.TiffWriter(path, bigtiff=declared > 16384) as tif:
        _write_tile(tif, tile.getvalue(), "jpeg", description=f"{desc}|AppMag = 20|MPP = 0.5")
        tif.write(_small_pixels(), description=f"{_APERIO}\r\nthumbnail 16x16", **jpeg)
        tif.write(
            _one(bomb_jpeg(claim)),
            shape=(declared, declared, 3),
            dtype=np.uint8,
            rowsperstrip=declared,
            description=f"{_APERIO}\r\nlabel {declared}x{declared}",
            subfiletype=1,
            **jpeg,
        )
    return path
