"""Issue 14, finding 8: what an independent probe of the running server found, each pinned.

Most run the real application in process on loopback (fast, and the security settings are
chosen per test); start-up refusals run the real CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.server.conftest import Stores, run_server
from tileserver.errors import ConfigError
from tileserver.library import SlideLibrary
from tileserver.security.accounts import Accounts
from tileserver.security.audit import AuditLog
from tileserver.security.crypto import new_key
from tileserver.security.keys import KeyRing
from tileserver.security.login import Authenticator
from tileserver.security.signed_urls import UrlKeys
from tileserver.server.app import create_app
from tileserver.server.auth import Security
from tileserver.server.run import ServeOptions, check_safe, make_runner
from tileserver.service import ServiceSettings


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[str]:
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def library(stores: Stores) -> SlideLibrary:
    return SlideLibrary(stores.directory, sources=False, keyring=KeyRing(stores.home))


def open_security() -> Security:
    return Security(None, None, None, tls=False, loopback=True)  # --no-auth


def secured(tmp_path: Path, *, tls: bool = False) -> tuple[Security, Accounts]:
    accounts = Accounts(tmp_path / "auth.db", new_key())
    audit = AuditLog(tmp_path / "audit.jsonl", new_key())
    security = Security(
        Authenticator(accounts, audit),
        audit,
        None,
        tls=tls,
        loopback=True,
        url_keys=UrlKeys(KeyRing(tmp_path / "home")),
    )
    return security, accounts


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with session.get(url, headers=headers or {}, allow_redirects=False) as reply:
        body: Any = await reply.json() if reply.content_type.endswith("json") else None
        return reply.status, body, dict(reply.headers)


# -- (a) an over-long /static/ name ------------------------------------------------------------
def test_an_over_long_static_name_is_a_plain_404(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["a" * 300, "a/" * 2000 + "x.css", ("b" * 250 + "/") * 20 + "c.css", "favicon.svg"]

    async def scenario() -> list[int]:
        app = create_app(
            SlideLibrary(tmp_path, sources=False, keyring=None), ServiceSettings(), open_security()
        )
        async with running(app) as base, aiohttp.ClientSession() as session:
            return [(await fetch(session, f"{base}/static/{name}"))[0] for name in names]

    with caplog.at_level(logging.WARNING):
        statuses = asyncio.run(scenario())
    assert statuses == [404, 404, 404, 200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage()[:200] for r in caplog.records
    ]


# -- (b) /viewer/cases needs the metadata scope ------------------------------------------------
def test_the_worklist_needs_the_metadata_scope(tmp_path: Path, stores: Stores) -> None:
    security, accounts = secured(tmp_path)
    accounts.assign(stores.synthetic, "case-secret-name")
    tiles = accounts.create_token("tiles-only", frozenset({"tiles"}), None, None)
    metadata = accounts.create_token("lis", frozenset({"metadata"}), None, None)
    assert security.url_keys is not None
    signed = security.url_keys.sign(stores.synthetic, "tiles", int(time.time()) + 300)

    async def scenario() -> dict[str, tuple[int, Any, dict[str, str]]]:
        app = create_app(library(stores), ServiceSettings(), security)
        async with running(app) as base, aiohttp.ClientSession() as session:
            return {
                "tiles": await fetch(
                    session, f"{base}/viewer/cases", {"Authorization": f"Bearer {tiles}"}
                ),
                "metadata": await fetch(
                    session, f"{base}/viewer/cases", {"Authorization": f"Bearer {metadata}"}
                ),
                "signed": await fetch(session, f"{base}/viewer/cases?{signed}"),
            }

    replies = asyncio.run(scenario())
    status, body, _ = replies["tiles"]
    assert status == 403, body
    assert "case-secret-name" not in str(body) and stores.synthetic not in str(body)
    assert replies["signed"][0] in (401, 403)
    status, body, _ = replies["metadata"]  # the same answer as /api/slides gives it
    assert status == 200
    assert body == {
        "cases": [
            {
                "name": "case-secret-name",
                "slides": [stores.synthetic],
                "labels": {stores.synthetic: {"block": None, "stain": None, "scan_date": None}},
            }
        ]
    }


# -- (c) a tiles-scope signed link opens tiles only ---------------------------------------------
def test_a_signed_tiles_link_opens_only_whole_iiif_tiles(tmp_path: Path, stores: Stores) -> None:
    security, accounts = secured(tmp_path)
    slide = stores.synthetic
    accounts.assign(slide, "case-a")
    assert security.url_keys is not None
    query = security.url_keys.sign(slide, "tiles", int(time.time()) + 300)

    async def scenario() -> tuple[dict[str, int], dict[str, int], int]:
        app = create_app(library(stores), ServiceSettings(), security)
        async with running(app) as base, aiohttp.ClientSession() as session:
            status, info, _ = await fetch(session, f"{base}/iiif/3/{slide}/info.json?{query}")
            assert status == 200
            tile, factors = info["tiles"][0]["width"], info["tiles"][0]["scaleFactors"]
            width, height = info["width"], info["height"]
            last = -(-width // tile) - 1  # last column at full resolution
            edge = width - last * tile
            low = factors[-1]  # the whole image is one tile
            tiles = [
                f"0,0,{tile},{tile}/{tile},{tile}/0/default.jpg",
                f"{tile},{tile},{tile},{tile}/{tile},/0/default.jpg",
                f"{last * tile},0,{edge},{tile}/{edge},{tile}/0/default.jpg",
                f"{2 * tile},0,{2 * tile},{2 * tile}/{tile},{tile}/0/default.jpg",
                f"full/{-(-width // low)},{-(-height // low)}/0/default.jpg",
            ]
            renders = [
                "full/max/0/default.jpg",
                "0,0,100,100/^max/0/default.jpg",
                f"0,0,{tile},{tile}/^{2 * tile},{2 * tile}/0/default.jpg",
                f"10,0,{tile},{tile}/{tile},{tile}/0/default.jpg",  # off the grid
                f"0,0,{2 * tile},{tile}/{2 * tile},{tile}/0/default.jpg",  # two tiles
                f"0,0,{2 * tile},{2 * tile}/{2 * tile},{2 * tile}/0/default.png",  # sf 2, full res
            ]
            ok = {t: (await fetch(session, f"{base}/iiif/3/{slide}/{t}?{query}"))[0] for t in tiles}
            refused = {
                r: (await fetch(session, f"{base}/iiif/3/{slide}/{r}?{query}"))[0] for r in renders
            }
            dz = await fetch(session, f"{base}/deepzoom/{slide}_files/12/1_1.jpeg?{query}")
            return ok, refused, dz[0]

    ok, refused, deepzoom = asyncio.run(scenario())
    assert all(status == 200 for status in ok.values()), ok
    assert all(status == 403 for status in refused.values()), refused
    assert deepzoom == 200


# -- (d) authentication over plain HTTP --------------------------------------------------------
def _serve(home: Path, directory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``tileserver serve`` that must refuse to start (a short timeout: it must not listen)."""
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    command = [sys.executable, "-m", "tileserver.cli", "serve", str(directory), "--port", "0"]
    try:
        return subprocess.run(
            [*command, *flags], capture_output=True, text=True, timeout=30, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve {' '.join(flags)} started instead of refusing")


def test_authentication_over_plain_http_is_refused_at_start(tmp_path: Path) -> None:
    """A session cookie over plain HTTP would either be dropped (Secure) or sent in clear to
    every service on the host: refuse, rather than answer logins that cannot stick."""
    refused = _serve(tmp_path / "home", tmp_path, "--insecure-http")
    assert refused.returncode == 1, refused.stderr
    assert "plain HTTP" in refused.stderr and "Traceback" not in refused.stderr


def test_the_session_cookie_the_server_sets_is_the_one_it_reads(tmp_path: Path) -> None:
    """An application built with authentication and without TLS (in-process only) reads the
    plain cookie name that login sets for it, and never the ``__Host-`` one (and vice versa)."""
    from tileserver.server.auth import session_cookie

    results = {}
    for tls in (False, True):
        (tmp_path / str(tls)).mkdir()
        security, accounts = secured(tmp_path / str(tls), tls=tls)
        accounts.create_user("carol", "pathologist", "x", b"", -1)
        session = accounts.create_session("carol")

        async def scenario(security: Security, session: str) -> tuple[int, int]:
            app = create_app(
                SlideLibrary(tmp_path, sources=False, keyring=None), ServiceSettings(), security
            )
            async with running(app) as base, aiohttp.ClientSession() as client:
                right = session_cookie(security.tls)
                wrong = session_cookie(not security.tls)
                good = await fetch(client, f"{base}/auth/me", {"Cookie": f"{right}={session}"})
                bad = await fetch(client, f"{base}/auth/me", {"Cookie": f"{wrong}={session}"})
                return good[0], bad[0]

        results[tls] = asyncio.run(scenario(security, session))
    assert session_cookie(True) == "__Host-tileserver" and session_cookie(False) == "tileserver"
    assert results == {False: (200, 401), True: (200, 401)}


# -- (e) the IIIF id comes from configuration, never from the Host header ------------------------
def test_iiif_ids_ignore_the_host_header(tmp_path: Path, stores: Stores) -> None:
    slide = stores.synthetic
    evil = {"Host": "evil.example"}

    async def scenario(public_url: str | None) -> tuple[str, str, str]:
        app = create_app(library(stores), ServiceSettings(), open_security(), public_url)
        async with running(app) as base, aiohttp.ClientSession() as session:
            _, info, _ = await fetch(session, f"{base}/iiif/3/{slide}/info.json", evil)
            status, _, headers = await fetch(session, f"{base}/iiif/3/{slide}", evil)
            assert status == 303
            return base, info["id"], headers["Location"]

    base, iiif_id, location = asyncio.run(scenario(None))
    assert iiif_id == f"{base}/iiif/3/{slide}"  # the bound address, port and scheme
    assert location == f"{iiif_id}/info.json"
    _, iiif_id, location = asyncio.run(scenario("https://tiles.example.org:9443"))
    assert iiif_id == f"https://tiles.example.org:9443/iiif/3/{slide}"
    assert location == f"{iiif_id}/info.json"


def test_serve_takes_a_public_url(stores: Stores) -> None:
    # Plain HTTP on loopback behind a TLS front end: the public URL is the front end's.
    with run_server(
        stores.directory, stores.home, "--public-url", "https://tiles.example.org/"
    ) as srv:
        info = srv.get(f"/iiif/3/{stores.synthetic}/info.json", {"Host": "evil.example"}).json()
    assert info["id"] == f"https://tiles.example.org/iiif/3/{stores.synthetic}"


@pytest.mark.parametrize(
    "url, tls, needle",
    [
        ("ftp://tiles.example.org", True, "http"),
        ("https://", True, "host"),
        ("https://tiles.example.org/prefix", True, "path"),
        ("https://tiles.example.org/?x=1", True, "query"),
        ("https://user:pw@tiles.example.org", True, "user"),
        ("http://tiles.example.org", True, "https"),  # TLS on, clients sent to plain HTTP
        ("https://tiles.example.org:99999", True, "port"),
    ],
)
def test_bad_public_urls_are_refused(tmp_path: Path, url: str, tls: bool, needle: str) -> None:
    options = ServeOptions(
        str(tmp_path), False, "127.0.0.1", 0, 1, tmp_path, ServiceSettings(), tls=tls,
        public_url=url,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=needle):
        check_safe(options)


def test_a_bad_public_url_stops_serve_with_one_line(tmp_path: Path) -> None:
    refused = _serve(tmp_path / "home", tmp_path, "--public-url", "https://x.example/a?b")
    assert refused.returncode == 1, refused.stderr
    assert "--public-url" in refused.stderr and "Traceback" not in refused.stderr
