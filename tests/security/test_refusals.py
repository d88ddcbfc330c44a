"""The refusal aggregator with an injected clock: one record at once and one summary per key
and minute, bounded memory, and the record shape the detector reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    LOGIN,
    USER_AUTHENTICATION,
    AuditLog,
)
from tileserver.security.crypto import new_key
from tileserver.security.refusals import (
    BAD_TOKEN,
    MAX_LISTED,
    NO_CREDENTIALS,
    NOT_GRANTED,
    OVERFLOW,
    RATE_LIMITED,
    WINDOW,
    Refusal,
    RefusalAudit,
    address_key,
)

START = 1_800_000_000 // WINDOW * WINDOW + 1.0  # one second into a minute


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path: Path) -> tuple[RefusalAudit, Clock, AuditLog]:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.jsonl", new_key(), now=clock)
    return RefusalAudit(audit, now=clock), clock, audit


def anonymous(ip: str, reason: str = NO_CREDENTIALS) -> Refusal:
    return Refusal(USER_AUTHENTICATION, reason, ip)


def refused_slide(name: str, slide: str, ip: str = "192.0.2.5") -> Refusal:
    return Refusal(
        INSTANCES_ACCESSED,
        NOT_GRANTED,
        ip,
        user=name,
        role="viewer",
        obj=slide,
        principal=f"user:{name}",
    )


def records(audit: AuditLog) -> list[dict[str, Any]]:
    return list(audit.records()) if audit.path.exists() else []


def test_a_flood_from_one_address_is_two_records_per_minute(
    setup: tuple[RefusalAudit, Clock, AuditLog],
) -> None:
    refusals, clock, audit = setup
    for i in range(5000):
        clock.t = START + i * 0.01
        refusals.refused(anonymous("203.0.113.7", NO_CREDENTIALS if i % 2 else BAD_TOKEN))
    assert len(records(audit)) == 1  # the first, at once
    assert refusals.flush() == 0  # the minute is not over
    clock.t = START + WINDOW
    assert refusals.flush() == 1
    first, summary = records(audit)
    assert first["event_id"] == summary["event_id"] == USER_AUTHENTICATION
    assert first["outcome"] == summary["outcome"] == 4
    assert first["detail"] == {"reason": BAD_TOKEN}
    assert first["source_ip"] == summary["source_ip"] == "203.0.113.7"
    detail = summary["detail"]
    assert detail["aggregated"] is True
    assert detail["refused"] == 4999
    assert detail[NO_CREDENTIALS] == 2500 and detail[BAD_TOKEN] == 2499
    assert detail["reason"] == NO_CREDENTIALS  # the commonest
    assert detail["window_start"].endswith(":00.000Z")
    assert detail["first"] < detail["last"]
    assert detail["distinct_objects"] == 0 and detail["objects"] == []
    assert summary["user"] is None and summary["object"] is None
    assert audit.verify().ok


def test_windows_are_per_address_and_per_event(
    setup: tuple[RefusalAudit, Clock, AuditLog],
) -> None:
    refusals, clock, audit = setup
    for _ in range(3):
        refusals.refused(anonymous("192.0.2.1"))
        refusals.refused(anonymous("192.0.2.2"))
        refusals.refused(Refusal(USER_AUTHENTICATION, "throttled", "192.0.2.1", event_type=LOGIN))
        refusals.refused(anonymous("2001:db8:1:2::1"))  # one IPv6 client: its /64
        refusals.refused(anonymous("2001:db8:1:2::ffff"))
    assert len(records(audit)) == 4
    clock.t += WINDOW
    assert refusals.flush() == 4
    summaries = {
        (r["source_ip"], r["event_type"]): r["detail"]["refused"]
        for r in records(audit)
        if r["detail"].get("aggregated")
    }
    assert summaries == {
        ("192.0.2.1", None): 2,
        ("192.0.2.2", None): 2,
        ("192.0.2.1", LOGIN): 2,
        ("2001:db8:1:2::/64", None): 5,
    }


def test_a_new_minute_opens_a_new_window(setup: tuple[RefusalAudit, Clock, AuditLog]) -> None:
    refusals, clock, audit = setup
    refusals.refused(anonymous("192.0.2.1"))
    refusals.refused(anonymous("192.0.2.1"))
    clock.t += WINDOW
    refusals.refused(anonymous("192.0.2.1"))  # at once: detectors see the new minute start
    assert [bool(r["detail"].get("aggregated")) for r in records(audit)] == [False, False]
    clock.t += WINDOW
    assert refusals.flush() == 1  # the second minute had nothing after its first record
    assert [r["detail"].get("refused") for r in records(audit)] == [None, None, 1]


def test_principal_windows_list_the_slides_refused(
    setup: tuple[RefusalAudit, Clock, AuditLog],
) -> None:
    refusals, _, audit = setup
    slides = [f"{i:032x}" for i in range(100)]
    for slide in slides:
        refusals.refused(refused_slide("mallory", slide))
    refusals.refused(
        Refusal(
            INSTANCES_ACCESSED, RATE_LIMITED, "192.0.2.9", user="mallory", principal="user:mallory"
        )
    )
    refusals.refused(refused_slide("bob", slides[0], "192.0.2.6"))
    first = records(audit)
    assert [(r["user"], r["object"], r["detail"]) for r in first] == [
        ("mallory", slides[0], {"reason": NOT_GRANTED}),
        ("bob", slides[0], {"reason": NOT_GRANTED}),
    ]
    assert all(r["event_id"] == INSTANCES_ACCESSED for r in first)
    refusals.flush(everything=True)  # at shutdown: this minute too
    (summary,) = [r for r in records(audit) if r["detail"].get("aggregated")]
    assert summary["user"] == "mallory" and summary["source_ip"] == "192.0.2.5"
    assert summary["role"] == "viewer" and summary["object"] is None
    detail = summary["detail"]
    assert detail["refused"] == 100 and detail[NOT_GRANTED] == 99 and detail[RATE_LIMITED] == 1
    assert detail["distinct_objects"] == 99
    assert detail["objects"] == slides[1:65]  # bounded list, in order
    assert detail["users"] == ["mallory"]


def test_counting_without_io_leaves_the_write_to_the_caller(
    setup: tuple[RefusalAudit, Clock, AuditLog],
) -> None:
    """The server counts on its event loop and writes the first record off it."""
    refusals, _, audit = setup
    refusal = anonymous("192.0.2.1")
    assert refusals.count(refusal) is True
    assert records(audit) == []
    refusals.write(refusal)
    assert refusals.count(refusal) is False
    assert refusals.count(anonymous("192.0.2.3"), immediate=False) is False  # summary only
    assert len(records(audit)) == 1
    assert refusals.flush(everything=True) == 2


def test_memory_is_bounded_under_a_flood_from_everywhere(tmp_path: Path) -> None:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.jsonl", new_key(), now=clock)
    refusals = RefusalAudit(audit, now=clock, max_keys=100)
    for i in range(1000):
        refusals.refused(anonymous(f"10.0.{i // 256}.{i % 256}"))
    assert len(records(audit)) == 101  # 100 addresses, then the shared window's first
    assert len(refusals._windows) == 101
    clock.t += WINDOW
    refusals.refused(anonymous("10.9.9.9"))  # windows that are over make room
    assert len(refusals._windows) == 1
    refusals.flush()
    (shared,) = [r for r in records(audit) if r["detail"].get("aggregated")]
    assert shared["source_ip"] == OVERFLOW and shared["detail"]["refused"] == 899


def test_listed_names_are_bounded(setup: tuple[RefusalAudit, Clock, AuditLog]) -> None:
    refusals, _, audit = setup
    for i in range(MAX_LISTED + 500):
        refusals.refused(
            Refusal(USER_AUTHENTICATION, "invalid_credentials", "192.0.2.1", user=f"u{i}" * 40)
        )
    refusals.flush(everything=True)
    detail = records(audit)[-1]["detail"]
    assert detail["distinct_users"] == MAX_LISTED
    assert len(detail["users"]) == 64 and all(len(u) <= 64 for u in detail["users"])
    assert refusals._listed == 0  # written windows give their budget back


def test_a_failed_summary_is_kept_for_the_next_flush(
    setup: tuple[RefusalAudit, Clock, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals, clock, audit = setup
    for _ in range(3):
        refusals.refused(anonymous("192.0.2.1"))
    clock.t += WINDOW

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError("no space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(audit, "append", full_disk)
        with pytest.raises(OSError):
            refusals.flush()
    assert refusals.pending()
    assert refusals.flush() == 1
    assert records(audit)[-1]["detail"]["refused"] == 2


def test_due_in_counts_down_to_the_end_of_the_minute(
    setup: tuple[RefusalAudit, Clock, AuditLog],
) -> None:
    refusals, clock, _ = setup
    assert not refusals.pending() and refusals.due_in() == 0
    refusals.refused(anonymous("192.0.2.1"))
    assert refusals.pending() and refusals.due_in() == WINDOW - 1
    clock.t += WINDOW
    assert refusals.due_in() == 0


def test_address_key() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1") == "2001:db8::/64"
    assert address_key("unknown") == "unknown"
