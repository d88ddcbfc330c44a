"""The browser viewer: login page, worklist, slide viewer, and the static files they use.

Pages are static HTML, CSS and JavaScript in ``tileserver/server/static`` (the server's CSP
forbids inline scripts and styles); they fetch everything else from the JSON API with the
session cookie. ``/login`` and ``/static/`` are public (no patient data); ``/`` and
``/view/{id}`` go through the auth middleware like every other route, so a browser without a
session is sent to ``/login?next=...`` and back.

OpenSeadragon is not part of the repository: ``scripts/setup-browser.sh`` installs it from the
npm registry (pinned by ``package-lock.json``) into ``node_modules``, and it is served from
there under ``/static/vendor/openseadragon/``. Without it the viewer says how to install it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from tileserver.server.auth import SECURITY, principal_of, visible_slides

logger = logging.getLogger(__name__)

SLIDE = "{slide_id:[0-9a-f]{32}}"
STATIC = Path(__file__).resolve().parent.parent / "static"
VENDOR_PREFIX = "vendor/openseadragon/"
OSD_SUBDIR = Path("node_modules", "openseadragon", "build", "openseadragon")
OSD_MISSING = (
    "OpenSeadragon is not installed: run scripts/setup-browser.sh (npm ci) in the tileserver "
    "checkout, or set TILESERVER_OPENSEADRAGON to its build/openseadragon directory"
)
UNSORTED = "Unassigned"
# Our longest static path is far shorter; longer names are 404 before the file system sees
# them (which would raise ENAMETOOLONG).
MAX_STATIC_NAME = 200

_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
PAGE_HEADERS = {"Cache-Control": "no-cache"}


def openseadragon_dir() -> Path | None:
    """Where the OpenSeadragon build is: $TILESERVER_OPENSEADRAGON if set, else ``node_modules``
    in the checkout this package runs from, else in the working directory; None if absent."""
    override = os.environ.get("TILESERVER_OPENSEADRAGON")
    if override:
        candidates = [Path(override)]
    else:
        candidates = [Path(__file__).resolve().parents[3] / OSD_SUBDIR, Path.cwd() / OSD_SUBDIR]
    for candidate in candidates:
        if (candidate / "openseadragon.min.js").is_file():
            return candidate.resolve()
    return None


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


def _file_response(path: Path, headers: dict[str, str] | None = None) -> web.FileResponse:
    content_type = _TYPES.get(path.suffix.lower(), "application/octet-stream")
    response = web.FileResponse(path, headers={**PAGE_HEADERS, **(headers or {})})
    response.content_type = content_type
    if content_type.startswith("text/") or content_type.endswith(("json", "xml")):
        response.charset = "utf-8"
    return response


def routes() -> list[web.RouteDef]:
    osd = openseadragon_dir()
    if osd is None:
        logger.warning("%s; the slide viewer will not work", OSD_MISSING)
    static_root = STATIC.resolve()

    def page(name: str) -> web.FileResponse:
        return _file_response(static_root / name)

    async def login(request: web.Request) -> web.StreamResponse:
        return page("login.html")

    async def worklist(request: web.Request) -> web.StreamResponse:
        return page("worklist.html")

    async def view(request: web.Request) -> web.StreamResponse:
        return page("viewer.html")

    async def static(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        if relative.startswith(VENDOR_PREFIX):
            vendor = osd or openseadragon_dir()  # installed after the server started
            if vendor is None:
                raise web.HTTPNotFound(reason=OSD_MISSING)
            path = _file_under(vendor, relative[len(VENDOR_PREFIX) :])
        else:
            path = _file_under(static_root, relative)
        if path is None:
            raise web.HTTPNotFound(reason="not found")
        return _file_response(path)

    async def cases(request: web.Request) -> web.Response:
        """The caller's worklist order: cases (collections) and their slide IDs.

        Slides metadata comes from ``/api/slides``; this adds only the grouping, which the
        worklist and the viewer's next/previous share so both show the same order."""
        from tileserver.server.app import SERVICE  # late: app imports this module

        # Slide IDs and case names are metadata: the same scope /api/slides asks for.
        if "metadata" not in principal_of(request).scopes:
            raise web.HTTPForbidden(reason="this token may not list slides")
        accounts = request.app[SECURITY].accounts
        visible = await visible_slides(request)
        library = request.app[SERVICE].library

        def group() -> dict[str, list[str]]:  # a database read per slide: off the event loop
            grouped: dict[str, list[str]] = {}
            for slide_id in library.slide_ids():
                if visible is not None and slide_id not in visible:
                    continue
                collection = (accounts.collection_of(slide_id) if accounts else None) or UNSORTED
                grouped.setdefault(collection, []).append(slide_id)
            return grouped

        grouped = await asyncio.get_running_loop().run_in_executor(None, group)
        return web.json_response(
            {"cases": [{"name": name, "slides": grouped[name]} for name in sorted(grouped)]},
            headers={"Cache-Control": "private, no-store"},
        )

    return [
        web.get("/login", login),
        web.get("/", worklist),
        web.get(f"/view/{SLIDE}", view),
        web.get("/viewer/cases", cases),
        web.get("/static/{path:.+}", static),
    ]
