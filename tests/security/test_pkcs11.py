"""Key-encryption keys in a PKCS#11 token: a real SoftHSM2 token made by the test (PINs made at
run time), used through the CLI and the server as an operator would."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType

from tests.cli import cli
from tests.server.conftest import run_server
from tests.stores import complete_stores, open_reader
from tileserver.geometry import Region
from tileserver.security.keys import KeyRing

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class Token:
    uri: str
    pin: str
    label: str  # the token's label
    conf: Path

    def env(self, pin: str | None = None) -> dict[str, str]:
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "TILESERVER_KEK": self.uri,
            "TILESERVER_PKCS11_PIN": pin or self.pin,
        }


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        pytest.fail("SoftHSM2 is not installed: run scripts/setup-services.sh")
    tokens = tmp_path / "softhsm"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    label, pin = f"ts-{secrets.token_hex(4)}", secrets.token_hex(8)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    made = subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(8),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    found = Token(
        f"pkcs11:token={label};object=tileserver-kek?module-path={MODULE}", pin, label, conf
    )
    for name, value in found.env().items():
        monkeypatch.setenv(name, value)
    yield found


def _token_keys(token: Token) -> dict[str, bool]:
    """Label -> extractable, of every AES key in the token."""
    with pkcs11.lib(MODULE).get_token(token_label=token.label).open(user_pin=token.pin) as s:
        return {
            k.label: bool(k[Attribute.EXTRACTABLE])
            for k in s.get_objects({Attribute.KEY_TYPE: KeyType.AES})
        }


def test_keys_live_in_the_token_and_never_in_files(
    token: Token, tmp_path: Path, synthetic_svs: Path
) -> None:
    home = tmp_path / "home"
    init = cli(home, "keys", "init")
    assert init.returncode == 0, init.stderr
    assert "p11:tileserver-kek created" in init.stdout
    assert _token_keys(token) == {"tileserver-kek": False}  # generated inside, not extractable
    assert not list((home / "keys" / "kek").iterdir())  # no KEK file anywhere
    out = tmp_path / "out"
    assert cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out)).returncode == 0
    (slide_id,) = complete_stores(out)
    record = json.loads((home / "keys" / "slides" / f"{slide_id}.json").read_text())
    assert record["kek_id"] == "p11:tileserver-kek"
    keyring = KeyRing(home, token.uri, token.pin)
    pixels = open_reader(out / slide_id, keyring).read_region(0, Region(0, 0, 500, 400))
    assert token.pin not in init.stdout + init.stderr

    rotated = cli(home, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    (new_label,) = _token_keys(token)  # the old token key was destroyed
    assert new_label.startswith("tileserver-kek-")
    again = open_reader(out / slide_id, KeyRing(home, token.uri, token.pin))
    assert (again.read_region(0, Region(0, 0, 500, 400)) == pixels).all()
    listed = cli(home, "keys", "list").stdout
    assert f"p11:{new_label}  current  wraps 1 data key(s)" in listed

    with run_server(out, home) as srv:  # the server unwraps through the token too
        assert srv.get(f"/deepzoom/{slide_id}_files/12/0_0.jpeg").status == 200


def test_token_errors_are_one_line(
    token: Token, tmp_path: Path, synthetic_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    assert cli(home, "keys", "init").returncode == 0
    out = tmp_path / "out"
    assert cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out)).returncode == 0
    monkeypatch.setenv("TILESERVER_PKCS11_PIN", "0000" + token.pin[4:])  # wrong PIN
    proc = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(tmp_path / "o2"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"PKCS#11 token {token.label!r}" in proc.stderr and "PinIncorrect" in proc.stderr
    assert token.pin[4:] not in proc.stderr
    monkeypatch.delenv("TILESERVER_KEK")
    monkeypatch.setenv("TILESERVER_PKCS11_PIN", token.pin)
    (slide_id,) = complete_stores(out)
    with pytest.raises(Exception, match="is in a PKCS#11 token: set TILESERVER_KEK"):
        open_reader(out / slide_id, KeyRing(home))
    monkeypatch.setenv("TILESERVER_KEK", token.uri + "&pin-value=1234")
    refused = cli(home, "keys", "list")
    assert refused.returncode == 1 and "use TILESERVER_PKCS11_PIN" in refused.stderr
