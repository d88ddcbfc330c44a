"""A store wrapper that seals every object with the slide's data key (decision 2).

The associated data is ``tileserver-object/v1 NUL slide_id NUL key``: an object copied to
another key, level or slide, cut short, or altered fails to open with an IntegrityError
naming the slide and the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.security.crypto import Sealer, is_sealed
from tileserver.store.layout import GROUP_METADATA
from tileserver.store.objects import LocalObjects, Objects

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing


def object_aad(slide_id: str, key: str) -> bytes:
    return f"tileserver-object/v1\x00{slide_id}\x00{key}".encode()


class EncryptedObjects:
    """Same interface as LocalObjects; plaintext never touches the disk."""

    def __init__(self, inner: LocalObjects, slide_id: str, data_key: bytes) -> None:
        self.inner = inner
        self.slide_id = slide_id
        self._sealer = Sealer(data_key)

    @property
    def root(self) -> Path:
        return self.inner.root

    def get(self, key: str) -> bytes | None:
        blob = self.inner.get(key)
        if blob is None:
            return None
        return self._sealer.open(blob, object_aad(self.slide_id, key), f"{self.slide_id}/{key}")

    def put(self, key: str, data: bytes, *, durable: bool = False, atomic: bool = True) -> None:
        sealed = self._sealer.seal(data, object_aad(self.slide_id, key))
        self.inner.put(key, sealed, durable=durable, atomic=atomic)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def remove_temporaries(self) -> None:
        self.inner.remove_temporaries()


def objects_for_writing(root: Path, slide_id: str, keyring: KeyRing | None) -> Objects:
    """Sealed objects under the slide's data key, or plain ones when ``keyring`` is None."""
    plain = LocalObjects(root)
    if keyring is None:
        return plain
    return EncryptedObjects(plain, slide_id, keyring.data_key_for_writing(slide_id))


def objects_for_reading(root: Path, keyring: KeyRing | None) -> Objects:
    """Decide from the store itself and the key ring whether its objects are sealed.

    A slide with a data key must have sealed objects: a plaintext metadata document in an
    encrypted store is a replacement, not a format choice."""
    plain = LocalObjects(root)
    slide_id = root.name
    metadata = plain.get(GROUP_METADATA) or b""
    has_key = keyring is not None and keyring.has_data_key(slide_id)
    if is_sealed(metadata) or has_key:
        if keyring is None:
            raise KeyUnavailable(f"{slide_id}: store is encrypted and no key ring is configured")
        return EncryptedObjects(plain, slide_id, keyring.data_key(slide_id))
    return plain


__all__ = ["EncryptedObjects", "IntegrityError", "object_aad", "objects_for_reading"]
