"""Side by side, image adjustments and shared views (issue 17) in a real browser (Debian
Chromium) against the real HTTPS server: two viewers stay locked through pan and zoom (also
with one rotated), a Shift-drag sets an offset that then holds; brightness, contrast and gamma
move the screen's pixels the expected way, rotation turns the view; a shared view's link opens
at the same place after a login round trip, and a signed link opens it without an account."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.server.conftest import Server, run_server
from tests.viewer.conftest import (
    VIEWPORT,
    Person,
    _cli,
    enrol,
    image_stats,
    poll,
    session_of,
    watch_errors,
)
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

MPP = 0.25  # the synthetic slide's µm per pixel
PASSWORDS = {"carol": "compare test password carol", "dan": "compare test password dan 2"}


@dataclass
class Clinic:
    server: Server
    slides: list[str]  # one case, three slides
    people: dict[str, Person]
    storage: dict[str, Any]  # carol signed in


@pytest.fixture(scope="module")
def clinic(
    tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path, browser: Any
) -> Iterator[Clinic]:
    """Its own server (the shared viewer site must not have users before its bootstrap
    administrator): a case of three slides, carol and dan granted it."""
    root = tmp_path_factory.mktemp("compare")
    home = root / "home"
    KeyRing(home).initialise()
    out = root / "stores"
    slides = []
    for _ in range(3):
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            convert(source, LocalObjects(out / slide_id), slide_id, ConvertOptions(), KeyRing(home))
        slides.append(slide_id)
    _cli(home, "slides", "assign", "case-c", *slides)
    with run_server(out, home, secure=True) as server:
        people = {name: Person(name, password) for name, password in PASSWORDS.items()}
        for person in people.values():
            enrol(server, home, person, "case-c")
        yield Clinic(server, slides, people, session_of(browser, server, people["carol"]))


@pytest.fixture
def open_page(browser: Any, clinic: Clinic) -> Iterator[Any]:
    """``open_page(signed_in=True)``: a page in a fresh context (carol's session or none)."""
    contexts = []

    def make(signed_in: bool = True) -> Any:
        context = browser.new_context(
            base_url=clinic.server.base,
            ignore_https_errors=True,
            viewport=VIEWPORT,
            storage_state=clinic.storage if signed_in else None,
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return watch_errors(context.new_page())

    yield make
    for context in contexts:
        context.close()


def view_of(page: Any, selector: str) -> dict[str, float]:
    """A pane's published view: centre (level-0 px), zoom (screen px per level-0 px), rotation."""
    data = page.eval_on_selector(selector, "node => ({...node.dataset})")
    return {key: float(data[key]) for key in ("cx", "cy", "zoom", "rotation")}


def still(page: Any) -> None:
    """Until every viewer's animation has ended (OpenSeadragon springs for ~0.5 s)."""
    page.wait_for_timeout(900)


def drag(page: Any, selector: str, dx: float, dy: float, shift: bool = False) -> None:
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=12)
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")
    still(page)


def wheel(page: Any, selector: str, delta: float) -> None:
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, delta)
    still(page)


def open_compare(page: Any, clinic: Clinic) -> None:
    first, second = clinic.slides[:2]
    page.goto(f"/view/{first}?with={second}")
    poll(page, "document.body.dataset.compare === 'ready'")
    page.wait_for_selector("#pane-1[data-fully-loaded=true]", state="attached")
    still(page)


