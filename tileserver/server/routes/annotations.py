"""Annotations REST API: a slide's annotations as GeoJSON in level-0 pixel coordinates.

    GET    /api/slides/{id}/annotations               the caller's and the shared ones
    POST   /api/slides/{id}/annotations               a Feature, or a FeatureCollection import
    GET    /api/slides/{id}/annotations.geojson       export (QuPath's flavour of GeoJSON)
    GET    /api/slides/{id}/annotations/{aid}         one (ETag: its version)
    PUT    /api/slides/{id}/annotations/{aid}         a new version (If-Match: a version)
    DELETE /api/slides/{id}/annotations/{aid}         a tombstone version
    GET    /api/slides/{id}/annotations/{aid}/versions  the history, for the author

The slide must be viewable with the ``annotations`` scope (people have it with their view
grant, tokens only when created with it); a refusal is the 404 of a missing slide, and a
signed URL opens none of this (403). Writes take JSON only (``application/json`` or
``application/geo+json``; anything else is 415): with the session cookie's SameSite=Strict
and the middleware's refusal of cross-origin writes, a page elsewhere can neither post a
form here nor send JSON without a CORS preflight nobody answers. Bodies are read here up to
``MAX_BODY_BYTES`` (the app's 64 KiB is for forms), parsed and sealed off the event loop.
Every create, change, delete and read is audited with IDs only, never annotation text.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from tileserver.annotations import (
    MAX_BODY_BYTES,
    Annotation,
    AnnotationError,
    AnnotationTooLarge,
    SlideFrame,
    feature,
    parse_feature,
    parse_import,
    parse_json,
    qupath_feature,
)
from tileserver.security.annotation_store import (
    AnnotationStore,
    AnnotationsUnavailable,
    Record,
)
from tileserver.security.audit import EXPORT, INSTANCES_ACCESSED, MAX_LIST, iso_utc
from tileserver.server.auth import SECURITY, audit, authorize, principal_of
from tileserver.server.errors import BadRequest
from tileserver.service import SlideService

SLIDE = "{slide_id:[0-9a-f]{32}}"
ANNOTATION = "{annotation_id:[0-9a-f]{32}}"
JSON_TYPES = ("application/json", "application/geo+json")
_NO_CACHE = {"Cache-Control": "private, no-cache"}

T = TypeVar("T")


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args))


def routes(service: SlideService) -> list[web.RouteDef]:
    library = service.library

    def store_of(request: web.Request) -> AnnotationStore:
        accounts = request.app[SECURITY].accounts
        if accounts is None:  # --no-auth: no one to own an annotation, nowhere to keep it
            raise web.HTTPNotFound(reason="annotations need authentication to be on")
        return AnnotationStore(accounts.db)

    def caller(request: web.Request) -> str:
        """The principal ("kind:name") if it may use annotations on this slide."""
        principal_of(request)  # a signed URL never opens annotations
        principal = authorize(request, request.match_info["slide_id"], "annotations")
        return f"{principal.kind}:{principal.name}"

    def data_key(slide_id: str) -> bytes:
        """The slide's data key (in a worker thread: it may read the store)."""
        keyring, stores = library.keyring, library.stores
        store = None if stores is None else stores.child(f"{slide_id}/")
        if keyring is None or store is None or not keyring.has_data_key(slide_id, store):
            raise AnnotationsUnavailable(
                "this slide is not encrypted: annotations are sealed with the slide's data"
                " key, so a plaintext store or a slide file served as it is cannot hold them"
            )
        return keyring.data_key(slide_id, store)

    async def frame_of(slide_id: str) -> SlideFrame:
        doc = await service.describe(slide_id)
        return SlideFrame.of(doc["width"], doc["height"], doc["mpp"])

    def meta(record: Record, viewer: str) -> dict[str, object]:
        return {
            "author": record.author,
            "own": record.author == viewer,
            "version": record.version,
            "created": iso_utc(record.created),
            "updated": iso_utc(record.updated),
        }

    def api_feature(record: Record, viewer: str, frame: SlideFrame) -> dict[str, Any]:
        assert record.annotation is not None  # tombstones are never shown as features
        return feature(record.annotation, record.id, meta(record, viewer), frame.mpp)

    async def visible(request: web.Request) -> tuple[str, str, SlideFrame, list[Record]]:
        """The slide, the caller, the slide's frame and the annotations the caller sees."""
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        store, frame = store_of(request), await frame_of(slide_id)
        key = await _off_loop(data_key, slide_id)
        return slide_id, viewer, frame, await _off_loop(store.visible, slide_id, viewer, key)

    async def list_annotations(request: web.Request) -> web.Response:
        slide_id, viewer, frame, records = await visible(request)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "annotations", "count": len(records)},
        )
        return await _json(lambda: collection([api_feature(r, viewer, frame) for r in records]))

    async def create(request: web.Request) -> web.Response:
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        store, frame = store_of(request), await frame_of(slide_id)
        data = await _read_body(request)
        doc, annotations = await _off_loop(_parse_import, data, frame)
        key = await _off_loop(data_key, slide_id)
        records = await _off_loop(store.create, slide_id, viewer, key, annotations)
        ids = [r.id for r in records]
        for start in range(0, len(ids), MAX_LIST):  # an import: its IDs in a few records
            await audit(
                request,
                INSTANCES_ACCESSED,
                action="C",
                obj=slide_id,
                detail={
                    "kind": "annotation",
                    "annotations": ids[start : start + MAX_LIST],
                    "version": 1,
                },
            )
        if doc.get("type") == "Feature":
            location = f"/api/slides/{slide_id}/annotations/{ids[0]}"
            headers = {"Location": location, "ETag": _etag(records[0]), **_NO_CACHE}
            return await _json(lambda: api_feature(records[0], viewer, frame), 201, headers)
        return await _json(
            lambda: collection([api_feature(r, viewer, frame) for r in records]), 201
        )

    async def get_one(request: web.Request) -> web.Response:
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        aid = request.match_info["annotation_id"]
        store, frame = store_of(request), await frame_of(slide_id)
        key = await _off_loop(data_key, slide_id)
        record = await _off_loop(store.get, slide_id, aid, viewer, key)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "annotation", "annotation": aid, "version": record.version},
        )
        headers = {"ETag": _etag(record), **_NO_CACHE}
        return await _json(lambda: api_feature(record, viewer, frame), headers=headers)

    async def replace(request: web.Request) -> web.Response:
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        aid = request.match_info["annotation_id"]
        expected = _if_match(request)
        store, frame = store_of(request), await frame_of(slide_id)
        data = await _read_body(request)
        annotation = await _off_loop(_parse_one, data, frame, aid)
        key = await _off_loop(data_key, slide_id)
        record = await _off_loop(store.update, slide_id, aid, viewer, key, annotation, expected)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="U",
            obj=slide_id,
            detail={
                "kind": "annotation",
                "annotation": aid,
                "version": record.version,
                "shared": record.shared,
            },
        )
        headers = {"ETag": _etag(record), **_NO_CACHE}
        return await _json(lambda: api_feature(record, viewer, frame), headers=headers)

    async def delete(request: web.Request) -> web.Response:
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        aid = request.match_info["annotation_id"]
        expected = _if_match(request)
        store = store_of(request)
        key = await _off_loop(data_key, slide_id)
        record = await _off_loop(store.delete, slide_id, aid, viewer, key, expected)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="D",
            obj=slide_id,
            detail={"kind": "annotation", "annotation": aid, "version": record.version},
        )
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def versions(request: web.Request) -> web.Response:
        slide_id, viewer = request.match_info["slide_id"], caller(request)
        aid = request.match_info["annotation_id"]
        store, frame = store_of(request), await frame_of(slide_id)
        key = await _off_loop(data_key, slide_id)
        records = await _off_loop(store.versions, slide_id, aid, viewer, key)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide_id,
            detail={"kind": "annotation-history", "annotation": aid, "count": len(records)},
        )

        def history() -> dict[str, Any]:
            items = [
                {"version": r.version, "deleted": True, "updated": iso_utc(r.updated)}
                if r.annotation is None
                else api_feature(r, viewer, frame)
                for r in records
            ]
            return {"id": aid, "versions": items}

        return await _json(history)

    async def export(request: web.Request) -> web.Response:
        slide_id, _viewer, frame, records = await visible(request)
        await audit(
            request,
            EXPORT,
            action="E",
            obj=slide_id,
            detail={"kind": "annotations-geojson", "count": len(records)},
        )

        def qupath() -> dict[str, Any]:
            return collection(
                [qupath_feature(r.annotation, r.id, frame.mpp) for r in records if r.annotation]
            )

        attachment = f'attachment; filename="{slide_id}-annotations.geojson"'
        return await _json(
            qupath,
            headers={"Content-Disposition": attachment, **_NO_CACHE},
            content_type="application/geo+json",
        )

    base = f"/api/slides/{SLIDE}/annotations"
    one = f"{base}/{ANNOTATION}"
    return [
        web.get(base, list_annotations),
        web.post(base, create),
        web.get(f"/api/slides/{SLIDE}/annotations.geojson", export),
        web.get(one, get_one),
        web.put(one, replace),
        web.delete(one, delete),
        web.get(f"{one}/versions", versions),
    ]


def collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


async def _json(
    build: Callable[[], object],
    status: int = 200,
    headers: Mapping[str, str] = _NO_CACHE,
    content_type: str = "application/json",
) -> web.Response:
    """The document built (measurements) and serialised off the event loop: a slide's
    annotations can run to megabytes of coordinates."""
    body = await _off_loop(lambda: json.dumps(build(), separators=(",", ":")).encode())
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


async def _read_body(request: web.Request) -> bytes:
    """The JSON body, read up to MAX_BODY_BYTES (415 for another type, 413 past the limit)."""
    if request.content_type not in JSON_TYPES:
        raise web.HTTPUnsupportedMediaType(
            reason=f"send annotations as {' or '.join(JSON_TYPES)},"
            f" not {request.content_type[:60]!r}"
        )
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise AnnotationTooLarge(f"body is over the {MAX_BODY_BYTES}-byte limit")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise AnnotationTooLarge(f"body is over the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_import(data: bytes, frame: SlideFrame) -> tuple[dict[str, Any], list[Annotation]]:
    doc = parse_json(data)
    annotations = parse_import(doc, frame)
    return doc, annotations


def _parse_one(data: bytes, frame: SlideFrame, annotation_id: str) -> Annotation:
    doc = parse_json(data)
    if isinstance(doc, dict) and doc.get("id") not in (None, annotation_id):
        raise AnnotationError("the Feature's 'id' is not this annotation's")
    return parse_feature(doc, frame)


def _etag(record: Record) -> str:
    return f'"{record.version}"'


def _if_match(request: web.Request) -> int | None:
    """The version an edit was based on (If-Match: "3"); None when not given or ``*``."""
    value = request.headers.get("If-Match", "").strip()
    if value in ("", "*"):
        return None
    digits = value.strip('"')
    if not digits.isdecimal() or len(digits) > 12:
        raise BadRequest('If-Match must be an annotation\'s ETag, such as "3"')
    return int(digits)
