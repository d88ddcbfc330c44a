"""The viewer, worklist and login page on any screen, in a real browser (Debian Chromium):
phone (390 px), tablet (1024 px), desktop (1920 px) and 4K (3840 px). Every control is inside
the viewport or inside the opened menu, Tab reaches it with a visible focus ring, a phone
opens the menu by tap and pinches and pans with two fingers, and a hovered active button
stays readable. Screenshots go to each test's tmp dir."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Server, run_server
from tests.viewer.conftest import Person, _cli, enrol, session_of, watch_errors
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

PASSWORD = "responsive test password robin"  # test-only
# (width, height) in CSS pixels: a phone, a tablet in landscape, a desktop, a 4K monitor at 100 %.
SCREENS = {"phone": (390, 844), "tablet": (1024, 768), "desktop": (1920, 1080), "4k": (3840, 2160)}
COLLAPSED = {"phone", "tablet"}  # screens where the tools live in the menu

# Every control on the page: where it is, whether it shows, and what it is.
CONTROLS = """() => [...document.querySelectorAll('button, a[href], input, select, textarea')]
  .map((node, index) => {
    node.dataset.probe = String(index);
    const box = node.getBoundingClientRect();
    const style = getComputedStyle(node);
    return {
      probe: String(index),
      name: node.id || node.getAttribute('aria-label') || node.textContent.trim().slice(0, 30),
      shown: box.width > 0 && box.height > 0 && style.visibility !== 'hidden',
      disabled: node.disabled === true,
      href: node.getAttribute('href'),
      inMenu: !!node.closest('#menu'),
      inHeader: !!node.closest('header'),
      left: box.left, top: box.top, right: box.right, bottom: box.bottom,
    };
  })"""
# The focused control after a key press: which one, and whether its focus ring shows.
FOCUSED = """() => {
  const node = document.activeElement;
  if (!node || node === document.body) return null;
  const style = getComputedStyle(node);
  const ring = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 1;
  return {probe: node.dataset.probe || null, name: node.id || node.tagName, ring};
}"""


@dataclass
class Ward:
    server: Server
    slides: list[str]
    robin: Person
    storage: dict[str, Any]


@pytest.fixture(scope="module")
def ward(
    tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path, browser: Any
) -> Iterator[Ward]:
    """A case of two slides and a pathologist, robin, signed in once (TOTP codes are single
    use: every test reuses the session)."""
    root = tmp_path_factory.mktemp("responsive")
    home = root / "home"
    KeyRing(home).initialise()
    out = root / "stores"
    slides = []
    for keep in (True, False):
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            options = ConvertOptions(keep_associated=keep)
            convert(source, LocalObjects(out / slide_id), slide_id, options, KeyRing(home))
        slides.append(slide_id)
    slides.sort()
    _cli(home, "slides", "assign", "case-r", *slides)
    with run_server(out, home, secure=True) as server:
        robin = Person("robin", PASSWORD)
        enrol(server, home, robin, "case-r", "--labels")
        yield Ward(server, slides, robin, session_of(browser, server, robin))


def open_page(browser: Any, ward: Ward, screen: str, signed_in: bool = True, **extra: Any) -> Any:
    width, height = SCREENS[screen]
    context = browser.new_context(
        base_url=ward.server.base,
        ignore_https_errors=True,
        viewport={"width": width, "height": height},
        storage_state=ward.storage if signed_in else None,
        **extra,
    )
    context.set_default_timeout(20_000)
    return watch_errors(context.new_page())


def wait_viewer(page: Any) -> None:
    page.wait_for_selector("body[data-open=true]")
    page.wait_for_selector("body[data-fully-loaded=true]", state="attached")
    page.wait_for_selector("#slide-position:not(:empty)")


def outside(control: dict[str, Any], page: Any) -> bool:
    size = page.viewport_size
    return bool(
        control["left"] < -0.5
        or control["top"] < -0.5
        or control["right"] > size["width"] + 0.5
        or control["bottom"] > size["height"] + 0.5
    )


def assert_on_screen(page: Any) -> list[dict[str, Any]]:
    """Every shown control inside the viewport, no sideways scrolling; the controls."""
    controls: list[dict[str, Any]] = page.evaluate(CONTROLS)
    off = [c["name"] for c in controls if c["shown"] and outside(c, page)]
    assert not off, f"controls off-screen: {off}"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page scrolls sideways: {width} px"
    return controls


def tab_through(page: Any, presses: int) -> list[dict[str, Any]]:
    """What Tab focuses, from the top of the page, ``presses`` times."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.evaluate("window.scrollTo(0, 0)")
    seen = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused is not None:
            seen.append(focused)
    return seen


