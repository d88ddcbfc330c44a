"""Objects per store: what format 2 holds on disk, and what format 1 would have held.

Format 1 stored one sealed object per stored (non-background) chunk, plus the metadata
documents (root ``zarr.json`` and one per level, the wrapped data key and the ICC profile
when the store has them), any associated images and the completion marker. The converter no
longer writes format 1, so its count is computed from a real format-2 store: the marker's
chunk counts (``written`` + ``copied`` + ``kept``), checked against the chunks the shards'
indexes actually list. Used by ``bench_convert.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TARGET_FRACTION = 0.01  # format 2 holds under 1 % of format 1's objects


@dataclass(frozen=True)
class ObjectCount:
    on_disk: int  # files in the format-2 store directory
    shards: int  # shards the completion marker lists
    shard: int  # chunks per shard edge
    metadata: int  # zarr.json documents (root + one per level), the key and ICC objects
    associated: int
    marker_chunks: int  # written + copied + kept, from the completion marker
    stored_chunks: int  # chunks the shards' indexes list (-1: not checked)

    @property
    def v1(self) -> int:
        """Objects the same store would have in format 1."""
        return self.marker_chunks + self.metadata + self.associated + 1

    @property
    def v2_expected(self) -> int:
        return self.shards + self.metadata + self.associated + 1

    @property
    def fraction(self) -> float:
        return self.on_disk / self.v1


def files_under(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def count_store(store_dir: Path, home: Path, *, check_chunks: bool = True) -> ObjectCount:
    """Count the objects of one complete format-2 store (``store_dir`` is named by its slide
    ID; ``home`` holds the key ring that opens it when it is encrypted)."""
    from tileserver.security.keys import KeyRing
    from tileserver.store.icc import ICC_OBJECT
    from tileserver.store.layout import KEY_OBJECT
    from tileserver.store.local import LocalObjects
    from tileserver.store.reader import StoreReader

    reader = StoreReader.open(LocalObjects(store_dir), store_dir.name, KeyRing(home))
    layout = reader.layout
    if layout.format_version != 2:
        raise RuntimeError(f"{store_dir}: format {layout.format_version}, expected 2")
    chunks = reader.marker["chunks"]
    stored = -1
    if check_chunks:
        stored = 0
        for level in range(len(layout.levels)):
            grid = layout.grid(level)
            for t_row in range(grid.height):
                for t_col in range(grid.width):
                    stored += reader.chunk_bytes(level, t_col, t_row) is not None
    return ObjectCount(
        on_disk=files_under(store_dir),
        shards=len(reader.shards),
        shard=layout.shard,
        metadata=1
        + len(layout.levels)
        + sum((store_dir / name).is_file() for name in (KEY_OBJECT, ICC_OBJECT)),
        associated=len(reader.marker.get("associated", [])),
        marker_chunks=chunks["written"] + chunks["copied"] + chunks.get("kept", 0),
        stored_chunks=stored,
    )


def objects_table(counts: ObjectCount) -> list[str]:
    """Markdown lines: the counts, the ratio and the verdict against the target."""
    c = counts
    verdict = "**pass**" if c.fraction < TARGET_FRACTION else "**FAIL**"
    checked = (
        f"{c.stored_chunks} (read back through the shards' indexes)"
        if c.stored_chunks >= 0
        else "not checked"
    )
    consistent = "yes" if c.on_disk == c.v2_expected else f"**no** (expected {c.v2_expected})"
    return [
        "| format | objects | made of |",
        "|---|---:|---|",
        f"| 1 (one object per chunk; computed) | {c.v1} | {c.marker_chunks} chunks + "
        f"{c.metadata} metadata + {c.associated} associated + 1 marker |",
        f"| 2 (shards of {c.shard} x {c.shard}; files on disk) | {c.on_disk} | {c.shards} shards "
        f"+ {c.metadata} metadata + {c.associated} associated + 1 marker |",
        "",
        f"Format 2 / format 1: {100 * c.fraction:.2f} % (target < "
        f"{100 * TARGET_FRACTION:g} %: {verdict}). Stored chunks in the marker: "
        f"{c.marker_chunks}; in the shards: {checked}. Files on disk match the marker's "
        f"shards + metadata + marker: {consistent}.",
    ]
