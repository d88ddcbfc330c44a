"""IIIF Image API 3.0 (level 2): ``/iiif/3/{id}/info.json`` and image requests."""

from __future__ import annotations

from aiohttp import web

from tileserver.server.auth import authorize, view_tile
from tileserver.server.http import if_none_match, image_response
from tileserver.service import SlideService

SLIDE = "{slide_id:[0-9a-f]{32}}"
CONTEXT = "http://iiif.io/api/image/3/context.json"


def routes(service: SlideService) -> list[web.RouteDef]:
    def base_id(request: web.Request) -> str:
        return str(
            request.url.with_path(f"/iiif/3/{request.match_info['slide_id']}").with_query(None)
        )

    async def redirect(request: web.Request) -> web.Response:
        authorize(request, request.match_info["slide_id"], "tiles")
        raise web.HTTPSeeOther(f"{base_id(request)}/info.json")

    async def info(request: web.Request) -> web.Response:
        authorize(request, request.match_info["slide_id"], "tiles")
        doc = await service.iiif_info(request.match_info["slide_id"], base_id(request))
        wants_ld = "application/ld+json" in request.headers.get("Accept", "")
        content_type = "application/ld+json" if wants_ld else "application/json"
        return web.json_response(
            doc,
            content_type=content_type,
            headers={"Cache-Control": "private, no-cache", "Link": f'<{CONTEXT}>; rel="profile"'},
        )

    async def image(request: web.Request) -> web.Response:
        m = request.match_info
        authorize(request, m["slide_id"], "tiles")
        params = (m["region"], m["size"], m["rotation"], m["quality"], m["format"])
        encoded = await service.iiif_image(m["slide_id"], params, if_none_match(request))
        view_tile(request, m["slide_id"], -1)
        return image_response(encoded)

    return [
        web.get(f"/iiif/3/{SLIDE}", redirect),
        web.get(f"/iiif/3/{SLIDE}/info.json", info),
        web.get(f"/iiif/3/{SLIDE}/{{region}}/{{size}}/{{rotation}}/{{quality}}.{{format}}", image),
    ]
