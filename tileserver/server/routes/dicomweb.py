"""DICOMweb (PS3.18) under ``/dicomweb``: QIDO-RS searches, WADO-RS metadata, frames,
rendered images and thumbnails, over the same slides and rules as every other protocol.

Authorization: a UID resolves to a slide, then the caller must hold the scope for that
slide, and unknown and denied look the same (404). Frames and rendered frames need
``tiles``; metadata ``metadata`` or ``tiles`` (a viewer needs it to use the frames, as the
DeepZoom descriptor needs ``tiles``); thumbnails ``thumbnails``; a whole rendered level
``regions``. Identifying attributes only with ``labels``. Searches list slides, so they
need ``metadata`` and refuse signed links (403), as the slide listing does; a signed
``tiles`` link opens its own slide's metadata and frames.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from aiohttp import web

from tileserver.dicom_service import DicomService, Frames, SlideDicom
from tileserver.errors import SlideNotFound, TileserverError
from tileserver.geometry import Region, Size
from tileserver.protocols import dicomweb as dw
from tileserver.security.accounts import Principal
from tileserver.security.audit import INSTANCES_ACCESSED, QUERY
from tileserver.server.auth import (
    PRINCIPAL,
    SECURITY,
    SIGNED_URL,
    audit,
    authorize,
    principal_of,
    read_generation,
    view_tile,
    visible_slides,
)
from tileserver.server.http import CACHE_CONTROL, if_none_match, image_response, render_key
from tileserver.service import NotModified, SlideService

ROOT = "/dicomweb"
UID = "[^/]+"  # checked by is_uid: a malformed one is a 400 that says so
JSON_HEADERS = {"Cache-Control": "private, no-cache"}
THUMBNAIL = 256  # default edge of thumbnails (PS3.18 leaves it to the origin server)
RENDERED = (dw.Offer("image/jpeg", multipart=False), dw.Offer("image/png", multipart=False))
JSON = (dw.Offer(dw.DICOM_JSON, multipart=False), dw.Offer("application/json", multipart=False))
_FORMAT = {"image/jpeg": "jpeg", "image/png": "png"}


def routes(service: SlideService, uid_root: str = "2.25") -> list[web.RouteDef]:
    dicom = DicomService(service, uid_root)

    # -- who may see what ---------------------------------------------------------------------
    async def learn(request: web.Request, slide_id: str) -> int | None:
        """Make sure the authorization cache can answer for this slide (the database, if
        it must, off the loop); the request's generation, None without authentication."""
        authenticator = request.app[SECURITY].authenticator
        principal: Principal | None = request.get(PRINCIPAL)
        if authenticator is None or principal is None or principal is SIGNED_URL:
            return None
        authz = authenticator.authz
        generation = await read_generation(request, authenticator)
        if not authz.knows(principal, slide_id, generation):
            await asyncio.get_running_loop().run_in_executor(
                None, authz.learn, principal, slide_id, generation
            )
        return generation

    async def may(request: web.Request, slide_id: str, scope: str) -> bool:
        """Whether the caller holds ``scope`` on the slide (no refusal recorded)."""
        principal: Principal | None = request.get(PRINCIPAL)
        if principal is None or principal is SIGNED_URL:
            return False
        generation = await learn(request, slide_id)
        authenticator = request.app[SECURITY].authenticator
        if authenticator is None or generation is None:
            return scope in principal.scopes
        return authenticator.authz.allows(principal, slide_id, scope, generation)

    async def allow(request: web.Request, slide_id: str, *scopes: str) -> None:
        """Authorize the first of ``scopes`` the caller holds (a signed link: ``tiles``, or
        the last scope), else the 404 of a missing slide, recorded as a refusal."""
        if request.get(PRINCIPAL) is SIGNED_URL:
            authorize(request, slide_id, "tiles" if "tiles" in scopes else scopes[-1])
            return
        await learn(request, slide_id)  # authorize answers from the cache
        for scope in scopes[:-1]:
            if await may(request, slide_id, scope):
                authorize(request, slide_id, scope)
                return
        authorize(request, slide_id, scopes[-1])

    async def identity(request: web.Request, slide_id: str) -> tuple[bool, str | None]:
        """(identified, case): identifying attributes only with the labels grant."""
        if not await may(request, slide_id, "labels"):
            return False, None
        authenticator = request.app[SECURITY].authenticator
        if authenticator is None:
            return True, None
        case = await asyncio.get_running_loop().run_in_executor(
            None, authenticator.accounts.collection_of, slide_id
        )
        return True, case

    async def visible(request: web.Request) -> set[str] | None:
        """The caller's visible slides for resolving a UID (None: any; a signed link's
        slide is checked after resolving)."""
        if request.get(PRINCIPAL) is SIGNED_URL:
            return None
        return await visible_slides(request)

    async def study(request: web.Request, *scopes: str) -> SlideDicom:
        """The slide of the path's study (and series and instance, when given), authorized.
        A known UID is valid by construction: only an unknown one is checked for syntax (a
        400), so the hot path is dictionary lookups."""
        m = request.match_info
        slide_id = dicom.known(m["study"])
        if slide_id is None:
            uid = dw.check_uid(m["study"], "StudyInstanceUID")
            try:
                slide_id = await dicom.resolve(uid, await visible(request))
            except SlideNotFound:
                if request.get(PRINCIPAL) is SIGNED_URL:  # no slide to check the link against
                    authorize(request, "0" * 32, "tiles")
                for key, what in (("series", "SeriesInstanceUID"), ("instance", "SOPInstanceUID")):
                    if key in m:
                        dw.check_uid(m[key], what)
                raise
        await allow(request, slide_id, *scopes)
        slide = await dicom.slide(slide_id)
        if "series" in m and m["series"] != slide.uids.series:
            dw.check_uid(m["series"], "SeriesInstanceUID")
            raise SlideNotFound("no such series")
        if "instance" in m and m["instance"] not in slide.uids.instances:
            dw.check_uid(m["instance"], "SOPInstanceUID")
            raise SlideNotFound("no such instance")
        return slide

    def level(request: web.Request, slide: SlideDicom) -> int:
        return slide.level_of(request.match_info["series"], request.match_info["instance"])

    # -- QIDO-RS ------------------------------------------------------------------------------
    async def search(request: web.Request) -> web.Response:
        what = request.match_info.get("what", "studies")
        principal = principal_of(request)  # a signed link: 403
        if "metadata" not in principal.scopes:
            raise web.HTTPForbidden(reason="this token may not search")
        query = dw.parse_query(request.query.items())
        dw.negotiate(request.headers.get("Accept"), JSON)  # 406 before any work
        m = request.match_info
        visible_ids = await visible_slides(request)
        if "study" in m:
            uid = dw.check_uid(m["study"], "StudyInstanceUID")
            if "series" in m:
                dw.check_uid(m["series"], "SeriesInstanceUID")
            try:
                slide_ids = [await dicom.resolve(uid, visible_ids)]
            except SlideNotFound:
                slide_ids = []
            if slide_ids and visible_ids is not None and slide_ids[0] not in visible_ids:
                slide_ids = []
        else:
            slide_ids = await dicom.slide_ids(visible_ids)
            wanted = query.value(dw.STUDY_UID)
            if wanted:  # the cheap filter first: no slide is opened for it
                uids = set(wanted.split(","))
                slide_ids = [s for s in slide_ids if dicom.study_uid(s) in uids]
        results: list[dict[str, Any]] = []
        skipped = 0
        for slide_id in slide_ids:  # visible ones only: the listing is the authorization
            try:
                slide = await dicom.slide(slide_id)
            except TileserverError:  # one unreadable slide must not hide the others
                continue
            if "series" in m and m["series"] != slide.uids.series:
                continue
            identified, case = await identity(request, slide_id)
            for record in await records(slide, what, identified, case):
                if not dw.matches(query, record):
                    continue
                if skipped < query.offset:
                    skipped += 1
                    continue
                results.append(dw.select(query, record, DEFAULTS[what]))
                if len(results) > query.limit:  # one more than asked: there are more
                    break
            if len(results) > query.limit:
                break
        headers = {}
        if len(results) > query.limit:
            del results[query.limit :]
            # PS3.18 8.3.4.4: say so, and how to get the rest.
            headers["Warning"] = (
                '299 tileserver: "There are more results than the limit: ask again with '
                f'offset={query.offset + query.limit}"'
            )
        await audit(
            request,
            QUERY,
            action="E",
            detail={
                "kind": "qido",
                "level": what,
                "keys": sorted(dw.TAGS[t] for t, _ in query.matches),
                "results": len(results),
            },
        )
        return json_response(request, results, headers)

    async def records(
        slide: SlideDicom, what: str, identified: bool, case: str | None
    ) -> list[dict[str, Any]]:
        count = len(slide.uids.instances)
        levels = range(count) if what == "instances" else range(1)
        instances = await dicom.instance_json(slide, levels, identified=identified, case=case)
        first = instances[0]
        if what == "studies":
            record = {t: first[t] for t in STUDY_SCOPE if t in first}
            record[dw.ATTRIBUTES["ModalitiesInStudy"][0]] = {"vr": "CS", "Value": ["SM"]}
            record[dw.ATTRIBUTES["NumberOfStudyRelatedSeries"][0]] = {"vr": "IS", "Value": [1]}
            record[dw.ATTRIBUTES["NumberOfStudyRelatedInstances"][0]] = {
                "vr": "IS",
                "Value": [count],
            }
            return [record]
        if what == "series":
            record = {t: first[t] for t in SERIES_SCOPE if t in first}
            record[dw.ATTRIBUTES["NumberOfSeriesRelatedInstances"][0]] = {
                "vr": "IS",
                "Value": [count],
            }
            return [record]
        syntaxes = {"vr": "UI", "Value": dicom.available_syntaxes(slide)}
        out = []
        for k in range(count):
            record = dict(instances[k])
            record[dw.ATTRIBUTES["AvailableTransferSyntaxUID"][0]] = syntaxes
            out.append(record)
        return out

    # -- WADO-RS metadata ---------------------------------------------------------------------
    async def metadata(request: web.Request) -> web.Response:
        dw.negotiate(request.headers.get("Accept"), JSON)  # 406 before any work
        slide = await study(request, "metadata", "tiles")
        identified, case = await identity(request, slide.slide_id)
        if "instance" in request.match_info:
            levels = [level(request, slide)]
        else:
            levels = list(range(len(slide.uids.instances)))
        body = await dicom.instance_json(slide, levels, identified=identified, case=case)
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide.slide_id,
            detail={"kind": "dicom-metadata", "identified": identified},
        )
        return json_response(request, body)

    # -- WADO-RS frames -----------------------------------------------------------------------
    async def frames(request: web.Request) -> web.Response:
        numbers = dw.parse_frames(request.match_info["frames"])
        slide = await study(request, "tiles")
        k = level(request, slide)
        offer = dw.negotiate(
            request.headers.get("Accept"),
            dicom.offers(slide),
            dw.Offer("application/octet-stream", dw.EXPLICIT_VR_LITTLE_ENDIAN),
        )
        if not offer.multipart and len(numbers) != 1:
            raise dw.NotAcceptable("a single-part response holds one frame: ask multipart/related")
        tile = slide.facts[k].tile
        if len(numbers) * tile * tile > dw.MAX_FRAME_PIXELS:
            raise dw.QueryError(
                f"at most {max(1, dw.MAX_FRAME_PIXELS // (tile * tile))} frames of this "
                "instance per request"
            )
        # One frame is a tile (the request rate limit's business, as for DeepZoom); frames
        # made for a batch are charged to the caller's render budget.
        who = render_key(request) if len(numbers) > 1 else None
        found = await dicom.frames(slide, k, numbers, offer, if_none_match(request), who)
        grid = slide.grids[k]
        for n in numbers:
            view_tile(request, slide.slide_id, k, (n - 1) % grid.width, (n - 1) // grid.width)
        return frames_response(found)

    # -- rendered and thumbnails --------------------------------------------------------------
    async def rendered_frame(request: web.Request) -> web.Response:
        numbers = dw.parse_frames(request.match_info["frames"], max_frames=1)
        slide = await study(request, "tiles")
        k = level(request, slide)
        offer = dw.negotiate(request.headers.get("Accept"), RENDERED)
        grid = slide.grids[k]
        col, row = dw.frame_position(numbers[0], grid.width, grid.height)
        encoded = await dicom.rendered_frame(
            slide, k, col, row, _FORMAT[offer.media_type], if_none_match(request)
        )
        view_tile(request, slide.slide_id, k, col, row)
        return image_response(encoded)

    async def rendered_instance(request: web.Request) -> web.Response:
        slide = await study(request, "regions")
        k = level(request, slide)
        offer = dw.negotiate(request.headers.get("Accept"), RENDERED)
        l0_size = slide.facts[0].levels[0]
        out = viewport(request) or slide.facts[k].levels[k]
        scale = min(out.width / l0_size.width, out.height / l0_size.height)
        out = Size(max(1, round(l0_size.width * scale)), max(1, round(l0_size.height * scale)))
        encoded = await service.region(
            slide.slide_id,
            Region(0, 0, l0_size.width, l0_size.height),
            out,
            _FORMAT[offer.media_type],
            if_none_match(request),
            render_key(request),
        )
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide.slide_id,
            detail={"kind": "dicom-rendered", "level": k, "width": out.width},
        )
        return image_response(encoded)

    async def thumbnail(request: web.Request) -> web.Response:
        slide = await study(request, "thumbnails")
        if "instance" in request.match_info:
            level(request, slide)
        offer = dw.negotiate(request.headers.get("Accept"), RENDERED)
        box = viewport(request)
        size = max(box) if box else THUMBNAIL
        encoded = await service.thumbnail(
            slide.slide_id,
            size,
            _FORMAT[offer.media_type],
            if_none_match(request),
            render_key(request),
        )
        await audit(
            request,
            INSTANCES_ACCESSED,
            action="R",
            obj=slide.slide_id,
            detail={"kind": "dicom-thumbnail", "max": size},
        )
        return image_response(encoded)

    study_path = f"{ROOT}/studies/{{study:{UID}}}"
    series_path = f"{study_path}/series/{{series:{UID}}}"
    instance_path = f"{series_path}/instances/{{instance:{UID}}}"
    frames_path = f"{instance_path}/frames/{{frames:[^/]+}}"  # parse_frames checks it
    return [  # frames first: a viewer's many requests match on the first try
        web.get(frames_path, frames),
        web.get(f"{ROOT}/{{what:studies|series|instances}}", search),
        web.get(f"{study_path}/{{what:series|instances}}", search),
        web.get(f"{series_path}/{{what:instances}}", search),
        web.get(f"{series_path}/metadata", metadata),
        web.get(f"{instance_path}/metadata", metadata),
        web.get(f"{frames_path}/rendered", rendered_frame),
        web.get(f"{instance_path}/rendered", rendered_instance),
        web.get(f"{study_path}/thumbnail", thumbnail),
        web.get(f"{series_path}/thumbnail", thumbnail),
        web.get(f"{instance_path}/thumbnail", thumbnail),
    ]


