"""Central audit on a real PostgreSQL: one chained stream per process, appended through a
role that can only INSERT and SELECT; verify, export and checkpoints over every stream; a
database outage loses nothing."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.cli import cli
from tests.processes import free_port
from tests.tcpproxy import tcp_proxy
from tileserver.security.audit import (
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
    AuditChainBroken,
    AuditError,
    AuditLog,
    canonical,
    record_mac,
    verify_lines,
)
from tileserver.security.audit_sink import (
    MAX_SPOOL_BYTES,
    AuditUnavailable,
    PostgresSink,
    genesis,
    init_database,
    stream_lines,
)
from tileserver.security.audit_streams import (
    StreamReport,
    export_streams,
    make_checkpoint,
    verify_streams,
    verify_with_checkpoints,
)
from tileserver.security.checkpoints import append_checkpoint, create_signing_key
from tileserver.security.database import connect
from tileserver.security.keys import KeyRing
from tileserver.server.errors import status_of


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def writer_url(pg_dsn: str) -> str:
    """The append-only role's URL on a fresh database (roles are per cluster: a new name)."""
    grants, url = init_database(pg_dsn, role=f"audit_{secrets.token_hex(4)}")
    assert url is not None and grants
    return url


@pytest.fixture
def opened(tmp_path: Path, key: bytes) -> Iterator[Callable[..., AuditLog]]:
    sinks: list[PostgresSink] = []

    def open_log(
        url: str, now: Callable[[], float] = time.time, max_spool_bytes: int = MAX_SPOOL_BYTES
    ) -> AuditLog:
        sink = PostgresSink(url, key, tmp_path / "spool", max_spool_bytes=max_spool_bytes)
        sinks.append(sink)
        return AuditLog(tmp_path / "audit.jsonl", key, now=now, sink=sink)

    yield open_log
    for sink in sinks:
        sink.close()


def sink_of(log: AuditLog) -> PostgresSink:
    assert isinstance(log.sink, PostgresSink)
    return log.sink


def fill(log: AuditLog, n: int, who: str = "user") -> None:
    for i in range(n):
        log.append(USER_AUTHENTICATION, user=f"{who}{i}", detail={"i": i})


