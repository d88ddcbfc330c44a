"""Encryption at rest: sealed objects, tamper detection, rotation, shredding, golden fixture."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli import cli
from tests.fixtures.make_golden_store import FIXTURE, install_golden_kek, level_digests
from tests.stores import open_reader
from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.geometry import Region
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id, new_slide_id
from tileserver.sources import open_slide
from tileserver.store.layout import COMPLETE_MARKER
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader


@pytest.fixture
def store(synthetic_svs: Path, tmp_path: Path, keyring: KeyRing) -> Path:
    slide_id = new_slide_id()
    with open_slide(synthetic_svs) as source:
        return convert(source, LocalObjects(tmp_path / "out" / slide_id), slide_id, ConvertOptions(), keyring
        ).store


def everything(reader: StoreReader) -> None:
    for level, size in enumerate(reader.layout.levels):
        reader.read_region(level, Region(0, 0, size.width, size.height))


def a_chunk(store: Path, level: int = 0) -> Path:
    return sorted((store / str(level) / "c").rglob("*"), key=lambda p: -p.stat().st_size)[0]


def test_every_object_is_sealed(store: Path, keyring: KeyRing) -> None:
    files = [p for p in store.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert data.startswith(b"TSE\x01"), path
        assert b"zarr_format" not in data and b"\xff\xd8\xff" not in data[:64]
    everything(open_reader(store, keyring))


def test_nonces_are_fresh_and_records_hold_no_key_bytes(store: Path, keyring: KeyRing) -> None:
    nonces = {p.read_bytes()[4:16] for p in store.rglob("*") if p.is_file()}
    assert len(nonces) == sum(1 for p in store.rglob("*") if p.is_file())
    record_text = (keyring.root / "slides" / f"{store.name}.json").read_text()
    record = json.loads(record_text)
    assert record["algorithm"] == "AES-256-GCM" and record["kek_id"]
    data_key = keyring.data_key(store.name)
    assert base64.b64encode(data_key).decode() not in record_text
    assert data_key.hex() not in record_text


def _expect_integrity_error(store: Path, keyring: KeyRing, key_part: str) -> None:
    fresh = KeyRing(keyring.root.parent)
    with pytest.raises(IntegrityError) as caught:
        everything(open_reader(store, fresh))
    assert store.name in str(caught.value) and key_part in str(caught.value)


def test_flipped_bit(store: Path, keyring: KeyRing) -> None:
    chunk = a_chunk(store)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    _expect_integrity_error(store, keyring, chunk.relative_to(store).as_posix())


def test_truncated_object(store: Path, keyring: KeyRing) -> None:
    chunk = a_chunk(store)
    chunk.write_bytes(chunk.read_bytes()[:-100])
    _expect_integrity_error(store, keyring, chunk.relative_to(store).as_posix())


def test_chunk_copied_to_another_position(store: Path, keyring: KeyRing) -> None:
    chunks = sorted(p for p in (store / "0" / "c").rglob("*") if p.is_file())
    shutil.copy(chunks[0], chunks[1])
    _expect_integrity_error(store, keyring, chunks[1].relative_to(store).as_posix())


def test_chunk_copied_from_another_level(store: Path, keyring: KeyRing) -> None:
    source = a_chunk(store, level=1)
    target = store / "0" / source.relative_to(store / "1")
    shutil.copy(source, target)
    _expect_integrity_error(store, keyring, target.relative_to(store).as_posix())


def test_chunk_copied_from_another_slide(
    store: Path, synthetic_svs: Path, keyring: KeyRing
) -> None:
    other_id = new_slide_id()
    with open_slide(synthetic_svs) as source:
        other = convert(source, LocalObjects(store.parent / other_id), other_id, ConvertOptions(), keyring).store
    chunk = a_chunk(store)
    shutil.copy(other / chunk.relative_to(store), chunk)
    _expect_integrity_error(store, keyring, chunk.relative_to(store).as_posix())


def test_replaced_metadata_document(store: Path, keyring: KeyRing, tmp_path: Path) -> None:
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    _expect_integrity_error(store, keyring, "zarr.json")


def test_wrong_kek(store: Path, keyring: KeyRing) -> None:
    kek_file = next((keyring.root / "kek").glob("*.key"))
    kek_file.write_bytes(os.urandom(32))
    _expect_integrity_error(store, keyring, "data key")


def test_rotation_rewraps_without_touching_chunks(store: Path, keyring: KeyRing) -> None:
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    pixels = open_reader(store, keyring).read_region(0, Region(0, 0, 900, 700))
    old = keyring.current_kek().key_id
    new, count = keyring.rotate()
    assert count == 1 and new != old
    assert not (keyring.root / "kek" / f"{old}.key").exists()
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    fresh = KeyRing(keyring.root.parent)  # no cached data keys: unwraps under the new KEK
    assert np.array_equal(
        open_reader(store, fresh).read_region(0, Region(0, 0, 900, 700)), pixels
    )
    assert [k.key_id for k in fresh.list()] == [new]


def test_shredded_store_can_never_be_read(store: Path, keyring: KeyRing) -> None:
    keyring.shred(store.name)
    assert not (keyring.root / "slides" / f"{store.name}.json").exists()
    with pytest.raises(KeyUnavailable, match="shredded"):
        open_reader(store, KeyRing(keyring.root.parent))
    with pytest.raises(KeyUnavailable):
        keyring.shred(store.name)


def test_golden_store_stays_readable(tmp_path: Path) -> None:
    keyring = install_golden_kek(tmp_path / "home")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    reader = open_reader(FIXTURE / "store" / expected["slide_id"], keyring)
    assert (FIXTURE / "store" / expected["slide_id"] / COMPLETE_MARKER).is_file()
    assert level_digests(reader) == expected["levels"]


def test_cli_refuses_missing_and_exposed_keys(synthetic_svs: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = cli(home, "convert", str(synthetic_svs), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no key-encryption key" in proc.stderr and "tileserver keys init" in proc.stderr
    assert cli(home, "keys", "init").returncode == 0
    assert (home.stat().st_mode & 0o777) == 0o700
    kek = next((home / "keys" / "kek").glob("*.key"))
    assert (kek.stat().st_mode & 0o777) == 0o600
    kek.chmod(0o644)
    proc = cli(home, "convert", str(synthetic_svs), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "accessible by group or others" in proc.stderr and "chmod" in proc.stderr


def test_cli_keys_lifecycle(synthetic_svs: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "out"
    assert "created" in cli(home, "keys", "init").stdout
    assert "already exists" in cli(home, "keys", "init").stdout
    assert cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out)).returncode == 0
    plain = cli(
        home,
        "convert",
        "--quiet",
        "--no-encrypt",
        str(synthetic_svs),
        "--out",
        str(tmp_path / "p"),
    )
    assert plain.returncode == 0 and "PLAINTEXT" in plain.stderr
    assert "wraps 1 data key" in cli(home, "keys", "list").stdout
    assert "1 data key(s) re-wrapped" in cli(home, "keys", "rotate").stdout
    (slide_id,) = [p.name for p in out.iterdir() if is_slide_id(p.name)]
    assert "destroyed" in cli(home, "keys", "shred", slide_id).stdout
    again = cli(home, "keys", "shred", slide_id)
    assert again.returncode == 1 and "no data key" in again.stderr
