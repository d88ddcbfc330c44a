"""The image size a compressed tile or strip declares, read from its header without decoding.

A decoder allocates what the header declares, whatever the container says: a 600-byte JPEG
tile can claim 65500 x 65500 pixels (12 GiB decoded). Sources compare these declared sizes
with the tile geometry before they decode anything. Pure Python: the headers are a few
fixed fields, and no decoder is trusted to read them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from tileserver.geometry import Size


@dataclass(frozen=True)
class Declared:
    """What a codestream header says it decodes to."""

    width: int
    height: int
    components: int

    def fits(self, segment: Size) -> bool:
        """Decodes into no more than ``segment`` pixels of at most four samples."""
        return (
            self.width <= segment.width and self.height <= segment.height and self.components <= 4
        )

    def __str__(self) -> str:
        return f"{self.width}x{self.height} pixels x {self.components}"


# JPEG markers without a length field (TEM, RSTn); SOFn are C0-CF except DHT, JPG and DAC.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_NOT_SOF = frozenset({0xC4, 0xC8, 0xCC})
_SOS, _EOI = 0xDA, 0xD9


def jpeg_is_frame_header(marker: int) -> bool:
    """Whether a marker is one of the SOFn frame headers."""
    return 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF


def jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(marker, body)`` of each segment of a JPEG stream after its SOI (the caller checks
    the SOI), up to the first scan or EOI; the body may be cut short by the end of ``data``.
    ValueError where a marker is missing or a segment's length is impossible."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_SOS, _EOI):
            return
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise ValueError(f"JPEG segment with length {length}")
        yield marker, data[i + 4 : i + 2 + length]
        i += 2 + length


def jpeg_declared(data: bytes) -> Declared:
    """The frame size of a JPEG stream (SOI first). ValueError when there is no usable frame
    header before the first scan."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("JPEG data does not start with an SOI marker")
    for marker, body in jpeg_segments(data):
        if jpeg_is_frame_header(marker):
            if len(body) < 6:
                break
            height, width, components = struct.unpack_from(">HHB", body, 1)
            if width == 0 or height == 0:  # height 0 means "see DNL": size unknown
                raise ValueError(f"JPEG frame declares {width}x{height} pixels")
            return Declared(width, height, components)
    raise ValueError("JPEG data has no frame header (SOF) before its scan")


def j2k_declared(data: bytes) -> Declared:
    """The image size of a JPEG 2000 codestream, bare or in a JP2 file."""
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        data = _jp2_codestream(data)
    if not data.startswith(b"\xff\x4f\xff\x51") or len(data) < 42:
        raise ValueError("JPEG 2000 data does not start with SOC and SIZ markers")
    x_siz, y_siz, x_osiz, y_osiz = struct.unpack_from(">IIII", data, 8)
    (components,) = struct.unpack_from(">H", data, 40)
    width, height = x_siz - x_osiz, y_siz - y_osiz
    if width <= 0 or height <= 0:
        raise ValueError(f"JPEG 2000 image declares {width}x{height} pixels")
    return Declared(width, height, components)


def _jp2_codestream(data: bytes) -> bytes:
    i = 0
    while i + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        header = 8
        if length == 1 and i + 16 <= len(data):  # 64-bit box length
            (length,) = struct.unpack_from(">Q", data, i + 8)
            header = 16
        if kind == b"jp2c":
            return data[i + header : i + length if length else len(data)]
        if length < header:
            break
        i += length
    raise ValueError("JP2 file without a codestream box")


def png_declared(data: bytes) -> Declared:
    """The size of a PNG image, from its IHDR chunk."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR" or len(data) < 26:
        raise ValueError("PNG data does not start with a signature and IHDR chunk")
    width, height, _depth, color = struct.unpack_from(">IIBB", data, 16)
    components = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if components is None or width == 0 or height == 0:
        raise ValueError(f"PNG declares {width}x{height} pixels of colour type {color}")
    return Declared(width, height, components)


def webp_declared(data: bytes) -> Declared:
    """The canvas size of a WebP image (lossy, lossless or extended)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("WebP data does not start with a RIFF WEBP header")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
    else:
        raise ValueError("WebP data without a VP8, VP8L or VP8X header")
    return Declared(width, height, 4)
