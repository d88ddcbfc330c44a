"""A real browser against the real HTTPS server: headless Debian Chromium driven by Playwright.

Set up by scripts/setup-browser.sh (Chromium from Debian, OpenSeadragon from npm). Missing
pieces fail with what to run, never skip: CI must exercise the viewer.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.cli import cli
from tests.server.conftest import Server, run_server
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security import totp
from tileserver.security.keys import KeyRing
from tileserver.server.routes.viewer import openseadragon_dir
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

CHROMIUM = os.environ.get("TILESERVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("TILESERVER_VIEWER_ARTIFACTS", "/tmp/tileserver-viewer-artifacts"))
PASSWORD_ALICE = "viewer test password alice 1"  # test-only
PASSWORD_BOB = "viewer test password bob 22"
VIEWPORT = {"width": 1400, "height": 860}
SETUP_HINT = "run scripts/setup-browser.sh (Chromium from Debian, OpenSeadragon via npm ci)"


@dataclass
class Person:
    name: str
    password: str
    secret: bytes = b""
    last_step: int = -1
    storage: dict[str, Any] = field(default_factory=dict)  # Playwright storage state

    def fresh_code(self) -> str:
        """A code the server accepts now: a step within one of now, after any used before."""
        while True:
            now = totp.step_of(time.time())
            step = max(self.last_step + 1, now - 1)
            if step <= now + 1:
                self.last_step = step
                return totp.code_at(self.secret, step)
            time.sleep(0.5)


@dataclass
class Site:
    server: Server
    home: Path
    a1: str  # case-a, label kept
    a2: str  # case-a, no label
    b1: str  # case-b, label kept (bob may not see labels)
    alice_setup: str  # one-time setup token (bootstrap admin), enrolled in the browser
    alice: Person
    bob: Person  # enrolled over HTTP after alice, logs in through the login page


def _cli(home: Path, *args: str) -> str:
    done = cli(home, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _token(output: str) -> str:
    url = output.strip().splitlines()[-1]
    return parse_qs(urlsplit(url).query)["setup"][0]


def secret_of(otpauth_uri: str) -> bytes:
    b32 = parse_qs(urlsplit(otpauth_uri).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


@pytest.fixture(scope="session")
def viewer_site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    if openseadragon_dir() is None:
        pytest.fail(f"OpenSeadragon is not installed: {SETUP_HINT}")
    root = tmp_path_factory.mktemp("viewer")
    home = root / "home"
    KeyRing(home).initialise()
    out = root / "stores"
    ids = []
    for keep in (True, False, True):
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            options = ConvertOptions(keep_associated=keep)
            convert(source, LocalObjects(out / slide_id), slide_id, options, KeyRing(home))
        ids.append(slide_id)
    a1, a2, b1 = ids
    _cli(home, "slides", "assign", "case-a", a1, a2)
    _cli(home, "slides", "assign", "case-b", b1)
    with run_server(out, home, secure=True) as server:
        alice_setup = _token(_cli(home, "users", "bootstrap", "--url", server.base))
        alice, bob = Person("alice", PASSWORD_ALICE), Person("bob", PASSWORD_BOB)
        yield Site(server, home, a1, a2, b1, alice_setup, alice, bob)


def poll(page: Any, expression: str, timeout: float = 20.0) -> Any:
    """Until ``expression`` is truthy in the page. (Playwright's wait_for_function evaluates
    strings with eval, which our CSP rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def watch_errors(page: Any) -> Any:
    """``page``, its uncaught exceptions and console errors gathered in ``page.errors`` (a
    test asserts there are none)."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    return page


def enrol(server: Server, home: Path, person: Person, *grant: str) -> None:
    """A user added by the administrator and enrolled over HTTP, then granted ``grant``
    (the arguments of ``users grant`` after the name)."""
    token = _token(_cli(home, "users", "add", person.name, "--url", server.base))
    started = server.post("/auth/enrol", {"token": token, "password": person.password})
    assert started.status == 200, started.body
    person.secret = secret_of(started.json()["otpauth_uri"])
    confirmed = server.post("/auth/enrol/confirm", {"token": token, "code": person.fresh_code()})
    assert confirmed.status == 200, confirmed.body
    _cli(home, "users", "grant", person.name, *grant)


def session_of(browser: Any, server: Server, person: Person) -> dict[str, Any]:
    """``person``'s signed-in browser state (cookies), for contexts opened already logged in."""
    context = browser.new_context(base_url=server.base, ignore_https_errors=True)
    login = {"username": person.name, "password": person.password, "code": person.fresh_code()}
    assert context.request.post("/auth/login", data=login).status == 200
    storage: dict[str, Any] = context.storage_state()
    context.close()
    return storage


def enrol_over_http(site: Site, person: Person, collection: str) -> None:
    """A user added by the administrator, enrolled with the API (not the page)."""
    token = _token(_cli(site.home, "users", "add", person.name, "--url", site.server.base))
    started = site.server.post(
        "/auth/enrol", {"token": token, "username": person.name, "password": person.password}
    )
    assert started.status == 200, started.body
    person.secret = secret_of(started.json()["otpauth_uri"])
    confirmed = site.server.post(
        "/auth/enrol/confirm", {"token": token, "code": person.fresh_code()}
    )
    assert confirmed.status == 200, confirmed.body
    _cli(site.home, "users", "grant", person.name, collection)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one test module. Not for the session: while Playwright's sync API
    runs, its event loop counts as running in this thread, so the asyncio.run of tests that
    come after in the same process (xdist gives each worker many modules) would fail."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: {SETUP_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: scripts/setup.sh (dev extras)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_context(browser: Any, viewer_site: Site) -> Iterator[Any]:
    """Fresh browser contexts (own cookie jar) on the test server; closed after the test."""
    contexts = []

    def make(storage: dict[str, Any] | None = None, scale: float = 1) -> Any:
        context = browser.new_context(
            base_url=viewer_site.server.base,
            ignore_https_errors=True,  # the server's self-signed certificate
            viewport=VIEWPORT,
            device_scale_factor=scale,  # device pixels per CSS pixel
            storage_state=storage or None,
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def held_openseadragon(page: Any) -> list[Any]:
    """OpenSeadragon's script held back (not answered) until the test continues it."""
    held: list[Any] = []
    page.route("**/openseadragon.min.js", lambda route: held.append(route))
    return held


def image_stats(png: bytes) -> tuple[float, float]:
    """(mean, standard deviation) of the grey levels of a screenshot."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(grey.mean()), float(grey.std())
