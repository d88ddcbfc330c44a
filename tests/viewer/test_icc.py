"""The viewer shows a slide in its scanner's colours (issue 15, colour management) in a real
browser (Debian Chromium) against the real HTTPS server with authentication: the tiles of a
slide tagged with a wide-gamut ICC profile are asked for with ``icc=embed`` (stored tiles
still pass through, the profile spliced in, and the browser converts); an untagged slide's
tiles carry no query at all."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from sample_data.icc import wide_gamut_profile, write_icc
from sample_data.synthetic import write_svs
from tests.server.conftest import Server, converted, run_server
from tests.viewer.conftest import (
    VIEWPORT,
    Person,
    _cli,
    enrol,
    held_openseadragon,
    poll,
    session_of,
    watch_errors,
)
from tileserver.security.keys import KeyRing

PASSWORD = "colour test password fay"  # test-only


@dataclass
class Lab:
    server: Server
    tagged: str
    plain: str
    storage: dict[str, Any]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("icc-viewer")
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    stores = root / "stores"
    tagged = converted(write_icc(root / "icc.svs", 1200, 1000, fmt="svs", seed=2), stores, keyring)
    plain = converted(write_svs(root / "plain.svs", 1200, 1000, seed=3), stores, keyring)
    _cli(home, "slides", "assign", "case-c", tagged, plain)
    with run_server(stores, home, secure=True) as server:
        fay = Person("fay", PASSWORD)
        enrol(server, home, fay, "case-c")
        yield Lab(server, tagged, plain, session_of(browser, server, fay))


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
    page.tiles = {}  # slide ID -> URLs of its tiles asked for

    def seen(request: Any) -> None:
        path = urlsplit(request.url).path
        if path.startswith("/deepzoom/") and "_files/" in path:
            page.tiles.setdefault(path.split("/")[2].removesuffix("_files"), []).append(request.url)

    page.on("request", seen)
    yield page
    context.close()


def _answers(page: Any, urls: list[str]) -> list[tuple[dict[str, list[str]], bytes | None]]:
    """Each tile URL's query, and the ICC profile of what the server answers to it (asked
    again: the viewer's fetches hand their bodies to the canvas, not to Playwright)."""
    found = []
    for url in urls:
        reply = page.request.get(url)
        assert reply.ok, (url, reply.status)
        with Image.open(io.BytesIO(reply.body())) as image:
            found.append((parse_qs(urlsplit(url).query), image.info.get("icc_profile")))
    return found


