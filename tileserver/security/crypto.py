"""AES-256-GCM sealing of byte strings. The only module that imports cryptography's hazmat.

A sealed object is ``MAGIC (4 bytes) || nonce (12 random bytes) || ciphertext || tag (16)``.
The associated data is supplied by the caller and binds the object to where it belongs; a
flipped bit, a cut, or the right bytes in the wrong place all fail to open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tileserver.errors import IntegrityError

ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAGIC = b"TSE\x01"  # "tileserver sealed", version 1
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


class Sealer:
    """Seals and opens with one key. Thread-safe; the key never appears in repr."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"{ALGORITHM} needs a {KEY_BYTES}-byte key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes, what: str) -> bytes:
        """The plaintext, or IntegrityError naming ``what`` when authentication fails."""
        if not is_sealed(blob):
            raise IntegrityError(f"{what}: not a sealed object (replaced or unencrypted?)")
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what}: sealed object is truncated")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise IntegrityError(
                f"{what}: failed authentication (modified, truncated, moved, or wrong key)"
            ) from exc
