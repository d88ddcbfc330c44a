"""Shards of format 2 as pure functions: zarr's ``sharding_indexed`` layout, index first.

A shard object is ``index || chunk || chunk ...``. The index holds, for each of the n inner
chunks in C order, ``(offset, nbytes)`` as little-endian uint64 (offsets from the start of the
shard object; both all-ones for a chunk that is not stored), then a CRC-32C of those bytes,
little-endian: exactly what zarr's ``bytes`` + ``crc32c`` index codecs write. In an encrypted
store the index and each chunk are sealed on their own (decision 2), each bound to its own
name, so the sealed index has a fixed length and a chunk is one ranged read and one open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import google_crc32c
import numpy as np

from tileserver.errors import IntegrityError

EMPTY = np.uint64(2**64 - 1)

# (name the piece is bound to, plaintext) -> stored bytes, and back; identity when plain.
Seal = Callable[[str, bytes], bytes]


def index_name(shard_key: str) -> str:
    """What a shard's sealed index is bound to (not an object key: ``#`` marks a part)."""
    return f"{shard_key}#index"


def index_bytes(n_chunks: int) -> int:
    """Plaintext index length of a shard of ``n_chunks`` chunks."""
    return 16 * n_chunks + 4


def encode_index(entries: np.ndarray) -> bytes:
    """``entries`` (n, 2) uint64 -> index bytes with its checksum."""
    body = np.ascontiguousarray(entries, dtype="<u8").tobytes()
    checksum: int = google_crc32c.value(body)
    return body + checksum.to_bytes(4, "little")


def decode_index(data: bytes, n_chunks: int, what: str) -> np.ndarray:
    """Index bytes -> (n, 2) uint64 entries; IntegrityError when they cannot be right."""
    if len(data) != index_bytes(n_chunks):
        raise IntegrityError(
            f"{what}: shard index has {len(data)} bytes, not {index_bytes(n_chunks)}"
        )
    body, crc = data[:-4], data[-4:]
    if google_crc32c.value(body).to_bytes(4, "little") != crc:
        raise IntegrityError(f"{what}: shard index checksum mismatch")
    entries = np.frombuffer(body, dtype="<u8").reshape(n_chunks, 2)
    stored = entries[:, 0] != EMPTY
    if np.any(entries[stored, 1] == 0) or np.any(entries[~stored] != EMPTY):
        raise IntegrityError(f"{what}: malformed shard index")
    return entries


def index_digest(index: bytes) -> str:
    """What the completion marker records of a shard: the digest of its plaintext index
    (plaintext, so two converters racing on one slide agree on every shard they both wrote)."""
    return hashlib.sha256(index).hexdigest()


def assemble(
    shard_key: str,
    chunks: Sequence[tuple[str, bytes] | None],
    seal: Seal,
    sealed_index_length: int,
) -> tuple[bytes, bytes]:
    """(shard object, plaintext index) from the inner chunks in C order: ``(name, bytes)`` of
    each stored chunk (``name`` is what its seal binds), None for chunks not stored."""
    entries = np.full((len(chunks), 2), EMPTY, dtype=np.uint64)
    parts: list[bytes] = []
    offset = sealed_index_length
    for i, chunk in enumerate(chunks):
        if chunk is None:
            continue
        stored = seal(*chunk)
        entries[i] = (offset, len(stored))
        parts.append(stored)
        offset += len(stored)
    index = encode_index(entries)
    sealed_index = seal(index_name(shard_key), index)
    if len(sealed_index) != sealed_index_length:
        raise AssertionError("sealed index length is not what readers expect")
    return b"".join([sealed_index, *parts]), index