# Attributes a study or series record takes from the level-0 instance.
STUDY_SCOPE = tuple(
    dw.ATTRIBUTES[k][0]
    for k in (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientIdentityRemoved",
        "StudyInstanceUID",
        "StudyID",
    )
)
SERIES_SCOPE = tuple(
    dw.ATTRIBUTES[k][0]
    for k in (
        "SpecificCharacterSet",
        "StudyInstanceUID",
        "Modality",
        "SeriesDate",
        "SeriesTime",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "Manufacturer",
        "ManufacturerModelName",
    )
)
DEFAULTS = {
    "studies": dw.STUDY_FIELDS,
    "series": (*dw.SERIES_FIELDS, dw.STUDY_UID),
    "instances": (*dw.INSTANCE_FIELDS, dw.STUDY_UID, dw.SERIES_UID),
}


def viewport(request: web.Request) -> Size | None:
    """``viewport=w,h`` (PS3.18 8.3.5.1.3), at most 8192 each; None when absent."""
    raw = request.query.get("viewport")
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) != 2 or not all(p.isdecimal() and 1 <= int(p) <= 8192 for p in parts):
        raise dw.QueryError("viewport is w,h with each in 1..8192")
    return Size(int(parts[0]), int(parts[1]))


def json_response(
    request: web.Request, body: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> web.Response:
    """DICOM JSON (or plain JSON when that is what the client asks for); 406 otherwise."""
    offer = dw.negotiate(request.headers.get("Accept"), JSON)
    return web.json_response(
        body, content_type=offer.media_type, headers={**JSON_HEADERS, **(headers or {})}
    )


def frames_response(found: Frames | NotModified) -> web.Response:
    headers = {"Cache-Control": CACHE_CONTROL, "Vary": "Accept"}  # one URL, several bodies
    if isinstance(found, NotModified):
        return web.Response(status=304, headers={"ETag": found.etag, **headers})
    headers["ETag"] = found.etag
    offer = found.offer
    if not offer.multipart:
        return web.Response(body=found.parts[0], content_type=offer.media_type, headers=headers)
    boundary = secrets.token_hex(16)
    headers["Content-Type"] = dw.multipart_type(offer, boundary)
    return web.Response(body=dw.multipart_body(found.parts, offer, boundary), headers=headers)
