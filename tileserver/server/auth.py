"""Authentication, authorization and hardening for every request.

Deny by default: a route answers without credentials only if it is in ``PUBLIC``. Every
slide route asks ``authorize`` for the specific slide and scope, and a refusal is the same
404 a missing slide gets. Same-origin checks guard state-changing requests (CSRF), and a
token bucket per principal answers floods with 429 (``serve --rate-limit``, and
``--rate-limit-tokens`` for machines).

Refused credentials (401), bad signed URLs, slides not granted (the 404), routes or scopes
refused (403) and rate limits (429) are counted for the audit trail, per client address or
principal and minute (security/refusals.py). Not counted: sending a browser without
credentials to the login page (normal), and cross-origin refusals (before authentication).

Who the caller is and what it may do come from ``authz_cache`` under the change counter read
once per request on the event loop (on SQLite through the change mark beside the file, about
2 us while nothing changed: the measured exception next to docs/decisions/0001); what the
cache cannot answer is looked up in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from tileserver.errors import SlideNotFound, TileserverError
from tileserver.security.accounts import SCOPES, Accounts, Principal
from tileserver.security.alerts import Monitor
from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    USER_AUTHENTICATION,
    AuditLog,
    SlideViewAggregator,
)
from tileserver.security.authz_cache import Lookup
from tileserver.security.budgets import REFILL, SharedBudgets
from tileserver.security.detector import TILE, Event
from tileserver.security.login import Authenticator
from tileserver.security.refusals import (
    BAD_CERTIFICATE,
    BAD_SESSION,
    BAD_SIGNED_URL,
    BAD_TOKEN,
    FORBIDDEN,
    NO_CREDENTIALS,
    NOT_GRANTED,
    RATE_LIMITED,
    Refusal,
    RefusalAudit,
    address_key,
)
from tileserver.security.signed_urls import SharedUrlKeys, UrlKeys, check, is_signed
from tileserver.server.cors import CROSS_ORIGIN

SESSION_COOKIE = "__Host-tileserver"
PLAIN_SESSION_COOKIE = "tileserver"  # without TLS: browsers refuse __Host- over plain HTTP
# Routes that answer without credentials: health, and what it takes to log in.
PUBLIC = frozenset(
    {
        "/health",
        "/auth/login",
        "/auth/enrol",
        "/auth/enrol/confirm",
        "/auth/enrol/link",
        "/auth/link",
        "/login",
        "/favicon.ico",
    }
)
PUBLIC_PREFIXES = ("/static/",)

PRINCIPAL = web.RequestKey("principal", Principal)
SESSION = web.RequestKey("session", str)
# The auth database's change counter as this request read it: cached answers must match it.
GENERATION = web.RequestKey("generation", int)
# A refusal decided inside a handler (authorize), audited by the middleware on the way out.
REFUSED = web.RequestKey("refused", Refusal)
# The query pairs of a signed URL, checked per route.
SIGNED: web.RequestKey[list[tuple[str, str]]] = web.RequestKey("signed", list)

# Whoever holds a signed URL: it opens tiles or regions of one slide (checked in authorize),
# and only under these prefixes; every other route refuses it.
SIGNED_URL = Principal("url", "signed-url", "viewer", frozenset({"tiles", "regions"}), None)
SIGNED_PREFIXES = ("/deepzoom/", "/iiif/", "/api/slides/", "/dicomweb/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Served tiles reach the detector in batches, off each request's path: at most this long
# after the first tile queued (alerts are due within the minute), or at this many tiles.
TILE_BATCH_SECONDS = 0.2
MAX_TILE_BATCH = 1024

# Everything, everywhere: for loopback benchmarks run with --no-auth only.
LOCAL_ANONYMOUS = Principal("user", "local-anonymous", "admin", frozenset(SCOPES), None)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Security:
    """What the server needs to authenticate, authorize and audit; None parts mean --no-auth."""

    authenticator: Authenticator | None
    audit: AuditLog | None
    views: SlideViewAggregator | None
    tls: bool
    loopback: bool  # bound to loopback only: one-time login links are allowed
    url_keys: UrlKeys | SharedUrlKeys | None = None  # None: refused like unknown callers
    # Requests per second per principal, sustained, and the burst (a viewer bursts); 0: off
    # (refused with authentication on, run.check_safe).
    rate: float = 2000.0
    burst: float = 4000.0
    token_rate: float | None = None  # machines (tokens, client certificates); None: as people
    token_burst: float | None = None
    monitor: Monitor | None = None  # the detector (security/alerts.py); None: serve --no-detect
    # With --database: the limits are shared by every process on every host (budgets.py);
    # None: a bucket per principal in this process.
    budgets: SharedBudgets | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _tiles: list[Event] = field(default_factory=list)  # served, not yet seen by the monitor

    @property
    def accounts(self) -> Accounts | None:
        return self.authenticator.accounts if self.authenticator else None

    @property
    def refusals(self) -> RefusalAudit | None:
        """Refused requests share the refused logins' windows (security/refusals.py)."""
        return self.authenticator.refusals if self.authenticator else None

    def limit(self, machine: bool) -> tuple[float, float]:
        """(requests per second, burst) for people or machines."""
        if machine and self.token_rate is not None and self.token_burst is not None:
            return self.token_rate, self.token_burst
        return self.rate, self.burst

    def allow_rate(self, key: str, machine: bool = False) -> float | None:
        """None when the request may go ahead, else seconds until it may."""
        rate, burst = self.limit(machine)
        if rate <= 0:
            return None
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / rate

    def saw_tile(self, event: Event) -> None:
        """Queue a served tile for the detector (on the event loop). The tile that starts a
        batch sets the timer that hands the batch over, so none waits longer than
        ``TILE_BATCH_SECONDS``; a full batch goes at once."""
        tiles = self._tiles
        tiles.append(event)
        if len(tiles) == 1:
            asyncio.get_running_loop().call_later(TILE_BATCH_SECONDS, self.detect_tiles)
        elif len(tiles) >= MAX_TILE_BATCH:
            self.detect_tiles()

    def detect_tiles(self) -> None:
        """Hand the queued tiles to the detector (a timer set earlier may find none)."""
        tiles, self._tiles = self._tiles, []
        if tiles and self.monitor is not None:
            self.monitor.observe_tiles(tiles)


