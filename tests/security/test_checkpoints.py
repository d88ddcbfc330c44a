"""AUD-04: signed checkpoints make truncation and a rewritten chain detectable."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.cli import cli
from tileserver.errors import KeyUnavailable
from tileserver.security.audit import (
    USER_AUTHENTICATION,
    AuditChainBroken,
    AuditLog,
    canonical,
    record_mac,
    verify,
)
from tileserver.security.checkpoints import (
    append_checkpoint,
    create_signing_key,
    make_checkpoint,
    verify_with_checkpoints,
)


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def log(tmp_path: Path, key: bytes) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl", key)
    fill(log, 10)
    return log


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "signer" / "checkpoint.key"
    path.parent.mkdir(mode=0o700)
    create_signing_key(path)
    return path


def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(USER_AUTHENTICATION, user=f"user{i}", detail={"i": i})


def checkpoint(log: AuditLog, key: bytes, signing_key: Path, out: Path) -> None:
    append_checkpoint(out, make_checkpoint(log.path, key, signing_key))


def check(log: AuditLog, key: bytes, out: Path, signing_key: Path) -> tuple[bool, str]:
    result = verify_with_checkpoints(log.path, key, out, Path(f"{signing_key}.pub"))
    return result.ok, result.reason


def test_intact_log_verifies_against_its_checkpoints(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path
) -> None:
    out = tmp_path / "offhost" / "checkpoints.jsonl"
    out.parent.mkdir()
    checkpoint(log, key, signing_key, out)
    fill(log, 5)  # records after the last checkpoint are fine
    checkpoint(log, key, signing_key, out)
    fill(log, 2)
    assert check(log, key, out, signing_key) == (True, "17 records verified, 2 checkpoints")
    assert (out.stat().st_mode & 0o777) == 0o600
    assert (signing_key.stat().st_mode & 0o777) == 0o600


def test_truncation_below_a_checkpoint_is_reported(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path
) -> None:
    out = tmp_path / "checkpoints.jsonl"
    checkpoint(log, key, signing_key, out)
    lines = log.path.read_text("ascii").splitlines(keepends=True)
    log.path.write_text("".join(lines[:7]), "ascii")
    assert verify(log.path, key).ok  # the chain alone cannot tell
    ok, reason = check(log, key, out, signing_key)
    assert not ok
    assert "log truncated" in reason and "signed 10 records, the log has 7" in reason


def test_a_chain_recomputed_with_the_hmac_key_fails_the_checkpoint(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path
) -> None:
    """The server holds the HMAC key, so an intruder on it can rewrite history and the chain
    still verifies; the checkpoint signed with a key the server never reads does not."""
    out = tmp_path / "checkpoints.jsonl"
    checkpoint(log, key, signing_key, out)
    records = [json.loads(line) for line in log.path.read_text("ascii").splitlines()]
    records[3]["user"] = "somebody-else"
    prev = "0" * 64
    for record in records:
        record["prev"] = prev
        record["mac"] = prev = record_mac(key, record)
    log.path.write_text("".join(canonical(r) + "\n" for r in records), "ascii")
    assert verify(log.path, key).ok
    ok, reason = check(log, key, out, signing_key)
    assert not ok
    assert reason == "record seq 9 is not the one checkpoint 0 signed (chain rewritten)"


@pytest.mark.parametrize("field", ["records", "seq", "mac", "ts"])
def test_an_edited_checkpoint_fails_its_signature(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path, field: str
) -> None:
    out = tmp_path / "checkpoints.jsonl"
    checkpoint(log, key, signing_key, out)
    doc = json.loads(out.read_text("ascii"))
    doc[field] = {"records": 7, "seq": 6, "mac": "ab" * 32, "ts": "2020-01-01T00:00:00.000Z"}[field]
    out.write_text(canonical(doc) + "\n", "ascii")
    ok, reason = check(log, key, out, signing_key)
    assert not ok
    assert reason == "checkpoint 0: bad signature (forged, edited or another key)"


def test_a_checkpoint_signed_with_another_key_is_refused(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    create_signing_key(other)
    out = tmp_path / "checkpoints.jsonl"
    checkpoint(log, key, other, out)
    ok, reason = check(log, key, out, signing_key)
    assert not ok and "bad signature" in reason


@pytest.mark.parametrize("line", ["not json", "{}", '{"records": -1}', "[1, 2]"])
def test_malformed_checkpoint_lines_are_reported(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path, line: str
) -> None:
    out = tmp_path / "checkpoints.jsonl"
    out.write_text(line + "\n", "ascii")
    assert check(log, key, out, signing_key) == (False, "checkpoint 0: malformed")


def test_a_broken_chain_is_not_signed(
    log: AuditLog, key: bytes, signing_key: Path, tmp_path: Path
) -> None:
    text = log.path.read_text("ascii")
    log.path.write_text(text.replace('"user":"user4"', '"user":"userX"'), "ascii")
    with pytest.raises(AuditChainBroken, match="not signed"):
        make_checkpoint(log.path, key, signing_key)


def test_signing_key_is_private_and_never_overwritten(
    log: AuditLog, key: bytes, signing_key: Path
) -> None:
    with pytest.raises(KeyUnavailable, match="never overwritten"):
        create_signing_key(signing_key)
    signing_key.chmod(0o640)
    with pytest.raises(KeyUnavailable, match="group or others"):
        make_checkpoint(log.path, key, signing_key)


def test_cli_checkpoint_then_verify_then_truncate(tmp_path: Path) -> None:
    """The operator's path: key, checkpoint, verify; then the log loses its tail."""
    home = tmp_path / "home"
    assert cli(home, "keys", "init").returncode == 0
    for name in ("alice", "bob", "carol"):  # each writes audit records
        assert cli(home, "users", "add", name).returncode == 0
    signer = tmp_path / "signer.key"
    offhost = tmp_path / "offhost.jsonl"
    made = cli(home, "audit", "signing-key", str(signer))
    assert made.returncode == 0, made.stderr
    done = cli(home, "audit", "checkpoint", "--signing-key", str(signer), "--out", str(offhost))
    assert done.returncode == 0, done.stderr
    verify_args = ("audit", "verify", "--checkpoints", str(offhost))
    good = cli(home, *verify_args, "--public-key", f"{signer}.pub")
    assert good.returncode == 0, good.stderr
    assert "1 checkpoints" in good.stdout
    log = home / "audit" / "audit.jsonl"
    log.write_text("".join(log.read_text("ascii").splitlines(keepends=True)[:-1]), "ascii")
    assert cli(home, "audit", "verify").returncode == 0  # the chain alone cannot tell
    bad = cli(home, *verify_args, "--public-key", f"{signer}.pub")
    assert bad.returncode == 2
    assert "log truncated" in bad.stderr and "Traceback" not in bad.stderr
    half = cli(home, *verify_args)
    assert half.returncode == 1 and "go together" in half.stderr
    for args in [
        ("audit", "verify", "--checkpoints", str(tmp_path / "nope"), "--public-key", str(signer)),
        ("audit", "checkpoint", "--signing-key", str(tmp_path / "nope"), "--out", str(offhost)),
        ("audit", "checkpoint", "--signing-key", f"{signer}.pub", "--out", str(offhost)),
        ("audit", "signing-key", str(tmp_path / "no-such-dir" / "k")),
    ]:
        failed = cli(home, *args)
        assert failed.returncode == 1, (args, failed.stderr)
        assert failed.stderr.startswith("tileserver: error: "), (args, failed.stderr)
        assert len(failed.stderr.splitlines()) == 1, (args, failed.stderr)
