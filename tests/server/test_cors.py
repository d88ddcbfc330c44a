"""CORS on /iiif/ and /dicomweb/ (issue 16), on the real HTTPS server with authentication:
another site's page may read what a bearer token or a signed URL opens, never what rides a
session cookie; nothing outside those prefixes answers another origin.

The last test is the browser's view: a page served by a second HTTPS server of the test's own
on another loopback port (another origin, the same site, so Chromium does send the
SameSite=Strict session cookie) drives a stock OpenSeadragon and fetch() against our IIIF.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cli import cli
from tests.server.conftest import Response, Server, Stores, run_server
from tests.server.test_security import PASSWORD_A, enrol, last_line_token
from tests.viewer.conftest import CHROMIUM, CHROMIUM_ARGS, SETUP_HINT, image_stats
from tileserver.security.tls import ensure_certificate, server_context
from tileserver.server.routes.viewer import openseadragon_dir

ELSEWHERE = "https://viewer.elsewhere.example"


@dataclass
class Site:
    server: Server
    home: Path
    stores: Path
    slide: str
    bearer: str  # a token with the tiles scope on the slide's collection
    cookie: str  # "name=value" of a logged-in person granted the slide
    signed: str  # the query of a signed tiles link to the slide

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.server.get(path, headers)

    def info(self) -> str:
        return f"/iiif/3/{self.slide}/info.json"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, stores: Stores) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("cors") / "home"
    shutil.copytree(stores.home, home, ignore=shutil.ignore_patterns("auth.db*", "audit"))
    slide = stores.synthetic
    assert cli(home, "slides", "assign", "case-a", slide).returncode == 0
    made = cli(home, "tokens", "create", "lis", "--scope", "tiles", "--collection", "case-a")
    assert made.returncode == 0, made.stderr
    bearer = made.stdout.strip().splitlines()[-1]
    with run_server(stores.directory, home, secure=True) as server:
        boot = cli(home, "users", "bootstrap", "--url", server.base)
        assert boot.returncode == 0, boot.stderr
        person = enrol(server, last_line_token(boot.stdout, "setup"), "alice", PASSWORD_A)
        assert cli(home, "users", "grant", "alice", "case-a").returncode == 0
        shared = server.request(
            "POST", f"/api/slides/{slide}/share?minutes=15", {"Cookie": person.cookie}
        )
        assert shared.status == 200, shared.body
        yield Site(
            server,
            home,
            stores.directory,
            slide,
            bearer,
            person.cookie,
            str(shared.json()["query"]),
        )


def cors_headers_of(reply: Response) -> None:
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in reply.headers
    exposed = {h.strip().lower() for h in reply.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "link", "content-type", "retry-after"} <= exposed
    assert reply.headers["cross-origin-resource-policy"] == "cross-origin"
    vary = {h.strip().lower() for h in reply.headers["vary"].split(",")}
    assert {"origin", "sec-fetch-site"} <= vary


def test_preflight_is_answered_without_credentials(site: Site) -> None:
    for path in [
        site.info(),
        f"/iiif/3/{site.slide}/0,0,240,240/240,/0/default.jpg",
        f"/iiif/3/{'0' * 32}/info.json",  # the same answer for a slide that is not there
        "/dicomweb/studies",
        "/dicomweb/studies/1.2.3/series/4.5/instances/6.7/frames/1",
    ]:
        reply = site.server.request(
            "OPTIONS",
            path,
            {
                "Origin": ELSEWHERE,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,if-none-match",
            },
        )
        assert reply.status == 204, (path, reply.body)
        assert reply.body == b""
        cors_headers_of(reply)
        methods = {m.strip() for m in reply.headers["access-control-allow-methods"].split(",")}
        assert methods == {"GET", "HEAD", "OPTIONS"}
        allowed = {
            h.strip().lower() for h in reply.headers["access-control-allow-headers"].split(",")
        }
        assert {"authorization", "accept", "if-none-match", "range"} <= allowed
        assert int(reply.headers["access-control-max-age"]) > 0
    # The real requests that follow carry CORS whatever the answer (here: no credentials).
    for path in [site.info(), "/dicomweb/studies"]:
        reply = site.get(path, {"Origin": ELSEWHERE})
        assert reply.status == 401, (path, reply.status)
        cors_headers_of(reply)


def test_a_cross_origin_bearer_token_or_signed_url_is_served(site: Site) -> None:
    origin = {"Origin": ELSEWHERE, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    tile = f"/iiif/3/{site.slide}/0,0,240,240/240,240/0/default.jpg"
    for path in (site.info(), tile):
        reply = site.get(path, {**origin, "Authorization": f"Bearer {site.bearer}"})
        assert reply.status == 200, (path, reply.body)
        cors_headers_of(reply)
        signed = site.get(f"{path}?{site.signed}", origin)
        assert signed.status == 200, (path, signed.body)
        cors_headers_of(signed)
    # A token alongside a cookie: the token is what counts.
    both = {**origin, "Authorization": f"Bearer {site.bearer}", "Cookie": site.cookie}
    assert site.get(site.info(), both).status == 200


def test_a_session_cookie_from_another_origin_is_ignored(site: Site) -> None:
    own = site.server.base
    cookie = {"Cookie": site.cookie}
    # The cookie is good: without Origin, and from our own origin, it opens the slide.
    assert site.get(site.info(), cookie).status == 200
    assert site.get(
        site.info(), {**cookie, "Origin": own, "Sec-Fetch-Site": "same-origin"}
    ).status == (200)
    assert site.get(site.info(), {**cookie, "Origin": own.replace("https", "HTTPS")}).status == 200
    refused = [
        {"Origin": ELSEWHERE},
        {"Origin": "null"},  # a sandboxed frame, a file, a cross-origin redirect
        {"Origin": own.replace("https://", "http://")},  # another scheme
        {"Origin": own.rsplit(":", 1)[0] + ":1"},  # another port: another origin, same site
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"},  # <img> on a sibling
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Origin": own, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
    ]
    for extra in refused:
        for path in (site.info(), f"/iiif/3/{site.slide}/full/240,/0/default.jpg"):
            reply = site.get(path, {**cookie, **extra})
            assert reply.status == 401, (extra, path, reply.status)
            cors_headers_of(reply)  # errors carry CORS too, so a client can read why
    # Opening the image itself from a link elsewhere is the person's own navigation.
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert site.get(site.info(), {**cookie, **navigate}).status == 200
    # Outside the CORS prefixes nothing changes: the cookie opens the API whatever the Origin
    # (a page elsewhere cannot read the answer: no ACAO, CORP same-origin).
    assert site.get("/api/slides", {**cookie, "Origin": ELSEWHERE}).status == 200


def test_own_origin_is_the_host_the_browser_addressed_or_the_public_url(site: Site) -> None:
    # Behind a TLS-terminating proxy the request's scheme and Host are the proxy's; the
    # browser's origin is --public-url.
    public = "https://tiles.hospital.example"
    cookie = {"Cookie": site.cookie}
    with run_server(site.stores, site.home, "--public-url", public, secure=True) as other:
        host = other.base
        for origin, status in [
            (public, 200),
            (f"{public}:443", 200),  # the default port, spelt out
            ("https://TILES.hospital.example", 200),
            (host, 200),  # the address itself still is our origin
            ("http://tiles.hospital.example", 401),
            ("https://tiles.hospital.example:8443", 401),
            ("https://tiles.hospital.example.evil.example", 401),
            (ELSEWHERE, 401),
        ]:
            reply = other.get(f"/iiif/3/{site.slide}/info.json", {**cookie, "Origin": origin})
            assert reply.status == status, (origin, reply.body)
            assert reply.headers["access-control-allow-origin"] == "*"


def test_other_paths_get_no_cors(site: Site) -> None:
    cookie = {"Cookie": site.cookie, "Origin": ELSEWHERE}
    for path in ["/api/slides", f"/api/slides/{site.slide}", "/", "/health", "/login"]:
        reply = site.get(path, cookie)
        assert "access-control-allow-origin" not in reply.headers, path
        assert reply.headers["cross-origin-resource-policy"] == "same-origin", path
    # OPTIONS is nothing special there: not a 204 with CORS headers, and it needs a login.
    options = site.server.request(
        "OPTIONS", "/api/slides", {"Origin": ELSEWHERE, "Access-Control-Request-Method": "GET"}
    )
    assert options.status != 204 and "access-control-allow-origin" not in options.headers
    # Only the prefixes themselves, not look-alikes.
    for path in ["/iiifx/3/info.json", "/dicomwebx/studies", "/api/iiif/"]:
        reply = site.server.request("OPTIONS", path, {"Origin": ELSEWHERE})
        assert reply.status != 204 and "access-control-allow-origin" not in reply.headers, path


# The browser -------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>elsewhere</title>
<script src="/osd/openseadragon.min.js"></script></head>
<body><div id="osd" style="width:800px;height:600px"></div></body></html>
"""