SECURITY = web.AppKey("security", Security)


def client_ip(request: web.Request) -> str:
    # The TCP peer (aiohttp reads it once per connection), never X-Forwarded-For: no proxy
    # is trusted by default, and nothing here clones a request with another ``remote``.
    return request.remote or "unknown"


def session_cookie(tls: bool) -> str:
    """The session cookie's name: the one login sets (routes/auth.py) is the one read here.
    Serving with authentication and without TLS is refused at start (run.check_safe); the
    plain name is for applications built in process, so a login there still sticks."""
    return SESSION_COOKIE if tls else PLAIN_SESSION_COOKIE


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    security = request.app[SECURITY]
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise web.HTTPForbidden(reason="cross-origin request refused")
    if security.authenticator is None:
        request[PRINCIPAL] = LOCAL_ANONYMOUS
        await _check_rate(request, security, LOCAL_ANONYMOUS)
        return await handler(request)
    session = request.cookies.get(session_cookie(security.tls))
    if request.get(CROSS_ORIGIN):  # another site's page: tokens and signed URLs only (cors.py)
        session = None
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    try:
        certificate = certificate_name(request)
    except web.HTTPUnauthorized:
        await _record(request, _refusal(request, BAD_CERTIFICATE))
        raise
    monitor = security.monitor
    if monitor is not None and monitor.throttling():
        await _check_throttle(request, monitor, f"addr:{address_key(client_ip(request))}")
    principal = None
    if session or bearer or certificate:
        principal = await _caller(security.authenticator, request, session, bearer, certificate)
    if (
        principal is None
        and security.url_keys is not None
        and request.path.startswith(SIGNED_PREFIXES)
        and is_signed(request.query)
    ):
        principal = SIGNED_URL
        request[SIGNED] = list(request.query.items())
        if security.url_keys.shared:  # keys in PostgreSQL: as they are now, off the loop
            await asyncio.get_running_loop().run_in_executor(None, security.url_keys.refresh)
    if principal is None:
        if is_public(request.path):
            return await _public(request, handler, monitor)
        presented = _refused_credential(session, bearer, certificate)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            # A person in a browser: to the login page, and back here afterwards. Not being
            # logged in yet is normal there; a refused cookie is still audited.
            if presented is not None:
                await _record(request, _refusal(request, presented))
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
        await _record(request, _refusal(request, presented or NO_CREDENTIALS))
        raise web.HTTPUnauthorized(reason="authentication required")
    await _check_rate(request, security, principal)
    if monitor is not None:
        await _check_suspended(request, monitor, security.authenticator, principal)
    request[PRINCIPAL] = principal
    if session:
        request[SESSION] = session
    try:
        return await handler(request)
    except web.HTTPForbidden:
        reason = BAD_SIGNED_URL if principal is SIGNED_URL else FORBIDDEN
        await _record(request, request.get(REFUSED) or _refusal(request, reason, principal))
        raise
    except TileserverError:
        refused = request.get(REFUSED)  # authorize: a slide not granted, a bad signed URL
        if refused is not None:
            await _record(request, refused)
        raise


