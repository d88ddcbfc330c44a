"""Refused requests reach the audit trail (issue 14, finding 4), through the real app on a
loopback socket: missing, bad, expired and revoked credentials, forged and expired signed
links, slides and routes an authenticated caller may not use, and rate-limited principals.
Each kind leaves its record with the right event and reason and never the secret; a flood
from one address is at most two records per minute while others are still served.

Clients come from their own loopback addresses (127.0.x.y), so each refusal has its own
per-address window.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.server.test_mtls import CertificateAuthority
from tileserver.library import SlideLibrary
from tileserver.security.accounts import Accounts
from tileserver.security.audit import INSTANCES_ACCESSED, USER_AUTHENTICATION, AuditLog
from tileserver.security.crypto import new_key
from tileserver.security.keys import KeyRing
from tileserver.security.login import Authenticator
from tileserver.security.refusals import WINDOW
from tileserver.security.signed_urls import UrlKeys
from tileserver.security.tls import ensure_certificate, server_context
from tileserver.server.app import create_app
from tileserver.server.auth import Security
from tileserver.server.run import make_runner
from tileserver.service import ServiceSettings

SLIDE = "0123456789abcdef0123456789abcdef"  # in collection case-a (no store needed: refused)
OTHER = "fedcba9876543210fedcba9876543210"
JSON = {"Accept": "application/json"}
BROWSER = {"Accept": "text/html,application/xhtml+xml"}


class Clock:
    """Frozen one second into a minute, so a test's refusals share one window."""

    def __init__(self) -> None:
        self.t = time.time() // WINDOW * WINDOW + 1

    def __call__(self) -> float:
        return self.t


@dataclass
class Site:
    url: str
    accounts: Accounts
    audit: AuditLog
    clock: Clock
    url_keys: UrlKeys
    ssl: ssl.SSLContext | None

    def records(self, source: str) -> list[dict[str, Any]]:
        if not self.audit.path.exists():
            return []
        return [r for r in self.audit.records() if r["source_ip"] == source]

    async def get(
        self,
        source: str,
        path: str,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        method: str = "GET",
    ) -> int:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=self.ssl or False)
        async with (
            aiohttp.ClientSession(connector=connector, cookies=cookies) as session,
            session.request(
                method, self.url + path, headers=headers or JSON, allow_redirects=False
            ) as r,
        ):
            await r.read()
            return r.status


@contextlib.asynccontextmanager
async def serving(
    root: Path, *, rate: float = 2000.0, burst: float = 4000.0, client_ca: Path | None = None
) -> AsyncIterator[Site]:
    clock = Clock()
    home = root / "home"
    KeyRing(home).initialise()
    accounts = Accounts(root / "auth.db", new_key(), now=clock)
    accounts.assign(SLIDE, "case-a")
    accounts.assign(OTHER, "case-b")
    audit = AuditLog(root / "audit.jsonl", new_key())
    url_keys = UrlKeys(KeyRing(home))
    security = Security(
        Authenticator(accounts, audit, now=clock),
        audit,
        None,
        tls=client_ca is not None,
        loopback=True,
        url_keys=url_keys,
        rate=rate,
        burst=burst,
    )
    library = SlideLibrary(root / "stores", sources=False, keyring=None)
    runner = make_runner(create_app(library, ServiceSettings(), security))
    await runner.setup()
    server_ssl = client_ssl = None
    if client_ca is not None:
        cert, key, _ = ensure_certificate(home, ["127.0.0.1"])
        server_ssl = server_context(cert, key, client_ca)
        client_ssl = ssl.create_default_context(cafile=cert)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    scheme = "https" if server_ssl else "http"
    try:
        yield Site(
            f"{scheme}://127.0.0.1:{runner.addresses[0][1]}",
            accounts,
            audit,
            clock,
            url_keys,
            client_ssl,
        )
    finally:
        await runner.cleanup()