def superuser(pg_dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """The cluster's superuser, past the append-only triggers (as an attacker with it)."""
    conn = psycopg.connect(pg_dsn, autocommit=True)
    conn.execute("SET session_replication_role = replica")  # triggers off for this session
    return conn


def summary(reports: list[StreamReport]) -> dict[str, tuple[bool, int, int | None]]:
    return {r.stream: (r.result.ok, r.result.records, r.result.first_bad) for r in reports}


CHILD = """
import sys
from pathlib import Path
from tileserver.security.audit import USER_AUTHENTICATION, AuditLog
from tileserver.security.audit_sink import PostgresSink
url, spool, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
key = bytes.fromhex(sys.stdin.readline().strip())
sink = PostgresSink(url, key, spool)
log = AuditLog(spool / "unused.jsonl", key, sink=sink)
for i in range(count):
    log.append(USER_AUTHENTICATION, user=f"child{i}")
sink.close()
print(sink.stream)
"""


def test_concurrent_writers_and_a_process_each_keep_a_stream_that_verifies(
    opened: Callable[..., AuditLog], writer_url: str, key: bytes, tmp_path: Path
) -> None:
    first, second = opened(writer_url), opened(writer_url)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, writer_url, str(tmp_path / "child-spool"), "40"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    child.stdin.write(key.hex() + "\n")
    child.stdin.close()
    threads = [
        threading.Thread(target=fill, args=(log, 30, name))
        for log, name in [(first, "a"), (first, "b"), (second, "c"), (second, "d")]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert child.stdout is not None
    with child.stdout:
        child_stream = child.stdout.read().strip()
    assert child.wait(timeout=120) == 0
    db = connect(writer_url)
    try:
        reports = verify_streams(db, key)
    finally:
        db.close()
    assert summary(reports) == {
        sink_of(first).stream: (True, 60, None),
        sink_of(second).stream: (True, 60, None),
        child_stream: (True, 40, None),
    }
    assert first.verify().ok and first.verify().records == 60
    assert [r["seq"] for r in first.records()] == list(range(60))
    # Streams are told apart by host, start time, process and a random part.
    assert len({sink_of(first).stream, sink_of(second).stream, child_stream}) == 3


def test_the_servers_role_cannot_rewrite_and_the_owner_is_stopped_by_triggers(
    opened: Callable[..., AuditLog], writer_url: str, pg_dsn: str
) -> None:
    fill(opened(writer_url), 3)
    for statement in (
        "UPDATE audit_records SET line = 'x'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "UPDATE audit_streams SET pid = 0",
        "DELETE FROM audit_streams",
        "TRUNCATE audit_streams",
    ):
        with (
            psycopg.connect(writer_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
        ):
            conn.execute(statement)
    # Even the tables' owner (here a superuser, privileges aside) meets the triggers.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in ("DELETE FROM audit_records", "TRUNCATE audit_records"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM audit_records").fetchone() == (3,)


def test_a_role_that_could_rewrite_the_trail_is_refused(
    opened: Callable[..., AuditLog], writer_url: str, pg_dsn: str
) -> None:
    with pytest.raises(AuditError, match="may UPDATE, DELETE or TRUNCATE"):
        opened(pg_dsn)  # the superuser
    with pytest.raises(AuditError, match="no audit tables"):
        opened(urlunsplit(urlsplit(writer_url)._replace(path="/postgres")))
    with pytest.raises(AuditError, match="cannot create tables here and roles"):
        init_database(writer_url, role="another_writer")  # init-db needs the owner


def test_tampering_deleting_and_truncating_are_named_by_stream_and_seq(
    opened: Callable[..., AuditLog], writer_url: str, pg_dsn: str, key: bytes, tmp_path: Path
) -> None:
    logs = [opened(writer_url) for _ in range(4)]
    for log in logs:
        fill(log, 8)
    edited, gapped, cut, gone = (sink_of(log).stream for log in logs)
    signer = tmp_path / "signer.key"
    create_signing_key(signer)
    checkpoints = tmp_path / "checkpoints.jsonl"
    db = connect(writer_url)
    try:
        append_checkpoint(checkpoints, make_checkpoint(db, key, signer))
        fill(logs[0], 2)  # after the checkpoint: fine
        with superuser(pg_dsn) as conn:
            line = conn.execute(
                "SELECT line FROM audit_records WHERE stream = %s AND seq = 3", (edited,)
            ).fetchone()
            assert line is not None
            forged = str(line[0]).replace('"user3"', '"mallory"')
            conn.execute(
                "UPDATE audit_records SET line = %s WHERE stream = %s AND seq = 3", (forged, edited)
            )
            conn.execute("DELETE FROM audit_records WHERE stream = %s AND seq = 4", (gapped,))
            conn.execute("DELETE FROM audit_records WHERE stream = %s AND seq >= 5", (cut,))
            conn.execute("DELETE FROM audit_records WHERE stream = %s", (gone,))
            conn.execute("DELETE FROM audit_streams WHERE stream = %s", (gone,))
        reports = {r.stream: r.result for r in verify_streams(db, key)}
        assert (reports[edited].ok, reports[edited].first_bad) == (False, 3)
        assert "seq 3 modified or forged" in reports[edited].reason
        assert (reports[gapped].ok, reports[gapped].first_bad) == (False, 4)
        assert "seq 4 is missing" in reports[gapped].reason
        # The chain alone cannot see a cut tail or a deleted stream ...
        assert (reports[cut].ok, reports[cut].records) == (True, 5)
        assert gone not in reports
        # ... the checkpoint signed before the attack can.
        with_checkpoints, problems, _ = verify_with_checkpoints(
            db, key, checkpoints, Path(f"{signer}.pub")
        )
        results = {r.stream: r.result for r in with_checkpoints}
        assert problems == []
        assert not results[cut].ok
        assert "stream truncated: checkpoint 0" in results[cut].reason
        assert "signed 8 records, the stream has 5" in results[cut].reason
        assert not results[gone].ok and "stream missing" in results[gone].reason
        assert not results[edited].ok and not results[gapped].ok
        with pytest.raises(AuditChainBroken, match=r"not signed: stream .*: seq [34] "):
            make_checkpoint(db, key, signer)
    finally:
        db.close()


def test_a_rewritten_chain_and_a_forged_checkpoint_are_caught(
    opened: Callable[..., AuditLog], writer_url: str, pg_dsn: str, key: bytes, tmp_path: Path
) -> None:
    log = opened(writer_url)
    fill(log, 4)
    stream = sink_of(log).stream
    signer = tmp_path / "signer.key"
    create_signing_key(signer)
    checkpoints = tmp_path / "checkpoints.jsonl"
    db = connect(writer_url)
    try:
        append_checkpoint(checkpoints, make_checkpoint(db, key, signer))
        # An attacker with the HMAC key and the superuser rewrites the whole stream.
        with superuser(pg_dsn) as conn:
            prev = genesis(key, stream)
            for seq in range(4):
                row = conn.execute(
                    "SELECT line FROM audit_records WHERE stream = %s AND seq = %s", (stream, seq)
                ).fetchone()
                assert row is not None
                record = json.loads(str(row[0]))
                record["user"], record["prev"] = "someone-else", prev
                record["mac"] = prev = record_mac(key, record)
                conn.execute(
                    "UPDATE audit_records SET line = %s WHERE stream = %s AND seq = %s",
                    (json.dumps(record, sort_keys=True, separators=(",", ":")), stream, seq),
                )
        (report,), problems, count = verify_with_checkpoints(
            db, key, checkpoints, Path(f"{signer}.pub")
        )
        assert count == 1
        assert problems == [] and not report.result.ok
        assert "record seq 3 is not the one checkpoint 0 signed" in report.result.reason
        forged = json.loads(checkpoints.read_text())
        forged["streams"][0]["records"] = 3
        checkpoints.write_text(json.dumps(forged) + "\n")
        _, problems, _ = verify_with_checkpoints(db, key, checkpoints, Path(f"{signer}.pub"))
        assert problems == ["checkpoint 0: bad signature (forged, edited or another key)"]
    finally:
        db.close()


def test_a_stream_copied_under_another_id_does_not_verify(
    opened: Callable[..., AuditLog], writer_url: str, pg_dsn: str, key: bytes
) -> None:
    log = opened(writer_url)
    fill(log, 3)
    stream = sink_of(log).stream
    copy = stream[:-8] + "00000000"
    with superuser(pg_dsn) as conn:  # a whole, valid chain, re-filed under a new stream ID
        conn.execute(
            "INSERT INTO audit_streams SELECT %s, host, pid, started FROM audit_streams"
            " WHERE stream = %s",
            (copy, stream),
        )
        conn.execute(
            "INSERT INTO audit_records SELECT %s, seq, line FROM audit_records WHERE stream = %s",
            (copy, stream),
        )
    db = connect(writer_url)
    try:
        reports = {r.stream: r.result for r in verify_streams(db, key)}
    finally:
        db.close()
    assert reports[stream].ok
    assert (reports[copy].ok, reports[copy].first_bad) == (False, 0)
    assert "prev mismatch" in reports[copy].reason


class Clock:
    def __init__(self, times: list[float]) -> None:
        self.times = iter(times)

    def __call__(self) -> float:
        return next(self.times)


def test_export_merges_every_stream_in_time_order(
    opened: Callable[..., AuditLog], writer_url: str, key: bytes
) -> None:
    base = 1_800_000_000.0
    early = opened(writer_url, now=Clock([base + t for t in (1, 4, 5)]))
    late = opened(writer_url, now=Clock([base + t for t in (2, 3, 6)]))
    fill(early, 3, "early")
    fill(late, 3, "late")
    out = io.StringIO()
    db = connect(writer_url)
    try:
        assert export_streams(db, key, out) == 6
    finally:
        db.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["user"] for r in lines] == ["early0", "late0", "late1", "early1", "early2", "late2"]
    assert [r["stream"] for r in lines[:2]] == [sink_of(early).stream, sink_of(late).stream]
    # Each stream verifies again from the export alone, without its stream field.
    for stream in {r["stream"] for r in lines}:
        chain = [
            (canonical({k: v for k, v in r.items() if k != "stream"}) + "\n").encode()
            for r in lines
            if r["stream"] == stream
        ]
        assert verify_lines(partial(iter, chain), key, genesis(key, stream)).ok


def proxied(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


def test_an_outage_spools_records_and_the_database_gets_them_all_in_order(
    opened: Callable[..., AuditLog], writer_url: str, key: bytes, tmp_path: Path
) -> None:
    parts = urlsplit(writer_url)
    with tcp_proxy("127.0.0.1", parts.port or 5432) as proxy:
        log = opened(proxied(writer_url, proxy.port))
        sink = sink_of(log)
        fill(log, 5, "before")
        proxy.down()
        fill(log, 10, "during")  # no error: spooled, fsynced
        assert sink.spooling
        spool = tmp_path / "spool" / f"{sink.stream}.jsonl"
        assert len(spool.read_text().splitlines()) == 11  # the 10 and the alert
        proxy.up()
        assert sink.flush(timeout=60)
        assert not sink.spooling and spool.stat().st_size == 0
        fill(log, 2, "after")
        records = list(log.records())
        assert log.verify().ok and [r["seq"] for r in records] == list(range(18))
        users = [r["user"] for r in records]
        assert users[:6] == [f"before{i}" for i in range(5)] + ["during0"]
        assert records[6]["event_id"] == SECURITY_ALERT and records[6]["outcome"] == 8
        assert users[7:] == [f"during{i}" for i in range(1, 10)] + ["after0", "after1"]


def test_a_full_spool_refuses_appends_and_a_dead_processs_spool_is_drained_later(
    opened: Callable[..., AuditLog], writer_url: str, key: bytes, tmp_path: Path
) -> None:
    parts = urlsplit(writer_url)
    with tcp_proxy("127.0.0.1", parts.port or 5432) as proxy:
        log = opened(proxied(writer_url, proxy.port), max_spool_bytes=4096)
        sink = sink_of(log)
        proxy.down()  # before its first record: the stream is not even registered yet
        written = 0
        with pytest.raises(AuditUnavailable, match="spool is full") as refused:
            for i in range(100):
                log.append(USER_AUTHENTICATION, user=f"during{i}")
                written += 1
        assert 0 < written < 100
        assert status_of(refused.value) == 503  # the request that needed the record fails
        sink.close()  # the process ends while the database is still away: the spool stays
        assert (tmp_path / "spool" / f"{sink.stream}.jsonl").stat().st_size > 0
        proxy.up()
    # Another process on this host opens its own stream and drains the orphan.
    other = sink_of(opened(writer_url))
    assert other.flush(timeout=60)
    assert not (tmp_path / "spool" / f"{sink.stream}.jsonl").exists()
    db = connect(writer_url)
    try:
        reports = {r.stream: r.result for r in verify_streams(db, key)}
        lines = list(stream_lines(db, sink.stream))
    finally:
        db.close()
    assert reports[sink.stream].ok  # registered by the drain, too
    assert reports[sink.stream].records == 1 + written  # the alert and the spooled ones
    assert json.loads(lines[-1])["user"] == f"during{written - 1}"


def test_cli_init_db_verify_checkpoint_and_export(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    role = f"audit_{secrets.token_hex(4)}"
    refused = cli(home, "audit", "init-db", "--admin-database", pg_dsn, "--role", role)
    assert refused.returncode == 1 and "password on the command line" in refused.stderr
    parts = urlsplit(pg_dsn)
    owner = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    monkeypatch.setenv("PGPASSWORD", parts.password or "")
    made = cli(home, "audit", "init-db", "--admin-database", owner, "--role", role)
    assert made.returncode == 0, made.stderr
    assert f"GRANT INSERT, SELECT ON audit_streams, audit_records TO {role}" in made.stdout
    url = made.stdout.strip().splitlines()[-1]
    assert url.startswith(f"postgresql://{role}:")
    again = cli(home, "audit", "init-db", "--admin-database", owner, "--role", role)
    assert again.returncode == 0 and "exists" in again.stdout and url not in again.stdout
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("TILESERVER_AUDIT_DATABASE", url)
    added = cli(home, "users", "add", "alice")  # an admin action, audited centrally
    assert added.returncode == 0, added.stderr
    assert cli(home, "users", "list").returncode == 0  # records nothing: no stream of its own
    signer = tmp_path / "signer.key"
    assert cli(home, "audit", "signing-key", str(signer)).returncode == 0
    offhost = tmp_path / "checkpoints.jsonl"
    point = cli(home, "audit", "checkpoint", "--signing-key", str(signer), "--out", str(offhost))
    assert point.returncode == 0, point.stderr
    assert "checkpoint of 1 stream(s), 1 records" in point.stdout
    checked = cli(
        home,
        "audit",
        "verify",
        "--checkpoints",
        str(offhost),
        "--public-key",
        f"{signer}.pub",
    )
    assert checked.returncode == 0, checked.stderr
    assert "intact" in checked.stdout and "1 checkpoint" in checked.stdout
    exported = cli(home, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    (line,) = exported.stdout.splitlines()
    assert json.loads(line)["detail"]["target"] == "alice" and "stream" in json.loads(line)
    # Exporting was itself audited (in the export command's own stream).
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT count(DISTINCT stream), count(*) FROM audit_records").fetchone()
    assert row == (2, 2)
    assert not (home / "audit" / "audit.jsonl").exists()  # nothing went to the local file
    with superuser(pg_dsn) as conn:
        conn.execute("UPDATE audit_records SET line = replace(line, 'alice', 'bob')")
    broken = cli(home, "audit", "verify")
    assert broken.returncode == 2
    assert "BROKEN at seq 0" in broken.stderr and "modified or forged" in broken.stderr


def test_each_server_worker_process_writes_its_own_stream(writer_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "stores").mkdir()
    env = {**os.environ, "TILESERVER_HOME": str(home), "TILESERVER_AUDIT_DATABASE": writer_url}
    command = [sys.executable, "-m", "tileserver.cli", "serve", str(tmp_path / "stores")]
    command += ["--port", str(free_port()), "--workers", "2"]
    db = connect(writer_url)
    log = tmp_path / "serve.log"
    with log.open("w") as errors:
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + 90
        started: list[tuple[object, ...]] = []
        while len(started) < 2 and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.2)
            started = db.read("SELECT stream FROM audit_records WHERE seq = 0")
        assert len(started) == 2, log.read_text()
        server.terminate()
        assert server.wait(timeout=60) == 0
        key = KeyRing(home).service_key("audit")
        reports = verify_streams(db, key)
        assert len(reports) == 2 and all(r.result.ok for r in reports)
        for report in reports:
            events = [json.loads(line) for line in stream_lines(db, report.stream)]
            assert [(e["event_id"], e["event_type"]) for e in events] == [
                (APPLICATION_ACTIVITY, APPLICATION_START),
                (APPLICATION_ACTIVITY, APPLICATION_STOP),
            ]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        db.close()
    assert not (home / "audit" / "audit.jsonl").exists()
    assert list((home / "audit" / "spool").iterdir()) == []  # drained spools are removed


def test_audit_database_settings_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_command_line = cli(
        tmp_path, "audit", "verify", "--audit-database", "postgresql://a:secret@127.0.0.1/x"
    )
    assert on_command_line.returncode == 1
    assert "--audit-database: a password on the command line" in on_command_line.stderr
    assert "secret" not in on_command_line.stderr
    monkeypatch.setenv("TILESERVER_AUDIT_DATABASE", "mysql://127.0.0.1/x")
    wrong = cli(tmp_path, "audit", "verify")
    assert wrong.returncode == 1
    assert "TILESERVER_AUDIT_DATABASE must be a postgresql:// URL" in wrong.stderr


def test_audit_watch_runs_the_detector_over_every_stream(
    writer_url: str, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stuffing spread over two servers' streams is one attack to a watcher on a third host;
    a record edited in either stream is an integrity alert naming the stream."""
    home = tmp_path / "home"
    key = KeyRing(home).service_key("audit")
    sinks = [PostgresSink(writer_url, key, tmp_path / f"spool{i}") for i in range(2)]
    try:
        for i, sink in enumerate(sinks):
            log = AuditLog(tmp_path / "unused.jsonl", key, sink=sink)
            names = [f"unknown:{i}{n:015x}" for n in range(25)]
            log.append(
                USER_AUTHENTICATION,
                outcome=4,
                source_ip="198.51.100.7",
                detail={
                    "aggregated": True,
                    "refused": 25,
                    "reason": "invalid_credentials",
                    "distinct_users": 25,
                    "users": names,
                },
            )
    finally:
        for sink in sinks:
            sink.close()
    monkeypatch.setenv("TILESERVER_AUDIT_DATABASE", writer_url)
    watched = cli(home, "audit", "watch")
    assert watched.returncode == 0, watched.stderr
    assert "ALERT credential_stuffing" in watched.stderr
    assert "2 records, 1 alert(s)" in watched.stderr
    with superuser(pg_dsn) as conn:
        conn.execute("UPDATE audit_records SET line = replace(line, '198.51', '203.0')")
    tampered = cli(home, "audit", "watch")
    assert tampered.returncode == 2
    assert "ALERT integrity" in tampered.stderr and "modified or forged" in tampered.stderr
    assert sinks[0].stream in tampered.stderr or sinks[1].stream in tampered.stderr
