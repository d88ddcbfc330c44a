"""Format 1 -> format 2, in place, verified, resumable (``tileserver migrate``).

Format-2 shard keys never collide with format-1 chunk keys, so the shards are written next to
the chunks while the slide is still served from them. Then, in this order: the completion
marker is replaced (it decides the format readers use), every chunk read through the new
shards is compared with its format-1 object (a mismatch restores the old marker), the
metadata documents are rewritten, and the format-1 chunks are deleted. A migration stopped
anywhere is finished by running it again; no chunk is decoded or re-encoded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from tileserver.errors import IntegrityError, TileserverError
from tileserver.slide_ids import is_slide_id
from tileserver.store.encrypted import objects_for_reading
from tileserver.store.layout import COMPLETE_MARKER, GROUP_METADATA
from tileserver.store.objects import ObjectStore
from tileserver.store.reader import StoreReader
from tileserver.store.writer import StoreWriter, metadata_documents, to_json

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

_V1_CHUNK_KEY = re.compile(r"\d+/c/0/\d+/\d+")


def _jpeg_quality(objects: ObjectStore) -> int:
    """The JPEG quality recorded in level 0's array metadata (0 when none)."""
    doc = json.loads(objects.get(f"0/{GROUP_METADATA}") or b"{}")
    codecs = list(doc.get("codecs", []))
    while codecs:  # format 2 nests the chunk codecs inside the sharding codec
        config = codecs.pop().get("configuration") or {}
        if "quality" in config:
            return int(config["quality"])
        codecs.extend(config.get("codecs", []))
    return 0


def migrate_store(store: ObjectStore, slide_id: str, keyring: KeyRing | None, shard: int) -> str:
    """Migrate one slide's store; returns what happened, in a few words."""
    old = StoreReader.open(store, slide_id, keyring)
    objects = old.objects
    if old.layout.format_version == 1:
        layout = dataclasses.replace(
            old.layout, format_version=2, shard=shard, quality=_jpeg_quality(objects)
        )
        writer = StoreWriter(objects, layout, {})
        for level in range(len(layout.levels)):
            grid = layout.grid(level)
            for t_row in range(grid.height):
                for t_col in range(grid.width):
                    data = old.chunk_bytes(level, t_col, t_row)
                    if data is not None:
                        writer.write_chunk(level, t_col, t_row, data)
                writer.end_row(level, t_row)
        old_marker = objects.get(COMPLETE_MARKER)
        assert old_marker is not None
        marker = {
            **old.marker,
            "format_version": 2,
            "shard": shard,
            "shards": dict(sorted(writer.shards.items())),
        }
        objects.put(COMPLETE_MARKER, to_json(marker))
        try:
            new = StoreReader.open(store, slide_id, keyring)
            _verify(new, old)
        except TileserverError:
            objects.put(COMPLETE_MARKER, old_marker)  # v1 chunks are untouched: serve them
            raise
        outcome = "migrated to format 2"
    else:
        layout, new = old.layout, old
        outcome = "format 2 already"
    # Finishing touches, also for a migration stopped after its marker was written.
    docs = metadata_documents(
        dataclasses.replace(layout, quality=layout.quality or _jpeg_quality(objects)), new.source
    )
    changed = False
    for key, doc in docs.items():
        if objects.get(key) != doc:
            objects.put(key, doc)
            changed = True
    leftovers = [key for key in store.list_keys() if _V1_CHUNK_KEY.fullmatch(key)]
    if leftovers:
        _verify_leftovers(new, store, leftovers, keyring)
    for key in leftovers:
        store.delete(key)
    if outcome.startswith("format 2") and (changed or leftovers):
        outcome = "format 2: finished an interrupted migration"
    return outcome


def _verify(new: StoreReader, old: StoreReader) -> None:
    """Every chunk reads back the same through the new shards as from format 1."""
    for level in range(len(new.layout.levels)):
        grid = new.layout.grid(level)
        for t_row in range(grid.height):
            for t_col in range(grid.width):
                if new.chunk_bytes(level, t_col, t_row) != old.chunk_bytes(level, t_col, t_row):
                    raise IntegrityError(
                        f"{new.name}: level {level} chunk ({t_col}, {t_row}) differs in format 2"
                    )


def _verify_leftovers(
    new: StoreReader, store: ObjectStore, keys: list[str], keyring: KeyRing | None
) -> None:
    """Before deleting format-1 chunks left by a stopped migration: each is in the shards."""
    v1 = objects_for_reading(store, new.name, keyring)
    for key in keys:
        level, _, _, t_row, t_col = key.split("/")
        if v1.get(key) != new.chunk_bytes(int(level), int(t_col), int(t_row)):
            raise IntegrityError(f"{new.name}: format-1 chunk {key} is not in the new shards")


def migrate_all(
    stores: ObjectStore,
    keyring: KeyRing | None,
    shard: int,
    progress: Callable[[int], object] | None = None,
) -> dict[str, str]:
    """Migrate every complete store at a location: slide ID -> outcome ("failed: ...")."""
    report = {}
    for slide_id in stores.children():
        store = stores.child(f"{slide_id}/")
        if not is_slide_id(slide_id) or not store.exists(COMPLETE_MARKER):
            continue
        try:
            report[slide_id] = migrate_store(store, slide_id, keyring, shard)
        except TileserverError as exc:
            report[slide_id] = f"failed: {exc}"
        if progress:
            progress(1)
    return report
