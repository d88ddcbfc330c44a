"""The browser viewer: login page, worklist, slide viewer, and the static files they use.

Pages are static HTML, CSS and JavaScript in ``tileserver/server/static`` (the server's CSP
forbids inline scripts and styles); they fetch everything else from the JSON API with the
session cookie. ``/login`` and ``/static/`` are public (no patient data); ``/`` and
``/view/{id}`` go through the auth middleware like every other route, so a browser without a
session is sent to ``/login?next=...`` and back.

Browser libraries are not part of the repository: ``scripts/setup-browser.sh`` installs them
from the npm registry (pinned by ``package-lock.json``) into ``node_modules``, and each is
served from there under ``/static/vendor/<package>/`` (``VENDORS``): OpenSeadragon for the
viewer, dicom-microscopy-viewer and dicomweb-client for the DICOMweb compatibility page. A
package that is not installed is a 404 saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tileserver.errors import SlideNotFound, TileserverError
from tileserver.security.accounts import Accounts
from tileserver.security.slide_labels import NONE, LabelStore, order_key
from tileserver.server.auth import SECURITY, authorize, principal_of, visible_slides
from tileserver.server.errors import BadRequest
from tileserver.server.http import format_param
from tileserver.server.routes.api import slide_document
from tileserver.service import SlideService

logger = logging.getLogger(__name__)

SLIDE = "{slide_id:[0-9a-f]{32}}"
STATIC = Path(__file__).resolve().parent.parent / "static"
VENDOR_PREFIX = "vendor/"


@dataclass(frozen=True)
class Vendor:
    """An npm package's directory served under ``/static/vendor/<name>/``."""

    name: str
    directory: Path  # relative to the checkout (or the working directory)
    marker: str  # a file under ``directory`` that shows the package is installed
    override: str = ""  # an environment variable that names the directory instead
    workers: frozenset[str] = frozenset()  # files run as Web Workers (served with WORKER_CSP)

    @property
    def missing(self) -> str:
        where = f", or set {self.override} to its directory" if self.override else ""
        return (
            f"{self.name} is not installed: run scripts/setup-browser.sh (npm ci) in the "
            f"tileserver checkout{where}"
        )


OPENSEADRAGON = Vendor(
    "openseadragon",
    Path("node_modules", "openseadragon", "build", "openseadragon"),
    "openseadragon.min.js",
    "TILESERVER_OPENSEADRAGON",
)
# The whole dist directory: the page loads dynamic-import/dicomMicroscopyViewer.min.js, which
# starts dynamic-import/dataLoader.worker.min.js, which fetches the *.wasm decoders beside it.
DICOM_MICROSCOPY_VIEWER = Vendor(
    "dicom-microscopy-viewer",
    Path("node_modules", "dicom-microscopy-viewer", "dist"),
    "dynamic-import/dicomMicroscopyViewer.min.js",
    "TILESERVER_DICOM_MICROSCOPY_VIEWER",
    workers=frozenset({"dynamic-import/dataLoader.worker.min.js"}),
)
DICOMWEB_CLIENT = Vendor(
    "dicomweb-client",
    Path("node_modules", "dicomweb-client", "build"),
    "dicomweb-client.js",
    "TILESERVER_DICOMWEB_CLIENT",
)
VENDORS = {v.name: v for v in (OPENSEADRAGON, DICOM_MICROSCOPY_VIEWER, DICOMWEB_CLIENT)}
OSD_MISSING = OPENSEADRAGON.missing

