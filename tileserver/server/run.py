"""Running the server: checks, TLS, one event loop per process, ``workers`` processes on
one port. Unsafe configurations are refused before anything listens."""

from __future__ import annotations

import asyncio
import ipaddress
import multiprocessing
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop
from aiohttp import web

from tileserver.config import state_database
from tileserver.errors import ConfigError
from tileserver.library import SlideLibrary
from tileserver.security.accounts import Accounts
from tileserver.security.alerts import AlertOptions, build_monitor
from tileserver.security.audit import SlideViewAggregator
from tileserver.security.audit_sink import open_audit_log
from tileserver.security.budgets import SharedBudgets
from tileserver.security.keys import KeyRing, make_private_dir
from tileserver.security.login import ADDRESS_RATE, LINK_TTL, Authenticator
from tileserver.security.signed_urls import signing_keys
from tileserver.security.tls import ensure_certificate, server_context
from tileserver.server.app import create_app
from tileserver.server.auth import Security
from tileserver.service import ServiceSettings

KEEPALIVE_SECONDS = 10.0  # idle and slow-header connections are closed after this
RATE_LIMIT = (2000.0, 4000.0)  # requests per second per principal, and the burst


@dataclass(frozen=True)
class ServeOptions:
    location: str  # stores: a directory or URL; with ``sources``, a directory of slide files
    sources: bool
    host: str
    port: int
    workers: int
    home: Path
    service: ServiceSettings
    tls: bool = True
    auth: bool = True
    cert: Path | None = None
    key: Path | None = None
    login_link: str | None = None  # user to print a one-time loopback login link for
    client_ca: Path | None = None  # machines may authenticate with certificates it issued
    # Where clients reach the server (scheme://host[:port]), for absolute URLs such as IIIF
    # ids; None: the address and port each connection arrived at, and our scheme.
    public_url: str | None = None
    login_rate: float = ADDRESS_RATE  # login attempts per second per client address
    rate_limit: tuple[float, float] = RATE_LIMIT  # per principal: per second, burst; 0: off
    token_rate_limit: tuple[float, float] | None = None  # machines; None: as rate_limit
    kek: str | None = None  # a pkcs11: URI when key-encryption keys live in a token
    pkcs11_pin: str | None = field(default=None, repr=False)
    # Server state in PostgreSQL (a postgresql:// URL); None: SQLite under home.
    database: str | None = field(default=None, repr=False)
    # The audit trail in PostgreSQL, a stream per worker process (None: the file in home).
    audit_database: str | None = field(default=None, repr=False)
    # The detector and its alerts (security/alerts.py); None: serve --no-detect.
    detection: AlertOptions | None = field(default_factory=AlertOptions)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def public_base(url: str, tls: bool) -> str:
    """``scheme://host[:port]`` from ``--public-url``, or ConfigError saying what is wrong.
    Only an origin: it is pasted in front of our paths, so a path, query or credentials in
    it would be wrong or leak; with TLS on, clients are never sent to plain HTTP."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http"):
        raise ConfigError(f"--public-url must start with https:// (or http://), not {url!r}")
    if tls and parts.scheme != "https":
        raise ConfigError("--public-url must be https:// when the server itself serves TLS")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("--public-url must not carry a user name or password")
    host = parts.netloc.rpartition("@")[2]
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not parts.hostname or not _HOST.fullmatch(name):
        raise ConfigError(f"--public-url needs a host name: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--public-url has a bad port: {url!r}") from None
    if parts.path not in ("", "/"):
        raise ConfigError("--public-url is scheme://host[:port] only, without a path")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise ConfigError("--public-url must not have a query or fragment")
    return f"{parts.scheme}://{name}" + (f":{port}" if port is not None else "")


def parse_rate(text: str, option: str) -> tuple[float, float]:
    """``N`` or ``N/BURST`` requests per second (the burst defaults to 2 s worth, at least 1);
    ``0`` turns the limit off, which ``check_safe`` refuses with authentication on."""
    rate_text, _, burst_text = text.strip().partition("/")
    try:
        rate = float(rate_text)
        burst = float(burst_text) if burst_text else max(1.0, 2 * rate)
    except ValueError:
        raise ConfigError(f"{option} is N or N/BURST requests per second, not {text!r}") from None
    if not (0 <= rate < float("inf")) or (rate > 0 and not 1 <= burst < float("inf")):
        raise ConfigError(f"{option}: the rate must be 0 or more and the burst at least 1")
    return rate, burst


def check_safe(options: ServeOptions) -> None:
    """Refuse configurations that would expose patient data (security-requirements CFG-03)."""
    local = is_loopback(options.host)
    if not local and not options.tls:
        raise ConfigError(f"refusing to serve plaintext HTTP on {options.host}: TLS is required")
    if not local and not options.auth:
        raise ConfigError(f"refusing to serve without authentication on {options.host}")
    if not local and (sys.flags.dev_mode or os.environ.get("PYTHONASYNCIODEBUG")):
        raise ConfigError("refusing to serve in debug mode on a non-loopback address")
    if options.login_link and not local:
        raise ConfigError("one-time login links are only for servers bound to loopback")
    if (options.cert is None) != (options.key is None):
        raise ConfigError("--cert and --key go together")
    if options.client_ca is not None and not (options.tls and options.auth):
        raise ConfigError("--client-ca needs TLS and authentication")
    if options.auth and not options.tls:
        # Browsers drop a Secure session cookie over plain HTTP (login would "succeed" and
        # the next request be 401), and a non-Secure one reaches every port on the host in
        # clear, as would passwords and tokens: authentication always comes with TLS.
        raise ConfigError(
            "refusing authentication over plain HTTP: passwords, tokens and session cookies "
            "need TLS (drop --insecure-http, or add --no-auth for loopback tests)"
        )
    if options.public_url is not None:
        public_base(options.public_url, options.tls)
    limits = [options.rate_limit, options.token_rate_limit or options.rate_limit]
    if options.auth and any(rate <= 0 for rate, _ in limits):
        # Deny by default: the per-principal limit is what stops one stolen token or session
        # from crawling every slide at full speed; a benchmark sets a high limit instead.
        raise ConfigError("refusing to serve with authentication and no rate limit (0)")


def build_security(options: ServeOptions) -> Security:
    keyring = KeyRing(options.home, options.kek, options.pkcs11_pin)
    rate, burst = options.rate_limit
    token_rate, token_burst = options.token_rate_limit or options.rate_limit
    if not options.auth:
        return Security(
            None,
            None,
            None,
            options.tls,
            is_loopback(options.host),
            rate=rate,
            burst=burst,
            token_rate=token_rate,
            token_burst=token_burst,
        )
    make_private_dir(options.home)
    audit = open_audit_log(options.home, keyring.service_key("audit"), options.audit_database)
    accounts = Accounts(state_database(options.home, options.database), keyring.service_key("totp"))
    views = SlideViewAggregator(keyring.service_key("audit"))
    # Servers sharing PostgreSQL share their rate limits too (one budget across hosts).
    budgets = SharedBudgets(accounts.db) if accounts.remote else None
    monitor = None
    if options.detection is not None:
        key = keyring.service_key("alerts")
        monitor = build_monitor(options.detection, audit, accounts, key)
    return Security(
        Authenticator(accounts, audit, address_rate=options.login_rate, budgets=budgets),
        audit,
        views,
        options.tls,
        is_loopback(options.host),
        url_keys=signing_keys(accounts, keyring),
        rate=rate,
        burst=burst,
        token_rate=token_rate,
        token_burst=token_burst,
        monitor=monitor,
        budgets=budgets,
    )


def first_run_hint(options: ServeOptions, base: str) -> str:
    """What to run when nobody can sign in yet: the exact command that prints the one-time
    setup link for the first administrator (there are no default credentials)."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "tileserver" else "tileserver"
    url = base if options.public_url is None else public_base(options.public_url, options.tls)
    command = [
        f"TILESERVER_HOME={shlex.quote(str(options.home))}",
        shlex.quote(program),
        "users bootstrap --url",
        shlex.quote(url),
    ]
    shared = (
        " (with this server's --database and --audit-database)"
        if (options.database or options.audit_database)
        else ""
    )
    return (
        "no users yet: the first administrator signs in with the one-time setup link that"
        f" this command prints{shared}:\n  {' '.join(command)}"
    )


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that goes away cancels its handler, and with it any
    # render job still waiting for a worker thread.
    return web.AppRunner(
        app, handler_cancellation=True, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS
    )


