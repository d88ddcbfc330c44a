"""Benchmark-only: rewrite a format-2 store as format 1 (one sealed object per chunk).

The converter writes only format 2 now, and ``tileserver migrate`` only goes 1 -> 2; to
compare serving from both formats, this writes the format-1 twin of a store: every stored
chunk as its own object under its chunk key, sealed through the same wrapper the converter
uses (``objects_for_writing``: the slide's data key, each object bound to its key), format-1
metadata documents, and the completion marker without the format-2 fields. The twin has the
same slide ID, so it goes under another stores directory. ``StoreReader`` reads both and the
twin is checked chunk by chunk against the original before it is used.

    .venv/bin/python benchmarks/v1_store.py STORES_V2/SLIDE_ID STORES_V1 [--home HOME]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tileserver.security.keys import KeyRing
from tileserver.store.encrypted import EncryptedObjects, objects_for_writing
from tileserver.store.layout import COMPLETE_MARKER, GROUP_METADATA, StoreLayout
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader
from tileserver.store.writer import metadata_documents, to_json

V2_MARKER_FIELDS = ("format_version", "shard", "shards")


def chunk_positions(layout: StoreLayout) -> Iterator[tuple[int, int, int]]:
    for level in range(len(layout.levels)):
        grid = layout.grid(level)
        for t_row in range(grid.height):
            for t_col in range(grid.width):
                yield level, t_col, t_row


def _quality(doc: Any) -> int | None:
    """The JPEG quality somewhere in an array's (possibly nested) codec list."""
    if isinstance(doc, dict):
        if "quality" in doc:
            return int(doc["quality"])
        values: Any = doc.values()
    elif isinstance(doc, list):
        values = doc
    else:
        return None
    for value in values:
        if (found := _quality(value)) is not None:
            return found
    return None


def rewrite_as_v1(src: Path, dst_stores: Path, home: Path) -> tuple[Path, int]:
    """Write the format-1 twin of the format-2 store ``src`` under ``dst_stores``; returns
    (twin's directory, stored chunks). Reused when a complete twin is already there."""
    slide_id = src.name
    keyring = KeyRing(home)
    dst = dst_stores / slide_id
    if (dst / COMPLETE_MARKER).exists():
        twin = StoreReader.open(LocalObjects(dst), slide_id, keyring)
        if twin.layout.format_version == 1:
            return dst, sum(1 for key in twin.objects.list_keys() if "/c/" in key)
    v2 = StoreReader.open(LocalObjects(src), slide_id, keyring)
    if v2.layout.format_version != 2:
        raise SystemExit(f"{src}: format {v2.layout.format_version}, expected 2")
    level0 = json.loads(v2.objects.get(f"0/{GROUP_METADATA}") or b"{}")
    layout = dataclasses.replace(
        v2.layout, format_version=1, shard=1, quality=_quality(level0.get("codecs")) or 0
    )
    encrypted = isinstance(v2.objects, EncryptedObjects)
    out = objects_for_writing(LocalObjects(dst), slide_id, keyring if encrypted else None)
    for key, doc in metadata_documents(layout, v2.source).items():
        out.put(key, doc)
    stored = 0
    for level, t_col, t_row in chunk_positions(layout):
        data = v2.chunk_bytes(level, t_col, t_row)
        if data is not None:
            out.put(layout.chunk_key(level, t_col, t_row), data)
            stored += 1
    marker = {k: v for k, v in v2.marker.items() if k not in V2_MARKER_FIELDS}
    if not out.put_if_absent(COMPLETE_MARKER, to_json(marker)):
        raise SystemExit(f"{dst}: a completion marker appeared while writing")
    check_twin(v2, StoreReader.open(LocalObjects(dst), slide_id, keyring))
    return dst, stored


def check_twin(v2: StoreReader, v1: StoreReader) -> None:
    """Every chunk reads back the same from both formats (background included)."""
    if v1.layout.format_version != 1 or v1.layout.levels != v2.layout.levels:
        raise SystemExit(f"{v1.name}: the twin is not format 1 of the same pyramid")
    for level, t_col, t_row in chunk_positions(v2.layout):
        if v1.chunk_bytes(level, t_col, t_row) != v2.chunk_bytes(level, t_col, t_row):
            raise SystemExit(f"{v1.name}: level {level} chunk ({t_col}, {t_row}) differs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="a format-2 store: STORES/SLIDE_ID")
    parser.add_argument("out", type=Path, help="the stores directory the twin goes into")
    parser.add_argument("--home", type=Path, default=Path("benchmarks/.data/tileserver-home"))
    args = parser.parse_args()
    dst, stored = rewrite_as_v1(args.store.resolve(), args.out.resolve(), args.home)
    print(f"{dst}: format 1, {stored} chunk objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
