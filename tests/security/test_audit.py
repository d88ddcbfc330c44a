"""AUD-01..04: chained audit records, tamper detection, injection, concurrency, aggregation."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import secrets
import stat
from pathlib import Path

import pytest

from tileserver.security import audit
from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    LOGIN,
    USER_AUTHENTICATION,
    AuditChainBroken,
    AuditLog,
    AuditRecordRejected,
    SlideViewAggregator,
    VerifyResult,
    export,
    verify,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    """A fake clock that advances 1.5 ms per reading."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 0.0015
        return self.t


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def log(tmp_path: Path, key: bytes) -> AuditLog:
    return AuditLog(tmp_path / "audit" / "audit.jsonl", key, now=Clock())


def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            user=f"user{i % 7}",
            role="pathologist",
            source_ip="192.0.2.10",
            detail={"i": i},
        )


def lines(path: Path) -> list[str]:
    return path.read_text("ascii").splitlines(keepends=True)


def write_lines(path: Path, content: list[str]) -> None:
    path.write_text("".join(content), "ascii")


def test_hundred_appends_verify(log: AuditLog, key: bytes) -> None:
    fill(log, 100)
    result = verify(log.path, key)
    assert result == VerifyResult(True, 100, None, "100 records verified")
    records = list(log.records())
    assert [r["seq"] for r in records] == list(range(100))
    assert records[0]["prev"] == "0" * 64
    assert all(r["prev"] == p["mac"] for p, r in itertools.pairwise(records))


def test_record_fields_and_timestamps(log: AuditLog) -> None:
    record = log.append(INSTANCES_ACCESSED, action="R", obj="s" * 32, detail={"lv": [0, 1]})
    assert set(record) == audit.FIELDS
    assert record["ts"].endswith("Z") and record["ts"].startswith("2026-01-01T00:00:00.")
    assert len(record["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert all(r["ts"].endswith("Z") for r in log.records())


def test_file_and_directory_modes(log: AuditLog) -> None:
    fill(log, 1)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700


def test_wrong_key_fails(log: AuditLog) -> None:
    fill(log, 3)
    result = verify(log.path, secrets.token_bytes(32))
    assert not result.ok and result.first_bad == 0


@pytest.mark.parametrize("k", [0, 17, 99])
@pytest.mark.parametrize(("field", "value"), [("user", "mallory"), ("outcome", 4), ("seq", 5)])
def test_modified_field_names_record(
    log: AuditLog, key: bytes, k: int, field: str, value: object
) -> None:
    fill(log, 100)
    content = lines(log.path)
    record = json.loads(content[k])
    record[field] = value
    content[k] = audit.canonical(record) + "\n"
    write_lines(log.path, content)
    result = verify(log.path, key)
    assert not result.ok
    assert result.first_bad == k and result.records == k
    assert "MAC mismatch" in result.reason and f"line {k}" in result.reason


def test_deleted_record_reports_gap(log: AuditLog, key: bytes) -> None:
    fill(log, 20)
    content = lines(log.path)
    del content[7]
    write_lines(log.path, content)
    result = verify(log.path, key)
    assert not result.ok and result.first_bad == 7
    assert "seq 7 is missing" in result.reason and "deleted" in result.reason


def test_swapped_records_reported(log: AuditLog, key: bytes) -> None:
    fill(log, 20)
    content = lines(log.path)
    content[5], content[6] = content[6], content[5]
    write_lines(log.path, content)
    result = verify(log.path, key)
    assert not result.ok and result.first_bad == 5
    assert "reordered" in result.reason


def test_duplicated_record_reported(log: AuditLog, key: bytes) -> None:
    fill(log, 5)
    content = lines(log.path)
    write_lines(log.path, [*content[:3], content[2], *content[3:]])
    result = verify(log.path, key)
    assert not result.ok and result.first_bad == 3


def test_forged_record_reported(log: AuditLog, key: bytes) -> None:
    fill(log, 10)
    last = json.loads(lines(log.path)[-1])
    forged = {**last, "seq": 10, "prev": last["mac"], "user": "mallory", "mac": "ab" * 32}
    with log.path.open("a", encoding="ascii") as handle:
        handle.write(audit.canonical(forged) + "\n")
    result = verify(log.path, key)
    assert not result.ok and result.first_bad == 10 and result.records == 10
    assert "seq 10" in result.reason


@pytest.mark.parametrize(
    "bad", ["not json at all\n", "[1,2]\n", '{"seq": 3}\n', "{}\n", "partial-no-newline"]
)
def test_malformed_line_reported(log: AuditLog, key: bytes, bad: str) -> None:
    fill(log, 3)
    with log.path.open("a", encoding="ascii") as handle:
        handle.write(bad)
    result = verify(log.path, key)
    assert not result.ok and result.first_bad == 3
    assert "malformed" in result.reason


def test_append_refuses_after_torn_write(log: AuditLog) -> None:
    fill(log, 2)
    with log.path.open("a", encoding="ascii") as handle:
        handle.write('{"seq":2,')
    with pytest.raises(audit.AuditError, match="incomplete"):
        fill(log, 1)


def test_truncation_is_not_detected_by_the_chain_alone(log: AuditLog, key: bytes) -> None:
    """Pinned limitation: a prefix of a valid chain is valid (test_checkpoints covers it)."""
    fill(log, 10)
    write_lines(log.path, lines(log.path)[:6])
    assert verify(log.path, key) == VerifyResult(True, 6, None, "6 records verified")


def test_log_injection_is_escaped(log: AuditLog, key: bytes) -> None:
    evil = 'alice\n{"event":"fake"}'
    log.append(USER_AUTHENTICATION, event_type=LOGIN, outcome=4, user=evil)
    raw = log.path.read_bytes()
    assert raw.count(b"\n") == 1
    assert b'alice\\n{\\"event\\":\\"fake\\"}' in raw
    assert next(log.records())["user"] == evil
    log.append(USER_AUTHENTICATION, user="bob\r\x1b[2J\u2028")
    assert log.path.read_bytes().count(b"\n") == 2
    assert verify(log.path, key).ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detail": {"x": {"nested": 1}}},
        {"detail": {"x": b"bytes"}},
        {"detail": {"x": "y" * 257}},
        {"detail": {"x": float("nan")}},
        {"detail": {"x": list(range(65))}},
        {"detail": {"x": [[1]]}},
        {"user": "u" * 257},
        {"user": 42},
        {"action": "X"},
        {"outcome": 3},
    ],
)
def test_bad_values_refused(log: AuditLog, kwargs: dict[str, object]) -> None:
    with pytest.raises(AuditRecordRejected):
        log.append(USER_AUTHENTICATION, **kwargs)  # type: ignore[arg-type]
    assert not log.path.exists()


