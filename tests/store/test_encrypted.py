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
from tests.stores import open_reader
from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.geometry import Region
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id, new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects
from tileserver.store.reader import StoreReader


@pytest.fixture
def store(synthetic_svs: Path, tmp_path: Path, keyring: KeyRing) -> Path:
    slide_id = new_slide_id()
    with open_slide(synthetic_svs) as source:  # 13 x 9 chunks: shards of 4 x 4 make 12
        convert(source, LocalObjects(tmp_path / "out" / slide_id), slide_id, SHARDED, keyring)
    return tmp_path / "out" / slide_id


SHARDED = ConvertOptions(shard=4)


def everything(reader: StoreReader) -> None:
    for level, size in enumerate(reader.layout.levels):
        reader.read_region(level, Region(0, 0, size.width, size.height))


def a_shard(store: Path, level: int = 0) -> Path:
    """The largest shard of a level."""
    return max((store / str(level)).glob("c.*"), key=lambda p: p.stat().st_size)


def test_every_object_and_every_piece_of_a_shard_is_sealed(store: Path, keyring: KeyRing) -> None:
    reader = open_reader(store, keyring)
    stored: dict[str, int] = {}
    for level in range(len(reader.layout.levels)):
        grid = reader.layout.grid(level)
        for t_row in range(grid.height):
            for t_col in range(grid.width):
                if reader.chunk_bytes(level, t_col, t_row) is not None:
                    key = reader.layout.locate(level, t_col, t_row)[0]
                    stored[key] = stored.get(key, 0) + 1
    files = [p for p in store.rglob("*") if p.is_file()]
    assert len(files) > 10 and len(stored) > 10
    for path in files:
        data = path.read_bytes()
        assert data.startswith(b"TSE\x01"), path
        assert b"zarr_format" not in data and b"JFIF" not in data
        key = path.relative_to(store).as_posix()
        if key in stored:  # the index, then each chunk: sealed on their own
            assert data.count(b"TSE\x01") == 1 + stored[key], key
    everything(reader)


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


def test_flipped_bit_in_a_chunk(store: Path, keyring: KeyRing) -> None:
    shard = a_shard(store)
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01  # inside the last chunk, past the index
    shard.write_bytes(bytes(data))
    _expect_integrity_error(store, keyring, "0/c/0/")


def test_flipped_bit_in_a_shard_index(store: Path, keyring: KeyRing) -> None:
    shard = a_shard(store)
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x01
    shard.write_bytes(bytes(data))
    _expect_integrity_error(store, keyring, f"{shard.relative_to(store).as_posix()}#index")


def test_truncated_shard(store: Path, keyring: KeyRing) -> None:
    shard = a_shard(store)
    shard.write_bytes(shard.read_bytes()[:-100])
    _expect_integrity_error(store, keyring, "truncated")


def test_deleted_shard_is_an_error_not_background(store: Path, keyring: KeyRing) -> None:
    shard = a_shard(store)
    shard.unlink()
    _expect_integrity_error(store, keyring, f"{shard.relative_to(store).as_posix()} is missing")


def test_shard_copied_to_another_position(store: Path, keyring: KeyRing) -> None:
    shards = sorted((store / "0").glob("c.*"))
    shutil.copy(shards[0], shards[1])
    _expect_integrity_error(store, keyring, shards[1].relative_to(store).as_posix())


def test_shard_copied_from_another_level(store: Path, keyring: KeyRing) -> None:
    shutil.copy(store / "1" / "c.0.0.0", store / "0" / "c.0.0.0")
    _expect_integrity_error(store, keyring, "0/c.0.0.0")


def test_shard_copied_from_another_slide(
    store: Path, synthetic_svs: Path, keyring: KeyRing
) -> None:
    other_id = new_slide_id()
    with open_slide(synthetic_svs) as source:
        convert(source, LocalObjects(store.parent / other_id), other_id, SHARDED, keyring)
    shard = a_shard(store)
    shutil.copy(store.parent / other_id / shard.relative_to(store), shard)
    _expect_integrity_error(store, keyring, shard.relative_to(store).as_posix())


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
    assert np.array_equal(open_reader(store, fresh).read_region(0, Region(0, 0, 900, 700)), pixels)
    assert [k.key_id for k in fresh.keks()] == [new]


def test_shredded_store_can_never_be_read(store: Path, keyring: KeyRing) -> None:
    keyring.shred(store.name)
    assert not (keyring.root / "slides" / f"{store.name}.json").exists()
    with pytest.raises(KeyUnavailable, match="shredded"):
        open_reader(store, KeyRing(keyring.root.parent))
    with pytest.raises(KeyUnavailable):
        keyring.shred(store.name)


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
