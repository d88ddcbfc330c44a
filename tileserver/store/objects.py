"""The one store contract: keys to bytes, whatever holds them (local disk, S3, a sealing
wrapper over either). Nothing outside ``tileserver.store`` sees a path or a bucket.

Keys are zarr-style relative paths ("0/c/0/3/7"); anything that could step outside the
store's root (absolute paths, "..", empty parts, backslashes, NUL) is refused.

Semantics every implementation keeps (tests/store/contract.py checks them):
- ``put`` is all-or-nothing per object: a reader sees the old object, the new one, or none;
- ``put_if_absent`` writes only when no object has the key, atomically, and says whether it
  did: of two racing writers exactly one wins;
- ``get`` and ``get_range`` return None for a missing object; a range past the end returns
  the bytes that are there (possibly none), so a truncated object shows up as short data;
- ``list_keys`` yields every key under a prefix (recursively, sorted); ``children`` the names of
  the immediate sub-prefixes ("directories"); neither shows unfinished writes;
- failures of the backend itself (unreachable, denied, throttled past the retries) raise
  StoreError (or StoreUnavailable when retrying later may help), never a library's own error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from tileserver.errors import StoreError


def check_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StoreError(f"invalid object key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is "" (the whole store) or a key followed by "/"."""
    if prefix and not prefix.endswith("/"):
        raise StoreError(f"invalid prefix {prefix!r}: must end with '/'")
    if prefix:
        check_key(prefix[:-1])
    return prefix


class ObjectStore(Protocol):
    """Keys to bytes under one root. Implementations are thread-safe."""

    @property
    def url(self) -> str:
        """Where the store is (for messages and logs; never holds credentials)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def get_range(self, key: str, start: int, length: int) -> bytes | None: ...

    async def get_async(self, key: str) -> bytes | None: ...

    async def get_range_async(self, key: str, start: int, length: int) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str = "") -> Iterator[str]: ...

    def children(self, prefix: str = "") -> list[str]: ...

    def child(self, prefix: str) -> ObjectStore:
        """The store rooted at ``prefix`` ("a/b/") of this one."""
        ...