def _refused_credential(
    session: str | None, bearer: str | None, certificate: str | None
) -> str | None:
    """Which credential was refused, taken in the order the authenticator reads them; None
    when there was none."""
    if bearer:
        return BAD_TOKEN
    if certificate and not session:
        return BAD_CERTIFICATE
    if session:
        return BAD_SESSION
    return None


def _refusal(
    request: web.Request,
    reason: str,
    principal: Principal | None = None,
    slide_id: str | None = None,
) -> Refusal:
    """Refused credentials (or a signed URL), counted per client address; or an
    authenticated caller refused access, counted per principal."""
    source = client_ip(request)
    slide_id = slide_id or request.match_info.get("slide_id")
    if principal is None or principal is SIGNED_URL:
        return Refusal(USER_AUTHENTICATION, reason, source, obj=slide_id)
    return Refusal(
        INSTANCES_ACCESSED,
        reason,
        source,
        user=principal.name,
        role=principal.role,
        obj=slide_id,
        principal=f"{principal.kind}:{principal.name}",
    )


async def _record(request: web.Request, refusal: Refusal) -> None:
    """Count a refusal for the audit trail; the first of its minute is written at once, off
    the event loop (the audit log fsyncs), the rest in the minute's summary (app.py). The
    detector sees every one as it happens."""
    monitor = request.app[SECURITY].monitor
    if monitor is not None:
        monitor.refused(refusal)
    refusals = request.app[SECURITY].refusals
    if refusals is not None and refusals.count(refusal):
        await asyncio.get_running_loop().run_in_executor(None, refusals.write, refusal)


async def _caller(
    authenticator: Authenticator,
    request: web.Request,
    session: str | None,
    bearer: str | None,
    certificate: str | None,
) -> Principal | None:
    """The caller from the cache, or from the database in a worker thread; on a slide's
    route also what it may do with that slide, so ``authorize`` answers from the cache."""
    authz = authenticator.authz
    loop = asyncio.get_running_loop()
    generation = await read_generation(request, authenticator)
    found = authenticator.cached_principal(session, bearer, certificate, generation)
    if found is Lookup.MISS:
        found = await loop.run_in_executor(
            None, authenticator.principal, session, bearer, certificate, generation
        )
    slide_id = request.match_info.get("slide_id")
    if found is not None and slide_id and not authz.knows(found, slide_id, generation):
        await loop.run_in_executor(None, authz.learn, found, slide_id, generation)
    return found


def principal_key(principal: Principal, request: web.Request) -> str:
    """How the detector names a caller: ``kind:name``; a signed URL by its client address
    (whoever holds one is not a known principal)."""
    if principal is SIGNED_URL:
        return f"url:{address_key(client_ip(request))}"
    return f"{principal.kind}:{principal.name}"


async def _public(
    request: web.Request, handler: Handler, monitor: Monitor | None
) -> web.StreamResponse:
    """A public route; a refused or throttled login is shown to the detector at once."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if monitor is not None and request.path == "/auth/login" and exc.status in (401, 429):
            monitor.login_refused(client_ip(request))
        raise


async def _check_throttle(request: web.Request, monitor: Monitor, key: str) -> None:
    wait = monitor.throttled(key)
    if wait is not None:
        raise web.HTTPTooManyRequests(
            reason="throttled after a security alert",
            headers={"Retry-After": str(max(1, round(wait)))},
        )


async def _check_suspended(
    request: web.Request, monitor: Monitor, authenticator: Authenticator, principal: Principal
) -> None:
    """403 for a principal a detector alert suspended (and throttling by principal)."""
    key = principal_key(principal, request)
    if monitor.throttling():
        await _check_throttle(request, monitor, key)
    generation = await read_generation(request, authenticator)
    suspended = monitor.suspended(key, generation)
    if suspended is None:  # the suspension list changed: read it again, off the loop
        await asyncio.get_running_loop().run_in_executor(None, monitor.refresh, generation)
        suspended = monitor.suspended(key, generation)
    if suspended:
        await _record(request, _refusal(request, FORBIDDEN, principal))
        raise web.HTTPForbidden(reason="suspended pending review")


def certificate_name(request: web.Request) -> str | None:
    """The common name of the client certificate, when TLS asked for one (``--client-ca``)
    and verified it; None without one. A certificate with several common names is refused
    (401): which one names the caller would depend on the order a reader takes them in."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    names = [
        str(value) for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    if len(names) > 1:
        raise web.HTTPUnauthorized(reason="a client certificate must have one common name")
    return names[0] if names else None


