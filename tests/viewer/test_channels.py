"""The channels panel (issues 15 and 17) in a real browser (Debian Chromium) against the real
HTTPS server with authentication: a fluorescence slide opens at its stored display; turning a
channel off, changing a colour or a window, or moving to another focal plane re-requests the
tiles with the new parameters and changes what the canvas shows; an RGB slide has no panel."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.channel_stores import write_store
from tests.server.conftest import Server, run_server
from tests.viewer.conftest import (
    ARTIFACTS,
    VIEWPORT,
    Person,
    _cli,
    enrol,
    poll,
    session_of,
    watch_errors,
)
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.store.layout import ChannelInfo

TILE = 256
PASSWORD = "channels test password erin"  # test-only
INFO = (
    ChannelInfo("DAPI", "0000FF", 461.0, (0.0, 40000.0)),
    ChannelInfo("FITC", "00FF00", 519.0, (0.0, 40000.0), active=False),
    ChannelInfo("Cy5", "FF0000", 670.0, (0.0, 40000.0)),
)


@dataclass
class Lab:
    server: Server
    fluor: str
    rgb: str
    stack: str  # an RGB z-stack: dark plane 0, light plane 1
    storage: dict[str, Any]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("channels-viewer")
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    out = root / "stores"
    # Smooth ramps (blue left to right, red top to bottom, green everywhere), 3 focal
    # planes each brighter than the one before: every control has a visible effect.
    h, w = 768, 1024
    y, x = np.mgrid[0:h, 0:w]
    planes = []
    for z in range(3):
        gain = 0.4 + 0.3 * z
        planes.append(np.stack([x * 40000 / w, np.full((h, w), 30000.0), y * 40000 / h]) * gain)
    samples = np.stack(planes, axis=1).astype(np.uint16)
    fluor, rgb, stack = new_slide_id(), new_slide_id(), new_slide_id()
    write_store(
        out,
        fluor,
        samples,
        tile=TILE,
        channels=INFO,
        plane_offsets=(-1.0, 0.0, 1.0),
        default_plane=1,
        keyring=keyring,
    )
    brightfield = np.full((3, 1, 300, 400), 200, np.uint8)
    write_store(out, rgb, brightfield, tile=TILE, keyring=keyring)
    focus = np.stack(
        [np.full((3, 300, 400), 60, np.uint8), np.full((3, 300, 400), 220, np.uint8)], 1
    )
    write_store(out, stack, focus, tile=TILE, plane_offsets=(0.0, 2.5), keyring=keyring)
    _cli(home, "slides", "assign", "case-f", fluor, rgb, stack)
    with run_server(out, home, secure=True) as server:
        erin = Person("erin", PASSWORD)
        enrol(server, home, erin, "case-f")
        yield Lab(server, fluor, rgb, stack, session_of(browser, server, erin))


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = browser.new_context(
        base_url=lab.server.base,
        ignore_https_errors=True,
        viewport=VIEWPORT,
        storage_state=lab.storage,
    )
    context.set_default_timeout(20_000)
    page = watch_errors(context.new_page())
    page.tiles = []  # query parameters of every tile request, in order
    page.urls = []  # and the requests' URLs

    def seen(request: Any) -> None:
        if "/deepzoom/" in request.url and "_files/" in request.url:
            page.tiles.append(parse_qs(urlsplit(request.url).query))
            page.urls.append(request.url)

    page.on("request", seen)
    yield page
    context.close()


def canvas_rgb(page: Any) -> np.ndarray:
    """Mean R, G, B of the middle of the slide's view (clear of the overview map)."""
    box = page.locator("#osd").bounding_box()
    clip = {
        "x": box["x"] + box["width"] * 0.3,
        "y": box["y"] + box["height"] * 0.3,
        "width": box["width"] * 0.4,
        "height": box["height"] * 0.4,
    }
    png = page.screenshot(clip=clip)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64).mean(axis=(0, 1))


def settle(page: Any, since: int) -> None:
    """Until tiles were requested after request ``since`` and the view is whole again."""
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    page.wait_for_timeout(400)
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    assert len(page.tiles) > since, "no tiles were requested again"


