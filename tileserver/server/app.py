"""Application assembly: everything the server holds is built here, visibly, from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from tileserver.library import SlideLibrary
from tileserver.server.errors import error_middleware
from tileserver.server.routes import api, deepzoom, iiif
from tileserver.service import ServiceSettings, SlideService

SERVICE = web.AppKey("service", SlideService)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "tileserver"  # no version to fingerprint
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "private, no-store")


def create_app(library: SlideLibrary, settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    service = SlideService(library, settings)
    app[SERVICE] = service

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        service.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(_headers)
    app.add_routes([web.get("/health", _health)])
    app.add_routes(deepzoom.routes(service))
    app.add_routes(iiif.routes(service))
    app.add_routes(api.routes(service))
    return app
