"""Stores for tests: open one by its directory (the slide ID is the directory's name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tileserver.geometry import Region
from tileserver.security.keys import KeyRing
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader


def open_reader(store: str | Path, keyring: KeyRing | None = None) -> StoreReader:
    path = Path(store)
    return StoreReader.open(LocalObjects(path), path.name, keyring)


def complete_stores(directory: Path) -> list[str]:
    """Slide IDs a server would list at ``directory`` (incomplete stores never are)."""
    from tileserver.library import SlideLibrary

    return SlideLibrary(directory, sources=False, keyring=None).slide_ids()


def level_pixels(store: Path, keyring: KeyRing | None) -> list[np.ndarray]:
    """Every level of a store, whole."""
    reader = open_reader(store, keyring)
    return [
        reader.read_region(level, Region(0, 0, size.width, size.height))
        for level, size in enumerate(reader.layout.levels)
    ]
