"""Alert delivery and responses (security/alerts.py): the audit record, the signed webhook
POST to a real HTTPS receiver (with retries), suspensions in the real auth database, and
throttles; the serve flags' parsing."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from pathlib import Path

import pytest

from tests.webhook import webhook_receiver
from tileserver.errors import ConfigError
from tileserver.security.accounts import Accounts
from tileserver.security.alerts import (
    SIGNATURE_HEADER,
    AlertOptions,
    Responder,
    SyslogLine,
    Throttles,
    Webhook,
    build_monitor,
    parse_hours,
    parse_responses,
    read_alert_key,
)
from tileserver.security.audit import SECURITY_ALERT, AuditLog, records
from tileserver.security.detector import TILE, Alert, Event

KEY = b"k" * 32


def alert(response: str = "suspend", principal: str = "token:crawler") -> Alert:
    return Alert(
        "0123456789abcdef",
        "bulk_crawl",
        principal,
        1_780_304_400.0,
        f"{principal} fetched 4001 tiles in 60 s (threshold 4000)",
        response,
        principal,
        "10.9.0.1",
        "0" * 32,
    )


def test_webhook_posts_signed_json_and_retries(tmp_path: Path) -> None:
    with webhook_receiver(tmp_path, fail_first=2) as receiver:
        hook = Webhook(receiver.url, KEY, receiver.ca, backoff=0.01)
        body = json.dumps({"rule": "bulk_crawl"}).encode()
        assert hook.send(body)
        assert receiver.answered == 3  # two 503s, then delivered
        headers, got = receiver.posts[0]
        assert got == body
        expected = "sha256=" + hmac.new(KEY, body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        assert headers["Content-Type"] == "application/json"


def test_webhook_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    with webhook_receiver(tmp_path, fail_first=100) as receiver:
        hook = Webhook(receiver.url, KEY, receiver.ca, attempts=3, backoff=0.01)
        assert not hook.send(b"{}")
        assert receiver.answered == 3


def test_webhook_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    with webhook_receiver(tmp_path) as receiver:
        hook = Webhook(receiver.url, KEY, None, attempts=1)  # system CAs: self-signed fails
        assert not hook.send(b"{}")
        assert receiver.answered == 0


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "ftp://x/", "https://user:pw@127.0.0.1/", "https:///x"]
)
def test_webhook_must_be_https(url: str) -> None:
    with pytest.raises(ConfigError):
        Webhook(url, KEY)


def test_alert_key_file_must_be_private_and_long(tmp_path: Path) -> None:
    path = tmp_path / "alert.key"
    path.write_bytes(b"x" * 40)
    path.chmod(0o644)
    with pytest.raises(Exception, match="group or others"):
        read_alert_key(path)
    path.chmod(0o600)
    assert read_alert_key(path) == b"x" * 40
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least 32"):
        read_alert_key(path)


def test_responder_records_suspends_announces_and_posts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", KEY)
    accounts = Accounts(tmp_path / "auth.db", KEY)
    with webhook_receiver(tmp_path) as receiver:
        responder = Responder(
            audit, accounts, Throttles(), webhook=Webhook(receiver.url, KEY, receiver.ca)
        )
        before = accounts.generation()
        responder.submit(alert())
        responder.close()  # waits for the record and the webhook
        assert receiver.arrived.is_set()
    (record,) = records(tmp_path / "audit.jsonl")
    assert record["event_id"] == SECURITY_ALERT and record["outcome"] == 8
    assert record["user"] == "crawler" and record["role"] == "service"
    assert record["detail"]["rule"] == "bulk_crawl"
    assert record["detail"]["alert_id"] == "0123456789abcdef"
    assert record["detail"]["response"] == "suspend"
    assert [s[:3] for s in accounts.suspensions()] == [
        ("token:crawler", "bulk_crawl", "0123456789abcdef")
    ]
    assert accounts.generation() > before  # caches see the suspension at once
    assert "ALERT bulk_crawl 0123456789abcdef" in capsys.readouterr().err
    _, body = receiver.posts[0]
    assert json.loads(body)["alert_id"] == "0123456789abcdef"


def test_throttle_response_slows_the_key_down() -> None:
    clock = [0.0]
    throttles = Throttles(now=lambda: clock[0])
    responder = Responder(None, None, throttles, lines=())
    responder.handle(alert("throttle", "addr:198.51.100.7"))
    assert bool(throttles)
    key = "addr:198.51.100.7"
    assert throttles.wait("addr:198.51.100.8") is None  # other keys are not throttled
    allowed = [throttles.wait(key) for _ in range(10)]
    assert allowed.count(None) == 3  # the small burst, then waits (429 at the server)
    assert all(w is not None and 0 < w <= 5 for w in allowed[3:])
    clock[0] += 5.0  # 0.2 requests/s: one more after 5 s
    assert throttles.wait(key) is None
    clock[0] += 3600.0  # the throttle is over
    assert all(throttles.wait(key) is None for _ in range(20))
    assert not throttles


def test_suspend_without_a_database_is_alert_only(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", KEY)
    Responder(audit, None, Throttles(), lines=()).handle(alert())
    (record,) = records(tmp_path / "audit.jsonl")
    assert record["detail"]["response"] == "alert"


def test_monitor_sees_audit_records_and_answers_suspended(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", KEY)
    accounts = Accounts(tmp_path / "auth.db", KEY)
    monitor = build_monitor(AlertOptions(), audit, accounts, KEY)
    monitor.responder.lines = ()
    audit.append(
        SECURITY_ALERT,
        outcome=8,
        obj="0" * 32,
        detail={"reason": "stored object failed its integrity check"},
    )
    for i in range(5000):  # a crawl: the default response suspends
        monitor.observe(Event(1_780_304_400 + i / 100, TILE, "token:crawler", "10.9.0.1", "a" * 32))
    monitor.close()
    rules = [r["detail"].get("rule") for r in records(tmp_path / "audit.jsonl")]
    assert rules == [None, "integrity", "bulk_crawl"]  # the server's record, then two alerts
    generation = accounts.generation()
    assert monitor.suspended("token:crawler", generation) is None  # stale: read again
    monitor.refresh(generation)
    assert monitor.suspended("token:crawler", generation) is True
    assert monitor.suspended("token:other", generation) is False


def test_serve_flags_parse_or_say_why() -> None:
    assert parse_hours(["case-a=7-19", "*=22-6"]) == {"case-a": (7, 19), "*": (22, 6)}
    for bad in ("case-a", "case-a=7", "case-a=7-7", "case-a=7-25", "=7-19"):
        with pytest.raises(ConfigError, match="usual-hours"):
            parse_hours([bad])
    assert parse_responses(["enumeration=throttle"])["enumeration"] == "throttle"
    assert parse_responses([])["bulk_crawl"] == "suspend"
    for bad in ("enumeration", "nosuch=alert", "enumeration=ban"):
        with pytest.raises(ConfigError, match="detect-response"):
            parse_responses([bad])


def test_syslog_line_reaches_a_loopback_syslog_receiver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        port = receiver.getsockname()[1]
        responder = Responder(None, None, Throttles(), lines=(SyslogLine(f"127.0.0.1:{port}"),))
        responder.handle(alert("alert"))
        responder.close()
        datagram = receiver.recv(4096).decode()
    # <PRI>: facility auth (4) * 8 + critical (2) = 34
    assert datagram.startswith("<34>tileserver: ALERT bulk_crawl 0123456789abcdef")