@contextlib.contextmanager
def elsewhere(home: Path) -> Iterator[str]:
    """Another origin: an HTTPS server on another loopback port serving one page and the
    OpenSeadragon build (its own copy, as a site elsewhere would)."""
    osd = openseadragon_dir()
    if osd is None:
        pytest.fail(f"OpenSeadragon is not installed: {SETUP_HINT}")
    cert, key, _ = ensure_certificate(home, ["127.0.0.1"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            body, kind = None, "text/html"
            if path == "/":
                body = PAGE.encode()
            elif path.startswith("/osd/"):
                target = (osd / path[5:]).resolve()
                if target.is_relative_to(osd) and target.is_file():
                    body, kind = target.read_bytes(), "text/javascript"
                    if target.suffix == ".png":
                        kind = "image/png"
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_context(cert, key).wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


class Network:
    """What Chromium itself sent to and got from ``origin`` (DevTools protocol): unlike
    Playwright's events, this shows a response the CORS check then hid from the page, and
    the cookies the browser attached."""

    def __init__(self, cdp: Any, origin: str) -> None:
        self.origin = origin
        self.requests: dict[str, dict[str, Any]] = {}
        cdp.on("Network.requestWillBeSent", self._sent)
        cdp.on("Network.requestWillBeSentExtraInfo", self._headers)
        cdp.on("Network.responseReceivedExtraInfo", self._status)
        cdp.send("Network.enable")

    def _entry(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.requests.setdefault(event["requestId"], {})

    def _sent(self, event: dict[str, Any]) -> None:
        request = event["request"]
        self._entry(event).update(url=request["url"], method=request["method"])

    def _headers(self, event: dict[str, Any]) -> None:
        names = {name.lower() for name in event["headers"]}
        self._entry(event).update(cookie="cookie" in names, token="authorization" in names)

    def _status(self, event: dict[str, Any]) -> None:
        self._entry(event)["status"] = event["statusCode"]

    def seen(self) -> list[tuple[str, str, int, bool, bool]]:
        """(method, URL, status, cookie sent?, token sent?) of each answered request to us,
        preflights aside, in the order they were made."""
        return [
            (r["method"], r["url"], r["status"], r["cookie"], r["token"])
            for r in self.requests.values()
            if r.get("url", "").startswith(self.origin)
            and r.get("method") != "OPTIONS"
            and "status" in r
            and "cookie" in r
        ]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: {SETUP_HINT}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_a_page_elsewhere_reads_iiif_with_a_token_or_link_but_not_with_the_session(
    site: Site, chromium: Any, tmp_path: Path
) -> None:
    ours = site.server.base
    info = f"{ours}{site.info()}"
    tile = f"{ours}/iiif/3/{site.slide}/0,0,240,240/240,240/0/default.jpg"
    with elsewhere(tmp_path / "elsewhere") as page_origin:
        context = chromium.new_context(
            ignore_https_errors=True, viewport={"width": 900, "height": 700}
        )
        try:
            # The person is logged in to us in this browser: the cookie is there to be abused.
            name, value = site.cookie.split("=", 1)
            context.add_cookies(
                [
                    {
                        "name": name,
                        "value": value,
                        "url": ours,
                        "secure": True,
                        "httpOnly": True,
                        "sameSite": "Strict",
                    }
                ]
            )
            page = context.new_page()
            network = Network(context.new_cdp_session(page), ours)
            page.goto(f"{page_origin}/")

            # 1. Stock OpenSeadragon with a bearer token: info.json and tiles over CORS.
            page.evaluate(
                """([info, token]) => {
                    window.tiles = 0;
                    const viewer = OpenSeadragon({
                        id: "osd", tileSources: info, drawer: "canvas", prefixUrl: "/osd/images/",
                        loadTilesWithAjax: true,
                        ajaxHeaders: {Authorization: "Bearer " + token},
                    });
                    viewer.addHandler("open", () => { window.opened = true; });
                    viewer.addHandler("open-failed", () => { window.opened = "failed"; });
                    viewer.addHandler("tile-loaded", () => { window.tiles += 1; });
                }""",
                [info, site.bearer],
            )
            page.wait_for_function("window.opened !== undefined", timeout=20_000)
            assert page.evaluate("window.opened") is True
            page.wait_for_function("window.tiles >= 4", timeout=20_000)
            page.wait_for_timeout(500)
            mean, std = image_stats(page.locator("#osd").screenshot())
            assert std > 20 and mean < 235, (mean, std)
            # A token is not a safelisted header: each request was preflighted, and each went
            # with the token and without the cookie (fetch's default for another origin).
            preflights = [
                r["status"]
                for r in network.requests.values()
                if r.get("method") == "OPTIONS" and r.get("url", "").startswith(ours)
            ]
            assert preflights and set(preflights) == {204}, preflights
            seen = network.seen()
            assert seen and all(s == 200 and not c and a for _, _, s, c, a in seen), seen

            # 2. fetch() with a signed link, no credentials.
            fetched = page.evaluate(
                """async ([info, tile, query]) => {
                    const doc = await (await fetch(info + "?" + query)).json();
                    const image = await fetch(tile + "?" + query);
                    return [doc.id, image.status, image.headers.get("content-type"),
                            image.headers.get("link"), (await image.blob()).size];
                }""",
                [info, tile, site.signed],
            )
            assert fetched[0] == f"{ours}/iiif/3/{site.slide}"
            assert fetched[1:4] == [
                200,
                "image/jpeg",
                '<http://iiif.io/api/image/3/level2.json>;rel="profile"',
            ]
            assert fetched[4] > 1000

            # 3. The session cookie, sent along by the browser, opens nothing from here.
            mark = len(network.seen())
            failed = page.evaluate(
                """async (info) => {
                    try { await fetch(info, {credentials: "include"}); return "read"; }
                    catch (e) { return "refused"; }
                }""",
                info,
            )
            assert failed == "refused"
            # Chromium sent the cookie (same site) and we refused: not the browser's doing.
            refused = network.seen()[mark:]
            assert refused == [("GET", info, 401, True, False)], refused
            loaded = page.evaluate(
                """(tile) => new Promise((done) => {
                    const img = new Image();
                    img.onload = () => done(img.naturalWidth);
                    img.onerror = () => done(0);
                    img.src = tile;
                    document.body.append(img);
                })""",
                tile,
            )
            assert loaded == 0  # <img> sends no Origin: Sec-Fetch-Site gives it away
            refused = network.seen()[mark + 1 :]
            assert refused == [("GET", tile, 401, True, False)], refused

            # The same cookie on our own origin does open it: the refusal above is the origin's.
            own = context.new_page()
            own.goto(f"{ours}/health")
            status = own.evaluate(
                "async (info) => (await fetch(info, {credentials: 'include'})).status", info
            )
            assert status == 200
        finally:
            context.close()
