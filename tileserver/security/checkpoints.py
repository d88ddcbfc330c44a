"""Signed checkpoints of the audit trail (AUD-04): what makes cutting records off its end, or
rewriting it whole, detectable.

The HMAC chain (audit.py) shows any record changed, deleted or reordered, but not records cut
off the end, and whoever holds the HMAC key (the server does) can compute a whole new chain.
A checkpoint is the chain's head, ``{records, seq, mac, ts}``, signed with an Ed25519 key the
server never reads: ``tileserver audit checkpoint`` runs from cron under another account that
alone can read the signing key, and appends one JSON line per checkpoint to a file kept off
this host (a separate store, or a syslog-over-TLS forwarder reading it). Verifying the log
against those lines needs only the public key, and reports:

- a truncated log: it holds fewer records than a checkpoint signed;
- a rewritten chain: the record at a checkpoint's seq has another MAC;
- a forged or edited checkpoint: its signature does not verify.

Records appended after the last checkpoint are covered by the next one only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tileserver.errors import KeyUnavailable
from tileserver.security import crypto
from tileserver.security.audit import (
    AuditChainBroken,
    AuditError,
    VerifyResult,
    canonical,
    iso_utc,
    records,
    verify,
)
from tileserver.security.keys import check_private

_FIELDS = ("records", "seq", "mac", "ts")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read {what} {path}: {exc.strerror}") from exc


def public_key_path(signing_key: Path) -> Path:
    return signing_key.with_name(signing_key.name + ".pub")


def create_signing_key(path: Path) -> Path:
    """Write a new Ed25519 key to ``path`` (0600, never overwritten) and its public half
    beside it; returns the public key's path."""
    private, public = crypto.new_signing_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        public_key_path(path).write_bytes(public)
    except FileExistsError:
        raise KeyUnavailable(f"{path} exists; a signing key is never overwritten") from None
    except OSError as exc:
        raise KeyUnavailable(f"cannot write signing key {path}: {exc.strerror}") from exc
    return public_key_path(path)


def make_checkpoint(
    log: Path, audit_key: bytes, signing_key: Path, now: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Sign the head of a verified chain; a broken chain is refused, not signed."""
    private_pem = _read(signing_key, "signing key")
    check_private(signing_key)
    result = verify(log, audit_key)
    if not result.ok:
        raise AuditChainBroken(f"{log}: not signed: {result.reason}")
    if result.head is None:
        raise AuditError(f"{log}: no records to checkpoint")
    body = {
        "records": result.records,
        "seq": result.records - 1,
        "mac": result.head,
        "ts": iso_utc(now()),
    }
    try:
        signature = crypto.sign(private_pem, canonical(body).encode("ascii"))
    except ValueError as exc:
        raise KeyUnavailable(f"{signing_key}: {exc}") from exc
    return {**body, "sig": signature.hex()}


def append_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """One line per checkpoint, appended (O_APPEND: concurrent writers never interleave)."""
    line = (canonical(checkpoint) + "\n").encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AuditError(f"cannot append the checkpoint to {path}: {exc.strerror}") from exc


def _parse(line: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(signed body, signature) of a well-formed checkpoint line, else None."""
    try:
        doc = json.loads(line.decode("ascii"))
        body = {name: doc[name] for name in _FIELDS}
        signature = bytes.fromhex(doc["sig"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if set(doc) != {*_FIELDS, "sig"} or not all(
        isinstance(body[n], int) and body[n] >= 0 for n in ("records", "seq")
    ):
        return None
    return body, signature


def verify_with_checkpoints(
    log: Path, audit_key: bytes, checkpoints: Path, public_key: Path
) -> VerifyResult:
    """The chain's own verification, then every checkpoint against it (see module doc)."""
    result = verify(log, audit_key)
    if not result.ok:
        return result
    public_pem = _read(public_key, "public key")
    signed: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(_read(checkpoints, "checkpoints").splitlines()):
        parsed = _parse(line)
        if parsed is None:
            return VerifyResult(False, result.records, None, f"checkpoint {number}: malformed")
        body, signature = parsed
        try:
            valid = crypto.signature_valid(public_pem, canonical(body).encode("ascii"), signature)
        except ValueError as exc:
            raise KeyUnavailable(f"{public_key}: {exc}") from exc
        if not valid:
            reason = f"checkpoint {number}: bad signature (forged, edited or another key)"
            return VerifyResult(False, result.records, None, reason)
        if body["records"] > result.records:
            reason = (
                f"log truncated: checkpoint {number} ({body['ts']}) signed {body['records']} "
                f"records, the log has {result.records}"
            )
            return VerifyResult(False, result.records, result.records, reason)
        signed.append((number, body))
    macs = {body["seq"]: body["mac"] for _, body in signed}
    for record in records(log):
        if record["seq"] in macs and macs[record["seq"]] != record["mac"]:
            number = next(n for n, body in signed if body["seq"] == record["seq"])
            reason = (
                f"record seq {record['seq']} is not the one checkpoint {number} signed "
                "(chain rewritten)"
            )
            return VerifyResult(False, result.records, record["seq"], reason)
    return VerifyResult(
        True, result.records, None, f"{result.records} records verified, {len(signed)} checkpoints"
    )
