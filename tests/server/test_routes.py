"""Route inventory (CFG-04): every route demands authentication unless it is on the
explicit public list. A new route without a decision fails this test."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from aiohttp import web

from tileserver.library import SlideLibrary
from tileserver.security.accounts import Accounts
from tileserver.security.audit import AuditLog, SlideViewAggregator
from tileserver.security.crypto import new_key
from tileserver.security.login import Authenticator
from tileserver.server.app import create_app
from tileserver.server.auth import Security, is_public
from tileserver.server.run import make_runner
from tileserver.service import ServiceSettings

SAMPLE = {
    "slide_id": "0" * 32,
    "annotation_id": "0" * 32,
    "z": "1",
    "col": "0",
    "row": "0",
    "fmt": "jpeg",
    "region": "full",
    "size": "max",
    "rotation": "0",
    "quality": "default",
    "format": "jpg",
    "name": "label",
    "path": "viewer.css",
    "study": "2.25.1",
    "series": "2.25.2",
    "instance": "2.25.3",
    "frames": "1",
    "what": "studies",
}
# Routes that answer without credentials, with why.
EXPECTED_PUBLIC = {
    "/health": "liveness for load balancers",
    "/auth/login": "logging in",
    "/auth/enrol": "one-time enrolment link",
    "/auth/enrol/confirm": "one-time enrolment link",
    "/auth/enrol/link": "whom a one-time enrolment link is for",
    "/auth/link": "one-time loopback login link",
    "/login": "the login page",
    "/static/{path}": "viewer code and styles (no patient data)",
}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: SAMPLE[m.group(1)], path)


def test_every_route_needs_credentials(tmp_path: Path) -> None:
    assert all(is_public(concrete(path)) for path in EXPECTED_PUBLIC)

    async def scenario() -> dict[tuple[str, str], tuple[int, str]]:
        library = SlideLibrary(tmp_path, sources=False, keyring=None)
        accounts = Accounts(tmp_path / "auth.db", new_key())
        audit = AuditLog(tmp_path / "audit.jsonl", new_key())
        security = Security(
            Authenticator(accounts, audit),
            audit,
            SlideViewAggregator(new_key()),
            tls=False,
            loopback=True,
        )
        app = create_app(library, ServiceSettings(), security)
        runner = make_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        results = {}
        try:
            async with aiohttp.ClientSession() as session:
                for route in app.router.routes():
                    info = route.resource.get_info() if route.resource else {}
                    path = info.get("path") or info.get("formatter") or ""
                    if route.method == "HEAD":
                        continue
                    url = f"http://127.0.0.1:{port}{concrete(path)}"
                    async with session.request(route.method, url, json={}) as reply:
                        json_body = reply.content_type == "application/json"
                        body = await reply.json() if json_body else {}
                        results[(route.method, path)] = (reply.status, body.get("error", ""))
        finally:
            await runner.cleanup()
        return results

    results = asyncio.run(scenario())
    assert len(results) >= 15
    for (method, path), (status, error) in results.items():
        if path in EXPECTED_PUBLIC:  # may still refuse bad input, but not for lack of a login
            assert error != "authentication required", (method, path)
        else:
            assert (status, error) == (401, "authentication required"), (method, path, status)


def test_rate_limit_and_body_cap(tmp_path: Path) -> None:
    """A flood from one principal gets 429 with Retry-After; big bodies get 413."""

    async def scenario() -> tuple[list[int], str | None, int]:
        library = SlideLibrary(tmp_path, sources=False, keyring=None)
        accounts = Accounts(tmp_path / "auth.db", new_key())
        audit = AuditLog(tmp_path / "audit.jsonl", new_key())
        security = Security(
            Authenticator(accounts, audit),
            audit,
            None,
            tls=False,
            loopback=True,
            rate=5.0,
            burst=10.0,
        )
        app = create_app(library, ServiceSettings(), security)
        runner = make_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        statuses, retry_after = [], None
        try:
            async with aiohttp.ClientSession() as session:
                body = {"username": "x" * (200 * 1024), "password": "", "code": ""}
                async with session.post(f"http://127.0.0.1:{port}/auth/login", json=body) as r:
                    too_big = r.status
                token = accounts.create_token("flood", frozenset({"metadata"}), None, None)
                headers = {"Authorization": f"Bearer {token}"}
                for _ in range(30):
                    url = f"http://127.0.0.1:{port}/api/slides"
                    async with session.get(url, headers=headers) as reply:
                        statuses.append(reply.status)
                        retry_after = retry_after or reply.headers.get("Retry-After")
        finally:
            await runner.cleanup()
        return statuses, retry_after, too_big

    statuses, retry_after, too_big = asyncio.run(scenario())
    assert statuses[:9] == [200] * 9
    assert 429 in statuses and retry_after is not None and int(retry_after) >= 1
    assert too_big == 413
