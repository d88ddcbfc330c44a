"""Writes one store: metadata first, chunks in any order, the completion marker last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tileserver.store.encrypted import objects_for_writing
from tileserver.store.layout import COMPLETE_MARKER, GROUP_METADATA, StoreLayout
from tileserver.store.objects import Objects

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode()


class StoreWriter:
    """Thread-safe chunk writes (each object is written atomically on its own)."""

    def __init__(self, objects: Objects, layout: StoreLayout) -> None:
        self.objects = objects
        self.layout = layout

    @classmethod
    def create(
        cls, root: Path, layout: StoreLayout, source: dict[str, Any], keyring: KeyRing | None
    ) -> StoreWriter:
        """Start (or restart) a store at ``root``: any completion marker is removed first.

        With a key ring every object is sealed under the slide's data key."""
        objects = objects_for_writing(root, layout.slide_id, keyring)
        if root.exists():
            objects.delete(COMPLETE_MARKER)
            objects.remove_temporaries()
        writer = cls(objects, layout)
        objects.put(GROUP_METADATA, _json(layout.group_metadata(source)))
        for level in range(len(layout.levels)):
            objects.put(f"{level}/{GROUP_METADATA}", _json(layout.array_metadata(level)))
        return writer

    def write_chunk(self, level: int, t_col: int, t_row: int, data: bytes) -> None:
        # Not atomic: no reader sees an unfinished store, and a resumed build rewrites chunks.
        self.objects.put(self.layout.chunk_key(level, t_col, t_row), data, atomic=False)

    def delete_chunk(self, level: int, t_col: int, t_row: int) -> None:
        self.objects.delete(self.layout.chunk_key(level, t_col, t_row))

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the store complete: durable and atomic, written after everything else."""
        self.objects.put(COMPLETE_MARKER, _json(summary), durable=True)