def assert_keyboard_reaches(page: Any, controls: list[dict[str, Any]]) -> None:
    wanted = {c["probe"]: c["name"] for c in controls if c["shown"] and not c["disabled"]}
    # Room for what else takes focus (the slide canvas, the overview map).
    seen = tab_through(page, len(wanted) + 8)
    reached = {f["probe"] for f in seen}
    missing = [name for probe, name in wanted.items() if probe not in reached]
    assert not missing, f"Tab never reaches: {missing}"
    unringed = [f["name"] for f in seen if f["probe"] in wanted and not f["ring"]]
    assert not unringed, f"no visible focus ring on: {unringed}"


@pytest.mark.parametrize("screen", list(SCREENS))
def test_viewer_fits_the_screen(browser: Any, ward: Ward, screen: str, tmp_path: Path) -> None:
    page = open_page(browser, ward, screen)
    page.goto(f"/view/{ward.slides[0]}")
    wait_viewer(page)
    page.screenshot(path=str(tmp_path / f"viewer-{screen}.png"))
    controls = assert_on_screen(page)
    toggle = page.locator("#menu-toggle")
    # A hidden link is fine where a shown one goes to the same place (the brand, on a phone).
    links = {c["href"] for c in controls if c["shown"] and c["href"]}
    hidden = [c for c in controls if c["inHeader"] and not c["shown"] and c["href"] not in links]
    if screen in COLLAPSED:
        assert toggle.is_visible() and toggle.get_attribute("aria-expanded") == "false"
        # What the bar has no room for is in the closed menu, nowhere else.
        assert hidden and all(c["inMenu"] for c in hidden), hidden
        assert {"ruler-toggle", "fit", "logout"} <= {c["name"] for c in hidden}
    else:
        assert toggle.is_hidden()
        assert [c["name"] for c in hidden] == ["menu-toggle"]
    # The readout and the presets (1x-40x; 80x is beyond 2x over-zoom) stay in the bar.
    assert page.locator("#magnification").is_visible()
    assert page.locator(".preset:not([disabled])").count() == 6
    assert_keyboard_reaches(page, controls)

    if screen in COLLAPSED:
        page.keyboard.press("r")  # ruler mode on: the viewer's Escape would turn it off
        assert page.get_attribute("#ruler-toggle", "aria-pressed") == "true"
        # By keyboard: Enter on the button opens the menu; Tab goes on into it.
        toggle.focus()
        page.keyboard.press("Enter")
        assert toggle.get_attribute("aria-expanded") == "true"
        page.screenshot(path=str(tmp_path / f"viewer-{screen}-menu.png"))
        opened = assert_on_screen(page)
        in_menu = [c for c in opened if c["inMenu"]]
        assert in_menu and all(c["shown"] for c in in_menu), in_menu
        order = []
        for _ in in_menu:
            page.keyboard.press("Tab")
            order.append(page.evaluate(FOCUSED))
        assert [f["probe"] for f in order] == [c["probe"] for c in in_menu]
        assert all(f["ring"] for f in order), order
        # Escape closes it, back on its button, and is not the viewer's Escape.
        page.keyboard.press("Escape")
        assert toggle.get_attribute("aria-expanded") == "false"
        assert page.evaluate("document.activeElement.id") == "menu-toggle"
        assert page.locator("#ruler-toggle").is_hidden()
        assert page.get_attribute("#ruler-toggle", "aria-pressed") == "true"
        # A tool chosen from the menu acts and closes the menu.
        toggle.click()
        page.click("#ruler-toggle")
        assert page.get_attribute("#ruler-toggle", "aria-pressed") == "false"
        assert toggle.get_attribute("aria-expanded") == "false"
        # Sign-out is there (not pressed: every test shares robin's session).
        toggle.click()
        assert page.locator("#logout").is_visible() and page.locator("#logout").is_enabled()
    else:
        page.click("#ruler-toggle")
        assert page.get_attribute("#ruler-toggle", "aria-pressed") == "true"
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.parametrize("screen", list(SCREENS))
def test_worklist_and_login_fit_the_screen(
    browser: Any, ward: Ward, screen: str, tmp_path: Path
) -> None:
    page = open_page(browser, ward, screen)
    page.goto("/")
    page.wait_for_selector(".slide-card")
    page.wait_for_function("() => true")  # one more frame: the thumbnails' layout
    page.screenshot(path=str(tmp_path / f"worklist-{screen}.png"))
    controls = assert_on_screen(page)
    header = [c for c in controls if c["inHeader"]]
    assert all(c["shown"] for c in header), [c["name"] for c in header if not c["shown"]]
    # Two cards and the header: the keyboard reaches them all.
    assert_keyboard_reaches(page, controls)

    login = open_page(browser, ward, screen, signed_in=False)
    login.goto("/login")
    login.wait_for_selector("#login-form")
    login.screenshot(path=str(tmp_path / f"login-{screen}.png"))
    controls = assert_on_screen(login)
    assert_keyboard_reaches(login, controls)
    card = login.locator(".login-card").bounding_box()
    assert card is not None and card["width"] <= SCREENS[screen][0] - 16
    # The login page asks /auth/me whether a session exists: its 401 is the expected answer.
    errors = page.errors + [e for e in login.errors if "401" not in e]
    assert not errors, errors
    page.context.close()
    login.context.close()