def test_a_tagged_slide_is_shown_through_its_profile(lab: Lab, page: Any) -> None:
    page.goto(f"/view/{lab.tagged}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    tiles = _answers(page, page.tiles[lab.tagged])
    assert tiles and all(query == {"icc": ["embed"]} for query, _ in tiles), tiles
    assert all(profile == wide_gamut_profile() for _, profile in tiles)


def test_an_untagged_slide_asks_nothing_more(lab: Lab, page: Any) -> None:
    page.goto(f"/view/{lab.plain}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    tiles = _answers(page, page.tiles[lab.plain])
    assert tiles and all(query == {} and profile is None for query, profile in tiles), tiles


def _slide_mean(
    page: Any, pane: str = "#osd", canvas: str = ".openseadragon-canvas canvas"
) -> tuple[float, float, float]:
    """Mean colour of the slide as drawn on a viewer's canvas (the dark background left out)."""
    mean: list[float] = page.evaluate(
        """([pane, selector]) => {
          const canvas = document.querySelector(`${pane} ${selector}`);
          const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          const sum = [0, 0, 0];
          let n = 0;
          for (let i = 0; i < data.length; i += 4) {
            if (data[i] + data[i + 1] + data[i + 2] < 120) continue; // the page's background
            sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; n += 1;
          }
          return sum.map((s) => s / n);
        }""",
        [pane, canvas],
    )
    return (mean[0], mean[1], mean[2])


def _thumbnail_mean(page: Any, slide: str, icc: str) -> tuple[float, float, float]:
    reply = page.request.get(f"/api/slides/{slide}/thumbnail?max=600&icc={icc}")
    assert reply.ok, reply.status
    with Image.open(io.BytesIO(reply.body())) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    kept = pixels[pixels.sum(axis=1) >= 120]
    r, g, b = kept.mean(axis=0)
    return (float(r), float(g), float(b))


def _assert_managed(page: Any, slide: str, shown: tuple[float, float, float]) -> None:
    """``shown`` is the slide's colours through its profile (the server's icc=srgb render),
    not its raw samples read as sRGB."""
    managed = _thumbnail_mean(page, slide, "srgb")
    raw = _thumbnail_mean(page, slide, "none")
    to_managed = max(abs(a - b) for a, b in zip(shown, managed, strict=True))
    to_raw = max(abs(a - b) for a, b in zip(shown, raw, strict=True))
    assert to_managed < to_raw / 3, {"shown": shown, "managed": managed, "raw": raw}


def test_the_canvas_shows_the_profiles_colours(lab: Lab, page: Any) -> None:
    """What the screen shows is the slide's colours converted from its profile (as the server's
    icc=srgb render converts them), not its raw samples read as sRGB."""
    page.goto(f"/view/{lab.tagged}")
    poll(page, "document.body.dataset.fullyLoaded === 'true'")
    shown = _slide_mean(page)
    managed = _thumbnail_mean(page, lab.tagged, "srgb")
    raw = _thumbnail_mean(page, lab.tagged, "none")
    apart = max(abs(a - b) for a, b in zip(managed, raw, strict=True))
    assert apart > 6, (managed, raw)  # the profile moves these colours visibly
    to_managed = max(abs(a - b) for a, b in zip(shown, managed, strict=True))
    assert to_managed < apart / 3, {"shown": shown, "managed": managed, "raw": raw}


def test_the_first_view_painted_before_openseadragon_shows_the_profiles_colours(
    lab: Lab, page: Any
) -> None:
    """firstview.js's painting (OpenSeadragon's script held back meanwhile) is colour-managed
    as the viewer's canvas is."""
    held = held_openseadragon(page)
    page.goto(f"/view/{lab.tagged}", wait_until="commit")
    poll(page, "document.getElementById('osd').dataset.firstView === 'painted'")
    assert held
    _assert_managed(page, lab.tagged, _slide_mean(page, canvas="canvas.first-view"))
    held[0].continue_()


def test_a_side_by_side_pane_shows_the_profiles_colours(lab: Lab, page: Any) -> None:
    """A comparison pane (OpenSeadragon's own image loading) is colour-managed too."""
    page.goto(f"/view/{lab.plain}?with={lab.tagged}")
    poll(
        page, "(document.querySelector('#pane-1') || {dataset: {}}).dataset.fullyLoaded === 'true'"
    )
    page.wait_for_timeout(300)  # the blend of the last tiles
    _assert_managed(page, lab.tagged, _slide_mean(page, "#pane-1"))


def test_a_signed_link_shows_the_profiles_colours(lab: Lab, page: Any, browser: Any) -> None:
    """A guest with a signed link (no account, no cookies) sees the colours the pathologist
    sees, not the raw samples."""
    reply = page.request.post(
        f"/api/slides/{lab.tagged}/share?scope=tiles", headers={"Origin": lab.server.base}
    )
    assert reply.ok, reply.status
    query = reply.json()["query"]
    context = browser.new_context(
        base_url=lab.server.base, ignore_https_errors=True, viewport=VIEWPORT
    )
    try:
        guest = watch_errors(context.new_page())
        guest.goto(f"/static/signed.html?slide={lab.tagged}&{query}")
        poll(guest, "document.body.dataset.fullyLoaded === 'true'")
        guest.wait_for_timeout(300)  # the blend of the last tiles
        _assert_managed(page, lab.tagged, _slide_mean(guest))
        assert not guest.errors, guest.errors
    finally:
        context.close()