def test_channel_controls_rebuild_the_tile_requests(lab: Lab, page: Any) -> None:
    page.goto(f"/view/{lab.fluor}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    page.wait_for_timeout(300)
    # The stored display: no parameters at all (the server's defaults: DAPI and Cy5 shown).
    assert page.tiles and all(q == {} for q in page.tiles), page.tiles
    before = canvas_rgb(page)
    assert before[0] > 40 and before[2] > 40 and before[1] < 5, before  # red + blue, no green

    page.click("#channel-toggle")
    assert page.is_visible("#channel-panel")
    assert page.text_content("#channel-z-value").startswith("2 / 3")
    n = len(page.tiles)
    page.uncheck("#channel-2-on")  # Cy5 off
    settle(page, n)
    last = page.tiles[-1]
    assert last["channels"] == ["0"] and last["colors"] == ["0000ff"], last
    assert last["windows"] == ["0-40000"] and last["z"] == ["1"], last
    off = canvas_rgb(page)
    assert off[0] < 5 and abs(off[2] - before[2]) < 10, (before, off)  # the red is gone

    n = len(page.tiles)
    page.check("#channel-1-on")  # FITC on, in green
    settle(page, n)
    assert page.tiles[-1]["channels"] == ["0,1"], page.tiles[-1]
    assert canvas_rgb(page)[1] > 40

    # A colour: FITC in magenta; the last channel on cannot be turned off.
    n = len(page.tiles)
    page.eval_on_selector(
        "#channel-1-color",
        "node => { node.value = '#ff00ff'; node.dispatchEvent(new Event('input')); }",
    )
    settle(page, n)
    assert page.tiles[-1]["colors"] == ["0000ff,ff00ff"], page.tiles[-1]
    magenta = canvas_rgb(page)
    assert magenta[0] > 40 and magenta[1] < 5, magenta

    # A narrower window brightens; another focal plane (brighter here) changes the canvas.
    n = len(page.tiles)
    page.fill("#channel-0-end", "10000")
    settle(page, n)
    assert page.tiles[-1]["windows"] == ["0-10000,0-40000"], page.tiles[-1]
    n = len(page.tiles)
    dim = canvas_rgb(page)
    page.fill("#channel-z", "2")
    settle(page, n)
    assert page.tiles[-1]["z"] == ["2"], page.tiles[-1]
    assert page.text_content("#channel-z-value").startswith("3 / 3")
    assert canvas_rgb(page).sum() > dim.sum() + 10
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-channels.png"))
    assert not page.errors, page.errors


def test_rgb_slide_has_no_channel_panel(lab: Lab, page: Any) -> None:
    page.goto(f"/view/{lab.rgb}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    assert page.locator("#channel-toggle").count() == 0
    assert all(q == {} for q in page.tiles)
    assert not page.errors, page.errors


def test_rgb_z_stack_has_a_focus_slider(lab: Lab, page: Any) -> None:
    page.goto(f"/view/{lab.stack}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    page.wait_for_timeout(300)
    assert all(q == {} for q in page.tiles)  # the default plane (0 here), no parameters
    dark = canvas_rgb(page)
    assert page.text_content("#channel-toggle") == "Focus"
    page.click("#channel-toggle")
    assert page.locator("#channel-panel fieldset").count() == 0  # no channels, a plane only
    n = len(page.tiles)
    page.fill("#channel-z", "1")
    settle(page, n)
    assert page.tiles[-1] == {"z": ["1"]}, page.tiles[-1]
    assert page.text_content("#channel-z-value") == "2 / 2 (+2.5 µm)"
    assert canvas_rgb(page).mean() > dark.mean() + 100
    assert not page.errors, page.errors


def test_side_by_side_panes_keep_their_own_display(lab: Lab, page: Any) -> None:
    """The panel acts on the pane last touched: a focal plane for the z-stack beside the
    fluorescence slide changes that pane's tiles only, and back on the slide's viewer the
    panel shows its channels again."""
    page.goto(f"/view/{lab.fluor}?with={lab.stack}")
    poll(page, "document.body.dataset.compare === 'ready'")
    page.wait_for_selector("#pane-1[data-fully-loaded=true]", state="attached")
    page.wait_for_timeout(500)
    page.click("#pane-1", position={"x": 40, "y": 200})  # the z-stack's pane leads
    page.click("#channel-toggle")
    assert page.locator("#channel-panel fieldset").count() == 0
    assert page.text_content("#channel-z-value").startswith("1 / 2")
    n = len(page.urls)
    page.fill("#channel-z", "1")
    poll(page, "document.querySelector('#pane-1').dataset.fullyLoaded === 'true'")
    page.wait_for_timeout(600)
    after = page.urls[n:]
    assert after, "the pane's tiles were not asked for again"
    assert all(lab.stack in url and "z=1" in url for url in after), after
    page.click("#osd", position={"x": 40, "y": 200})  # the slide's viewer leads again
    assert page.locator("#channel-panel fieldset").count() == 3
    assert page.is_checked("#channel-0-on") and not page.is_checked("#channel-1-on")
    assert not page.errors, page.errors


def test_a_shared_view_carries_the_display(lab: Lab, page: Any) -> None:
    """Share: the link names the changed display, and opening it shows that display (its
    first tiles already ask for it, the panel shows it)."""
    page.goto(f"/view/{lab.fluor}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    page.click("#channel-toggle")
    n = len(page.tiles)
    page.uncheck("#channel-0-on")  # DAPI off: Cy5 alone
    page.fill("#channel-2-end", "20000")
    page.fill("#channel-z", "0")
    settle(page, n)
    page.click("#share-toggle")
    link = page.input_value("#share-link")
    query = parse_qs(urlsplit(link).query)
    assert query["channels"] == ["2"] and query["colors"] == ["ff0000"], link
    assert query["windows"] == ["0-20000"] and query["z"] == ["0"], link
    shown = canvas_rgb(page)

    page.tiles.clear()
    page.goto(link)
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    page.wait_for_timeout(300)
    # No tile of the stored display first: every request names the shared one.
    assert page.tiles and all(q.get("channels") == ["2"] for q in page.tiles), page.tiles
    assert page.tiles[-1]["windows"] == ["0-20000"] and page.tiles[-1]["z"] == ["0"]
    page.click("#channel-toggle")
    assert not page.is_checked("#channel-0-on") and page.is_checked("#channel-2-on")
    assert page.input_value("#channel-2-end") == "20000"
    assert page.text_content("#channel-z-value").startswith("1 / 3")
    again = canvas_rgb(page)
    assert np.abs(again - shown).max() < 8, (shown, again)
    assert not page.errors, page.errors
