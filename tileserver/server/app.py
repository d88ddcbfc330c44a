"""Application assembly: everything the server holds is built here, visibly, from settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from tileserver.library import SlideLibrary
from tileserver.security.audit import APPLICATION_ACTIVITY, APPLICATION_START, APPLICATION_STOP
from tileserver.security.refusals import WINDOW, RefusalAudit
from tileserver.server.auth import SECURITY, Security, auth_middleware
from tileserver.server.cors import cors_headers, cors_middleware
from tileserver.server.errors import error_middleware
from tileserver.server.routes import api, auth, deepzoom, dicomweb, iiif, viewer
from tileserver.server.routes.annotations import routes as annotation_routes
from tileserver.service import ServiceSettings, SlideService

logger = logging.getLogger(__name__)

SERVICE = web.AppKey("service", SlideService)
VIEW_FLUSH_SECONDS = 30.0

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "tileserver"  # no version to fingerprint
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "private, no-store")
    if request.app[SECURITY].tls:
        response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"


async def _flush_refusals(refusals: RefusalAudit) -> None:
    """Each minute's summaries of refused requests and logins, written (off the event loop)
    a second after the minute is over."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(WINDOW - time.time() % WINDOW + 1.0)
        try:
            await loop.run_in_executor(None, refusals.flush)
        except Exception as exc:  # what was not written is kept: the next minute tries again
            logger.error("refusal summaries not audited yet: %s", exc)


def create_app(
    library: SlideLibrary,
    settings: ServiceSettings,
    security: Security,
    public_url: str | None = None,
) -> web.Application:
    """The application; ``public_url`` (``scheme://host[:port]``, checked by run.check_safe)
    is where clients reach it, for absolute URLs in documents (IIIF ids)."""
    app = web.Application(
        middlewares=[cors_middleware(public_url), error_middleware, auth_middleware],
        client_max_size=64 * 1024,  # the API takes small forms only
        handler_args={"max_field_size": 8190, "max_line_size": 8190, "max_headers": 64},
    )
    service = SlideService(library, settings)
    app[SERVICE] = service
    app[SECURITY] = security

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        audit, views, refusals = security.audit, security.views, security.refusals
        flushers = []
        if audit is not None:
            audit.append(APPLICATION_ACTIVITY, event_type=APPLICATION_START)
        if audit is not None and views is not None:

            async def flush_views() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    await asyncio.sleep(VIEW_FLUSH_SECONDS)
                    await loop.run_in_executor(
                        None, lambda: views.flush(audit, older_than=VIEW_FLUSH_SECONDS)
                    )

            flushers.append(asyncio.create_task(flush_views()))
        if refusals is not None:
            flushers.append(asyncio.create_task(_flush_refusals(refusals)))
        yield
        for flusher in flushers:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if audit is not None:
            if views is not None:
                views.flush(audit)
            if refusals is not None:  # this minute's summaries too
                refusals.flush(everything=True)
            audit.append(APPLICATION_ACTIVITY, event_type=APPLICATION_STOP)
        if security.monitor is not None:  # alerts still queued are recorded and sent
            await asyncio.get_running_loop().run_in_executor(None, security.monitor.close)
        service.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(cors_headers)  # /iiif/, /dicomweb/: CORS, CORP cross-origin
    app.on_response_prepare.append(_headers)
    app.add_routes([web.get("/health", _health)])
    app.add_routes(auth.routes())
    app.add_routes(deepzoom.routes(service))
    app.add_routes(iiif.routes(service, public_url))
    app.add_routes(api.routes(service))
    app.add_routes(dicomweb.routes(service, settings.dicom_uid_root))
    app.add_routes(annotation_routes(service))  # not `annotations`: the __future__ name
    app.add_routes(viewer.routes())
    return app
