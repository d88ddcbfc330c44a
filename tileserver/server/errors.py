"""One table from exceptions to HTTP statuses, and the middleware that applies it.

Bodies are JSON: ``{"error": message, "status": code, "correlation_id": id}``. Client errors
(4xx) carry the message, which names the parameter or cap at fault; server errors (5xx)
carry a generic message, and the detail goes to the log under the same correlation ID.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from tileserver.annotations import AnnotationError, AnnotationTooLarge
from tileserver.errors import (
    IntegrityError,
    KeyUnavailable,
    Overloaded,
    RegionError,
    SlideError,
    SlideNotFound,
    StoreError,
    StoreUnavailable,
    TileserverError,
)
from tileserver.protocols.deepzoom import TileNotFound
from tileserver.protocols.dicomweb import FrameNotFound, NotAcceptable, QueryError
from tileserver.protocols.iiif import IIIFError
from tileserver.render.admission import RenderBusy
from tileserver.render.budget import BudgetExceeded
from tileserver.security.annotation_store import (
    AnnotationForbidden,
    AnnotationNotFound,
    AnnotationStale,
    AnnotationsUnavailable,
)
from tileserver.security.database import RETRY_AFTER, DatabaseConflict, DatabaseUnavailable
from tileserver.security.signed_urls import SignatureRejected

logger = logging.getLogger(__name__)


class BadRequest(TileserverError, ValueError):
    """A malformed query or path parameter (the message names it)."""


# First match wins: subclasses before their bases.
STATUS: list[tuple[type[BaseException], int]] = [
    (BadRequest, 400),
    (SlideNotFound, 404),
    (TileNotFound, 404),
    (IIIFError, 400),
    (QueryError, 400),
    (FrameNotFound, 404),
    (NotAcceptable, 406),
    (SignatureRejected, 403),
    (DatabaseUnavailable, 503),
    (DatabaseConflict, 409),
    (AnnotationTooLarge, 413),
    (AnnotationError, 400),
    (AnnotationNotFound, 404),
    (AnnotationForbidden, 403),
    (AnnotationStale, 412),
    (AnnotationsUnavailable, 409),
    (BudgetExceeded, 429),
    (RenderBusy, 503),
    (RegionError, 400),
    (IntegrityError, 500),
    (KeyUnavailable, 500),
    (StoreUnavailable, 503),
    (StoreError, 500),
    (SlideError, 500),
    (TileserverError, 500),
]

_GENERIC = {
    500: "internal error: the slide could not be read",
    503: "the slide store is unavailable: try again shortly",
}

_DATABASE_DOWN = "the server's database is unavailable: try again shortly"

CORRELATION_ID = web.RequestKey("correlation_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(exc: BaseException) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str, correlation_id: str) -> web.Response:
    return web.json_response(
        {"error": message, "status": status, "correlation_id": correlation_id},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        correlation_id = _correlation_id(request)
        response = error_response(exc.status, exc.reason, correlation_id)
        for name in ("Retry-After", "Allow", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception as exc:
        correlation_id = _correlation_id(request)
        status = status_of(exc)
        if isinstance(exc, IntegrityError):
            await _alert(request, exc)
        if isinstance(exc, Overloaded):  # refused before any work: say why and when to retry
            response = error_response(status, str(exc), correlation_id)
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if status >= 500:
            # Detail for operators, never for clients. Messages name slide IDs, not patients.
            logger.error(
                "correlation_id=%s %s %s: %s: %s",
                correlation_id,
                request.method,
                request.path,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, TileserverError),
            )
            # Only a failure reading a slide says so; a bug anywhere else (a login form, say)
            # must not send the operator to the stores.
            reading = isinstance(exc, SlideError | StoreError | KeyUnavailable)
            message = _GENERIC.get(status, "internal error") if reading else "internal error"
            if isinstance(exc, DatabaseUnavailable):
                # Nothing is authorized without the database: refuse, and say when to retry.
                response = error_response(status, _DATABASE_DOWN, correlation_id)
                response.headers["Retry-After"] = str(RETRY_AFTER)
                return response
            return error_response(status, message, correlation_id)
        message = "not found" if status == 404 else str(exc)
        return error_response(status, message, correlation_id)


def _correlation_id(request: web.Request) -> str:
    # Made only when a request fails: a uuid4 per successful tile was measurable CPU.
    correlation_id = uuid.uuid4().hex
    request[CORRELATION_ID] = correlation_id
    return correlation_id


async def _alert(request: web.Request, exc: IntegrityError) -> None:
    """Tampering is a security event, not just an error (imported late: no cycle)."""
    from tileserver.security.audit import SECURITY_ALERT
    from tileserver.server.auth import audit

    await audit(
        request,
        SECURITY_ALERT,
        outcome=8,
        obj=request.match_info.get("slide_id"),
        detail={"reason": "stored object failed its integrity check"},
    )
