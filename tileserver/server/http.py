"""Small helpers every route uses: parameter parsing, image responses, render budget keys."""

from __future__ import annotations

import hashlib

from aiohttp import web

from tileserver.render.colour import parse_choice
from tileserver.render.encode import FORMATS
from tileserver.server.auth import PRINCIPAL, SIGNED, SIGNED_URL
from tileserver.server.errors import BadRequest
from tileserver.service import Encoded, NotModified

# Patient data: browsers may cache it privately; shared caches and proxies must not.
CACHE_CONTROL = "private, max-age=3600"


def int_param(
    request: web.Request, name: str, default: int | None = None, *, lo: int = 0, hi: int = 1 << 31
) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name!r} must be in {lo}..{hi}")
    return value


def float_param(request: web.Request, name: str) -> float:
    raw = request.query.get(name)
    if raw is None:
        raise BadRequest(f"missing query parameter {name!r}")
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number, not {raw[:40]!r}") from None
    if not (value == value and abs(value) < 1e12):  # NaN and absurd values
        raise BadRequest(f"query parameter {name!r} is out of range")
    return value


def format_param(value: str | None, name: str = "format", default: str = "jpeg") -> str:
    if value is None:
        return default
    fmt = FORMATS.get(value.lower())
    if fmt is None:
        raise BadRequest(f"{name} must be one of jpeg, png, webp, not {value[:20]!r}")
    return fmt


def icc_param(request: web.Request) -> str | None:
    """``icc=none|embed|srgb`` (render/colour.py); None when absent: the default applies."""
    try:
        return parse_choice(request.query.get("icc"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def if_none_match(request: web.Request) -> frozenset[str]:
    header = request.headers.get("If-None-Match", "")
    return frozenset(tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip())


def image_response(encoded: Encoded | NotModified) -> web.Response:
    """200 with the image, or 304 when the client's ETag matched."""
    if isinstance(encoded, NotModified):
        return web.Response(
            status=304, headers={"ETag": encoded.etag, "Cache-Control": CACHE_CONTROL}
        )
    return web.Response(
        body=encoded.data,
        content_type=encoded.media_type,
        headers={"ETag": encoded.etag, "Cache-Control": CACHE_CONTROL},
    )


def render_key(request: web.Request) -> str:
    """Whose render budget a request spends: the principal's, or for a signed link (no
    login) that link's own, so one shared link cannot spend everyone else's. The link's
    signature is hashed: budgets must hold no secrets."""
    principal = request[PRINCIPAL]
    if principal is SIGNED_URL:
        pairs = request[SIGNED]
        sig = dict(pairs).get("sig", "")
        return "url:" + hashlib.blake2b(sig.encode(), digest_size=12).hexdigest()
    return f"{principal.kind}:{principal.name}"
