"""CORS for the protocols other sites' pages use: IIIF (its compliance levels 1 and 2 require
it) and DICOMweb (a Slim viewer deployed elsewhere). Nothing else answers another origin.

Under ``CORS_PREFIXES`` only:
- ``OPTIONS`` is answered 204 by the middleware, before authentication: a preflight carries
  no credentials, and says only which methods and headers a real request may use.
- Every response, errors included, says ``Access-Control-Allow-Origin: *`` and never
  ``Allow-Credentials``: a browser then neither sends cookies on a cross-origin ``fetch`` that
  wants to read the answer nor shows it one made with ``credentials: 'include'``. Bearer
  tokens and signed URLs work; sessions do not. ``Cross-Origin-Resource-Policy`` is
  ``cross-origin`` there (``same-origin`` elsewhere, app.py).
- A request marked ``CROSS_ORIGIN`` has its session cookie ignored (server/auth.py): a page
  elsewhere must not ride a pathologist's session, be it with ``fetch`` or with ``<img>``
  (which sends no ``Origin``; ``Sec-Fetch-Site`` gives it away instead). Otherwise a foreign
  page could make the pathologist's browser fetch slides in their name: audited as theirs,
  counted by the detector as theirs (a crawl alert suspends them), and the load or error of
  each ``<img>`` tells that page which slides they may see.

"Our own origin" is the one the browser addressed (``scheme://Host`` of the request, which a
page cannot forge) or the configured ``--public-url`` (behind a TLS-terminating proxy the
request's scheme and Host are the proxy's, not the browser's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

CORS_PREFIXES = ("/iiif/", "/dicomweb/")

# Set on a request from another origin: auth_middleware then ignores its session cookie.
CROSS_ORIGIN = web.RequestKey("cross_origin", bool)

METHODS = "GET, HEAD, OPTIONS"
# Accept is listed because values with quotes (a JSON-LD profile, a DICOM transfer syntax)
# are not CORS-safelisted; the conditional and range headers are caching clients'.
ALLOW_HEADERS = (
    "Authorization, Accept, Accept-Language, Content-Language, If-None-Match, "
    "If-Modified-Since, Range"
)
EXPOSE_HEADERS = (
    "ETag, Link, Content-Type, Content-Length, Content-Location, Retry-After, Warning, "
    "WWW-Authenticate"
)
MAX_AGE = "3600"  # seconds a browser may reuse a preflight answer (Chromium caps it at 7200)
# What a response depends on besides the URL: a browser must not answer a cross-origin
# request from what it cached for our own pages (fetched with the session cookie).
VARY = ("Origin", "Sec-Fetch-Site")

_DEFAULT_PORTS = {"http": 80, "https": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_cors_path(path: str) -> bool:
    return path.startswith(CORS_PREFIXES) or path in ("/iiif", "/dicomweb")


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]``, lower case, without the scheme's default port; None for
    anything that is not an http(s) origin (``null``, garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


def is_cross_origin(request: web.Request, public_origin: str | None) -> bool:
    """Whether a browser sent this request for a page of another origin."""
    origin = request.headers.get("Origin")
    if origin is not None:
        sent = origin_of(origin)
        if sent is None:  # "null": a sandboxed frame, a file, a redirect from elsewhere
            return True
        if sent != public_origin and sent != origin_of(f"{request.scheme}://{request.host}"):
            return True
    # Requests without Origin (<img>, <script>, no-cors fetch): the browser's Fetch Metadata.
    # A top-level navigation shows the user their own image, which no page can read.
    site = request.headers.get("Sec-Fetch-Site")
    return site in ("same-site", "cross-site") and request.headers.get("Sec-Fetch-Mode") != (
        "navigate"
    )


def cors_middleware(public_url: str | None) -> Middleware:
    """The middleware, registered first: preflights, and the cross-origin mark."""
    public_origin = origin_of(public_url) if public_url else None

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_cors_path(request.path):
            return await handler(request)
        if request.method == "OPTIONS":
            return web.Response(
                status=204,
                headers={
                    "Allow": METHODS,
                    "Access-Control-Allow-Methods": METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": MAX_AGE,
                },
            )
        if is_cross_origin(request, public_origin):
            request[CROSS_ORIGIN] = True
        return await handler(request)

    return cors


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response under the CORS prefixes, as it is prepared (errors, redirects and
    streamed bodies included, which a middleware would miss)."""
    if not is_cors_path(request.path):
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = "*"
    headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    present = {v.strip().lower() for v in headers.get("Vary", "").split(",") if v.strip()}
    missing = [name for name in VARY if name.lower() not in present]
    if missing:
        headers["Vary"] = ", ".join(filter(None, [headers.get("Vary", ""), *missing]))
