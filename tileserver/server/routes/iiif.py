"""IIIF Image API 3.0 (level 2): ``/iiif/3/{id}/info.json`` and image requests.

The ``id`` in info.json (and the redirect to it) is built from the configured public URL
(``serve --public-url``), else from the address and port the connection arrived at and the
server's scheme: never from the Host header, which the client writes.

A signed link of scope ``tiles`` opens info.json and image requests that are exactly one tile
of the grid info.json advertises (any quality, rotation or format: a tile's worth of pixels);
any other region or size is a render it does not open (403). Signed ``regions`` links are for
``/api/slides/{id}/region`` and open nothing here.

info.json is JSON-LD when asked for (``iiif.info_media_type``), and it and every image carry
the level-2 profile ``Link`` header. CORS for these routes is server/cors.py's.
"""

from __future__ import annotations

import json

from aiohttp import web

from tileserver.geometry import Size
from tileserver.protocols import iiif
from tileserver.server.auth import PRINCIPAL, SECURITY, SIGNED_URL, authorize, view_tile
from tileserver.server.http import icc_param, if_none_match, image_response, render_key
from tileserver.service import SlideService

SLIDE = "{slide_id:[0-9a-f]{32}}"


def is_one_tile(request: iiif.ImageRequest, l0_size: Size, tile: int, levels: int) -> bool:
    """Whether ``request`` is one tile of the advertised grid: ``tile`` x ``tile`` at scale
    factors 1, 2, 4, ... (one per level), clipped at the image edge, scaled down by its
    factor (rounded either way, as clients differ)."""
    region, out = request.l0_region, request.out_size
    for k in range(levels):
        factor = 1 << k
        span = tile * factor
        if region.x % span or region.y % span:
            continue
        expected = (min(span, l0_size.width - region.x), min(span, l0_size.height - region.y))
        if (region.width, region.height) != expected:
            continue
        widths = (region.width // factor, -(-region.width // factor))
        heights = (region.height // factor, -(-region.height // factor))
        if out.width in widths and out.height in heights:
            return True
    return False


def routes(service: SlideService, public_url: str | None = None) -> list[web.RouteDef]:
    def base_id(request: web.Request) -> str:
        return f"{public_url or _local_base(request)}/iiif/3/{request.match_info['slide_id']}"

    async def redirect(request: web.Request) -> web.Response:
        authorize(request, request.match_info["slide_id"], "tiles")
        raise web.HTTPSeeOther(f"{base_id(request)}/info.json")

    async def info(request: web.Request) -> web.Response:
        authorize(request, request.match_info["slide_id"], "tiles")
        doc = await service.iiif_info(request.match_info["slide_id"], base_id(request))
        return web.Response(
            body=json.dumps(doc).encode(),
            headers={
                "Content-Type": iiif.info_media_type(request.headers.get("Accept")),
                "Cache-Control": "private, no-cache",
                "Link": iiif.PROFILE_LINK,
                "Vary": "Accept",
            },
        )

    async def image(request: web.Request) -> web.Response:
        m = request.match_info
        authorize(request, m["slide_id"], "tiles")
        params = (m["region"], m["size"], m["rotation"], m["quality"], m["format"])
        if request.get(PRINCIPAL) is SIGNED_URL:
            await _only_tiles(request, m["slide_id"], params)
        who = render_key(request)
        icc = icc_param(request)
        if icc is None:
            parsed, p = await service.iiif_request(m["slide_id"], params)
            if is_one_tile(parsed, p.levels[0], p.tile, len(p.levels)):
                icc = "none"  # a viewer's tile: raw by default, as DeepZoom's (docs/colour.md)
        encoded = await service.iiif_image(
            m["slide_id"], params, if_none_match(request), who, icc=icc
        )
        view_tile(request, m["slide_id"], -1)
        response = image_response(encoded)
        response.headers["Link"] = iiif.PROFILE_LINK
        return response

    async def _only_tiles(
        request: web.Request, slide_id: str, params: tuple[str, str, str, str, str]
    ) -> None:
        # A link needs no login: without this it would open any region at any size,
        # full-slide renders included (issue 14, finding 8).
        parsed, p = await service.iiif_request(slide_id, params)
        if not is_one_tile(parsed, p.levels[0], p.tile, len(p.levels)):
            raise web.HTTPForbidden(
                reason="a signed tiles link opens only single tiles of the advertised grid"
            )

    return [
        web.get(f"/iiif/3/{SLIDE}", redirect),
        web.get(f"/iiif/3/{SLIDE}/info.json", info),
        web.get(f"/iiif/3/{SLIDE}/{{region}}/{{size}}/{{rotation}}/{{quality}}.{{format}}", image),
    ]


def _local_base(request: web.Request) -> str:
    """``scheme://address:port`` of the socket this connection arrived at (for a wildcard
    bind, the interface the client reached), with the server's own scheme."""
    scheme = "https" if request.app[SECURITY].tls else "http"
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return f"{scheme}://localhost"  # the client has gone; any answer is unread
    host, port = str(sockname[0]), int(sockname[1])
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