def test_side_by_side_stays_locked_through_pan_zoom_and_rotation(
    clinic: Clinic, open_page: Any
) -> None:
    page = open_page()
    open_compare(page, clinic)
    assert page.eval_on_selector(".viewer-main", "n => n.dataset.unit") == "µm"
    a, b = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert abs(a["cx"] - b["cx"]) < 0.5 and abs(a["cy"] - b["cy"]) < 0.5, (a, b)
    assert b["zoom"] == pytest.approx(a["zoom"], rel=1e-4)

    drag(page, "#osd", -240, -120)  # the slide's viewer leads
    a2, b2 = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert a2["cx"] - a["cx"] == pytest.approx(240 / a["zoom"], rel=0.1), (a, a2)
    assert abs(a2["cx"] - b2["cx"]) < 0.5 and abs(a2["cy"] - b2["cy"]) < 0.5, (a2, b2)

    wheel(page, "#pane-1", -400)  # the other pane leads: zoom in over it
    a3, b3 = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert b3["zoom"] > b2["zoom"] * 1.3, (b2, b3)
    assert a3["zoom"] == pytest.approx(b3["zoom"], rel=1e-4)
    assert abs(a3["cx"] - b3["cx"]) < 0.5 and abs(a3["cy"] - b3["cy"]) < 0.5, (a3, b3)

    # Turn the second slide a quarter (clockwise): it turns about its centre, the first stays,
    # and a pan to the right on the screen is a pan to the right in both.
    page.click("#pane-1", position={"x": 30, "y": 200})  # the active pane takes the adjustments
    page.click("#adjust-toggle")
    page.click("#rotate-right")
    still(page)
    a4, b4 = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert b4["rotation"] == 90 and a4["rotation"] == 0
    assert abs(b4["cx"] - b3["cx"]) < 0.5 and abs(a4["cx"] - a3["cx"]) < 0.5
    page.click("#adjust-close")
    drag(page, "#osd", -200, 0)  # content left: the view moves right (+x) in the first slide
    a5, b5 = view_of(page, "#osd"), view_of(page, "#pane-1")
    moved = 200 / a4["zoom"]
    assert a5["cx"] - a4["cx"] == pytest.approx(moved, rel=0.1)
    # Screen right is the second slide's -y once it is turned 90° clockwise.
    assert b5["cy"] - b4["cy"] == pytest.approx(-moved, rel=0.1), (b4, b5)
    assert abs(b5["cx"] - b4["cx"]) < 1.0
    assert not page.errors, page.errors


def test_a_slide_that_cannot_be_opened_leaves_the_others_locked(
    clinic: Clinic, open_page: Any
) -> None:
    """Three panes, one naming a slide that does not exist (or is not granted: the same 404)."""
    page = open_page()
    first, second, third = clinic.slides
    unknown = "0" * 32
    page.goto(f"/view/{first}?with={second},{unknown},{third}")
    poll(page, "document.body.dataset.compare === 'ready'")
    assert page.eval_on_selector(".viewer-main", "n => n.dataset.panes") == "4"
    page.wait_for_selector("#pane-2[data-open=failed]", state="attached")
    assert "could not be opened" in (page.text_content("#pane-2") or "")
    still(page)
    drag(page, "#osd", -160, 80)
    a, b, c = view_of(page, "#osd"), view_of(page, "#pane-1"), view_of(page, "#pane-3")
    for other in (b, c):
        assert abs(other["cx"] - a["cx"]) < 0.5 and abs(other["cy"] - a["cy"]) < 0.5, (a, other)
    errors = [e for e in page.errors if "404" not in e]
    assert not errors, errors


def test_an_offset_dragged_with_shift_holds(clinic: Clinic, open_page: Any) -> None:
    page = open_page()
    open_compare(page, clinic)
    a, b = view_of(page, "#osd"), view_of(page, "#pane-1")
    drag(page, "#pane-1", 180, 60, shift=True)  # the second slide alone
    a2, b2 = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert abs(a2["cx"] - a["cx"]) < 0.5 and abs(a2["cy"] - a["cy"]) < 0.5, (a, a2)
    dx, dy = b2["cx"] - a2["cx"], b2["cy"] - a2["cy"]
    assert dx == pytest.approx(-180 / b["zoom"], rel=0.1)
    assert dy == pytest.approx(-60 / b["zoom"], rel=0.15)
    offset = page.eval_on_selector("#pane-1", "n => n.dataset.offset").split(",")
    assert float(offset[0]) == pytest.approx(dx * MPP, abs=0.05)  # µm
    assert "off=" in page.url  # the URL keeps it

    # Pan and zoom the first: the second follows, the offset (in µm) unchanged.
    drag(page, "#osd", -150, 90)
    wheel(page, "#osd", -300)
    a3, b3 = view_of(page, "#osd"), view_of(page, "#pane-1")
    assert abs(a3["cx"] - a2["cx"]) > 50
    assert b3["cx"] - a3["cx"] == pytest.approx(dx, abs=0.5)
    assert b3["cy"] - a3["cy"] == pytest.approx(dy, abs=0.5)

    # The view's shared link keeps the pair, the offset and the place.
    page.click("#share-toggle")
    link = page.input_value("#share-link")
    query = parse_qs(urlsplit(link).query)
    assert query["with"] == [clinic.slides[1]] and "off" in query, link
    again = open_page()
    again.goto(link)
    poll(again, "document.body.dataset.compare === 'ready'")
    still(again)
    a4, b4 = view_of(again, "#osd"), view_of(again, "#pane-1")
    assert a4["cx"] == pytest.approx(a3["cx"], abs=1) and a4["cy"] == pytest.approx(a3["cy"], abs=1)
    assert a4["zoom"] == pytest.approx(a3["zoom"], rel=1e-3)
    assert b4["cx"] - a4["cx"] == pytest.approx(dx, abs=0.5)
    assert b4["cy"] - a4["cy"] == pytest.approx(dy, abs=0.5)
    assert not page.errors, page.errors


