"""Chunk codecs: (tile, tile, 3) uint8 pixels <-> stored bytes. The only imagecodecs importer.

"jpeg" chunks are complete baseline JPEG files (so level-0 tiles copied from a JPEG slide
are valid chunks as they are); "zstd" chunks are the raw pixels, C order, zstd-compressed
(exactly what zarr's bytes + zstd codecs produce).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from tileserver.errors import StoreError
from tileserver.geometry import Size
from tileserver.sources.codestreams import jpeg_declared
from tileserver.store.layout import CHANNEL_ZSTD_LEVEL

# Chunks we encode keep full-resolution chroma: 4:2:0 halves it, and stain colour in
# pathology lives in fine detail (nuclear rims, fibres, small fluorescent spots). See
# benchmarks/RESULTS.md, "JPEG quality of re-encoded chunks".
JPEG_SUBSAMPLING = "444"


def encode_chunk(
    pixels: np.ndarray, codec: str, quality: int, *, subsampling: str = JPEG_SUBSAMPLING
) -> bytes:
    """Stored bytes of a chunk; ``subsampling`` ("444", "422", "420") is JPEG's chroma."""
    if codec == "jpeg":
        return bytes(imagecodecs.jpeg8_encode(pixels, level=quality, subsampling=subsampling))
    if codec == "zstd":
        return bytes(imagecodecs.zstd_encode(np.ascontiguousarray(pixels).tobytes(), level=3))
    raise ValueError(f"unknown chunk codec {codec!r}")


def decode_chunk(data: bytes, codec: str, tile: int) -> np.ndarray:
    """(tile, tile, 3) uint8 pixels; StoreError when the bytes are not a valid chunk."""
    try:
        if codec == "jpeg":
            # Header first: a chunk of a plaintext export is unauthenticated, and a frame
            # that claims more than the chunk would allocate before failing (a bomb).
            declared = jpeg_declared(data)
            if not declared.fits(Size(tile, tile)):
                raise ValueError(f"declares {declared}, more than a {tile}x{tile} chunk")
            pixels = np.asarray(imagecodecs.jpeg8_decode(data))
        elif codec == "zstd":
            raw = imagecodecs.zstd_decode(data)
            pixels = np.frombuffer(raw, dtype=np.uint8).reshape(tile, tile, 3)
        else:
            raise ValueError(f"unknown chunk codec {codec!r}")
    except Exception as exc:  # codec errors come in many types; all mean bad bytes
        raise StoreError(f"undecodable {codec} chunk: {exc}") from exc
    if pixels.shape != (tile, tile, 3):
        raise StoreError(f"chunk decodes to {pixels.shape}, expected {(tile, tile, 3)}")
    return pixels


def encode_channel_chunk(pixels: np.ndarray) -> bytes:
    """One channel's (tile, tile) uint8/uint16 samples: little-endian bytes, C order, zstd
    (zarr's bytes + zstd codecs)."""
    data = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    return bytes(imagecodecs.zstd_encode(data.tobytes(), level=CHANNEL_ZSTD_LEVEL))


def decode_channel_chunk(data: bytes, dtype: str, tile: int) -> np.ndarray:
    """(tile, tile) samples of ``dtype`` (native order); StoreError for bytes that are not
    such a chunk. Decompression stops at the chunk's size, so no bytes can make it allocate
    more (a zstd bomb)."""
    stored = np.dtype(dtype).newbyteorder("<")
    try:
        raw = imagecodecs.zstd_decode(data, out=tile * tile * stored.itemsize)
    except Exception as exc:  # codec errors come in many types; all mean bad bytes
        raise StoreError(f"undecodable zstd chunk: {exc}") from exc
    if len(raw) != tile * tile * stored.itemsize:
        raise StoreError(f"channel chunk holds {len(raw)} bytes, expected a {tile}x{tile} {dtype}")
    return np.frombuffer(raw, dtype=stored).reshape(tile, tile).astype(dtype, copy=False)
