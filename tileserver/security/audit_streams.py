"""Every audit stream in PostgreSQL at once (issue 13): verify each stream's chain, export
them merged in time order, and sign checkpoints that cover every stream's head.

A checkpoint here is one JSON line ``{"ts", "streams": [{"stream", "records", "mac"}...],
"sig"}`` signed like checkpoints.py's (Ed25519 over the canonical JSON without ``sig``).
Verifying against checkpoints reports, per stream, one that is missing (deleted), holds
fewer records than a checkpoint signed (truncated), or has another record where a checkpoint
signed one (rewritten); a forged or edited checkpoint fails its signature.

Exported lines are the records as stored plus a ``stream`` field naming their stream; to
verify them again, drop ``stream`` and chain each stream from ``audit_sink.genesis``.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tileserver.errors import KeyUnavailable
from tileserver.security import crypto
from tileserver.security.audit import (
    AuditChainBroken,
    AuditError,
    VerifyResult,
    canonical,
    iso_utc,
    verify_lines,
)
from tileserver.security.audit_sink import genesis, stream_lines
from tileserver.security.database import Database
from tileserver.security.keys import check_private

EXPORT_PAGE = 100  # records per stream held while merging (many streams, bounded memory)


@dataclass(frozen=True)
class StreamReport:
    stream: str
    result: VerifyResult


def streams(db: Database) -> tuple[list[str], set[str]]:
    """Every stream with records or a registration, and the registered ones."""
    registered = {row[0] for row in db.read("SELECT stream FROM audit_streams")}
    recorded = {row[0] for row in db.read("SELECT DISTINCT stream FROM audit_records")}
    return sorted(registered | recorded), registered


def verify_stream(db: Database, key: bytes, stream: str) -> VerifyResult:
    return verify_lines(lambda: stream_lines(db, stream), key, genesis(key, stream))


def verify_streams(db: Database, key: bytes) -> list[StreamReport]:
    """Each stream's chain on its own; a stream with records but no registration is
    reported too (its ``audit_streams`` row was deleted)."""
    names, registered = streams(db)
    reports = []
    for stream in names:
        result = verify_stream(db, key, stream)
        if result.ok and stream not in registered:
            reason = "records of a stream that is not registered (audit_streams row deleted?)"
            result = VerifyResult(False, result.records, None, reason, result.head)
        reports.append(StreamReport(stream, result))
    return reports


def records_after(
    db: Database, seen: dict[str, int], page: int = EXPORT_PAGE
) -> list[tuple[str, str]]:
    """(stream, line) of records past each stream's last seen seq (``seen``: stream -> seq,
    -1 or absent for a stream not read yet; updated), every stream, at most ``page`` each."""
    found: list[tuple[str, str]] = []
    for stream in streams(db)[0]:
        after = seen.get(stream, -1)
        rows = db.read(
            "SELECT seq, line FROM audit_records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after, page),
        )
        for seq, line in rows:
            found.append((stream, str(line)))
            seen[stream] = int(seq)
    return found


def _first_broken(reports: list[StreamReport]) -> StreamReport | None:
    return next((report for report in reports if not report.result.ok), None)


def export_streams(db: Database, key: bytes, out: TextIO) -> int:
    """Write every verified record of every stream to ``out``, merged by timestamp (then
    stream and seq), each with its ``stream``. Any broken stream refuses the export."""
    reports = verify_streams(db, key)
    broken = _first_broken(reports)
    if broken is not None:
        raise AuditChainBroken(f"not exported: stream {broken.stream}: {broken.result.reason}")
    merged = heapq.merge(*(_keyed(db, r.stream, r.result.records) for r in reports))
    exported = 0
    for _, line in merged:
        out.write(line)
        exported += 1
    return exported


def _keyed(db: Database, stream: str, count: int) -> Iterator[tuple[tuple[str, str, int], str]]:
    for raw in stream_lines(db, stream, limit=count, page=EXPORT_PAGE):
        record = json.loads(raw)
        line = canonical({**record, "stream": stream}) + "\n"
        yield (record["ts"], stream, record["seq"]), line


def make_checkpoint(
    db: Database, key: bytes, signing_key: Path, now: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Sign every stream's head; refused (AuditChainBroken) while any stream is broken."""
    private_pem = _read(signing_key, "signing key")
    check_private(signing_key)
    reports = verify_streams(db, key)
    broken = _first_broken(reports)
    if broken is not None:
        raise AuditChainBroken(f"not signed: stream {broken.stream}: {broken.result.reason}")
    if not reports:
        raise AuditError("no audit streams to checkpoint")
    heads = [
        {"stream": r.stream, "records": r.result.records, "mac": r.result.head} for r in reports
    ]
    body = {"ts": iso_utc(now()), "streams": heads}
    try:
        signature = crypto.sign(private_pem, canonical(body).encode("ascii"))
    except ValueError as exc:
        raise KeyUnavailable(f"{signing_key}: {exc}") from exc
    return {**body, "sig": signature.hex()}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _parse(line: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(signed body, signature) of a well-formed streams checkpoint line, else None."""
    try:
        doc = json.loads(line.decode("ascii"))
        body = {"ts": doc["ts"], "streams": doc["streams"]}
        signature = bytes.fromhex(doc["sig"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    heads = body["streams"]
    if set(doc) != {"ts", "streams", "sig"} or not isinstance(heads, list):
        return None
    for head in heads:
        if not (
            isinstance(head, dict)
            and set(head) == {"stream", "records", "mac"}
            and isinstance(head["stream"], str)
            and isinstance(head["records"], int)
            and head["records"] >= 0
            and (head["mac"] is None) == (head["records"] == 0)
        ):
            return None
    return body, signature


def verify_with_checkpoints(
    db: Database, key: bytes, checkpoints: Path, public_key: Path
) -> tuple[list[StreamReport], list[str], int]:
    """Per-stream reports (a stream a checkpoint contradicts is marked broken, and a stream
    a checkpoint names but the database lacks gets a report of its own), problems with the
    checkpoints themselves (malformed, bad signature), and how many checkpoints were read."""
    reports = {r.stream: r for r in verify_streams(db, key)}
    public_pem = _read(public_key, "public key")
    problems: list[str] = []
    lines = _read(checkpoints, "checkpoints").splitlines()
    for number, line in enumerate(lines):
        parsed = _parse(line)
        if parsed is None:
            problems.append(f"checkpoint {number}: malformed (not a streams checkpoint)")
            continue
        body, signature = parsed
        try:
            valid = crypto.signature_valid(public_pem, canonical(body).encode("ascii"), signature)
        except ValueError as exc:
            raise KeyUnavailable(f"{public_key}: {exc}") from exc
        if not valid:
            problems.append(f"checkpoint {number}: bad signature (forged, edited or another key)")
            continue
        for head in body["streams"]:
            stream = head["stream"]
            report = reports.get(stream)
            if report is None:
                reason = (
                    f"stream missing: checkpoint {number} ({body['ts']}) signed "
                    f"{head['records']} records of it (stream deleted)"
                )
                reports[stream] = StreamReport(stream, VerifyResult(False, 0, 0, reason))
            elif report.result.ok:
                problem = _contradiction(db, stream, report.result, head, number, body["ts"])
                if problem is not None:
                    bad = min(head["records"] - 1, report.result.records)
                    result = VerifyResult(False, report.result.records, bad, problem)
                    reports[stream] = StreamReport(stream, result)
    return [reports[name] for name in sorted(reports)], problems, len(lines)


def _contradiction(
    db: Database, stream: str, result: VerifyResult, head: dict[str, Any], number: int, ts: str
) -> str | None:
    signed = head["records"]
    if signed > result.records:
        return (
            f"stream truncated: checkpoint {number} ({ts}) signed {signed} records, "
            f"the stream has {result.records}"
        )
    if signed == 0:
        return None
    seq = signed - 1
    rows = db.read("SELECT line FROM audit_records WHERE stream = ? AND seq = ?", (stream, seq))
    record = json.loads(rows[0][0]) if rows else {}
    if record.get("seq") != seq or record.get("mac") != head["mac"]:
        return f"record seq {seq} is not the one checkpoint {number} signed (chain rewritten)"
    return None
