"""DeepZoom (DZI) for OpenSeadragon: ``/deepzoom/{id}.dzi`` and its ``_files`` tiles."""

from __future__ import annotations

from aiohttp import web

from tileserver.server.auth import authorize, view_tile
from tileserver.server.http import format_param, icc_param, if_none_match, image_response
from tileserver.service import SlideService

SLIDE = "{slide_id:[0-9a-f]{32}}"


def routes(service: SlideService) -> list[web.RouteDef]:
    async def dzi(request: web.Request) -> web.Response:
        fmt = format_param(request.query.get("format"))
        slide_id = request.match_info["slide_id"]
        authorize(request, slide_id, "tiles")
        xml = await service.dzi(slide_id, fmt)
        return web.Response(
            text=xml, content_type="application/xml", headers={"Cache-Control": "private, no-cache"}
        )

    async def tile(request: web.Request) -> web.Response:
        m = request.match_info
        authorize(request, m["slide_id"], "tiles")
        fmt = format_param(m["fmt"], "tile format")
        encoded = await service.deepzoom_tile(
            m["slide_id"],
            int(m["z"]),
            int(m["col"]),
            int(m["row"]),
            fmt,
            if_none_match(request),
            display=request.query,  # channels=, colors=, windows=, z= (protocols/display.py)
            icc=icc_param(request),
        )
        view_tile(request, m["slide_id"], int(m["z"]))
        return image_response(encoded)

    return [
        web.get(f"/deepzoom/{SLIDE}.dzi", dzi),
        web.get(
            f"/deepzoom/{SLIDE}_files/{{z:\\d{{1,3}}}}/{{col:\\d{{1,9}}}}_{{row:\\d{{1,9}}}}.{{fmt:[a-z]{{3,4}}}}",
            tile,
        ),
    ]