def screen(page: Any) -> Any:
    """The middle of the slide's viewer, as grey levels (no navigator, no scale bar)."""
    import numpy as np
    from PIL import Image

    box = page.locator("#osd").bounding_box()
    clip = {
        "x": box["x"] + box["width"] * 0.3,  # right of the side panels
        "y": box["y"] + box["height"] * 0.3,
        "width": box["width"] * 0.5,
        "height": box["height"] * 0.5,
    }
    png = page.screenshot(clip=clip)
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64), png


def set_slider(page: Any, name: str, value: float) -> None:
    page.locator(f"#adjust-{name}").evaluate(
        "(node, value) => { node.value = value; node.dispatchEvent(new Event('input')); }",
        str(value),
    )
    page.wait_for_timeout(300)


def test_brightness_contrast_gamma_and_rotation_change_the_screen(
    clinic: Clinic, open_page: Any
) -> None:
    page = open_page()
    page.goto(f"/view/{clinic.slides[0]}")
    page.wait_for_selector("body[data-open=true]")
    page.wait_for_selector("body[data-fully-loaded=true]", state="attached")
    still(page)
    base, png = screen(page)
    mean, std = image_stats(png)
    assert 40 < mean < 235 and std > 10, (mean, std)  # tissue, not blank
    page.click("#adjust-toggle")

    def stats(name: str, value: float) -> tuple[float, float]:
        set_slider(page, name, value)
        grey, _ = screen(page)
        set_slider(page, name, 1)
        return float(grey.mean()), float(grey.std())

    brighter, _ = stats("brightness", 1.6)
    darker, _ = stats("brightness", 0.6)
    assert brighter > mean + 5 and darker < mean - 20, (darker, mean, brighter)
    _, stretched = stats("contrast", 2.0)
    _, flattened = stats("contrast", 0.5)
    assert stretched > std * 1.3 and flattened < std * 0.7, (flattened, std, stretched)
    lifted, _ = stats("gamma", 2.2)
    deepened, _ = stats("gamma", 0.5)
    assert lifted > mean + 5 and deepened < mean - 5, (deepened, mean, lifted)
    # Back to neutral: the filter is gone and the screen is as it was.
    again, _ = screen(page)
    assert abs(again.mean() - mean) < 1.0
    assert page.eval_on_selector("#osd canvas", "c => c.style.filter") == ""

    bounds = page.eval_on_selector("#osd", "n => n.dataset.bounds")
    page.click("#rotate-right")
    still(page)
    assert view_of_rotation(page) == 90
    assert page.eval_on_selector("#adjust-rotation-value", "n => n.textContent") == "90°"
    turned, _ = screen(page)
    assert abs(turned - base).mean() > 10, "a quarter turn left the screen as it was"
    set_slider(page, "rotation", -30)  # free rotation
    assert view_of_rotation(page) == -30
    page.click("#adjust-reset")
    still(page)
    assert view_of_rotation(page) == 0
    assert page.eval_on_selector("#osd", "n => n.dataset.bounds") == bounds
    page.click("#share-toggle")  # the panels share a corner: one at a time
    assert page.is_hidden("#adjust-panel") and page.is_visible("#share-panel")
    assert page.get_attribute("#adjust-toggle", "aria-pressed") == "false"
    assert not page.errors, page.errors


