"""The secure path at engine speed, on the real server: the authorization cache keeps
revocation immediate when the CLI (another process) changes the database, and rate limits
are set with ``serve --rate-limit N[/BURST]`` and ``--rate-limit-tokens``."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cli import cli
from tests.server.conftest import Stores, run_server
from tileserver.errors import ConfigError
from tileserver.server.run import ServeOptions, check_safe, parse_rate
from tileserver.service import ServiceSettings


@pytest.fixture
def home(tmp_path: Path, stores: Stores) -> Path:
    """The stores' key ring with an auth database of this test's own."""
    home = tmp_path / "home"
    shutil.copytree(stores.home, home, ignore=shutil.ignore_patterns("auth.db*", "audit"))
    return home


def tile(slide_id: str) -> str:
    return f"/deepzoom/{slide_id}_files/8/0_0.jpeg"


def new_token(home: Path, name: str, collection: str) -> dict[str, str]:
    made = cli(home, "tokens", "create", name, "--scope", "tiles", "--collection", collection)
    assert made.returncode == 0, made.stderr
    return {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}


def test_changes_made_by_the_cli_take_effect_on_the_next_request(
    home: Path, stores: Stores
) -> None:
    slide = stores.synthetic
    assert cli(home, "slides", "assign", "case-1", slide).returncode == 0
    revoked, moved = new_token(home, "lis-a", "case-1"), new_token(home, "lis-b", "case-1")
    with run_server(stores.directory, home, secure=True) as server:
        for headers in (revoked, moved):  # warm: the same answers again from the cache
            assert [server.get(tile(slide), headers).status for _ in range(3)] == [200] * 3
        assert cli(home, "tokens", "revoke", "lis-a").returncode == 0
        assert server.get(tile(slide), revoked).status == 401
        assert server.get(tile(slide), moved).status == 200
        assert cli(home, "slides", "assign", "case-2", slide).returncode == 0
        assert server.get(tile(slide), moved).status == 404  # not granted looks like missing


def test_a_flood_from_one_token_gets_429_at_the_configured_rate(home: Path, stores: Stores) -> None:
    slide = stores.synthetic
    assert cli(home, "slides", "assign", "case-1", slide).returncode == 0
    headers = new_token(home, "flood", "case-1")
    # One request per 100 s sustained, three at once: the fourth request is refused unless
    # the first three took over 100 s.
    with run_server(stores.directory, home, "--rate-limit-tokens", "0.01/3", secure=True) as server:
        replies = [server.get(tile(slide), headers) for _ in range(5)]
    assert [r.status for r in replies[:3]] == [200] * 3
    assert [r.status for r in replies[3:]] == [429] * 2
    assert int(replies[3].headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2000", (2000.0, 4000.0)), ("100/5", (100.0, 5.0)), ("0.5", (0.5, 1.0)), ("0", (0.0, 1.0))],
)
def test_rate_limits_parse(text: str, expected: tuple[float, float]) -> None:
    assert parse_rate(text, "--rate-limit") == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "10/0", "10/x", "nan", "inf", "1/2/3"])
def test_bad_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--rate-limit"):
        parse_rate(text, "--rate-limit")


def options(tmp_path: Path, **changes: Any) -> ServeOptions:
    base = ServeOptions(
        location=str(tmp_path),
        sources=False,
        host="127.0.0.1",
        port=0,
        workers=1,
        home=tmp_path / "home",
        service=ServiceSettings(),
    )
    return dataclasses.replace(base, **changes)


def test_no_rate_limit_is_refused_with_authentication(tmp_path: Path) -> None:
    for changes in ({"rate_limit": (0.0, 1.0)}, {"token_rate_limit": (0.0, 1.0)}):
        with pytest.raises(ConfigError, match="no rate limit"):
            check_safe(options(tmp_path, **changes))
    check_safe(options(tmp_path, rate_limit=(0.0, 1.0), auth=False, tls=False))


def test_the_cli_refuses_no_rate_limit_with_one_line(tmp_path: Path) -> None:
    done = cli(tmp_path / "home", "serve", str(tmp_path), "--port", "0", "--rate-limit", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tileserver: error: refusing to serve with authentication and no rate limit (0)"
    ]
    bad = cli(tmp_path / "home", "serve", str(tmp_path), "--rate-limit-tokens", "lots")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "--rate-limit-tokens is N or N/BURST" in bad.stderr


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_sessions_are_resumed(home: Path, stores: Stores, version: ssl.TLSVersion) -> None:
    """A client coming back skips the full handshake (session tickets), on TLS 1.2 and 1.3."""
    expected = "TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    with run_server(stores.directory, home, secure=True) as server:
        context = ssl.create_default_context(cafile=home / "tls" / "cert.pem")
        context.maximum_version = version
        address = urlsplit(server.base)
        assert address.hostname is not None and address.port is not None
        session, reused = None, []
        for _ in range(3):
            with (
                socket.create_connection((address.hostname, address.port), timeout=30) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
            ):
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := tls.recv(65536):  # tickets arrive after the handshake (1.3)
                    reply += chunk
                assert reply.startswith(b"HTTP/1.1 200")
                assert tls.version() == expected
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True, True]