def touch(client: Any, kind: str, points: list[tuple[float, float]]) -> None:
    client.send(
        "Input.dispatchTouchEvent",
        {
            "type": kind,
            "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)],
        },
    )


def gesture(
    page: Any, client: Any, start: list[tuple[float, float]], end: list[tuple[float, float]]
) -> None:
    """Fingers down at ``start``, moved to ``end`` in small steps, lifted."""
    touch(client, "touchStart", start)
    steps = 12
    for step in range(1, steps + 1):
        f = step / steps
        touch(
            client,
            "touchMove",
            [
                (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)
                for a, b in zip(start, end, strict=True)
            ],
        )
        page.wait_for_timeout(16)
    client.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_timeout(700)  # the spring animation settles


def test_phone_taps_the_menu_pinches_and_pans(browser: Any, ward: Ward, tmp_path: Path) -> None:
    page = open_page(browser, ward, "phone", has_touch=True, is_mobile=True, device_scale_factor=2)
    page.goto(f"/view/{ward.slides[0]}")
    wait_viewer(page)
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    toggle = page.locator("#menu-toggle")
    page.tap("#menu-toggle")
    assert toggle.get_attribute("aria-expanded") == "true"
    assert page.locator("#logout").is_visible()
    assert_on_screen(page)
    # Touch targets: about 40 px, for a finger.
    for selector in ("#menu-toggle", "#fit", "#logout", ".preset"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["height"] >= 40, (selector, box)
    page.screenshot(path=str(tmp_path / "phone-menu.png"))
    page.tap("#fit")  # acts and closes the menu
    assert toggle.get_attribute("aria-expanded") == "false"
    page.tap(".viewer-main", position={"x": 30, "y": 30})  # a tap elsewhere leaves it closed

    client = page.context.new_cdp_session(page)
    box = page.locator("#osd").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = float(page.get_attribute("#magnification", "data-magnification") or 0)
    gesture(page, client, [(cx - 40, cy), (cx + 40, cy)], [(cx - 150, cy), (cx + 150, cy)])
    pinched = float(page.get_attribute("#magnification", "data-magnification") or 0)
    assert pinched > before * 2.5, (before, pinched)  # fingers 80 -> 300 px apart: ~3.75x

    # Where the overview map's rectangle (the part of the slide in view) is.
    region = "(r => [r.offsetLeft, r.offsetTop])(document.querySelector('.displayregion'))"
    start = page.evaluate(region)
    gesture(page, client, [(cx - 40, cy), (cx + 40, cy)], [(cx - 140, cy - 80), (cx - 60, cy - 80)])
    moved = page.evaluate(region)
    # Fingers moved left and up: the slide follows them, so the view is further right and down.
    assert moved[0] > start[0] and moved[1] > start[1], (start, moved)
    after = float(page.get_attribute("#magnification", "data-magnification") or 0)
    assert after == pytest.approx(pinched, rel=0.05)  # two fingers at a constant distance: a pan
    page.screenshot(path=str(tmp_path / "phone-pinched.png"))
    assert not page.errors, page.errors
    page.context.close()


def luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(page: Any, selector: str) -> tuple[float, str]:
    colours = page.eval_on_selector(
        selector, "n => { const s = getComputedStyle(n); return [s.color, s.backgroundColor]; }"
    )
    a, b = sorted((luminance(colours[0]), luminance(colours[1])), reverse=True)
    return (a + 0.05) / (b + 0.05), colours[1]


def test_hovered_active_buttons_stay_readable(browser: Any, ward: Ward) -> None:
    page = open_page(browser, ward, "desktop")
    page.goto(f"/view/{ward.slides[0]}")
    wait_viewer(page)
    page.keyboard.press("5")  # 20x: its preset becomes active
    page.wait_for_selector(".preset.active")
    page.click("#ruler-toggle")  # pressed, and the mouse stays on it
    for selector in ("#ruler-toggle", ".preset.active", "#fit"):
        page.mouse.move(0, 0)
        resting, resting_bg = contrast(page, selector)
        page.hover(selector)
        hovered, hovered_bg = contrast(page, selector)
        assert hovered_bg != resting_bg, f"{selector}: hovering shows nothing"
        # WCAG AA for text: 4.5:1.
        assert resting >= 4.5 and hovered >= 4.5, (selector, resting, hovered)
    page.context.close()