# dicom-microscopy-viewer decodes frames in a Web Worker with WebAssembly codecs (libjpeg-turbo,
# OpenJPEG, CharLS, an ICC transform) built with Emscripten's embind, which compiles its glue
# with `new Function` (measured in Chromium: without 'unsafe-eval' every frame fails to decode).
# A worker runs under the CSP of its own script's response, so only that script gets this
# policy: app.py's, plus 'unsafe-eval' and 'wasm-unsafe-eval'. The worker has no DOM and sees
# only frame bytes posted to it; the page that starts it, and every other response, keep
# app.py's strict policy (tests/viewer/test_dicom_microscopy_viewer.py checks both).
WORKER_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
UNSORTED = "Unassigned"
# Our longest static path is far shorter; longer names are 404 before the file system sees
# them (which would raise ENAMETOOLONG).
MAX_STATIC_NAME = 200
MEMORY_MAX = 1 << 20  # static files kept in memory: ours and OpenSeadragon, not the codecs

_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
}
PAGE_HEADERS = {"Cache-Control": "no-cache"}
# The viewer page carries its slide's facts: the caller's metadata, as /api/slides/ID's.
VIEWER_PAGE_HEADERS = {"Cache-Control": "private, no-cache"}
SLIDE_DATA_ID = "slide-data"


def vendor_dir(vendor: Vendor) -> Path | None:
    """Where ``vendor``'s served directory is: its override variable's value if set, else under
    the checkout this package runs from, else under the working directory; None if absent."""
    override = os.environ.get(vendor.override) if vendor.override else None
    if override:
        candidates = [Path(override)]
    else:
        checkout = Path(__file__).resolve().parents[3]
        candidates = [checkout / vendor.directory, Path.cwd() / vendor.directory]
    for candidate in candidates:
        if (candidate / vendor.marker).is_file():
            return candidate.resolve()
    return None


def openseadragon_dir() -> Path | None:
    """Where the OpenSeadragon build is ($TILESERVER_OPENSEADRAGON or node_modules), or None."""
    return vendor_dir(OPENSEADRAGON)


def _file_under(base: Path, relative: str) -> Path | None:
    """``base/relative`` if it is a regular file inside ``base`` (no traversal), else None."""
    if not relative or len(relative) > MAX_STATIC_NAME:
        return None
    if "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    if any(part in ("", ".", "..") for part in relative.split("/")):
        return None
    try:
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
    except OSError:  # a name the file system refuses (too long, ...) names no file of ours
        return None
    return path


def _typed(response: web.StreamResponse, path: Path) -> None:
    content_type = _TYPES.get(path.suffix.lower(), "application/octet-stream")
    response.content_type = content_type
    if content_type.startswith("text/") or content_type.endswith(("json", "xml")):
        response.charset = "utf-8"


def _file_response(path: Path, headers: dict[str, str] | None = None) -> web.FileResponse:
    response = web.FileResponse(path, headers={**PAGE_HEADERS, **(headers or {})})
    _typed(response, path)
    return response


@dataclass(frozen=True)
class _Kept:
    stamp: tuple[int, int]  # the file's (mtime_ns, size) when it was read
    body: bytes


class StaticFiles:
    """Static files of up to ``MEMORY_MAX`` bytes served from memory once read, revalidated
    as FileResponse does (ETag, Last-Modified; ``no-cache``). A viewer page asks for a dozen
    (OpenSeadragon is 350 kB); FileResponse reads each through the default executor in chunks
    (no sendfile under TLS), where under load they queued behind tile and database reads
    (200 ms for a 20 kB script, benchmarks/bench_viewer.py's trace). A changed file (another
    mtime or size) is read again; larger ones (the DICOM viewer's codecs) stream from disk."""

    def __init__(self) -> None:
        self._kept: dict[Path, _Kept] = {}

    async def response(
        self, request: web.Request, path: Path, headers: dict[str, str]
    ) -> web.StreamResponse:
        try:
            found = path.stat()
        except OSError:  # gone since it was looked up
            raise web.HTTPNotFound(reason="not found") from None
        if found.st_size > MEMORY_MAX:
            return _file_response(path, headers)
        stamp = (found.st_mtime_ns, found.st_size)
        kept = self._kept.get(path)
        if kept is None or kept.stamp != stamp:
            body = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
            kept = self._kept[path] = _Kept(stamp, body)
        etag = f"{stamp[0]:x}-{stamp[1]:x}"
        fresh = any(tag.value == etag for tag in request.if_none_match or ())
        if request.if_none_match is None and request.if_modified_since is not None:
            fresh = int(found.st_mtime) <= request.if_modified_since.timestamp()
        response = web.Response(
            status=304 if fresh else 200,
            body=None if fresh else kept.body,
            headers={**PAGE_HEADERS, **headers},
        )
        response.etag = etag
        response.last_modified = found.st_mtime
        if not fresh:
            _typed(response, path)
        return response


