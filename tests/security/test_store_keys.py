"""Wrapped data keys kept with the store (decision 0004): host A converts with its own
TILESERVER_HOME; host B, another home that shares only the key-encryption key (a copied KEK
file, or the same PKCS#11 token), opens and reads the slide from a local directory and from a
real S3 server (SeaweedFS). Shredding removes both copies; rotation re-wraps the store copy;
a key object moved to another slide, or wrapped by another KEK, is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import cli
from tests.security.test_pkcs11 import Token, token  # noqa: F401 (a fixture)
from tests.server.conftest import run_server
from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.geometry import Region
from tileserver.security.keys import KeyRing, make_private_dir
from tileserver.slide_ids import is_slide_id
from tileserver.store.layout import KEY_OBJECT
from tileserver.store.location import open_location
from tileserver.store.objects import ObjectStore
from tileserver.store.reader import StoreReader


def host_a(tmp_path: Path) -> Path:
    home = tmp_path / "host-a"
    init = cli(home, "keys", "init")
    assert init.returncode == 0, init.stderr
    return home


def share_kek(a: Path, b: Path) -> Path:
    """Host B gets a copy of A's key-encryption key file and nothing else of A's home."""
    for directory in (b, b / "keys", b / "keys" / "kek"):
        make_private_dir(directory)
    (kek,) = (a / "keys" / "kek").glob("*.key")
    copy = b / "keys" / "kek" / kek.name
    shutil.copyfile(kek, copy)
    copy.chmod(0o600)
    return b


def convert(home: Path, slide: Path, out: str, *flags: str) -> str:
    proc = cli(home, "convert", "--quiet", str(slide), "--out", out, *flags)
    assert proc.returncode == 0, proc.stderr
    slide_id = proc.stdout.split(":")[1].split()[0]
    assert is_slide_id(slide_id), proc.stdout
    return slide_id


def slide_store(location: str | Path, slide_id: str) -> ObjectStore:
    return open_location(location).child(f"{slide_id}/")


def pixels(location: str | Path, slide_id: str, keyring: KeyRing) -> np.ndarray:
    reader = StoreReader.open(slide_store(location, slide_id), slide_id, keyring)
    level = len(reader.layout.levels) - 2
    size = reader.layout.levels[level]
    return reader.read_region(level, Region(0, 0, size.width, size.height))


def key_object(location: str | Path, slide_id: str) -> dict[str, str] | None:
    data = slide_store(location, slide_id).get(KEY_OBJECT)
    return None if data is None else dict(json.loads(data))


def test_host_b_reads_a_local_store_with_only_the_kek_file(
    tmp_path: Path, synthetic_svs: Path
) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    slide_id = convert(a, synthetic_svs, str(out))
    record = key_object(out, slide_id)
    assert record is not None and set(record) == {"slide_id", "kek_id", "algorithm", "wrapped"}
    data_key = KeyRing(a).data_key(slide_id)
    assert data_key not in (out / slide_id / KEY_OBJECT).read_bytes()  # wrapped, never plain
    home_record = json.loads((a / "keys" / "slides" / f"{slide_id}.json").read_text())
    assert home_record["store"] == str((out / slide_id).absolute())

    b = share_kek(a, tmp_path / "host-b")
    expected = pixels(out, slide_id, KeyRing(a))
    assert (pixels(out, slide_id, KeyRing(b)) == expected).all()
    assert not (b / "keys" / "slides").exists()  # B wrote nothing of its own

    # A host with another KEK, or a KEK file of the same id but other bytes, cannot.
    c = host_a(tmp_path / "c")
    with pytest.raises(KeyUnavailable, match="not found"):
        pixels(out, slide_id, KeyRing(c))
    forged = share_kek(a, tmp_path / "host-d")
    (kek,) = (forged / "keys" / "kek").glob("*.key")
    kek.write_bytes(bytes(32))
    with pytest.raises(IntegrityError, match="failed authentication"):
        pixels(out, slide_id, KeyRing(forged))


def test_keys_home_keeps_the_key_out_of_the_store(tmp_path: Path, synthetic_svs: Path) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    slide_id = convert(a, synthetic_svs, str(out), "--keys", "home")
    assert key_object(out, slide_id) is None
    pixels(out, slide_id, KeyRing(a))
    b = share_kek(a, tmp_path / "host-b")
    with pytest.raises(KeyUnavailable, match="no data key"):
        pixels(out, slide_id, KeyRing(b))


def test_s3_store_shred_removes_both_copies(
    tmp_path: Path, synthetic_svs: Path, s3_env: str
) -> None:
    a = host_a(tmp_path)
    slide_id = convert(a, synthetic_svs, s3_env)
    assert key_object(s3_env, slide_id) is not None
    b = share_kek(a, tmp_path / "host-b")
    assert (pixels(s3_env, slide_id, KeyRing(b)) == pixels(s3_env, slide_id, KeyRing(a))).all()
    tile = f"/deepzoom/{slide_id}_files/12/0_0.jpeg"
    with run_server(s3_env, b) as srv:  # host B serves it
        assert srv.get(tile).status == 200

    shred = cli(a, "keys", "shred", slide_id)
    assert shred.returncode == 0, shred.stderr
    assert f"{s3_env}/{slide_id}/{KEY_OBJECT}" in shred.stdout and "keys rotate" in shred.stdout
    assert key_object(s3_env, slide_id) is None
    assert not (a / "keys" / "slides" / f"{slide_id}.json").exists()
    for home in (a, b):
        with pytest.raises(KeyUnavailable, match="shredded"):
            pixels(s3_env, slide_id, KeyRing(home))
    again = cli(a, "keys", "shred", slide_id)
    assert again.returncode == 1 and "no data key to shred" in again.stderr
    with run_server(s3_env, b) as srv:  # a fresh server on B: refused, and still running
        assert srv.get(tile).status == 500
        assert srv.get("/api/slides").status == 200


def test_shred_from_another_host_names_the_location(tmp_path: Path, synthetic_svs: Path) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    slide_id = convert(a, synthetic_svs, str(out))
    b = share_kek(a, tmp_path / "host-b")
    shred = cli(b, "keys", "shred", slide_id, "--store", str(out))
    assert shred.returncode == 0, shred.stderr
    assert not (out / slide_id / KEY_OBJECT).exists()
    with pytest.raises(KeyUnavailable):
        pixels(out, slide_id, KeyRing(b))
    pixels(out, slide_id, KeyRing(a))  # A's own record is A's to shred


def test_a_key_object_swapped_between_slides_is_refused(
    tmp_path: Path, synthetic_svs: Path, synthetic_tiff: Path
) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    first, second = convert(a, synthetic_svs, str(out)), convert(a, synthetic_tiff, str(out))
    b = share_kek(a, tmp_path / "host-b")
    shutil.copyfile(out / first / KEY_OBJECT, out / second / KEY_OBJECT)
    with pytest.raises(IntegrityError, match="data-key record of another slide"):
        pixels(out, second, KeyRing(b))
    # Relabelled as the second slide's: the wrap is bound to the first slide's ID.
    record = json.loads((out / first / KEY_OBJECT).read_text())
    (out / second / KEY_OBJECT).write_text(json.dumps({**record, "slide_id": second}))
    with pytest.raises(IntegrityError, match="failed authentication"):
        pixels(out, second, KeyRing(b))
    # A key-encryption key id from the store never names a path outside the key ring.
    escape = {**record, "slide_id": second, "kek_id": "../../x"}
    (out / second / KEY_OBJECT).write_text(json.dumps(escape))
    with pytest.raises(IntegrityError, match="not a key-encryption key id"):
        pixels(out, second, KeyRing(b))
    (out / second / KEY_OBJECT).write_text(" " * 10_000)
    with pytest.raises(IntegrityError, match="not a data-key record"):
        pixels(out, second, KeyRing(b))
    # Through the CLI the refusal is a reported failure, not a crash; A still reads its copy.
    migrate = cli(b, "migrate", "--quiet", str(out))
    assert migrate.returncode == 1 and "Traceback" not in migrate.stderr
    assert f"{second}: failed:" in migrate.stdout and f"{first}: format 2" in migrate.stdout
    pixels(out, second, KeyRing(a))


def test_rotate_rewraps_the_store_copies(tmp_path: Path, synthetic_svs: Path) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    slide_id = convert(a, synthetic_svs, str(out))
    old = key_object(out, slide_id)
    assert old is not None
    b_old = share_kek(a, tmp_path / "host-b-old")
    rotated = cli(a, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = key_object(out, slide_id)
    assert new is not None and new["kek_id"] != old["kek_id"] and new["wrapped"] != old["wrapped"]
    assert new["kek_id"] in rotated.stdout
    with pytest.raises(KeyUnavailable, match="not found"):  # the old KEK is gone everywhere
        pixels(out, slide_id, KeyRing(b_old))
    b_new = share_kek(a, tmp_path / "host-b-new")
    assert (pixels(out, slide_id, KeyRing(b_new)) == pixels(out, slide_id, KeyRing(a))).all()


def test_rotate_with_store_rewraps_keys_other_hosts_converted(
    tmp_path: Path, synthetic_svs: Path
) -> None:
    """A worker host converted with the shared KEK; the operator's home never saw the slide."""
    admin = host_a(tmp_path)
    worker = share_kek(admin, tmp_path / "worker")
    shutil.copyfile(admin / "keys" / "current", worker / "keys" / "current")
    out = tmp_path / "stores"
    slide_id = convert(worker, synthetic_svs, str(out))
    old = key_object(out, slide_id)
    assert old is not None
    rotated = cli(admin, "keys", "rotate", "--store", str(out))
    assert rotated.returncode == 0, rotated.stderr
    assert "1 data key(s) re-wrapped" in rotated.stdout
    new = key_object(out, slide_id)
    assert new is not None and new["kek_id"] != old["kek_id"]
    pixels(out, slide_id, KeyRing(admin))  # from the store copy: admin has no record


