"""The load client's HTTP side: one aiohttp session, a loopback guard, timed GETs.

Targets must be loopback (127.0.0.0/8, ::1, or a name resolving only to those) unless
``allow_remote``: the check runs before any connection, and a resolver re-checks every
connection, so a name that later resolves elsewhere (DNS rebinding) is refused too.
Redirects are not followed (a 3xx counts as an error), so a loopback server cannot send the
load elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from tileserver.errors import TileserverError


class BenchError(TileserverError):
    """The benchmark cannot run: bad target, descriptor, options or refused host."""


class RemoteTargetRefused(BenchError):
    """A non-loopback target without ``allow_remote``."""


@dataclass(frozen=True)
class ClientOptions:
    headers: tuple[tuple[str, str], ...] = ()
    cookies: tuple[tuple[str, str], ...] = ()
    insecure: bool = False  # skip TLS verification (self-signed certificates)
    cafile: str | None = None
    allow_remote: bool = False
    timeout: float = 30.0  # seconds per request


@dataclass(frozen=True)
class Fetch:
    """One timed GET: the status (0 on exception), body bytes, seconds, error text."""

    status: int
    nbytes: int
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``('Name', 'value')``."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise BenchError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def parse_cookie(text: str) -> tuple[str, str]:
    """``'name=value'`` -> ``('name', 'value')``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise BenchError(f"cookie must look like 'name=value', got {text!r}")
    return name.strip(), value.strip()


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_target(url: str, *, allow_remote: bool = False) -> None:
    """Refuse ``url`` unless its host is loopback; resolves names, never connects."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchError(f"not an http(s) URL: {url}")
    if allow_remote:
        return
    host = parts.hostname
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        addresses = [host]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or 0, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise RemoteTargetRefused(f"{host}: cannot resolve ({exc})") from None
        addresses = [str(info[4][0]) for info in infos]
    remote = sorted({a for a in addresses if not is_loopback(a)})
    if remote or not addresses:
        raise RemoteTargetRefused(
            f"{host} is not a loopback address ({', '.join(remote) or 'nothing'}); "
            "benchmarking another machine needs --allow-remote"
        )


class _LoopbackResolver(aiohttp.ThreadedResolver):
    """Refuses, at connection time, any name that resolves outside loopback."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        bad = [r["host"] for r in results if not is_loopback(r["host"])]
        if bad:
            raise RemoteTargetRefused(f"{host} resolved to non-loopback {', '.join(bad)}")
        return results


def _ssl_context(options: ClientOptions) -> ssl.SSLContext | bool:
    if options.insecure:
        return False
    if options.cafile:
        return ssl.create_default_context(cafile=options.cafile)
    return True


class TileClient:
    """An ``aiohttp.ClientSession`` with at most ``concurrency`` requests in flight.

    ``fetch`` waits for a free slot, then times the request from send to the last body byte,
    so latency excludes waiting in the client's own queue.
    """

    def __init__(self, options: ClientOptions, concurrency: int) -> None:
        if concurrency < 1:
            raise BenchError(f"concurrency must be at least 1, got {concurrency}")
        self.options = options
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TileClient:
        connector = aiohttp.TCPConnector(
            limit=self.concurrency,
            ssl=_ssl_context(self.options),
            resolver=None if self.options.allow_remote else _LoopbackResolver(),
        )
        headers = dict(self.options.headers)
        if self.options.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.options.cookies)
            headers["Cookie"] = "; ".join(filter(None, [headers.get("Cookie"), cookie]))
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # keep server cookies on 127.0.0.1
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("TileClient used outside 'async with'")
        return self._session

    async def get_text(self, url: str) -> str:
        """GET a descriptor (``.dzi`` or ``info.json``); anything but 200 is an error."""
        check_target(url, allow_remote=self.options.allow_remote)
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise BenchError(f"GET {url}: HTTP {resp.status}: {body[:200]}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BenchError(f"GET {url}: {type(exc).__name__}: {exc}") from None

    async def fetch(self, url: str) -> Fetch:
        async with self._slots:
            start = time.perf_counter()
            try:
                async with self.session.get(url, allow_redirects=False) as resp:
                    nbytes = 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        nbytes += len(chunk)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, RemoteTargetRefused) as exc:
                return Fetch(0, 0, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
            seconds = time.perf_counter() - start
        error = None if status == 200 else f"HTTP {status}"
        return Fetch(status, nbytes, seconds, error)


def describe(options: ClientOptions) -> dict[str, Any]:
    """Options for the JSON report, header and cookie values left out."""
    return {
        "headers": [k for k, _ in options.headers],
        "cookies": [k for k, _ in options.cookies],
        "insecure": options.insecure,
        "cafile": options.cafile,
        "allow_remote": options.allow_remote,
        "timeout_s": options.timeout,
    }