def view_of_rotation(page: Any) -> float:
    return float(page.eval_on_selector("#osd", "n => n.dataset.rotation"))


def bounds_of(page: Any) -> list[float]:
    return [float(v) for v in page.eval_on_selector("#osd", "n => n.dataset.bounds").split(",")]


def a_view_to_share(page: Any, clinic: Clinic) -> list[float]:
    """Carol at 10x, panned, turned a quarter: the view's bounds (level-0 px)."""
    page.goto(f"/view/{clinic.slides[0]}")
    page.wait_for_selector("body[data-open=true]")
    page.keyboard.press("4")  # 10x
    for key in ("ArrowRight", "ArrowRight", "ArrowDown"):
        page.keyboard.press(key)
    page.click("#adjust-toggle")
    page.click("#rotate-right")
    page.click("#adjust-close")
    still(page)
    page.click("#share-toggle")
    return bounds_of(page)


def test_a_shared_view_opens_at_the_same_place_after_login(clinic: Clinic, open_page: Any) -> None:
    page = open_page()
    bounds = a_view_to_share(page, clinic)
    link = page.input_value("#share-link")
    parts = urlsplit(link)
    assert parts.path == f"/view/{clinic.slides[0]}" and not parts.fragment
    assert {"x", "y", "zoom", "rot"} <= set(parse_qs(parts.query)), link

    dan = clinic.people["dan"]
    other = open_page(signed_in=False)  # another pathologist, not signed in
    other.goto(link)
    other.wait_for_url(re.compile(r"/login\?next="))
    assert parse_qs(urlsplit(other.url).query)["next"][0] == f"{parts.path}?{parts.query}"
    other.fill("#login-username", dan.name)
    other.fill("#login-password", dan.password)
    other.fill("#login-code", dan.fresh_code())
    other.click("#login-submit")
    other.wait_for_url(re.compile(re.escape(f"{parts.path}?{parts.query}") + "$"))
    other.wait_for_selector("body[data-open=true]")
    still(other)
    assert view_of_rotation(other) == 90
    assert bounds_of(other) == pytest.approx(bounds, abs=1.0), (bounds, bounds_of(other))
    errors = [e for e in other.errors if "401" not in e]  # the login page asks who is there
    assert not errors, errors


def test_a_signed_link_shows_the_view_without_an_account(clinic: Clinic, open_page: Any) -> None:
    page = open_page()
    bounds = a_view_to_share(page, clinic)
    page.click("#share-signed")
    poll(page, "document.getElementById('share-signed-link').value")
    link = page.input_value("#share-signed-link")
    assert "sig=" in link and "until" in (page.text_content("#share-status") or "")

    guest = open_page(signed_in=False)
    tiles: list[int] = []
    guest.on("response", lambda r: tiles.append(r.status) if "_files/" in r.url else None)
    guest.goto(link)
    guest.wait_for_selector("body[data-open=true]")
    guest.wait_for_selector("body[data-fully-loaded=true]", state="attached")
    assert urlsplit(guest.url).path == "/static/signed.html"  # no login on the way
    assert tiles and all(status == 200 for status in tiles), tiles
    x, y, width, height = bounds_of(guest)
    assert [x + width / 2, y + height / 2, width] == pytest.approx(
        [bounds[0] + bounds[2] / 2, bounds[1] + bounds[3] / 2, bounds[2]], abs=1.0
    )  # the same centre and magnification
    _, png = screen(guest)
    assert image_stats(png)[1] > 10  # the slide, not an empty canvas
    assert guest.context.request.get(f"/api/slides/{clinic.slides[0]}").status == 401
    assert not guest.errors, guest.errors

    # An altered signature opens nothing, and says so.
    tampered = open_page(signed_in=False)
    tampered.goto(re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 64, link))
    tampered.wait_for_selector("#viewer-message:not(.hidden)")
    assert "not valid" in (tampered.text_content("#viewer-message") or "")