def only(records: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(records) == 1, records
    return records[0]


def test_refused_credentials_are_audited_per_address(tmp_path: Path) -> None:
    secret_token = "tst_" + secrets.token_urlsafe(32)
    session_cookie = secrets.token_urlsafe(32)

    async def scenario() -> Site:
        async with serving(tmp_path) as site:
            accounts, now = site.accounts, site.clock()
            revoked = accounts.create_token("revoked", frozenset({"metadata"}), None, None)
            accounts.revoke_token("revoked")
            expired = accounts.create_token("expired", frozenset({"metadata"}), None, now - 1)
            assert await site.get("127.0.1.1", "/api/slides") == 401
            assert await site.get("127.0.1.2", "/api/slides", BROWSER) == 303
            for source, token in (
                ("127.0.1.3", secret_token),
                ("127.0.1.4", revoked),
                ("127.0.1.5", expired),
            ):
                bearer = {"Authorization": f"Bearer {token}", **JSON}
                assert await site.get(source, f"/deepzoom/{SLIDE}.dzi", bearer) == 401
            cookie = {"tileserver": session_cookie}
            assert await site.get("127.0.1.6", "/api/slides", cookies=cookie) == 401
            assert await site.get("127.0.1.7", "/api/slides", BROWSER, cookie) == 303
        return site

    site = asyncio.run(scenario())
    assert only(site.records("127.0.1.1"))["detail"] == {"reason": "no_credentials"}
    assert site.records("127.0.1.2") == []  # a browser sent to the login page: normal
    for source in ("127.0.1.3", "127.0.1.4", "127.0.1.5"):
        record = only(site.records(source))
        assert record["event_id"] == USER_AUTHENTICATION and record["outcome"] == 4
        assert record["detail"] == {"reason": "bad_token"}
        assert record["user"] is None and record["object"] == SLIDE
    for source in ("127.0.1.6", "127.0.1.7"):  # a refused cookie, even on the way to log in
        assert only(site.records(source))["detail"] == {"reason": "bad_session"}
    text = site.audit.path.read_text()
    assert secret_token not in text and session_cookie not in text
    assert secret_token[4:20] not in text
    assert site.audit.verify().ok


def test_forged_and_expired_signed_links_are_audited(tmp_path: Path) -> None:
    async def scenario() -> tuple[Site, list[str]]:
        async with serving(tmp_path) as site:
            exp = int(time.time()) + 300
            good = site.url_keys.sign(SLIDE, "tiles", exp)
            signature = good.rsplit("sig=", 1)[1]
            forged = good.replace(signature, secrets.token_hex(32))
            _, key = site.url_keys.current()
            queries = {
                "127.0.2.1": (SLIDE, forged),
                "127.0.2.2": (OTHER, good),  # another slide
                "127.0.2.3": (SLIDE, site.url_keys.sign(SLIDE, "regions", exp)),  # scope
                "127.0.2.4": (SLIDE, f"exp={int(time.time()) - 5}&kid=1&sig={signature}"),
            }
            for source, (slide, query) in queries.items():
                assert await site.get(source, f"/deepzoom/{slide}.dzi?{query}") == 403
            # A link used beyond its reach: minting another link.
            path = f"/api/slides/{SLIDE}/share?minutes=5&{good}"
            assert await site.get("127.0.2.5", path, method="POST") == 403
        return site, [forged.rsplit("sig=", 1)[1], signature, key.hex()]

    site, secrets_used = asyncio.run(scenario())
    for source, slide in (
        ("127.0.2.1", SLIDE),
        ("127.0.2.2", OTHER),
        ("127.0.2.3", SLIDE),
        ("127.0.2.4", SLIDE),
        ("127.0.2.5", SLIDE),
    ):
        record = only(site.records(source))
        assert record["event_id"] == USER_AUTHENTICATION, source
        assert record["detail"] == {"reason": "bad_signed_url"}, source
        assert record["object"] == slide and record["user"] is None
    text = site.audit.path.read_text()
    assert not [s for s in secrets_used if s in text]


def test_callers_refused_slides_and_routes_are_audited_per_principal(tmp_path: Path) -> None:
    async def scenario() -> tuple[Site, list[int]]:
        async with serving(tmp_path) as site:
            accounts = site.accounts
            tiles_b = accounts.create_token(
                "case-b-reader", frozenset({"tiles"}), frozenset({"case-b"}), None
            )
            reader = {"Authorization": f"Bearer {tiles_b}", **JSON}
            statuses = [
                await site.get("127.0.3.1", f"/deepzoom/{SLIDE}.dzi", reader),  # case-a
                await site.get("127.0.3.2", f"/iiif/3/{SLIDE}/info.json", reader),
                await site.get("127.0.3.1", "/api/slides", reader),  # no metadata scope
            ]
            # Granted, but no such store: a missing slide, not a refusal.
            statuses.append(await site.get("127.0.3.3", f"/deepzoom/{OTHER}.dzi", reader))
        return site, statuses

    site, statuses = asyncio.run(scenario())
    assert statuses == [404, 404, 403, 404]
    # The first of the principal's window, at once; the rest in its summary.
    first = only([r for r in site.records("127.0.3.1") if not r["detail"].get("aggregated")])
    assert first["event_id"] == INSTANCES_ACCESSED and first["outcome"] == 4
    assert first["user"] == "case-b-reader" and first["object"] == SLIDE
    assert first["role"] == "service"  # a machine
    assert first["detail"] == {"reason": "not_granted"}
    assert site.records("127.0.3.3") == []
    (summary,) = [r for r in site.audit.records() if r["detail"].get("aggregated")]
    assert summary["event_id"] == INSTANCES_ACCESSED and summary["user"] == "case-b-reader"
    assert summary["role"] == "service"
    detail = summary["detail"]  # written at shutdown: the minute was not over
    assert detail["refused"] == 2 and detail["not_granted"] == 1 and detail["forbidden"] == 1
    assert detail["objects"] == [SLIDE]


def test_rate_limited_principals_are_audited(tmp_path: Path) -> None:
    async def scenario() -> tuple[Site, list[int]]:
        async with serving(tmp_path, rate=0.01, burst=3) as site:
            token = site.accounts.create_token("hasty", frozenset({"metadata"}), None, None)
            bearer = {"Authorization": f"Bearer {token}", **JSON}
            statuses = [await site.get("127.0.4.1", "/api/slides", bearer) for _ in range(10)]
        return site, statuses

    site, statuses = asyncio.run(scenario())
    assert statuses == [200] * 3 + [429] * 7
    records = site.records("127.0.4.1")
    assert records[0]["detail"] == {"reason": "rate_limited"}
    assert records[0]["user"] == "hasty" and records[0]["event_id"] == INSTANCES_ACCESSED
    assert records[1]["detail"]["aggregated"] and records[1]["detail"]["rate_limited"] == 6
    assert len(records) == 2


def test_a_certificate_without_a_live_token_is_audited(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CertificateAuthority(pki, "hospital")
    stranger = ca.issue("stranger", "stranger")
    two_names = ca.issue("lis", "two", also=("stranger",))

    async def scenario() -> tuple[Site, list[int]]:
        async with serving(tmp_path, client_ca=ca.path) as site:
            assert site.ssl is not None
            statuses = []
            for source, issued in (("127.0.5.1", stranger), ("127.0.5.2", two_names)):
                site.ssl.load_cert_chain(issued.cert, issued.key)
                statuses.append(await site.get(source, "/api/slides"))
        return site, statuses

    site, statuses = asyncio.run(scenario())
    assert statuses == [401, 401]
    for source in ("127.0.5.1", "127.0.5.2"):
        assert only(site.records(source))["detail"] == {"reason": "bad_certificate"}


def test_a_flood_from_one_address_is_two_records_and_others_are_served(tmp_path: Path) -> None:
    flood, others = 5000, 20

    async def scenario() -> tuple[Site, list[int], list[int]]:
        async with serving(tmp_path) as site:
            token = site.accounts.create_token("reader", frozenset({"metadata"}), None, None)
            bearer = {"Authorization": f"Bearer {token}", **JSON}
            connector = aiohttp.TCPConnector(local_addr=("127.0.6.1", 0), limit=32)
            refused: list[int] = []

            async def flooding(session: aiohttp.ClientSession) -> None:
                async def one() -> None:
                    async with session.get(site.url + "/api/slides", headers=JSON) as r:
                        refused.append(r.status)

                for start in range(0, flood, 250):
                    await asyncio.gather(*(one() for _ in range(start, min(start + 250, flood))))

            async def serving_others() -> list[int]:
                statuses = []
                for _ in range(others):
                    statuses.append(await site.get("127.0.6.2", "/api/slides", bearer))
                    await asyncio.sleep(0.01)
                return statuses

            async with aiohttp.ClientSession(connector=connector) as session:
                _, served = await asyncio.gather(flooding(session), serving_others())
            assert len(site.records("127.0.6.1")) == 1  # the first, at once
            site.clock.t += WINDOW  # the minute is over: the next flush writes the summary
        return site, refused, served

    site, refused, served = asyncio.run(scenario())
    assert refused == [401] * flood
    assert served == [200] * others
    records = site.records("127.0.6.1")
    assert len(records) == 2
    assert records[1]["detail"]["refused"] == flood - 1
    assert records[1]["detail"]["no_credentials"] == flood - 1
