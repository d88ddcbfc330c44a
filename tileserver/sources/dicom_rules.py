"""Pure rules for DICOM whole-slide series, without I/O: whether instances can form one
pyramid, and what colours a JPEG frame's own markers give it (used by ``dicom.py``).

JPEG frames are decoded, and handed out for copying, as their own markers say: a JFIF
marker means YCbCr and an Adobe marker states its transform, whatever the dataset's
PhotometricInterpretation claims (converters write JFIF YCbCr frames into series declared
RGB, which OpenSlide then shows in false colour). Only frames that say nothing follow the
declaration, with an Adobe marker added when it is RGB, so that every decoder agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tileserver.errors import CorruptSlide, UnsupportedFeature
from tileserver.geometry import Size
from tileserver.sources.base import MAX_DECODE_PIXELS
from tileserver.sources.codestreams import jpeg_is_frame_header, jpeg_segments

_APP0, _APP14, _SOF55 = 0xE0, 0xEE, 0xF7
# Adobe APP14 marker with transform 0: tells decoders the 3 components are RGB, not YCbCr.
_APP14_RGB = bytes.fromhex("ffee000e41646f626500640000000000")
# A level's physical extent may differ from level 0's by rounding: up to one level pixel.
_EXTENT_SLACK = 1.01


@dataclass(frozen=True)
class Instance:
    """What grouping and checking a series needs of one file, read from its header."""

    path: Path
    series_uid: str
    image_type: str  # VOLUME, LABEL, OVERVIEW or THUMBNAIL
    size: Size  # total pixel matrix
    tile: Size
    spacing_mm: tuple[float, float] | None  # (x, y) pixel spacing


def check_series(instances: list[Instance]) -> None:
    """Refuse a series whose levels cannot form one pyramid: no level at all, or a level
    whose geometry contradicts level 0's. Pure; messages name the file."""
    levels = sorted(
        (i for i in instances if i.image_type == "VOLUME"), key=lambda i: -i.size.pixels
    )
    if not levels:
        kinds = ", ".join(sorted({i.image_type.lower() for i in instances}))
        raise UnsupportedFeature(
            f"{instances[0].path.name}: the DICOM series holds no pyramid level (VOLUME "
            f"image), only: {kinds}"
        )
    base = levels[0]
    for level in levels:
        if level.size.width <= 0 or level.size.height <= 0 or level.tile.pixels <= 0:
            raise CorruptSlide(f"{level.path.name}: level of {level.size} in {level.tile} tiles")
        if level.tile.pixels > MAX_DECODE_PIXELS:
            raise UnsupportedFeature(
                f"{level.path.name}: {level.tile.width}x{level.tile.height} frames, over the cap "
                f"of {MAX_DECODE_PIXELS} pixels for one decode"
            )
        if level.size.width > base.size.width or level.size.height > base.size.height:
            raise CorruptSlide(
                f"{level.path.name}: level {level.size.width}x{level.size.height} is wider or "
                f"taller than level 0 ({base.size.width}x{base.size.height}, {base.path.name})"
            )
        if base.spacing_mm and level.spacing_mm:
            for axis, (b_px, l_px) in enumerate(
                ((base.size.width, level.size.width), (base.size.height, level.size.height))
            ):
                b_extent = b_px * base.spacing_mm[axis]
                l_extent = l_px * level.spacing_mm[axis]
                if abs(b_extent - l_extent) > level.spacing_mm[axis] * _EXTENT_SLACK:
                    raise CorruptSlide(
                        f"{level.path.name}: level {level.size.width}x{level.size.height} at "
                        f"{level.spacing_mm[axis] * 1000:.4g} um/px spans {l_extent:.4g} mm, "
                        f"level 0 ({base.path.name}) spans {b_extent:.4g} mm: conflicting "
                        "geometry"
                    )
    same_size: dict[Size, Instance] = {}
    for level in levels:
        seen = same_size.setdefault(level.size, level)
        if seen.tile != level.tile or seen.spacing_mm != level.spacing_mm:
            raise CorruptSlide(
                f"{level.path.name}: a level of {level.size.width}x{level.size.height} pixels "
                f"like {seen.path.name}, but with other tiles or pixel spacing: conflicting "
                "geometry"
            )


def frame_colour(jpeg: bytes) -> str | None:
    """What a 3-component JPEG's own markers say its components are: "RGB", "YBR", or None
    when it says nothing (no JFIF or Adobe marker, component IDs not 'R','G','B').
    ValueError for data that is not a JPEG."""
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    for marker, body in jpeg_segments(jpeg):
        if marker == _APP0 and body.startswith(b"JFIF\x00"):
            return "YBR"  # JFIF allows only YCbCr (or grayscale)
        if marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            return "RGB" if body[11] == 0 else "YBR"
        if jpeg_is_frame_header(marker):
            ids = bytes(body[6 + 3 * k] for k in range(3)) if len(body) >= 15 else b""
            return "RGB" if ids == b"RGB" else None
    return None


def copyable_jpeg(frame: bytes, declared_rgb: bool) -> bytes:
    """The frame as a JPEG every decoder shows in its true colours: unchanged when its
    markers state its colour model, else flagged RGB (Adobe marker) if the dataset says so."""
    if frame_colour(frame) is None and declared_rgb:
        return frame[:2] + _APP14_RGB + frame[2:]
    return frame


def jpeg_ls_declared(data: bytes) -> Size:
    for marker, body in jpeg_segments(data):
        if marker == _SOF55 and len(body) >= 6:
            return Size(int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"))
    raise ValueError("JPEG-LS data has no frame header (SOF55)")
