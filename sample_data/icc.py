"""A wide-gamut ICC profile made in code, and synthetic slides tagged with it.

``wide_gamut_profile`` writes an ICC v2 display (matrix/TRC) profile byte by byte: Adobe RGB
(1998) primaries and white point (D65), Bradford-adapted to the D50 connection space, and a
pure 2.2 gamma (563/256). No profile file is copied from anywhere; ``PRIMARIES``, ``WHITE``
and ``GAMMA`` are the whole definition, so tests can compute the colorimetry independently.
Pixels tagged with it are "wider" than sRGB: shown untagged, the slide looks dull.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from sample_data.synthetic import write_svs, write_tiff

__all__ = ["D50", "GAMMA", "PRIMARIES", "WHITE", "colorants", "wide_gamut_profile", "write_icc"]

PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))  # x, y of red, green, blue
WHITE = (0.3127, 0.3290)  # D65
D50 = (0.9642, 1.0, 0.8249)  # the ICC connection space's white (XYZ)
GAMMA = 563 / 256  # 2.19921875: what a u8Fixed8 can hold of 2.2
DESCRIPTION = "tileserver synthetic wide-gamut RGB (Adobe RGB 1998 primaries)"

_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def colorants() -> np.ndarray:
    """The 3x3 matrix from linear RGB to D50 XYZ (columns: red, green, blue colorants)."""
    primaries = np.stack([_xyz(x, y) for x, y in PRIMARIES], axis=1)
    white = _xyz(*WHITE)
    scale = np.linalg.solve(primaries, white)  # each primary's Y so that R=G=B=1 is white
    rgb_to_xyz = primaries * scale
    cone_src, cone_dst = _BRADFORD @ white, _BRADFORD @ np.array(D50)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD
    return np.asarray(adapt @ rgb_to_xyz)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: Any) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(float(v)) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # ASCII, then empty Unicode and ScriptCode parts (the ScriptCode field is 67 bytes).
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(8) + bytes(3 + 67)


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def _curve_tag(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def wide_gamut_profile() -> bytes:
    """The ICC v2.1 profile's bytes (deterministic: a fixed creation date)."""
    matrix = colorants()
    curve = _curve_tag(GAMMA)
    tags: list[tuple[bytes, bytes]] = [
        (b"desc", _desc_tag(DESCRIPTION)),
        (b"cprt", _text_tag("No copyright, generated for tests")),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(matrix[:, 0])),
        (b"gXYZ", _xyz_tag(matrix[:, 1])),
        (b"bXYZ", _xyz_tag(matrix[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)  # tags start on 4-byte boundaries
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)  # preferred CMM: none
        + bytes([2, 0x10, 0, 0])  # version 2.1.0
        + b"mntrRGB XYZ "  # display device, RGB data, XYZ connection space
        + struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8)  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual intent
        + b"".join(_s15(v) for v in D50)
        + bytes(4 + 16 + 28)  # creator, profile ID (v4 only), reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def write_icc(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    fmt: str = "tiff",
    profile: bytes | None = None,
    **options: Any,
) -> Path:
    """A synthetic slide (``fmt`` "tiff", "ome-tiff" or "svs") tagged with ``profile`` (by
    default ``wide_gamut_profile()``): TIFF tag 34675 on level 0, where tifffile and
    OpenSlide read it. ``options`` are those of ``write_tiff``/``write_svs``."""
    icc = wide_gamut_profile() if profile is None else profile
    if fmt == "svs":
        return write_svs(path, width, height, iccprofile=icc, **options)
    if fmt in ("tiff", "ome-tiff"):
        return write_tiff(path, width, height, ome=fmt == "ome-tiff", iccprofile=icc, **options)
    raise ValueError(f"format must be tiff, ome-tiff or svs, not {fmt!r}")