def routes() -> list[web.RouteDef]:
    found = {name: vendor_dir(vendor) for name, vendor in VENDORS.items()}
    if found[OPENSEADRAGON.name] is None:
        logger.warning("%s; the slide viewer will not work", OSD_MISSING)
    static_root = STATIC.resolve()
    viewer_page = split_viewer_page((static_root / "viewer.html").read_text())
    static_files = StaticFiles()

    def vendor_file(relative: str) -> tuple[Path | None, dict[str, str]]:
        """The file ``vendor/<package>/<path>`` names, and the headers it is served with."""
        name, _, rest = relative[len(VENDOR_PREFIX) :].partition("/")
        vendor = VENDORS.get(name)
        if vendor is None:
            return None, {}
        directory = found[name] or vendor_dir(vendor)  # installed after the server started
        if directory is None:
            raise web.HTTPNotFound(reason=vendor.missing)
        headers = {"Content-Security-Policy": WORKER_CSP} if rest in vendor.workers else {}
        return _file_under(directory, rest), headers

    def page(name: str) -> web.FileResponse:
        return _file_response(static_root / name)

    async def login(request: web.Request) -> web.StreamResponse:
        return page("login.html")

    async def worklist(request: web.Request) -> web.StreamResponse:
        return page("worklist.html")

    async def view(request: web.Request) -> web.StreamResponse:
        """viewer.html, and at its end the slide's facts and DZI descriptor (when the caller may
        read them), so the viewer opens the slide without a round trip first. The page is sent
        at once and the facts follow: the browser fetches the scripts meanwhile, and deferred
        scripts run only once the whole page is in."""
        from tileserver.server.app import SERVICE  # late: app imports this module

        head, tail = viewer_page
        response = web.StreamResponse(headers=VIEWER_PAGE_HEADERS)
        response.content_type = "text/html"
        response.charset = "utf-8"
        await response.prepare(request)
        await response.write(head.encode())
        data = await _slide_data(request, request.app[SERVICE], request.match_info["slide_id"])
        await response.write((slide_data_block(data) + tail).encode())
        await response.write_eof()
        return response

    async def static(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        headers: dict[str, str] = {}
        if relative.startswith(VENDOR_PREFIX):
            path, headers = vendor_file(relative)
        else:
            path = _file_under(static_root, relative)
        if path is None:
            raise web.HTTPNotFound(reason="not found")
        return await static_files.response(request, path, headers)

    async def cases(request: web.Request) -> web.Response:
        """The caller's worklist order: cases (collections), each with its slide IDs in
        reading order (block, stain, scan date, ID) and those labels.

        Slides metadata comes from ``/api/slides``; this adds only the grouping, which the
        worklist and the viewer's next/previous and case strip share: one order for all."""
        from tileserver.server.app import SERVICE  # late: app imports this module

        # Slide IDs and case names are metadata: the same scope /api/slides asks for.
        if "metadata" not in principal_of(request).scopes:
            raise web.HTTPForbidden(reason="this token may not list slides")
        accounts = request.app[SECURITY].accounts
        visible = await visible_slides(request)
        library = request.app[SERVICE].library

        def group() -> dict[str, Any]:  # database reads: off the event loop
            ids = [s for s in library.slide_ids() if visible is None or s in visible]
            return _cases(accounts, ids)

        grouped = await asyncio.get_running_loop().run_in_executor(None, group)
        return web.json_response(grouped, headers={"Cache-Control": "private, no-store"})

    async def view_case(request: web.Request) -> web.StreamResponse:
        """``/view?case=CASE-ID`` (an LIS's link): to the case's first slide in the viewer,
        whose strip shows the rest of the case. A case the caller is not granted is the same
        404 as one that does not exist."""
        from tileserver.server.app import SERVICE  # late: app imports this module

        case = request.query.get("case")
        if case is None:
            raise BadRequest("/view needs ?case=CASE-ID (a slide opens at /view/SLIDE-ID)")
        if "metadata" not in principal_of(request).scopes:
            raise web.HTTPForbidden(reason="this token may not list slides")
        accounts = request.app[SECURITY].accounts
        visible = await visible_slides(request)
        library = request.app[SERVICE].library

        def first() -> tuple[str | None, str | None]:
            """(the first slide the caller may see, else one it may not) of the case."""
            if accounts is None:  # --no-auth: no cases
                return None, None
            store = LabelStore(accounts.db)
            every = library.slide_ids()
            members = [s for s, c in store.cases(every).items() if c == case]
            shown = [s for s in members if visible is None or s in visible]
            if not shown:
                return None, min(members, default=None)
            labels = store.of(shown)
            return min(shown, key=lambda s: order_key(s, labels[s])), None

        slide_id, hidden = await asyncio.get_running_loop().run_in_executor(None, first)
        if slide_id is None:
            if hidden is not None:  # a case not granted: refused (and audited) as its slide is
                with contextlib.suppress(SlideNotFound):
                    authorize(request, hidden, "metadata")
            raise SlideNotFound("no such case")
        raise web.HTTPSeeOther(f"/view/{slide_id}")

    return [
        web.get("/login", login),
        web.get("/", worklist),
        web.get(f"/view/{SLIDE}", view),
        web.get("/view", view_case),
        web.get("/viewer/cases", cases),
        web.get("/static/{path:.+}", static),
    ]


async def _slide_data(
    request: web.Request, service: SlideService, slide_id: str
) -> dict[str, Any] | None:
    """``{"info": /api/slides/ID's body, "dzi": the descriptor}``, or None if the caller may not
    read them or the slide cannot be opened: the page then asks the API, which says why (and
    audits a refusal) as before."""
    try:
        info = await slide_document(request, service, slide_id)
        authorize(request, slide_id, "tiles")
        dzi = await service.dzi(slide_id, format_param(None))  # as /deepzoom/ID.dzi
    except (TileserverError, web.HTTPException):
        return None
    return {"info": info, "dzi": dzi}


def split_viewer_page(html: str) -> tuple[str, str]:
    """The viewer page before its closing ``</body>`` and from there on."""
    at = html.rfind("</body>")
    return (html, "") if at < 0 else (html[:at], html[at:])


def slide_data_block(data: dict[str, Any] | None) -> str:
    """A JSON data block (``type="application/json"``: never run, so the CSP's script-src does
    not apply) that common.js's TS.slideData reads; "<" escaped, so no value can close it."""
    if data is None:
        return ""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{SLIDE_DATA_ID}">{text}</script>\n'


def _cases(accounts: Accounts | None, ids: list[str]) -> dict[str, Any]:
    """``/viewer/cases``'s body for these slides: cases by name, each case's slides in
    reading order with their labels (blocking database reads)."""
    store = None if accounts is None else LabelStore(accounts.db)
    cases = dict.fromkeys(ids) if store is None else store.cases(ids)
    labels = dict.fromkeys(ids, NONE) if store is None else store.of(ids)
    grouped: dict[str, list[str]] = {}
    for slide_id in ids:
        grouped.setdefault(cases[slide_id] or UNSORTED, []).append(slide_id)
    body = []
    for name in sorted(grouped):
        members = sorted(grouped[name], key=lambda s: order_key(s, labels[s]))
        body.append(
            {"name": name, "slides": members, "labels": {s: labels[s].as_json() for s in members}}
        )
    return {"cases": body}
