"""``tileserver audit watch`` and ``tileserver alerts list|clear`` through the real CLI."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.cli import cli
from tileserver.security.accounts import Accounts
from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    LOGIN,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
    AuditLog,
)
from tileserver.security.keys import KeyRing


def trail(home: Path) -> AuditLog:
    return AuditLog(home / "audit" / "audit.jsonl", KeyRing(home).service_key("audit"))


def stuffing(log: AuditLog) -> None:
    """What the server writes for leaked pairs tried from one address: the first refusal at
    once, the rest of the minute as one summary naming the (hashed) user names."""
    log.append(
        USER_AUTHENTICATION,
        event_type=LOGIN,
        outcome=4,
        user="unknown:00",
        source_ip="198.51.100.7",
        detail={"reason": "invalid_credentials"},
    )
    names = [f"unknown:{i:016x}" for i in range(1, 40)]
    log.append(
        USER_AUTHENTICATION,
        event_type=LOGIN,
        outcome=4,
        source_ip="198.51.100.7",
        detail={
            "aggregated": True,
            "refused": 39,
            "reason": "invalid_credentials",
            "distinct_users": 39,
            "users": names,
        },
    )


def test_watch_alerts_on_the_records_and_on_a_broken_chain(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = trail(home)
    log.append(
        INSTANCES_ACCESSED,
        action="R",
        user="alice",
        role="pathologist",
        source_ip="10.1.0.1",
        obj="0" * 32,
        detail={"kind": "thumbnail", "max": 64},
    )
    stuffing(log)
    watched = cli(home, "audit", "watch")
    assert watched.returncode == 0, watched.stderr
    assert "ALERT credential_stuffing" in watched.stderr
    assert "addr:198.51.100.7" in watched.stderr
    assert "3 records, 1 alert(s)" in watched.stderr
    assert watched.stdout == ""  # it only reads: nothing written to the trail either
    assert len(list(log.records())) == 3

    path = home / "audit" / "audit.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"max":64', '"max":65')
    path.write_text("".join(lines))
    tampered = cli(home, "audit", "watch")
    assert tampered.returncode == 2
    assert "ALERT integrity" in tampered.stderr and "seq 0 modified" in tampered.stderr


def test_watch_follows_new_records_and_a_cut_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = trail(home)
    log.append(
        INSTANCES_ACCESSED,
        action="R",
        user="lis",
        role="service",
        source_ip="10.2.0.1",
        obj="0" * 32,
        detail={"kind": "thumbnail", "max": 64},
    )
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tileserver.cli", "audit", "watch", "--follow"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    stream = proc.stderr

    def next_alert(timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stream], [], [], 1)
            if ready:
                line = stream.readline()
                if "ALERT" in line:
                    return line
        raise AssertionError("no alert in time")

    try:
        time.sleep(1)
        for i in range(25):  # an enumeration script's refusals, as the server records them
            log.append(
                INSTANCES_ACCESSED,
                action="R",
                outcome=4,
                user="lis",
                role="service",
                source_ip="10.2.0.1",
                obj=f"{i:032x}",
                detail={"reason": "not_granted"},
            )
        assert "enumeration" in next_alert()
        (home / "audit" / "audit.jsonl").write_text("")  # cut to nothing
        log.append(SECURITY_ALERT, outcome=8, detail={"reason": "anything"})
        assert "truncated or replaced" in next_alert()
    finally:
        proc.terminate()
        proc.wait(30)
        stream.close()


def test_alerts_list_and_clear(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = trail(home)
    log.append(
        SECURITY_ALERT,
        outcome=8,
        user="crawler",
        role="service",
        detail={
            "rule": "bulk_crawl",
            "alert_id": "a1",
            "summary": "token:crawler ...",
            "response": "suspend",
            "key": "token:crawler",
        },
    )
    accounts = Accounts(home / "auth.db", KeyRing(home).service_key("totp"))
    accounts.suspend("token:crawler", "bulk_crawl", "a1")
    listed = cli(home, "alerts", "list")
    assert listed.returncode == 0, listed.stderr
    assert "bulk_crawl" in listed.stdout and "SUSPENDED: token:crawler" in listed.stdout
    as_json = json.loads(cli(home, "alerts", "list", "--json").stdout)
    assert as_json["suspensions"][0]["principal"] == "token:crawler"
    assert cli(home, "alerts", "clear").returncode == 1  # which one?
    cleared = cli(home, "alerts", "clear", "--principal", "token:crawler")
    assert cleared.returncode == 0, cleared.stderr
    assert accounts.suspensions() == []
    last = list(log.records())[-1]
    assert last["detail"]["change"] == "suspension cleared"
    assert last["detail"]["target"] == "token:crawler"
    missing = cli(home, "alerts", "clear", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "tileserver: error: no suspension for 'nosuch'"
