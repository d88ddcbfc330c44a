"""Writes one store in format 2: metadata first, shards as their chunk rows complete, the
completion marker last (create-if-absent: of two converters racing on a slide, one writes it).

Chunks arrive row by row for each level (``write_chunk`` then ``end_row``); a shard row is
assembled and written, each shard in one all-or-nothing put, once its last chunk row has
arrived. A resumed conversion keeps the shards an earlier run finished (``has_shard``), so
their chunks are never encoded again.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from tileserver.errors import IntegrityError, StoreError
from tileserver.store.encrypted import objects_for_writing, parts
from tileserver.store.layout import COMPLETE_MARKER, GROUP_METADATA, KEY_OBJECT, StoreLayout
from tileserver.store.local import LocalObjects
from tileserver.store.objects import ObjectStore
from tileserver.store.shards import assemble, decode_index, index_bytes, index_digest, index_name

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

_SHARD_KEY = re.compile(r"\d+/c\.\d+\.\d+\.\d+(\.\d+)?")  # level/c.c[.z].row.col
_Chunk = tuple[str, bytes] | None


def to_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def metadata_documents(layout: StoreLayout, source: dict[str, Any]) -> dict[str, bytes]:
    docs = {GROUP_METADATA: to_json(layout.group_metadata(source))}
    for level in range(len(layout.levels)):
        docs[f"{level}/{GROUP_METADATA}"] = to_json(layout.array_metadata(level))
    return docs


def _same(key: str, existing: bytes | None, doc: bytes) -> bool:
    """Whether an existing document is one this conversion writes (or none yet). A root
    document may differ in display windows alone: the builder rewrites them at the end."""
    if existing is None or existing == doc:
        return True
    if key != GROUP_METADATA:
        return False
    try:
        return _without_windows(json.loads(existing)) == _without_windows(json.loads(doc))
    except (ValueError, TypeError, KeyError, AttributeError):
        return False


def _without_windows(doc: dict[str, Any]) -> dict[str, Any]:
    for channel in doc["attributes"]["ome"].get("omero", {}).get("channels", []):
        channel.pop("window")
    for channel in doc["attributes"]["tileserver"].get("channels", []):
        channel.pop("window")
    return doc


class StoreWriter:
    """Not thread-safe: one thread writes chunks (the builder's writer thread)."""

    def __init__(self, objects: ObjectStore, layout: StoreLayout, kept: dict[str, str]) -> None:
        if layout.format_version != 2:
            raise ValueError("only format 2 is written")
        self.objects = objects
        self.layout = layout
        self.raw, self.sealing = parts(objects)
        self.shards = dict(kept)  # shard key -> digest of its index, for the marker
        self._kept = frozenset(kept)
        # (level, z, shard row) -> (c, shard column) -> the shard's chunks so far
        self._pending: dict[tuple[int, int, int], dict[tuple[int, int], list[_Chunk]]] = {}
        self._index_length = index_bytes(layout.chunks_per_shard) + self.sealing.overhead

    @classmethod
    def create(
        cls,
        store: ObjectStore,
        layout: StoreLayout,
        source: dict[str, Any],
        keyring: KeyRing | None,
    ) -> StoreWriter:
        """Start, or resume, the store of ``layout.slide_id`` in ``store`` (the slide's own).

        A store begun with other settings (tile, codec, quality, shard size) is cleared first;
        one begun with the same settings keeps its finished shards."""
        if store.exists(COMPLETE_MARKER):
            raise StoreError(f"{layout.slide_id}: store is already complete")
        layout.check_image_fields()
        objects = objects_for_writing(store, layout.slide_id, keyring)
        if isinstance(store, LocalObjects):
            store.remove_temporaries()
        docs = metadata_documents(layout, source)
        writer = cls(objects, layout, {})
        # A document missing is a store just begun (perhaps by a converter racing this one
        # on the same slide, whose objects must stay); only a different one means other
        # settings.
        if all(_same(key, writer._existing(key), doc) for key, doc in docs.items()):
            writer = cls(objects, layout, writer._finished_shards())
        else:
            for key in list(store.list_keys()):
                if key != KEY_OBJECT:  # the data key the objects are sealed with stays
                    store.delete(key)
        for key, doc in docs.items():
            objects.put(key, doc)
        return writer

    def _existing(self, key: str) -> bytes | None:
        try:
            return self.objects.get(key)
        except IntegrityError:  # sealed under a key since shredded, or damaged: start over
            return None

    def _finished_shards(self) -> dict[str, str]:
        """The valid shards an earlier run left, with their digests; broken ones are deleted."""
        found = {}
        n = self.layout.chunks_per_shard
        for key in list(self.raw.list_keys()):
            if not _SHARD_KEY.fullmatch(key):
                continue
            blob = self.raw.get_range(key, 0, self._index_length)
            try:
                index = self.sealing.open(index_name(key), blob or b"")
                decode_index(index, n, key)
            except IntegrityError:
                self.raw.delete(key)
                continue
            found[key] = index_digest(index)
        return found

    def has_shard(self, level: int, t_col: int, t_row: int, *, c: int = 0, z: int = 0) -> bool:
        """Whether the chunk's shard was finished by an earlier run (skip encoding it)."""
        if not self._kept:
            return False
        return self.layout.locate(level, t_col, t_row, c=c, z=z)[0] in self._kept

    def write_chunk(
        self, level: int, t_col: int, t_row: int, data: bytes, *, c: int = 0, z: int = 0
    ) -> None:
        shard = self.layout.shard
        row = self._pending.setdefault((level, z, t_row // shard), {})
        chunks = row.setdefault((c, t_col // shard), [None] * self.layout.chunks_per_shard)
        chunks[(t_row % shard) * shard + t_col % shard] = (
            self.layout.chunk_key(level, t_col, t_row, c=c, z=z),
            data,
        )

    def end_row(self, level: int, t_row: int, *, z: int = 0) -> None:
        """Chunk row ``t_row`` of ``level`` (plane ``z``, every channel) is complete: write
        the shards it completes."""
        shard = self.layout.shard
        if (t_row + 1) % shard and t_row != self.layout.grid(level).height - 1:
            return
        s_row = t_row // shard
        for (c, s_col), chunks in sorted(self._pending.pop((level, z, s_row), {}).items()):
            key = self.layout.shard_key(level, s_col, s_row, c=c, z=z)
            data, index = assemble(key, chunks, self.sealing.seal, self._index_length)
            self.raw.put(key, data)
            self.shards[key] = index_digest(index)

    def rewrite_group_metadata(self, layout: StoreLayout, source: dict[str, Any]) -> None:
        """Replace the root document (a channel store's display windows are known only once
        its last level is built); the arrays must stay as they are."""
        if layout.levels != self.layout.levels or any(
            layout.array_metadata(k) != self.layout.array_metadata(k)
            for k in range(len(layout.levels))
        ):
            raise ValueError("only the group's attributes may change during a conversion")
        self.layout = layout
        self.objects.put(GROUP_METADATA, to_json(layout.group_metadata(source)))

    def finish(self, summary: dict[str, Any]) -> bool:
        """Write the completion marker, listing every shard; False when another converter
        completed the store first (its marker stands)."""
        if self._pending:
            raise StoreError(f"{self.layout.slide_id}: chunk rows were never completed")
        if isinstance(self.raw, LocalObjects):  # a killed run's worker may have died since
            self.raw.remove_temporaries()  # the sweep at the start spared its temporaries
        marker = {
            **summary,
            "format_version": self.layout.format_version,
            "shard": self.layout.shard,
            "shards": dict(sorted(self.shards.items())),
        }
        return self.objects.put_if_absent(COMPLETE_MARKER, to_json(marker))
