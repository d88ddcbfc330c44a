"""What a pass's pass-through tiles cost the store itself, in-process: backend reads and
seal openings (counted), and ``chunk_bytes`` time (measured), with no server or client.

The tiles are exactly those a benchmark pass asks for (``make_trace`` -> ``first_requests``
-> ``limit_requests``, as ``tileserver.bench.load.run_cell`` does), mapped from DeepZoom
levels to store levels (the server's own grid: DeepZoom tile = chunk, overlap 0). Each one is
read with ``StoreReader.chunk_bytes`` through counting wrappers around the backend store and
the sealing, on one fresh reader: like one server process from cold. Format 1 should cost one
read and one open per stored tile; format 2 the same plus, once per shard touched, the read
and open of that shard's index. ``time_reads`` times the same reads on fresh readers of
several stores, alternating, first pass (index cache empty) and second pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tileserver.bench.load import LoadSettings
from tileserver.bench.traces import deepzoom_pyramid, first_requests, limit_requests, make_trace
from tileserver.security.keys import KeyRing
from tileserver.store.encrypted import EncryptedObjects
from tileserver.store.layout import StoreLayout
from tileserver.store.local import LocalObjects
from tileserver.store.objects import ObjectStore
from tileserver.store.reader import StoreReader

Chunk = tuple[int, int, int]  # level, column, row


class _Counting:
    """Counts the calls that reach the wrapped object (reads of a store, opens of seals)."""

    COUNTED = frozenset({"get", "get_range", "get_async", "get_range_async", "open"})

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.COUNTED:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


@dataclass(frozen=True)
class ReadCount:
    tiles: int  # tiles of the pass that are stored chunks (pass-through)
    background: int  # tiles of the pass that are background chunks (nothing stored)
    rendered: int  # coarser than the store's top level: rendered, not counted
    reads: int  # backend reads (whole objects or ranges)
    opens: int  # seals opened (0 for a plaintext store)
    format_version: int

    @property
    def reads_per_tile(self) -> float:
        return self.reads / max(1, self.tiles + self.background)

    @property
    def opens_per_tile(self) -> float:
        return self.opens / max(1, self.tiles)


def count_reads(store_dir: Path, home: Path, trace: str, settings: LoadSettings) -> ReadCount:
    """Reads and opens for one cold pass of ``trace`` over the store in ``store_dir``."""
    reader = StoreReader.open(LocalObjects(store_dir), store_dir.name, KeyRing(home))
    raw, sealing = _Counting(reader.raw), _Counting(reader.sealing)
    reader.raw, reader.sealing = raw, sealing
    if isinstance(reader.objects, EncryptedObjects):
        reader.objects.inner, reader.objects.sealing = raw, sealing  # type: ignore[assignment]
    else:
        reader.objects = raw
    chunks, rendered = pass_chunks(reader.layout, trace, settings)
    stored = background = 0
    for chunk in chunks:
        if reader.chunk_bytes(*chunk) is None:
            background += 1
        else:
            stored += 1
    version = reader.layout.format_version
    return ReadCount(stored, background, rendered, raw.calls, sealing.calls, version)


def pass_chunks(layout: StoreLayout, trace: str, settings: LoadSettings) -> tuple[list[Chunk], int]:
    """The store chunks a pass of ``trace`` asks for, in order, and how many of its tiles are
    coarser than the store's top level (rendered, not read as they are)."""
    l0 = layout.levels[0]
    pyramid = deepzoom_pyramid(l0.width, l0.height, layout.tile)
    made = make_trace(
        trace,
        pyramid,
        centres=settings.centres,
        seed=settings.seed,
        count=settings.random_count,
    )
    chunks, rendered = [], 0
    plan = limit_requests(first_requests(made.groups), settings.max_requests)
    for tile in (t for g in plan for t in g.tiles):
        level = pyramid.level(tile.level).scale.bit_length() - 1
        if level < len(layout.levels):
            chunks.append((level, tile.col, tile.row))
        else:
            rendered += 1
    return chunks, rendered


def time_reads(
    stores: Mapping[str, tuple[ObjectStore, str]], home: Path, chunks: list[Chunk], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Microseconds per ``chunk_bytes`` over ``chunks`` for each named (slide's store, slide
    ID): {name: {"first": [...], "second": [...]}}, one value per repeat, each repeat on fresh
    readers, the stores in alternating order."""
    keyring = KeyRing(home)
    out: dict[str, dict[str, list[float]]] = {n: {"first": [], "second": []} for n in stores}
    names = list(stores)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            reader = StoreReader.open(*stores[name], keyring)
            for pass_ in ("first", "second"):
                started = time.perf_counter()
                for chunk in chunks:
                    reader.chunk_bytes(*chunk)
                out[name][pass_].append((time.perf_counter() - started) / len(chunks) * 1e6)
    return out