async def _check_rate(request: web.Request, security: Security, principal: Principal) -> None:
    key, machine = f"{principal.kind}:{principal.name}", principal.kind == "token"
    rate, burst = security.limit(machine)
    budgets = security.budgets
    if budgets is None or rate <= 0:
        wait = security.allow_rate(key, machine)
    elif (spent := budgets.spend(key)) is REFILL:  # a new lease: one statement, off the loop
        loop = asyncio.get_running_loop()
        wait = await loop.run_in_executor(None, budgets.refill, key, rate, burst)
    else:
        wait = spent
    if wait is not None:
        await _record(request, _refusal(request, RATE_LIMITED, principal))
        raise web.HTTPTooManyRequests(
            reason="rate limit exceeded", headers={"Retry-After": str(max(1, round(wait)))}
        )


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller; a signed URL does not count (it only opens ``authorize``)."""
    try:
        principal = request[PRINCIPAL]
    except KeyError:
        raise web.HTTPUnauthorized(reason="authentication required") from None
    if principal is SIGNED_URL:
        raise web.HTTPForbidden(reason="a signed URL opens only its slide's tiles or regions")
    return principal


def authorize(request: web.Request, slide_id: str, scope: str) -> Principal:
    """The caller, if it may use ``scope`` on this slide; otherwise the 404 of a missing slide.
    A signed URL must be signed for exactly this slide and scope (403 saying why, if not)."""
    url_keys = request.app[SECURITY].url_keys
    caller: Principal | None = request.get(PRINCIPAL)
    if caller is SIGNED_URL and url_keys is not None:
        pairs = request[SIGNED]
        try:
            check(pairs, slide_id, scope, time.time(), url_keys.key_of)
        except TileserverError:
            request[REFUSED] = _refusal(request, BAD_SIGNED_URL, slide_id=slide_id)
            raise
        return caller
    principal = principal_of(request)
    authenticator = request.app[SECURITY].authenticator
    if authenticator is not None and not authenticator.authz.allows(
        principal, slide_id, scope, _generation(request, authenticator)
    ):
        request[REFUSED] = _refusal(request, NOT_GRANTED, principal, slide_id)
        raise SlideNotFound("no such slide")
    return principal


async def read_generation(request: web.Request, authenticator: Authenticator) -> int:
    """The change counter, read once per request (a signed URL's first read is the
    suspension check's) and kept on the request for the cached answers."""
    known: int | None = request.get(GENERATION)
    if known is not None:
        return known
    generation: int
    if authenticator.accounts.remote:  # PostgreSQL: a network round trip, never on the loop
        loop = asyncio.get_running_loop()
        generation = await loop.run_in_executor(None, authenticator.authz.generation)
    else:  # SQLite: the change mark, and the file only after a write (change_mark.py)
        generation = authenticator.authz.generation()
    request[GENERATION] = generation
    return generation


def _generation(request: web.Request, authenticator: Authenticator) -> int:
    found = request.get(GENERATION)
    return authenticator.authz.generation() if found is None else found


async def visible_slides(request: web.Request) -> set[str] | None:
    """Slide IDs the caller may list; None means every slide (--no-auth). A listing the
    cache does not hold is a database query: in a worker thread."""
    authenticator = request.app[SECURITY].authenticator
    if authenticator is None:
        return None
    principal = principal_of(request)
    generation = _generation(request, authenticator)
    return await asyncio.get_running_loop().run_in_executor(
        None, authenticator.authz.visible_slides, principal, generation
    )


async def audit(request: web.Request, event_id: int, **fields: object) -> None:
    """Write an audit record off the event loop (it fsyncs)."""
    log = request.app[SECURITY].audit
    if log is None:
        return
    principal = request.get(PRINCIPAL)
    await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: log.append(
            event_id,
            user=principal.name if principal else None,
            role=principal.role if principal else None,
            source_ip=client_ip(request),
            **fields,  # type: ignore[arg-type]
        ),
    )


def view_tile(
    request: web.Request,
    slide_id: str,
    level: int,
    col: int | None = None,
    row: int | None = None,
) -> None:
    """Count a tile towards the (session, slide) view record, written in batches, and queue
    it for the detector (with its column and row: given, or from the route's path)."""
    security = request.app[SECURITY]
    principal = request.get(PRINCIPAL)
    if principal is None:
        return
    source = client_ip(request)
    now = time.time()
    if security.monitor is not None:
        m = request.match_info
        if col is None and "col" in m:
            col, row = int(m["col"]), int(m["row"])
        peer = None  # machines' certificates: a token used with a new one is an alert
        if principal.kind == "token" and request.transport is not None:
            peer = request.transport.get_extra_info("peercert")
        security.saw_tile(
            Event(
                now,
                TILE,
                principal_key(principal, request),
                source,
                slide_id,
                level,
                col,
                row,
                certificate=str(peer["serialNumber"]) if peer and "serialNumber" in peer else None,
                session=principal.session,
            )
        )
    if security.views is None:
        return
    security.views.record_tile(
        request.get(SESSION) or f"{principal.kind}:{principal.name}",
        principal.name,
        principal.role,
        source,
        slide_id,
        level,
        now,
    )
