"""REST JSON API: slides, metadata, thumbnails, regions, associated images, OpenAPI."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from tileserver.geometry import Region, Size
from tileserver.security.audit import EXPORT, INSTANCES_ACCESSED, iso_utc
from tileserver.security.signed_urls import MAX_LIFETIME, SCOPES
from tileserver.security.slide_labels import LABEL_FIELDS, LabelStore
from tileserver.server.auth import SECURITY, audit, authorize, principal_of, visible_slides
from tileserver.server.errors import BadRequest
from tileserver.server.http import (
    float_param,
    format_param,
    icc_param,
    if_none_match,
    image_response,
    int_param,
    render_key,
)
from tileserver.server.openapi import openapi_document
from tileserver.service import SlideService

SLIDE = "{slide_id:[0-9a-f]{32}}"
MAX_PAGE = 500


def routes(service: SlideService) -> list[web.RouteDef]:
    async def list_slides(request: web.Request) -> web.Response:
        offset = int_param(request, "offset", 0)
        limit = int_param(request, "limit", 50, lo=1, hi=MAX_PAGE)
        if "metadata" not in principal_of(request).scopes:
            raise web.HTTPForbidden(reason="this token may not list slides")
        items, total = await service.list_slides(offset, limit, await visible_slides(request))
        await _add_labels(request, items)
        return web.json_response(
            {"items": items, "offset": offset, "limit": limit, "total": total},
            headers={"Cache-Control": "private, no-cache"},
        )

    async def slide(request: web.Request) -> web.Response:
        doc = await slide_document(request, service, request.match_info["slide_id"])
        return web.json_response(doc, headers={"Cache-Control": "private, no-cache"})

    async def thumbnail(request: web.Request) -> web.Response:
        size = int_param(request, "max", 512, lo=1, hi=1 << 16)
        fmt = format_param(request.query.get("format"))
        slide_id = request.match_info["slide_id"]
        authorize(request, slide_id, "thumbnails")
        encoded = await service.thumbnail(
            slide_id,
            size,
            fmt,
            if_none_match(request),
            render_key(request),
            request.query,
            icc=icc_param(request),
        )
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "thumbnail", "max": size},
        )
        return image_response(encoded)

    async def region(request: web.Request) -> web.Response:
        slide_id = request.match_info["slide_id"]
        authorize(request, slide_id, "regions")
        unit = request.query.get("unit", "px")
        if unit == "px":
            l0 = Region(
                int_param(request, "x"),
                int_param(request, "y"),
                int_param(request, "width", lo=1),
                int_param(request, "height", lo=1),
            )
        elif unit == "um":
            mpp = (await service.describe(slide_id))["mpp"]
            if not mpp:
                raise BadRequest("unit 'um' needs a slide with a known pixel size (mpp)")
            x, y = float_param(request, "x") / mpp[0], float_param(request, "y") / mpp[1]
            w, h = float_param(request, "width") / mpp[0], float_param(request, "height") / mpp[1]
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise BadRequest("region must have x, y >= 0 and positive width and height")
            x0, y0 = math.floor(x), math.floor(y)
            l0 = Region(x0, y0, max(1, math.ceil(x + w) - x0), max(1, math.ceil(y + h) - y0))
        else:
            raise BadRequest(f"unit must be 'px' or 'um', not {unit[:10]!r}")
        out = _output_size(request, l0)
        fmt = format_param(request.query.get("format"))
        encoded = await service.region(
            slide_id,
            l0,
            out,
            fmt,
            if_none_match(request),
            render_key(request),
            request.query,
            icc=icc_param(request),
        )
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "region", "x": l0.x, "y": l0.y, "width": l0.width, "height": l0.height},
        )
        return image_response(encoded)

    async def associated(request: web.Request) -> web.Response:
        fmt = format_param(request.query.get("format"))
        slide_id, name = request.match_info["slide_id"], request.match_info["name"]
        identifying = name != "thumbnail"  # label and macro show names and barcodes
        authorize(request, slide_id, "labels" if identifying else "thumbnails")
        encoded = await service.associated(
            slide_id, name, fmt, if_none_match(request), render_key(request)
        )
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "associated", "name": name, "identifying": identifying},
        )
        return image_response(encoded)

    async def share(request: web.Request) -> web.Response:
        """A signed URL for this slide's tiles (or regions), for whoever gets the link."""
        slide_id = request.match_info["slide_id"]
        scope = request.query.get("scope", "tiles")
        if scope not in SCOPES:
            raise BadRequest(f"scope must be one of {', '.join(SCOPES)}")
        minutes = int_param(request, "minutes", MAX_LIFETIME // 60, lo=1, hi=MAX_LIFETIME // 60)
        principal_of(request)  # a signed URL cannot mint another one
        authorize(request, slide_id, scope)
        url_keys = request.app[SECURITY].url_keys
        if url_keys is None:
            raise web.HTTPNotFound(reason="signed URLs need authentication to be on")
        if url_keys.shared:  # keys in PostgreSQL: the newest, read off the loop
            await asyncio.get_running_loop().run_in_executor(None, url_keys.refresh)
        exp = int(time.time()) + minutes * 60
        query = url_keys.sign(slide_id, scope, exp)
        await audit(
            request,
            EXPORT,
            action="E",
            obj=slide_id,
            detail={"kind": "signed-url", "scope": scope, "expires": iso_utc(exp)},
        )
        return web.json_response(
            {"query": query, "dzi": f"/deepzoom/{slide_id}.dzi?{query}", "expires": iso_utc(exp)},
            headers={"Cache-Control": "no-store"},
        )

    async def icc_profile(request: web.Request) -> web.Response:
        """The slide's ICC profile as stored (docs/colour.md); 404 when it has none."""
        authorize(request, request.match_info["slide_id"], "metadata")
        data = await service.icc_profile(request.match_info["slide_id"])
        return web.Response(
            body=data,
            content_type="application/vnd.iccprofile",
            headers={"Cache-Control": "private, no-cache"},
        )

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    return [
        web.get("/api/slides", list_slides),
        web.get(f"/api/slides/{SLIDE}", slide),
        web.get(f"/api/slides/{SLIDE}/thumbnail", thumbnail),
        web.get(f"/api/slides/{SLIDE}/region", region),
        web.get(f"/api/slides/{SLIDE}/icc", icc_profile),
        web.get(f"/api/slides/{SLIDE}/associated/{{name:[a-z]{{1,20}}}}", associated),
        web.post(f"/api/slides/{SLIDE}/share", share),
        web.get("/api/openapi.json", openapi),
    ]


async def slide_document(
    request: web.Request, service: SlideService, slide_id: str
) -> dict[str, Any]:
    """``/api/slides/{id}``'s body for the caller (the viewer's page carries it inline too);
    the 404 of a missing slide if the caller may not read its metadata."""
    authorize(request, slide_id, "metadata")
    doc = await service.describe(slide_id)
    await _add_labels(request, [doc])
    return doc


async def _add_labels(request: web.Request, items: list[dict[str, Any]]) -> None:
    """Case, block, stain and scan date into each slide the caller may see the metadata of
    (the case name under the same rule as the worklist's /viewer/cases); all None without
    accounts (--no-auth)."""
    accounts = request.app[SECURITY].accounts
    ids = [str(item["id"]) for item in items]
    if accounts is None:
        found = {slide_id: dict.fromkeys(LABEL_FIELDS) for slide_id in ids}
    else:
        store = LabelStore(accounts.db)
        found = await asyncio.get_running_loop().run_in_executor(None, store.describe, ids)
    for item in items:
        item.update(found[str(item["id"])])


def _output_size(request: web.Request, l0: Region) -> Size:
    """``out_width``/``out_height`` (either derives the other), ``max``, or the region size."""
    has_w, has_h = "out_width" in request.query, "out_height" in request.query
    if "max" in request.query:
        longest = int_param(request, "max", lo=1)
        scale = min(longest / l0.width, longest / l0.height)
        return Size(max(1, round(l0.width * scale)), max(1, round(l0.height * scale)))
    if has_w and has_h:
        return Size(int_param(request, "out_width", lo=1), int_param(request, "out_height", lo=1))
    if has_w:
        w = int_param(request, "out_width", lo=1)
        return Size(w, max(1, round(l0.height * w / l0.width)))
    if has_h:
        h = int_param(request, "out_height", lo=1)
        return Size(max(1, round(l0.width * h / l0.height)), h)
    return l0.size
