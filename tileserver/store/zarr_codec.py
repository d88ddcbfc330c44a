"""The ``tileserver.jpeg`` zarr v3 codec, so the zarr library reads our JPEG chunks by itself.

Registered through the ``zarr.codecs`` entry point in pyproject.toml: any Python with this
package installed opens an unencrypted store with plain ``zarr.open_group``. The only
module that imports zarr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

from tileserver.store.chunks import decode_chunk, encode_chunk
from tileserver.store.layout import JPEG_CODEC_NAME

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """(tile, tile, 3) uint8 chunk (with a leading plane axis of 1 in a z-stack) <-> a
    baseline JPEG file."""

    is_fixed_size = False
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegCodec:
        config = data.get("configuration") or {}
        return cls(quality=int(config.get("quality", 90)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC_NAME, "configuration": {"quality": self.quality}}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # (tile, tile, 3), or (1, tile, tile, 3) in a z-stack (the plane axis leads).
        tile = chunk_spec.shape[-2]
        pixels = decode_chunk(chunk_bytes.to_bytes(), "jpeg", tile)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(pixels.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        pixels = chunk_array.as_numpy_array()
        data = encode_chunk(pixels.reshape(pixels.shape[-3:]), "jpeg", self.quality)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG sizes are data-dependent")
