"""Knowing which slide is which, in a real browser (Debian Chromium) against the real HTTPS
server (issue 17): the LIS's link ``/view?case=CASE-ID`` after login opens the case's first
slide with the case strip; a case not granted is 404; the strip switches slides; the worklist
and the viewer show block, stain and scan date in reading order; the macro overview is a
toggle for users with the label grant only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Server, run_server
from tests.viewer.conftest import ARTIFACTS, Person, _cli, enrol, poll, watch_errors
from tests.viewer.test_responsive import assert_on_screen
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

PASSWORD_DANA = "cases test password dana 1"  # test-only
PASSWORD_EVE = "cases test password eve 22"
# Labelled out of reading order: (case, block, stain, scan date, keep label and macro).
SLIDES = [
    ("S26-0042", "B1", "H&E", "2026-03-02", False),
    ("S26-0042", "A2", "Ki-67", "2026-03-01", False),
    ("S26-0042", "A2", "H&E", "2026-03-01", True),
    ("S26-0099", "A1", "PAS", "2026-03-03", True),
]
READING_ORDER = [2, 1, 0]  # A2 H&E, A2 Ki-67, B1 H&E
VIEWPORT = {"width": 1920, "height": 1000}


@dataclass
class Ward:
    server: Server
    home: Path
    ids: list[str]
    dana: Person  # S26-0042 with labels
    eve: Person  # S26-0042 without labels

    @property
    def case(self) -> list[str]:
        return [self.ids[i] for i in READING_ORDER]


def sign_in(browser: Any, server: Server, person: Person) -> None:
    context = browser.new_context(base_url=server.base, ignore_https_errors=True)
    login = {"username": person.name, "password": person.password, "code": person.fresh_code()}
    assert context.request.post("/auth/login", data=login).status == 200
    person.storage = context.storage_state()
    context.close()


@pytest.fixture(scope="module")
def ward(
    tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path, browser: Any
) -> Iterator[Ward]:
    root = tmp_path_factory.mktemp("cases")
    home, out = root / "home", root / "stores"
    KeyRing(home).initialise()
    ids = []
    for case, block, stain, date, keep in SLIDES:
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            options = ConvertOptions(keep_associated=keep)
            convert(source, LocalObjects(out / slide_id), slide_id, options, KeyRing(home))
        _cli(home, "slides", "label", slide_id, "--case", case, "--block", block,
             "--stain", stain, "--scan-date", date)  # fmt: skip
        ids.append(slide_id)
    with run_server(out, home, secure=True) as server:
        _cli(home, "users", "bootstrap", "--url", server.base)  # an administrator exists first
        dana, eve = Person("dana", PASSWORD_DANA), Person("eve", PASSWORD_EVE)
        enrol(server, home, dana, "S26-0042", "--labels")
        enrol(server, home, eve, "S26-0042")
        sign_in(browser, server, eve)
        yield Ward(server, home, ids, dana, eve)


def new_page(browser: Any, ward: Ward, person: Person | None = None) -> Any:
    context = browser.new_context(
        base_url=ward.server.base,
        ignore_https_errors=True,
        viewport=VIEWPORT,  # a desktop: every tool in the bar
        storage_state=person.storage if person and person.storage else None,
    )
    context.set_default_timeout(20_000)
    return watch_errors(context.new_page())


def strip_ids(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        ".strip-item", "items => items.map(i => i.dataset.id)"
    )
    return ids


def test_the_lis_link_after_login_opens_the_first_slide_with_the_strip(
    browser: Any, ward: Ward
) -> None:
    page = new_page(browser, ward)  # no session yet: the LIS's link goes through the login page
    page.goto("/view?case=S26-0042")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#login-username", ward.dana.name)
    page.fill("#login-password", ward.dana.password)
    page.fill("#login-code", ward.dana.fresh_code())
    page.click("#login-submit")
    page.wait_for_url(re.compile(f"/view/{ward.case[0]}$"))
    ward.dana.storage = page.context.storage_state()  # the other tests reuse her session
    page.wait_for_selector("body[data-case-strip=ready]")
    page.wait_for_selector("body[data-open=true]")
    assert page.is_visible("#case-strip")
    assert strip_ids(page) == ward.case
    assert page.get_attribute(".strip-item[aria-current=page]", "data-id") == ward.case[0]
    assert page.text_content(".strip-title") == "S26-0042"
    assert page.text_content(".strip-count") == "3 slides"
    captions = page.eval_on_selector_all(".strip-caption", "c => c.map(n => n.textContent)")
    assert captions == ["A2 · H&E", "A2 · Ki-67", "B1 · H&E"]
    poll(page, "[...document.querySelectorAll('.strip-thumb')].every(i => i.naturalWidth > 0)")
    # Rendered thumbnails queue behind the slide's own tiles, not beside them.
    priorities = page.eval_on_selector_all(".strip-thumb", "ns => ns.map(n => n.fetchPriority)")
    assert priorities == ["low"] * 3
    assert page.text_content("#slide-labels") == "A2 · H&E · 2026-03-01"
    assert page.get_attribute("#slide-labels", "title") == "Block A2 · H&E · scanned 2026-03-01"
    assert page.eval_on_selector("#slide-labels", "n => n.clientWidth >= n.scrollWidth")  # whole
    assert page.text_content("#case-name") == "S26-0042"
    assert page.text_content("#slide-position") == "1 / 3"  # next/previous: the same order
    page.screenshot(path=str(ARTIFACTS / "viewer-case-strip.png"))
    errors = [e for e in page.errors if "401" not in e]  # the login page asked /auth/me
    assert not errors, errors
    page.context.close()


def test_a_case_not_granted_is_not_found(browser: Any, ward: Ward) -> None:
    page = new_page(browser, ward, ward.eve)
    other = page.goto("/view?case=S26-0099")  # exists, not hers
    assert other is not None and other.status == 404
    shown = page.text_content("body") or ""
    unknown = page.goto("/view?case=S26-9999")
    assert unknown is not None and unknown.status == 404
    # The same answer, but for the correlation ID each error carries.
    strip = re.compile(r'"correlation_id": "[^"]*"')
    assert strip.sub("", shown) == strip.sub("", page.text_content("body") or "")
    assert "S26-0099" not in shown
    page.context.close()


def test_the_strip_switches_slides_and_can_be_put_away(browser: Any, ward: Ward) -> None:
    if not ward.dana.storage:
        sign_in(browser, ward.server, ward.dana)
    page = new_page(browser, ward, ward.dana)
    page.goto(f"/view/{ward.case[0]}")
    page.wait_for_selector("body[data-case-strip=ready]")
    page.click(f".strip-item[data-id='{ward.case[2]}']")
    page.wait_for_url(re.compile(f"/view/{ward.case[2]}$"))
    page.wait_for_selector("body[data-case-strip=ready]")
    page.wait_for_selector("body[data-open=true]")
    assert page.get_attribute(".strip-item[aria-current=page]", "data-id") == ward.case[2]
    assert page.text_content("#slide-labels") == "B1 · H&E · 2026-03-02"
    assert page.text_content("#slide-position") == "3 / 3"
    # Put away, it stays away on the next slide of this tab; back with the same button.
    assert page.get_attribute("#strip-toggle", "aria-expanded") == "true"
    page.click("#strip-toggle")
    assert page.is_hidden(".strip-item >> nth=0")
    assert page.get_attribute("#strip-toggle", "aria-expanded") == "false"
    page.keyboard.press("p")
    page.wait_for_url(re.compile(f"/view/{ward.case[1]}$"))
    page.wait_for_selector("body[data-case-strip=ready]")
    assert page.is_hidden(".strip-item >> nth=0")
    page.click("#strip-toggle")
    assert page.is_visible(".strip-item >> nth=0")
    assert page.get_attribute(".strip-item[aria-current=page]", "data-id") == ward.case[1]
    assert not page.errors, page.errors
    page.context.close()


def test_the_worklist_shows_labels_in_reading_order(browser: Any, ward: Ward) -> None:
    page = new_page(browser, ward, ward.eve)
    page.goto("/")
    page.wait_for_selector(".slide-card")
    cases = page.eval_on_selector_all(".case", "c => c.map(n => n.dataset.case)")
    assert cases == ["S26-0042"]  # S26-0099 is not hers
    cards = page.eval_on_selector_all(".slide-card", "c => c.map(n => n.dataset.id)")
    assert cards == ward.case
    lines = page.eval_on_selector_all(".slide-labels-line", "c => c.map(n => n.textContent)")
    assert lines == [
        "Block A2 · H&E · scanned 2026-03-01",
        "Block A2 · Ki-67 · scanned 2026-03-01",
        "Block B1 · H&E · scanned 2026-03-02",
    ]
    page.fill("#search", "ki-67")  # labels are searchable
    shown = page.eval_on_selector_all(".slide-card:not(.hidden)", "c => c.map(n => n.dataset.id)")
    assert shown == [ward.case[1]]
    page.screenshot(path=str(ARTIFACTS / "worklist-labels.png"))
    assert not page.errors, page.errors
    page.context.close()


def test_the_macro_toggle_is_only_for_the_label_grant(browser: Any, ward: Ward) -> None:
    if not ward.dana.storage:
        sign_in(browser, ward.server, ward.dana)
    slide = ward.case[0]  # kept its label and macro
    page = new_page(browser, ward, ward.dana)
    page.goto(f"/view/{slide}")
    page.wait_for_selector("#macro-toggle")
    assert page.is_hidden("#macro-panel")
    page.click("#macro-toggle")
    page.wait_for_selector("#macro-panel:not(.hidden)")
    assert page.eval_on_selector("#macro-image", "i => i.naturalWidth > 0")
    assert page.get_attribute("#macro-toggle", "aria-pressed") == "true"
    page.screenshot(path=str(ARTIFACTS / "viewer-macro.png"))
    page.click("#macro-panel")  # a click on the picture puts it away too
    assert page.is_hidden("#macro-panel")
    assert page.get_attribute("#macro-toggle", "aria-pressed") == "false"
    assert not page.errors, page.errors
    page.context.close()

    page = new_page(browser, ward, ward.eve)  # the same case, no label grant
    page.goto(f"/view/{slide}")
    page.wait_for_selector("body[data-case-strip=ready]")
    page.wait_for_selector("#label-panel", state="attached")
    poll(page, "document.getElementById('macro-image').complete")
    assert page.locator("#macro-toggle").count() == 0
    assert page.is_hidden("#macro-panel")
    assert page.request.get(f"/api/slides/{slide}/associated/macro").status == 404
    page.context.close()


def test_on_a_phone_the_labels_and_the_strip_fit(browser: Any, ward: Ward, tmp_path: Path) -> None:
    if not ward.dana.storage:
        sign_in(browser, ward.server, ward.dana)
    context = browser.new_context(
        base_url=ward.server.base,
        ignore_https_errors=True,
        viewport={"width": 390, "height": 844},
        storage_state=ward.dana.storage,
        has_touch=True,
        is_mobile=True,
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(f"/view/{ward.case[1]}")
    page.wait_for_selector("body[data-case-strip=ready]")
    page.wait_for_selector("body[data-open=true]")
    # The bar has no room for the labels: the current thumbnail's caption shows them.
    assert page.is_hidden("#slide-labels")
    assert page.text_content(".strip-item[aria-current=page]") == "A2 · Ki-67"
    assert page.is_visible(".strip-item[aria-current=page]")
    page.screenshot(path=str(tmp_path / "phone-case-strip.png"))
    assert_on_screen(page)  # every control inside the screen, no sideways scrolling
    page.tap(f".strip-item[data-id='{ward.case[0]}']")
    page.wait_for_url(re.compile(f"/view/{ward.case[0]}$"))
    context.close()