async def _serve(options: ServeOptions, announce: bool, sock: socket.socket | None = None) -> None:
    # Handlers first: a stop asked for while starting up still records APPLICATION_STOP and
    # cleans up, instead of the default action killing a server that has recorded its start.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    library = SlideLibrary(
        options.location,
        sources=options.sources,
        keyring=KeyRing(options.home, options.kek, options.pkcs11_pin),
    )
    security = build_security(options)
    public_url = (
        None if options.public_url is None else public_base(options.public_url, options.tls)
    )
    runner = make_runner(create_app(library, options.service, security, public_url))
    await runner.setup()
    ssl_context = None
    if options.tls:
        cert, key = options.cert, options.key
        if cert is None or key is None:
            cert, key, _ = ensure_certificate(
                options.home, ["localhost", "127.0.0.1", options.host]
            )
        ssl_context = server_context(cert, key, options.client_ca)
    site = web.TCPSite(
        runner,
        options.host,
        options.port,
        ssl_context=ssl_context,
        reuse_port=options.workers > 1,
        backlog=1024,
    )
    await site.start()
    if announce:
        scheme = "https" if options.tls else "http"
        port = runner.addresses[0][1]
        base = f"{scheme}://{'127.0.0.1' if options.host == '0.0.0.0' else options.host}:{port}"
        count = len(library.slide_ids())
        print(f"serving {count} slide(s) from {options.location} at {base}/", flush=True)
        if security.authenticator is not None and not security.authenticator.accounts.has_users():
            print(first_run_hint(options, base), flush=True)
        if options.login_link and security.authenticator is not None:
            token = security.authenticator.accounts.issue_one_time(
                "link", options.login_link, None, LINK_TTL
            )
            print(f"one-time login link (10 minutes): {base}/auth/link?token={token}", flush=True)
    await stop.wait()
    await runner.cleanup()
    if security.audit is not None:
        security.audit.close()  # a stream in PostgreSQL stores what it spooled, if it can


