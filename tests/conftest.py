"""Shared fixtures: synthetic slides written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sample_data import write_svs, write_tiff
from tileserver.security.keys import KeyRing


@pytest.fixture(scope="session")
def synthetic_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3000x2000 Aperio-style SVS with 240-pixel JPEG tiles, label and macro."""
    return write_svs(tmp_path_factory.mktemp("svs") / "synthetic.svs", 3000, 2000, seed=3)


@pytest.fixture(scope="session")
def synthetic_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1500x1100 pyramidal TIFF with lossless (zlib) tiles."""
    path = tmp_path_factory.mktemp("tiff") / "synthetic.tif"
    return write_tiff(path, 1500, 1100, compression="zlib", seed=5)


@pytest.fixture
def keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyRing:
    """A fresh TILESERVER_HOME with a key-encryption key; child processes inherit it."""
    home = tmp_path / "home"
    monkeypatch.setenv("TILESERVER_HOME", str(home))
    ring = KeyRing(home)
    ring.initialise()
    return ring
