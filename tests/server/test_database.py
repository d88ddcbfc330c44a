"""The real server with its state in PostgreSQL: a database that goes away is a 503 with
Retry-After for every request that needs it (never an "allow", even from the cache), and the
server serves again by itself when the database returns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.pgserver import PgServer
from tests.server.conftest import Stores, run_server
from tests.tcpproxy import tcp_proxy


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))


def _cli(home: Path, database: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    if database is not None:
        env["TILESERVER_DATABASE"] = database
    return subprocess.run(
        [sys.executable, "-m", "tileserver.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_database_down_is_503_and_back_up_serves_without_restart(
    stores: Stores, pg_server: PgServer, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        database = _via(pg_dsn, proxy.port)
        made = _cli(stores.home, database, "tokens", "create", "lis", "--scope", "tiles")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        assigned = _cli(stores.home, database, "slides", "assign", "CASE-DB", stores.synthetic)
        assert assigned.returncode == 0, assigned.stderr
        monkeypatch.setenv("TILESERVER_DATABASE", database)  # the password stays off argv
        with run_server(stores.directory, stores.home, secure=True) as server:
            bearer = {"Authorization": f"Bearer {token}"}
            dzi = f"/deepzoom/{stores.synthetic}.dzi"
            assert server.get(dzi, bearer).status == 200  # the answers are cached now

            proxy.down()
            for headers in (bearer, {"Authorization": "Bearer tst_unknown"}):
                down = server.get(dzi, headers)
                assert down.status == 503, down.body
                assert down.headers["retry-after"].isdigit()
                assert b"database" in down.body and token.encode() not in down.body
            assert server.get("/health").status == 200  # what needs no database still works

            proxy.up()
            deadline = time.monotonic() + 60
            while (status := server.get(dzi, bearer).status) != 200:
                assert status == 503 and time.monotonic() < deadline, status
                time.sleep(0.5)
            assert server.get(dzi, {"Authorization": "Bearer tst_unknown"}).status == 401


def test_the_cli_refuses_a_password_on_its_command_line(tmp_path: Path) -> None:
    secret = "pw-" + "x" * 12
    url = f"postgresql://admin:{secret}@127.0.0.1:1/tiles"
    done = _cli(tmp_path, None, "users", "list", "--database", url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "PGPASSFILE" in done.stderr
    assert secret not in done.stderr + done.stdout


def test_the_cli_says_in_one_line_when_the_database_is_down(
    tmp_path: Path, pg_server: PgServer
) -> None:
    url = f"postgresql://nobody@127.0.0.1:{pg_server.port + 1}/none?connect_timeout=2"
    done = _cli(tmp_path, url, "users", "list")
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("tileserver: error: ") and done.stderr.count("\n") == 1


def test_two_servers_on_one_database_share_their_rate_limits(
    stores: Stores, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _cli(stores.home, pg_dsn, "tokens", "create", "lis2", "--scope", "tiles")
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    assigned = _cli(stores.home, pg_dsn, "slides", "assign", "CASE-DB", stores.synthetic)
    assert assigned.returncode == 0, assigned.stderr
    monkeypatch.setenv("TILESERVER_DATABASE", pg_dsn)
    limit = ("--rate-limit", "2/10", "--login-rate", "0.01")
    with (
        run_server(stores.directory, stores.home, *limit, secure=True) as a,
        run_server(stores.directory, stores.home, *limit, secure=True) as b,
    ):
        dzi = f"/deepzoom/{stores.synthetic}.dzi"
        started = time.monotonic()
        statuses = [(a, b)[i % 2].get(dzi, bearer).status for i in range(30)]
        elapsed = time.monotonic() - started
        assert set(statuses) == {200, 429}
        assert 10 <= statuses.count(200) <= 10 + 2 * elapsed + 1  # one budget, not two

        logins = [
            (a, b)[i % 2]  # a new name each time: the per-name throttle stays out of it
            .post("/auth/login", {"username": f"u{i}", "password": "wrong pw here", "code": "0"})
            .status
            for i in range(40)
        ]
        assert logins.count(401) == 30 and logins.count(429) == 10  # one burst per address


def test_a_link_shared_through_one_server_opens_on_another_until_retired(
    stores: Stores, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _cli(stores.home, pg_dsn, "tokens", "create", "lis3", "--scope", "tiles")
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    assigned = _cli(stores.home, pg_dsn, "slides", "assign", "CASE-DB", stores.synthetic)
    assert assigned.returncode == 0, assigned.stderr
    monkeypatch.setenv("TILESERVER_DATABASE", pg_dsn)
    with (
        run_server(stores.directory, stores.home, secure=True) as a,
        run_server(stores.directory, stores.home, secure=True) as b,
    ):
        shared = a.post(f"/api/slides/{stores.synthetic}/share?scope=tiles", {}, bearer)
        assert shared.status == 200, shared.body
        link = shared.json()["dzi"]
        assert b.get(link).status == 200  # the key is in the database, not in a's files
        listed = _cli(stores.home, pg_dsn, "urls", "list")
        assert listed.stdout.split() == ["url", "key", "1", "(signs)"], listed.stderr
        retired = _cli(stores.home, pg_dsn, "urls", "retire", "1")
        assert retired.returncode == 0, retired.stderr
        assert a.get(link).status == 403 and b.get(link).status == 403  # at the next request
