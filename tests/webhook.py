"""An HTTPS webhook receiver on loopback for alert tests: aiohttp in a thread of its own,
with a self-signed certificate made by the project's TLS helper."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tileserver.security.crypto import self_signed_certificate


@dataclass
class Receiver:
    url: str
    ca: Path  # the receiver's certificate, for --alert-ca
    fail_first: int = 0  # answer 503 to this many posts first (retries)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def webhook_receiver(root: Path, fail_first: int = 0) -> Iterator[Receiver]:
    cert_pem, key_pem = self_signed_certificate(["127.0.0.1"])
    cert, key = root / "webhook-cert.pem", root / "webhook-key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    found = Receiver("", cert, fail_first)
    loop = asyncio.new_event_loop()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        found.answered += 1
        if found.answered <= found.fail_first:
            return web.Response(status=503)
        found.posts.append((dict(request.headers), body))
        found.arrived.set()
        return web.Response(status=204)

    async def start() -> web.AppRunner:
        app = web.Application()
        app.add_routes([web.post("/hook", hook)])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        found.url = f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
        return runner

    runner = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