def _run(main: Coroutine[Any, Any, None]) -> None:
    """The server's event loop is uvloop's: its TLS costs about half the CPU per request of
    asyncio's (benchmarks/RESULTS.md, secure_path), and HTTPS is how we always serve."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _worker(options: ServeOptions) -> None:
    _run(_serve(options, announce=False))


def serve(options: ServeOptions) -> int:
    check_safe(options)
    if options.tls and options.cert is None:
        ensure_certificate(options.home, ["localhost", "127.0.0.1", options.host])
    if options.workers <= 1:
        _run(_serve(options, announce=True))
        return 0
    if options.port == 0:
        raise ConfigError("--workers needs an explicit --port")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(options,), daemon=True) for _ in range(options.workers)
    ]
    for proc in procs:
        proc.start()
    scheme = "https" if options.tls else "http"
    print(
        f"serving from {options.location} at {scheme}://{options.host}:{options.port}/ "
        f"with {options.workers} worker processes",
        flush=True,
    )
    if options.auth:
        keyring = KeyRing(options.home, options.kek, options.pkcs11_pin)
        accounts = Accounts(
            state_database(options.home, options.database), keyring.service_key("totp")
        )
        if not accounts.has_users():
            host = "127.0.0.1" if options.host == "0.0.0.0" else options.host
            print(first_run_hint(options, f"{scheme}://{host}:{options.port}"), flush=True)
        accounts.db.close()

    def stop(signum: int, frame: object) -> None:
        for proc in procs:
            proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return 0 if all(p.exitcode in (0, -signal.SIGTERM) for p in procs) else 1
