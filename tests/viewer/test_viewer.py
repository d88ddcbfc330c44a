"""Pathologists' journeys in a real browser (headless Chromium) against the real HTTPS server:
enrolment and login with password + TOTP, worklist, viewer (tiles, zoom, pan, scale bar,
ruler, presets, next/previous, label permission), per-collection denial, session expiry, and
stock OpenSeadragon on our DZI and IIIF endpoints."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.server.conftest import run_server
from tests.viewer.conftest import (
    ARTIFACTS,
    VIEWPORT,
    Site,
    _cli,
    enrol_over_http,
    image_stats,
    poll,
    secret_of,
)

MPP = 0.25  # the synthetic slide's pixel size, µm
WIDTH, HEIGHT = 3000, 2000
TILE = re.compile(r"/deepzoom/[0-9a-f]{32}_files/\d+/\d+_\d+\.\w+$")


class Traffic:
    """Tile responses and failures, console errors and page errors seen by one page."""

    def __init__(self, page: Any) -> None:
        self.tiles: list[tuple[int, str]] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _response(self, response: Any) -> None:
        if TILE.search(response.url.split("?")[0]):
            self.tiles.append((response.status, response.url))

    def _failed(self, request: Any) -> None:
        # The viewer cancels requests for tiles the view no longer needs (net::ERR_ABORTED).
        if "ERR_ABORTED" not in (request.failure or ""):
            self.failed.append(request.url)

    def assert_tiles_ok(self) -> None:
        assert self.tiles, "no tile was requested"
        bad = [(s, u) for s, u in self.tiles if s not in (200, 304)]
        assert not bad, f"tiles failed: {bad[:5]}"
        assert not [u for u in self.failed if TILE.search(u)], self.failed


def next_of(url: str) -> str:
    """The ``next`` parameter of a login-page URL."""
    parts = urlsplit(url)
    assert parts.path == "/login", url
    return parse_qs(parts.query)["next"][0]


def wait_loaded(page: Any) -> None:
    page.wait_for_selector("body[data-open=true]")
    page.wait_for_selector("body[data-fully-loaded=true]", state="attached")
    page.wait_for_timeout(150)


def settle(page: Any) -> None:
    """Until the animation ends and every tile the view needs is in."""
    page.wait_for_timeout(700)
    page.wait_for_selector("body[data-fully-loaded=true]", state="attached")


@pytest.fixture(scope="module")
def alice(viewer_site: Site, browser: Any) -> Iterator[dict[str, Any]]:
    """Alice enrols through the one-time set-up link in the browser; her session is kept."""
    site = viewer_site
    context = browser.new_context(
        base_url=site.server.base, ignore_https_errors=True, viewport=VIEWPORT
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    traffic = Traffic(page)
    page.goto(f"/login?setup={site.alice_setup}")
    page.fill("#enrol-username", "alice")
    page.fill("#enrol-password", site.alice.password)
    page.fill("#enrol-password2", site.alice.password)
    page.click("#enrol-submit")
    page.wait_for_selector("#confirm-form:not(.hidden), #login-message.error")
    assert page.is_visible("#confirm-form"), page.text_content("#login-message")
    qr_loaded = page.eval_on_selector("#enrol-qr", "img => img.complete && img.naturalWidth > 0")
    shown_secret = page.text_content("#enrol-secret") or ""
    uri_secret = page.get_attribute("#enrol-secret", "data-secret") or ""
    site.alice.secret = secret_of(f"otpauth://totp/x?secret={uri_secret}")
    page.fill("#confirm-code", site.alice.fresh_code())
    page.click("#confirm-submit")
    page.wait_for_url(re.compile(r"/$"))
    _cli(site.home, "users", "grant", "alice", "case-a", "--labels")
    enrol_over_http(site, site.bob, "case-b")
    site.alice.storage = context.storage_state()
    yield {
        "qr_loaded": qr_loaded,
        "shown_secret": shown_secret.replace(" ", ""),
        "uri_secret": uri_secret,
        "errors": traffic.errors,
    }
    context.close()


def test_setup_link_enrols_with_qr_and_secret(alice: dict[str, Any]) -> None:
    assert alice["qr_loaded"], "the QR code (SVG) did not render"
    assert alice["shown_secret"] == alice["uri_secret"] and len(alice["uri_secret"]) >= 16
    assert not alice["errors"], alice["errors"]


def test_pages_need_a_session(new_context: Any, viewer_site: Site) -> None:
    page = new_context().new_page()
    page.goto("/")
    assert next_of(page.url) == "/"
    page.goto(f"/view/{viewer_site.a1}")
    assert next_of(page.url) == f"/view/{viewer_site.a1}"
    assert page.is_visible("#login-form") and page.is_hidden("#enrol-form")
    # Static files are public but hold no patient data; the API still says 401.
    assert page.request.get(f"/api/slides/{viewer_site.a1}").status == 401
    assert page.request.get("/viewer/cases").status == 401


def test_worklist_cases_thumbnails_search(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    traffic = Traffic(page)
    page.goto("/")
    page.wait_for_selector(".slide-card")
    assert page.text_content("#user-name") == "alice"
    cases = page.eval_on_selector_all(".case", "nodes => nodes.map(n => n.dataset.case)")
    assert cases == ["case-a"], "alice must see her case only"
    ids = page.eval_on_selector_all(".slide-card", "nodes => nodes.map(n => n.dataset.id)")
    assert sorted(ids) == sorted([site.a1, site.a2])
    poll(
        page,
        "[...document.querySelectorAll('.slide-card img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
    )
    assert "0.250 µm/px" in (page.text_content(".slide-card .slide-facts") or "")
    page.fill("#search", site.a2[:10])
    visible = page.eval_on_selector_all(
        ".slide-card:not(.hidden)", "nodes => nodes.map(n => n.dataset.id)"
    )
    assert visible == [site.a2]
    page.fill("#search", "no-such-case")
    assert page.is_visible("#worklist-status")
    page.fill("#search", "case-a")
    page.press("#search", "Enter")
    page.wait_for_url(re.compile(r"/view/[0-9a-f]{32}$"))
    assert page.url.endswith(f"/view/{ids[0]}")
    assert not traffic.errors, traffic.errors


def test_viewer_tiles_zoom_pan_scalebar_ruler(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    traffic = Traffic(page)
    page.goto(f"/view/{site.a1}")
    wait_loaded(page)
    box = page.locator("#osd").bounding_box()
    assert box is not None

    # Whole slide: the scale bar matches the mpp at the fitted zoom.
    home_zoom = min(box["width"] / WIDTH, box["height"] / HEIGHT)
    scale = page.eval_on_selector("#scalebar", "e => ({...e.dataset})")
    assert float(scale["umPerPx"]) == pytest.approx(MPP / home_zoom, rel=0.02)
    bar_px = page.locator("#scalebar-bar").bounding_box()["width"]  # type: ignore[index]
    label = page.text_content("#scalebar-label") or ""
    value, unit = re.fullmatch(r"([\d.]+) (µm|mm)", label).groups()  # type: ignore[union-attr]
    label_um = float(value) * (1000 if unit == "mm" else 1)
    assert 40 <= bar_px <= 165
    assert label_um / bar_px == pytest.approx(MPP / home_zoom, rel=0.03)

    # Viewer screenshot is a slide, not a blank canvas.
    shot = page.locator("#osd").screenshot()
    mean, std = image_stats(shot)
    assert std > 20 and mean < 235, (mean, std)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-home.png"))

    # Magnification presets: 40x on a 40x scan is one screen pixel per slide pixel.
    objective = 40
    page.keyboard.press("6")
    settle(page)
    magnification = float(page.get_attribute("#magnification", "data-magnification") or 0)
    assert magnification == pytest.approx(40, rel=0.01)
    scale = page.eval_on_selector("#scalebar", "e => ({...e.dataset})")
    assert float(scale["umPerPx"]) == pytest.approx(MPP, rel=0.01)
    page.keyboard.press("5")  # 20x
    settle(page)
    magnification = float(page.get_attribute("#magnification", "data-magnification") or 0)
    assert magnification == pytest.approx(20, rel=0.01)
    assert page.get_attribute(".preset[data-power='20']", "class") == "preset active"

    # Zoom and pan with keys and the mouse: every tile arrives.
    for key in ["+", "ArrowRight", "ArrowDown", "Shift+ArrowLeft", "-", "ArrowUp"]:
        page.keyboard.press(key)
        page.wait_for_timeout(120)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 250, cy - 120, steps=6)
    page.mouse.up()
    page.mouse.wheel(0, -300)
    settle(page)
    traffic.assert_tiles_ok()
    assert int(page.get_attribute("#tile-status", "data-failed") or 0) == 0
    assert len({u for _, u in traffic.tiles}) >= 20

    # Ruler: 400 screen pixels at 20x (2 slide px per screen px, 0.25 µm each) are 200 µm.
    page.keyboard.press("5")
    settle(page)
    zoom = float(page.get_attribute("#magnification", "data-magnification") or 0) / objective
    page.keyboard.press("r")
    assert page.get_attribute("#ruler-toggle", "aria-pressed") == "true"
    before = page.evaluate("location.href")
    page.mouse.move(cx - 200, cy)
    page.mouse.down()
    page.mouse.move(cx + 200, cy, steps=8)
    page.mouse.up()
    page.wait_for_timeout(100)
    measured = float(page.get_attribute("#ruler-readout", "data-um") or 0)
    assert measured == pytest.approx(400 * MPP / zoom, rel=0.02)
    assert "µm" in (page.text_content("#ruler-readout") or "") or "mm" in (
        page.text_content("#ruler-readout") or ""
    )
    assert page.evaluate("location.href") == before  # measuring did not pan
    page.screenshot(path=str(ARTIFACTS / "viewer-ruler.png"))
    page.keyboard.press("Escape")
    assert page.is_hidden("#ruler-readout")

    # Shortcuts are documented on the page.
    page.keyboard.press("?")
    assert page.is_visible("#help")
    assert "Ruler" in (page.text_content("#help") or "")

    # Alice may see labels in case-a, and this slide kept its label.
    page.wait_for_selector("#label-panel:not(.hidden)")
    assert page.eval_on_selector("#label-image", "i => i.naturalWidth > 0")
    assert not traffic.errors, traffic.errors


def test_next_and_previous_follow_the_worklist(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    traffic = Traffic(page)
    order = sorted([site.a1, site.a2])
    page.goto(f"/view/{order[0]}")
    wait_loaded(page)
    assert page.text_content("#slide-position") == "1 / 2"
    assert page.text_content("#case-name") == "case-a"
    assert page.is_disabled("#prev-slide")
    page.keyboard.press("n")
    page.wait_for_url(re.compile(f"/view/{order[1]}$"))
    wait_loaded(page)
    assert page.text_content("#slide-position") == "2 / 2"
    assert page.is_disabled("#next-slide")
    if order[1] == site.a2:  # a2 kept no label: nothing to show
        page.wait_for_timeout(300)
        assert page.is_hidden("#label-panel")
    page.click("#prev-slide")
    page.wait_for_url(re.compile(f"/view/{order[0]}$"))
    traffic.assert_tiles_ok()
    assert not traffic.errors, traffic.errors


def test_other_collections_slide_is_not_found(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    page.goto(f"/view/{site.b1}")
    page.wait_for_selector("#viewer-message:not(.hidden)")
    assert "not found" in (page.text_content("#viewer-message") or "").lower()
    assert page.request.get(f"/api/slides/{site.b1}").status == 404
    assert page.request.get(f"/deepzoom/{site.b1}.dzi").status == 404
    assert page.locator(".openseadragon-container").count() == 0


def test_login_page_returns_to_the_view_and_labels_stay_hidden(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site, bob = viewer_site, viewer_site.bob
    page = new_context().new_page()
    traffic = Traffic(page)
    page.goto(f"/view/{site.b1}")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#login-username", bob.name)
    page.fill("#login-password", "wrong password, not bob's")
    page.fill("#login-code", "000000")
    page.click("#login-submit")
    page.wait_for_selector("#login-message.error")
    page.fill("#login-password", bob.password)
    page.fill("#login-code", bob.fresh_code())
    page.click("#login-submit")
    page.wait_for_url(re.compile(f"/view/{site.b1}$"))
    wait_loaded(page)
    traffic.assert_tiles_ok()
    # b1 kept its label, but bob has no label permission: the panel never appears.
    page.wait_for_timeout(400)
    assert page.is_hidden("#label-panel")
    assert page.request.get(f"/api/slides/{site.b1}/associated/label").status == 404
    errors = [e for e in traffic.errors if "401" not in e and "404" not in e]
    assert not errors, errors


def test_session_expiry_sends_to_login_and_back(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    context = new_context(site.alice.storage)
    page = context.new_page()
    page.goto(f"/view/{site.a1}")
    wait_loaded(page)
    # The session ends elsewhere (here: logged out through the API with the same cookie).
    assert context.request.post("/auth/logout").status == 200
    assert context.request.get("/auth/me").status == 401
    page.keyboard.press("6")  # 40x: tiles the browser has never fetched
    for key in ["ArrowRight", "ArrowDown", "ArrowRight"]:
        page.keyboard.press(key)
    page.wait_for_url(re.compile(r"/login\?next="), timeout=15_000)
    assert next_of(page.url) == f"/view/{site.a1}"
    page.fill("#login-username", site.alice.name)
    page.fill("#login-password", site.alice.password)
    page.fill("#login-code", site.alice.fresh_code())
    page.click("#login-submit")
    page.wait_for_url(re.compile(f"/view/{site.a1}$"))
    wait_loaded(page)
    site.alice.storage = context.storage_state()


@pytest.mark.parametrize("protocol", ["dzi", "iiif"])
def test_stock_openseadragon_renders_our_endpoints(
    protocol: str, alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    statuses: list[int] = []
    endpoint = "/deepzoom/" if protocol == "dzi" else "/iiif/3/"
    page.on("response", lambda r: statuses.append(r.status) if endpoint in r.url else None)
    page.goto(f"/static/compat/{protocol}.html?id={site.a1}")
    poll(page, "document.body.dataset.open === 'true'")
    poll(page, "Number(document.body.dataset.tiles || 0) >= 4")
    page.wait_for_timeout(500)
    assert statuses and all(s in (200, 304) for s in statuses), statuses
    mean, std = image_stats(page.locator("#osd").screenshot())
    assert std > 20 and mean < 235, (protocol, mean, std)


def test_stock_openseadragon_opens_a_shared_link_without_a_session(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    """URL-01 end to end: the DZI URL of a share carries its query to every tile request."""
    site = viewer_site
    shared = new_context(site.alice.storage).request.post(f"/api/slides/{site.a1}/share")
    assert shared.status == 200, shared.text()
    page = new_context().new_page()  # no session, no cookies
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/deepzoom/" in r.url else None)
    page.goto(f"/static/compat/dzi.html?id={site.a1}&signed={quote(shared.json()['query'])}")
    poll(page, "document.body.dataset.open === 'true'")
    poll(page, "Number(document.body.dataset.tiles || 0) >= 4")
    page.wait_for_timeout(500)
    assert len(statuses) >= 5 and all(s == 200 for s in statuses), statuses
    mean, std = image_stats(page.locator("#osd").screenshot())
    assert std > 20 and mean < 235, (mean, std)
    assert page.context.request.get(f"/deepzoom/{site.a1}.dzi").status == 401


def test_a_signed_link_opens_every_iiif_tile_stock_openseadragon_asks_for(
    alice: dict[str, Any], new_context: Any, viewer_site: Site
) -> None:
    """A tiles link opens single IIIF tiles only (issue 14): the tiles a stock client derives
    from info.json, zoomed out and in, are all such tiles, and a full render is not."""
    site = viewer_site
    page = new_context(site.alice.storage).new_page()
    images: set[str] = set()
    page.on(
        "request",
        lambda r: (
            images.add(urlsplit(r.url).path)
            if "/iiif/3/" in r.url and not r.url.endswith("info.json")
            else None
        ),
    )
    page.goto(f"/static/compat/iiif.html?id={site.a1}")
    poll(page, "document.body.dataset.open === 'true'")
    poll(page, "Number(document.body.dataset.tiles || 0) >= 4")
    box = page.locator("#osd").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.7)
    for _ in range(8):  # down to full resolution near the bottom-right edge
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(250)
    page.wait_for_timeout(1000)
    shared = page.context.request.post(f"/api/slides/{site.a1}/share")
    assert shared.status == 200, shared.text()
    query = shared.json()["query"]
    anonymous = new_context().request
    statuses = {path: anonymous.get(f"{path}?{query}").status for path in sorted(images)}
    assert len(statuses) >= 8 and all(s == 200 for s in statuses.values()), statuses
    assert any(",240,240/" in path or "/240,240/" in path for path in statuses), statuses
    assert anonymous.get(f"/iiif/3/{site.a1}/full/max/0/default.jpg?{query}").status == 403


def test_viewer_says_when_openseadragon_is_missing(
    browser: Any, viewer_site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("TILESERVER_OPENSEADRAGON", str(tmp_path / "absent"))
    with run_server(viewer_site.server.directory, tmp_path / "home") as server:
        context = browser.new_context(base_url=server.base, viewport=VIEWPORT)
        try:
            page = context.new_page()
            started = time.monotonic()
            page.goto(f"/view/{viewer_site.a1}")
            page.wait_for_selector("#viewer-message:not(.hidden)")
            assert "not installed" in (page.text_content("#viewer-message") or "")
            assert "setup-browser.sh" in (page.text_content("#viewer-message") or "")
            reply = page.request.get("/static/vendor/openseadragon/openseadragon.min.js")
            assert reply.status == 404 and "npm ci" in reply.text()
            assert time.monotonic() - started < 10
        finally:
            context.close()