def test_a_second_host_shares_the_pkcs11_token(
    token: Token,  # noqa: F811 (the fixture)
    tmp_path: Path,
    synthetic_svs: Path,
) -> None:
    a = host_a(tmp_path)
    out = tmp_path / "stores"
    slide_id = convert(a, synthetic_svs, str(out))
    record = key_object(out, slide_id)
    assert record is not None and record["kek_id"] == "p11:tileserver-kek"
    b = tmp_path / "host-b"  # nothing of A's home at all: the KEK is in the token
    # Each host reads in a process of its own, as hosts do: SoftHSM2 reads its token
    # directory once per process, so this test's token is invisible to a test runner that
    # an earlier test's token initialised.
    expected = digest_in_child(a, token, out, slide_id)
    assert digest_in_child(b, token, out, slide_id) == expected
    assert not b.exists()


READ_PIXELS = """
import hashlib, os, sys
from pathlib import Path
from tests.security.test_store_keys import pixels
from tileserver.security.keys import KeyRing
home, out, slide_id = sys.argv[1:]
ring = KeyRing(Path(home), os.environ["TILESERVER_KEK"], os.environ["TILESERVER_PKCS11_PIN"])
print(hashlib.sha256(pixels(out, slide_id, ring).tobytes()).hexdigest())
"""


