"""De-identification on ingest (security-requirements DEID-01): the planted patient name,
barcode and other identifying fields of the synthetic SVS appear nowhere in the store."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sample_data import CANARY_BARCODE, CANARY_PATIENT
from tests.stores import complete_stores, open_reader
from tileserver.security.keys import KeyRing
from tileserver.store.encrypted import EncryptedObjects
from tileserver.store.layout import KEY_OBJECT

# Identifying values planted in the synthetic SVS description besides the two canaries.
PLANTED = [CANARY_PATIENT, CANARY_BARCODE, "CANARY42", "03/14/24", "09:26:53", "jdoe", "SS1234"]


def forms(text: str) -> list[bytes]:
    raw = text.encode()
    return [raw, text.encode("utf-16-le"), base64.b64encode(raw), raw.lower(), raw.upper()]


def convert(slide: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tileserver.cli",
            "convert",
            "--quiet",
            str(slide),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("encrypt", [True, False])
def test_no_identifier_reaches_the_store(
    synthetic_svs: Path, tmp_path: Path, keyring: KeyRing, encrypt: bool
) -> None:
    out = tmp_path / "out"
    proc = convert(synthetic_svs, out, *([] if encrypt else ["--no-encrypt"]))
    assert proc.returncode == 0, proc.stderr
    (slide_id,) = complete_stores(out)
    store = out / slide_id
    reader = open_reader(store, keyring)
    objects = reader.objects
    assert isinstance(objects, EncryptedObjects) == encrypt
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 3
    chunks = [  # the plaintext of every chunk inside the shards
        reader.chunk_bytes(level, t_col, t_row) or b""
        for level in range(len(reader.layout.levels))
        for t_row in range(reader.layout.grid(level).height)
        for t_col in range(reader.layout.grid(level).width)
    ]
    for path in files:
        data = path.read_bytes()
        key = path.relative_to(store).as_posix() if path.is_relative_to(store) else ""
        # The plaintext, not (only) the ciphertext; the wrapped data key is plain JSON.
        if key and key not in reader.shards and key != KEY_OBJECT:
            data = objects.get(key) or b""
        for value in PLANTED:
            for form in forms(value):
                assert form not in data, (value, path.relative_to(out))
    for value in PLANTED:
        for form in forms(value):
            assert not any(form in chunk for chunk in chunks), value
    assert not (store / "associated").exists()
    names = {p.name.lower() for p in store.rglob("*")}
    assert not names & {"label", "macro", "label.jpg", "macro.jpg"}
    # The allowlist keeps what a viewer needs.
    props = reader.source["properties"]
    assert props["aperio.AppMag"] == "40" and props["aperio.MPP"] == "0.25"
    assert "aperio.Filename" not in props and "aperio.Barcode" not in props
    assert "synthetic" not in json.dumps(reader.source)  # nor the source file name
    assert "synthetic" not in slide_id


def test_keep_associated_is_explicit_and_loud(
    synthetic_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    proc = convert(synthetic_svs, tmp_path, "--keep-associated")
    assert proc.returncode == 0, proc.stderr
    assert "patient identifiers" in proc.stderr
    (slide_id,) = complete_stores(tmp_path)
    kept = sorted(p.name for p in (tmp_path / slide_id / "associated").iterdir())
    assert kept == ["label.jpg", "macro.jpg", "thumbnail.jpg"]


@pytest.mark.parametrize("value", PLANTED)
def test_planted_values_really_are_in_the_source(synthetic_svs: Path, value: str) -> None:
    """Guards the test above: a canary missing from the source would make it pass vacuously."""
    assert value.encode() in synthetic_svs.read_bytes()