def test_short_key_refused(tmp_path: Path) -> None:
    with pytest.raises(audit.AuditError):
        AuditLog(tmp_path / "a.jsonl", b"short")


def test_long_last_line_is_found(log: AuditLog, key: bytes) -> None:
    # Records longer than the tail-reading chunk still chain correctly.
    for i in range(3):
        log.append(USER_AUTHENTICATION, detail={f"k{j}": "v" * 200 for j in range(30)} | {"i": i})
    assert verify(log.path, key).ok


def _append_many(path: str, key: bytes, n: int, who: str, barrier: object) -> None:
    writer = AuditLog(Path(path), key)
    barrier.wait()  # type: ignore[attr-defined]  # start together so the appends interleave
    for i in range(n):
        writer.append(USER_AUTHENTICATION, user=who, detail={"i": i})


def test_two_processes_append_concurrently(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_append_many, args=(str(path), key, 200, who, barrier))
        for who in "ab"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    result = verify(path, key)
    assert result.ok and result.records == 400
    users = [r["user"] for r in audit.records(path)]
    assert users.count("a") == 200 and users.count("b") == 200


def test_export_copies_verified_lines(log: AuditLog, key: bytes) -> None:
    fill(log, 10)
    out = io.StringIO()
    assert export(log.path, key, out) == 10
    assert out.getvalue() == log.path.read_text("ascii")
    tail = io.StringIO()
    assert export(log.path, key, tail, since_seq=7) == 3
    assert [json.loads(line)["seq"] for line in tail.getvalue().splitlines()] == [7, 8, 9]


def test_export_refuses_broken_chain(log: AuditLog, key: bytes) -> None:
    fill(log, 5)
    content = lines(log.path)
    del content[2]
    write_lines(log.path, content)
    out = io.StringIO()
    with pytest.raises(AuditChainBroken, match="seq 2"):
        export(log.path, key, out)
    assert out.getvalue() == ""


def test_missing_log_does_not_verify(tmp_path: Path, key: bytes) -> None:
    assert not verify(tmp_path / "nope.jsonl", key).ok


def test_aggregator_one_record_per_session_and_slide(log: AuditLog, key: bytes) -> None:
    session = secrets.token_urlsafe(32)
    slide = secrets.token_hex(16)
    aggregator = SlideViewAggregator(key, now=lambda: T0 + 1000)
    for i in range(50):
        aggregator.record_tile(session, "alice", "pathologist", "192.0.2.7", slide, i % 2, T0 + i)
    assert aggregator.flush(log) == 1
    assert len(aggregator) == 0
    (record,) = log.records()
    assert record["event_id"] == INSTANCES_ACCESSED and record["action"] == "R"
    assert record["object"] == slide and record["user"] == "alice"
    detail = record["detail"]
    assert detail["tiles"] == 50 and detail["levels"] == [0, 1]
    assert detail["first"] == "2026-01-01T00:00:00.000Z"
    assert detail["last"] == "2026-01-01T00:00:49.000Z"
    assert detail["session"] == aggregator.session_tag(session) and len(detail["session"]) == 16
    assert session.encode() not in log.path.read_bytes()
    assert verify(log.path, key).ok


def test_aggregator_flushes_only_idle_views(log: AuditLog, key: bytes) -> None:
    aggregator = SlideViewAggregator(key, now=lambda: T0 + 600)
    aggregator.record_tile("s1", "alice", "pathologist", None, "slideA", 0, T0)
    aggregator.record_tile("s1", "alice", "pathologist", None, "slideB", 3, T0 + 590)
    aggregator.record_tile("s2", "bob", "pathologist", None, "slideA", 1, T0 + 10)
    assert aggregator.flush(log, older_than=300) == 2
    assert len(aggregator) == 1
    assert aggregator.flush(log) == 1
    assert sorted((r["user"], r["object"]) for r in log.records()) == [
        ("alice", "slideA"),
        ("alice", "slideB"),
        ("bob", "slideA"),
    ]


def test_aggregator_keeps_views_when_the_log_fails(tmp_path: Path, key: bytes) -> None:
    aggregator = SlideViewAggregator(key)
    aggregator.record_tile("s1", "alice", None, None, "slideA", 0, T0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    broken = AuditLog(blocker / "audit.jsonl", key)  # parent is a file: cannot be written
    with pytest.raises(OSError):
        aggregator.flush(broken)
    assert len(aggregator) == 1
