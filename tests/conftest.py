"""Shared fixtures: synthetic slides written once per session."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sample_data import write_svs, write_tiff
from tests.pgserver import PgServer, postgresql
from tests.s3server import S3Server, seaweedfs
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS on loopback, keys made at run time) for the session."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* variables pointing at ``s3_server``; returns a fresh ``s3://bucket/prefix``."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/t-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL cluster (Debian's binaries, loopback, password made at run time)."""
    with postgresql() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh, empty database on ``pg_server``: its postgresql:// URL."""
    return pg_server.dsn(pg_server.create_database())