def digest_in_child(home: Path, held: Token, out: Path, slide_id: str) -> str:
    """SHA-256 of the slide's pixels as a separate process holding the token reads them."""
    done = subprocess.run(
        [sys.executable, "-c", READ_PIXELS, str(home), str(out), slide_id],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **held.env()},
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_converters_on_two_hosts_agree_on_one_data_key(tmp_path: Path) -> None:
    """Two converters on one slide, on hosts with their own homes (the second starting before
    the first has finished): the key object is created once, create-if-absent in the store,
    and the second converter seals with that key, not one of its own."""
    a = host_a(tmp_path)
    b = share_kek(a, tmp_path / "host-b")
    shutil.copyfile(a / "keys" / "current", b / "keys" / "current")
    store = slide_store(tmp_path / "stores", "ab" * 16)
    first = KeyRing(a, keys_in_store=True).data_key_for_writing("ab" * 16, store)
    second = KeyRing(b, keys_in_store=True).data_key_for_writing("ab" * 16, store)
    assert first == second
    assert KeyRing(tmp_path / "host-c-never-used").has_data_key("ab" * 16, store)
    for home in (a, b):  # each home records where the store copy is, for shred and rotate
        record = json.loads((home / "keys" / "slides" / f"{'ab' * 16}.json").read_text())
        assert record["store"] == str((tmp_path / "stores" / ("ab" * 16)).absolute())
