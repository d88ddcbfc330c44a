"""One audit record appended, to the file sink against the PostgreSQL sink (pytest-benchmark;
not part of the default test run; PostgreSQL is Debian's, a throwaway cluster on loopback as
in the tests, through the append-only role `audit init-db` makes):

    .venv/bin/pytest benchmarks/bench_audit_sink.py --benchmark-only \\
        --benchmark-columns=median,mean,ops --benchmark-group-by=func

``append[file]``: flock, read the chain's tail, write one line, fsync. ``append[postgresql]``:
seal with the head kept in memory, one autocommit INSERT (note: the test cluster runs with
fsync and synchronous_commit off, so no disk flush is in this figure; a production server's
commit waits for its WAL flush). ``append[spooling]``: the database away, so the record is
appended and fsynced to the local spool file instead. Both sinks are measured in the same
run; the server calls ``append`` in a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from tests.pgserver import postgresql
from tests.tcpproxy import tcp_proxy
from tileserver.security.audit import INSTANCES_ACCESSED, AuditLog
from tileserver.security.audit_sink import PostgresSink, init_database
from tileserver.security.crypto import new_key

SLIDE = "a" * 32


@pytest.fixture(scope="module")
def writer_url() -> Iterator[str]:
    with postgresql() as server:
        _, url = init_database(server.dsn(server.create_database()), role="bench_audit")
        assert url is not None
        yield url


@pytest.fixture(params=["file", "postgresql", "spooling"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    key = new_key()
    path = tmp_path / "audit" / "audit.jsonl"
    if request.param == "file":
        yield AuditLog(path, key)
        return
    url: str = request.getfixturevalue("writer_url")
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])
    with tcp_proxy(host, port) as proxy:
        sink = PostgresSink(url.replace(f":{port}/", f":{proxy.port}/"), key, path.parent)
        audit = AuditLog(path, key, sink=sink)
        if request.param == "spooling":
            proxy.down()
            audit.append(INSTANCES_ACCESSED)  # the one append that waits for the outage
        try:
            yield audit
        finally:
            if request.param == "spooling":
                proxy.up()  # the spooled records are stored as the sink closes
            sink.close()


def test_append(benchmark: BenchmarkFixture, log: AuditLog) -> None:
    detail = {"session": "0123456789abcdef", "levels": [12, 13, 14], "tiles": 240}
    benchmark(
        log.append,
        INSTANCES_ACCESSED,
        action="R",
        user="alice",
        role="pathologist",
        source_ip="10.0.0.7",
        obj=SLIDE,
        detail=detail,
    )
