"""A store wrapper that seals what it stores with the slide's data key (decision 2).

The associated data is ``tileserver-object/v1 NUL slide_id NUL name``, where ``name`` is
the object key for a whole object, or the name of a part of one (a chunk inside a shard is
bound to its own chunk key, a shard's index to ``{shard key}#index``). A sealed piece copied
to another key, position, level or slide, cut short, or altered fails to open with an
IntegrityError naming the slide and the piece.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from tileserver.errors import IntegrityError, KeyUnavailable, StoreError
from tileserver.security.crypto import OVERHEAD, Sealer, is_sealed
from tileserver.store.layout import GROUP_METADATA
from tileserver.store.objects import ObjectStore

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing


def object_aad(slide_id: str, name: str) -> bytes:
    return f"tileserver-object/v1\x00{slide_id}\x00{name}".encode()


class Sealing(Protocol):
    """How the pieces of one store are sealed: for parts of objects (shards)."""

    overhead: int  # bytes a sealed piece adds

    def seal(self, name: str, data: bytes) -> bytes: ...

    def open(self, name: str, blob: bytes) -> bytes: ...


class PlainSealing:
    """A plaintext store: pieces are stored as they are."""

    overhead = 0

    def seal(self, name: str, data: bytes) -> bytes:
        return data

    def open(self, name: str, blob: bytes) -> bytes:
        return blob


class SlideSealing:
    overhead = OVERHEAD

    def __init__(self, slide_id: str, data_key: bytes) -> None:
        self.slide_id = slide_id
        self._sealer = Sealer(data_key)

    def seal(self, name: str, data: bytes) -> bytes:
        return self._sealer.seal(data, object_aad(self.slide_id, name))

    def open(self, name: str, blob: bytes) -> bytes:
        return self._sealer.open(blob, object_aad(self.slide_id, name), f"{self.slide_id}/{name}")


class EncryptedObjects:
    """The store contract over another store; plaintext never reaches the inner store.

    A range of a sealed object can only be read by opening all of it: shards, which are read
    by ranges, seal their parts instead (``sealing``) and go to ``inner`` directly."""

    def __init__(self, inner: ObjectStore, sealing: SlideSealing, name_prefix: str = "") -> None:
        self.inner = inner
        self.sealing = sealing
        self._names = name_prefix  # a child binds the keys its parent would see

    @property
    def url(self) -> str:
        return self.inner.url

    def _open(self, key: str, blob: bytes | None) -> bytes | None:
        return None if blob is None else self.sealing.open(self._names + key, blob)

    def get(self, key: str) -> bytes | None:
        return self._open(key, self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        _check_range(key, start, length)
        data = self.get(key)
        return None if data is None else data[start : start + length]

    async def get_async(self, key: str) -> bytes | None:
        return self._open(key, await self.inner.get_async(key))

    async def get_range_async(self, key: str, start: int, length: int) -> bytes | None:
        _check_range(key, start, length)
        data = await self.get_async(key)
        return None if data is None else data[start : start + length]

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, self.sealing.seal(self._names + key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, self.sealing.seal(self._names + key, data))

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def children(self, prefix: str = "") -> list[str]:
        return self.inner.children(prefix)

    def child(self, prefix: str) -> EncryptedObjects:
        return EncryptedObjects(self.inner.child(prefix), self.sealing, self._names + prefix)


def _check_range(key: str, start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise StoreError(f"invalid range {start}+{length} of {key}")


def parts(objects: ObjectStore) -> tuple[ObjectStore, Sealing]:
    """The store that holds shard objects as they are, and how their parts are sealed."""
    if isinstance(objects, EncryptedObjects):
        return objects.inner, objects.sealing
    return objects, PlainSealing()


def objects_for_writing(store: ObjectStore, slide_id: str, keyring: KeyRing | None) -> ObjectStore:
    """Sealed objects under the slide's data key, or plain ones when ``keyring`` is None."""
    if keyring is None:
        return store
    key = keyring.data_key_for_writing(slide_id, store)
    return EncryptedObjects(store, SlideSealing(slide_id, key))


def objects_for_reading(store: ObjectStore, slide_id: str, keyring: KeyRing | None) -> ObjectStore:
    """Decide from the store itself and the key ring whether its objects are sealed. The
    data key comes from the key ring's home, else from the store's own key object.

    A slide with a data key must have sealed objects: a plaintext metadata document in an
    encrypted store is a replacement, not a format choice."""
    metadata = store.get(GROUP_METADATA) or b""
    has_key = keyring is not None and keyring.has_data_key(slide_id, store)
    if is_sealed(metadata) or has_key:
        if keyring is None:
            raise KeyUnavailable(f"{slide_id}: store is encrypted and no key ring is configured")
        return EncryptedObjects(store, SlideSealing(slide_id, keyring.data_key(slide_id, store)))
    return store


__all__ = ["EncryptedObjects", "IntegrityError", "object_aad", "objects_for_reading", "parts"]
