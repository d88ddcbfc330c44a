"""A real DICOMweb client in a real browser: dicom-microscopy-viewer (the library inside Slim,
pinned by package-lock.json) shows our slide from our /dicomweb root (issue 16), in headless
Debian Chromium against the real HTTPS server. The page is static/compat/dicomweb.html; the
user finds the series with QIDO, as a DICOMweb client would."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.server.conftest import Server, converted, run_server
from tests.viewer.conftest import ARTIFACTS, VIEWPORT, Person, _cli, _token, image_stats, secret_of
from tests.viewer.conftest import poll as viewer_poll
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.server.routes.viewer import WORKER_CSP

DICOM_JSON = {"Accept": "application/dicom+json"}
STUDY_UID, SERIES_UID, SOP_INSTANCE = "0020000D", "0020000E", "00080018"
CONTAINER, NUMBER_OF_FRAMES, TOTAL_COLUMNS = "00400512", "00280008", "00480006"
PAGE = "/static/compat/dicomweb.html"
DMV = "/static/vendor/dicom-microscopy-viewer/dynamic-import/"
WORKER = f"{DMV}dataLoader.worker.min.js"
# The library's annotation manager inserts a <style> element for its tooltips; the page keeps
# the strict style-src, so the browser refuses it (annotations are not used here).
REFUSED_TOOLTIP_STYLE = "Applying inline style violates the following Content Security Policy"


def poll(page: Any, expression: str) -> Any:
    """conftest's poll, waiting up to 30 s as this module always has."""
    return viewer_poll(page, expression, timeout=30.0)


def value(dataset: dict[str, Any], tag: str) -> Any:
    return dataset[tag]["Value"][0]


def tissue_colour(png: bytes) -> tuple[Any, float]:
    """Mean RGB of the pixels that are not background (near white), and their share."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).reshape(-1, 3)
    tissue = rgb[rgb.mean(axis=1) < 220]
    return tissue.mean(axis=0), len(tissue) / len(rgb)


@dataclass(frozen=True)
class DicomSite:
    """A server of its own (the shared viewer site's first user must be its administrator,
    enrolled by test_viewer.py): slides a1 (JPEG chunks) and a2 (lossless zstd chunks) in
    case-a, b1 in case-b, and one user for each case."""

    server: Server
    home: Path
    a1: str
    a2: str
    b1: str
    reader: Person  # granted case-a
    other: Person  # granted case-b


def enrol(server: Server, home: Path, person: Person, collection: str) -> None:
    """A user added by the administrator's CLI, enrolled over HTTP, granted ``collection``."""
    token = _token(_cli(home, "users", "add", person.name, "--url", server.base))
    started = server.post(
        "/auth/enrol", {"token": token, "username": person.name, "password": person.password}
    )
    assert started.status == 200, started.body
    person.secret = secret_of(started.json()["otpauth_uri"])
    confirmed = server.post("/auth/enrol/confirm", {"token": token, "code": person.fresh_code()})
    assert confirmed.status == 200, confirmed.body
    _cli(home, "users", "grant", person.name, collection)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[DicomSite]:
    root = tmp_path_factory.mktemp("dmv")
    home, stores = root / "home", root / "stores"
    KeyRing(home).initialise()
    ids = []
    for codec in ("jpeg", "zstd", "jpeg"):
        ids.append(converted(synthetic_svs, stores, KeyRing(home), ConvertOptions(codec=codec)))
    a1, a2, b1 = ids
    _cli(home, "slides", "assign", "case-a", a1, a2)
    _cli(home, "slides", "assign", "case-b", b1)
    with run_server(stores, home, secure=True) as server:
        reader = Person("reader", "dicom microscopy viewer reader 1")  # test-only
        other = Person("other", "dicom microscopy viewer other 22")  # test-only
        enrol(server, home, reader, "case-a")
        enrol(server, home, other, "case-b")
        yield DicomSite(server, home, a1, a2, b1, reader, other)


def logged_in(browser: Any, site: DicomSite, person: Person) -> Any:
    """A browser context with ``person``'s session, logged in through the API."""
    context = browser.new_context(
        base_url=site.server.base, ignore_https_errors=True, viewport=VIEWPORT
    )
    context.set_default_timeout(20_000)
    login = context.request.post(
        "/auth/login",
        data={"username": person.name, "password": person.password, "code": person.fresh_code()},
    )
    assert login.status == 200, login.text()
    return context


@pytest.fixture(scope="module")
def reader(site: DicomSite, browser: Any) -> Iterator[Any]:
    """The case-a user's browser context."""
    context = logged_in(browser, site, site.reader)
    yield context
    context.close()


def find_series(context: Any, slide_id: str) -> tuple[str, str]:
    """(study, series) of ``slide_id`` through QIDO-RS with the session, as a client would:
    the user's studies, then each study's instances with their container (slide) ID."""
    studies = context.request.get("/dicomweb/studies", headers=DICOM_JSON)
    assert studies.status == 200, studies.text()
    for study in studies.json():
        uid = value(study, STUDY_UID)
        instances = context.request.get(
            f"/dicomweb/studies/{uid}/instances?includefield=ContainerIdentifier",
            headers=DICOM_JSON,
        )
        assert instances.status == 200, instances.text()
        for instance in instances.json():
            if value(instance, CONTAINER) == slide_id:
                return uid, value(instance, SERIES_UID)
    raise AssertionError(f"no study of slide {slide_id} in QIDO")


def test_qido_lists_only_the_users_slides(reader: Any, site: DicomSite) -> None:
    studies = reader.request.get("/dicomweb/studies", headers=DICOM_JSON)
    assert studies.status == 200, studies.text()
    assert len(studies.json()) == 2  # case-a's a1 and a2; case-b's b1 is not the user's
    study, series = find_series(reader, site.a1)
    assert (study, series) != find_series(reader, site.a2)


def test_dicom_microscopy_viewer_shows_the_slide(reader: Any, site: DicomSite) -> None:
    study, series = find_series(reader, site.a1)
    page = reader.new_page()
    frames: list[tuple[int, str]] = []
    urls: list[str] = []
    errors: list[str] = []
    csp: dict[str, str] = {}

    def on_response(response: Any) -> None:
        path = urlsplit(response.url).path
        if "/frames/" in path:
            frames.append((response.status, path))
        if path in (PAGE, WORKER, f"{DMV}dicomMicroscopyViewer.min.js"):
            csp[path] = response.headers.get("content-security-policy", "")

    # Context-wide: the decoder worker's own requests (its .wasm codecs) are seen too.
    reader.on("request", lambda request: urls.append(request.url))
    page.on("response", on_response)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{PAGE}?study={study}&series={series}")
    poll(page, "document.body.dataset.open !== 'pending'")
    assert page.evaluate("document.body.dataset.open") == "true", page.text_content("#message")
    poll(page, "Number(document.body.dataset.frames) >= 4")
    page.wait_for_timeout(1500)  # the frames the fitted view needs, decoded and drawn

    assert frames and all(status == 200 for status, _ in frames), frames[:5]
    assert page.evaluate("document.body.dataset.frameErrors") == "0"
    shot = page.locator("#viewport").screenshot()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dicom-microscopy-viewer.png").write_bytes(shot)
    mean, std = image_stats(shot)
    assert std > 20 and mean < 235, (mean, std)  # not blank
    thumbnail = reader.request.get(f"/api/slides/{site.a1}/thumbnail?max=600&format=png")
    assert thumbnail.status == 200, thumbnail.text()
    (shown, shown_share), (expected, _) = tissue_colour(shot), tissue_colour(thumbnail.body())
    assert shown_share > 0.3, shown_share
    assert abs(shown - expected).max() < 15, (shown, expected)  # measured: within 1

    # Only our origin, only the DICOMweb root and static files.
    origin = urlsplit(site.server.base).netloc
    fetched = [urlsplit(u) for u in urls if not u.startswith(("data:", "blob:"))]
    outside = [u.geturl() for u in fetched if u.netloc != origin]
    assert not outside, outside
    paths = [u.path for u in fetched]
    assert not [p for p in paths if not p.startswith(("/dicomweb/", "/static/"))], paths
    assert any(p.endswith(".wasm") for p in paths), "the worker fetched no decoder"
    # Strict CSP everywhere but the worker script, which its WebAssembly codecs need.
    assert "unsafe-eval" not in csp[PAGE] and "script-src 'self';" in csp[PAGE], csp
    assert csp[WORKER] == WORKER_CSP, csp
    assert "unsafe-eval" not in csp[f"{DMV}dicomMicroscopyViewer.min.js"], csp
    errors = [e for e in errors if not e.startswith(REFUSED_TOOLTIP_STYLE)]
    assert not errors, errors

    # Full resolution at the bottom-right corner: the edge frames (the slide is not a whole
    # number of tiles) decode too, which needs them at full Rows x Columns.
    metadata = reader.request.get(
        f"/dicomweb/studies/{study}/series/{series}/metadata", headers=DICOM_JSON
    )
    assert metadata.status == 200, metadata.text()
    base = max(metadata.json(), key=lambda instance: value(instance, TOTAL_COLUMNS))
    last_frame = value(base, NUMBER_OF_FRAMES)
    box = page.locator("#viewport").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + w / 2, y + h / 2)
    for _ in range(3):  # the fitted view is ~2.3 level-0 pixels a screen pixel
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(250)
    for _ in range(6):  # drag the bottom-right corner into view (the view stops at the edge)
        page.mouse.move(x + w * 0.9, y + h * 0.9)
        page.mouse.down()
        page.mouse.move(x + w * 0.1, y + h * 0.1, steps=8)
        page.mouse.up()
        page.wait_for_timeout(200)
    page.wait_for_timeout(1500)
    base_frames = {p for _, p in frames if f"/instances/{value(base, SOP_INSTANCE)}/" in p}
    numbers = sorted(int(path.rsplit("/", 1)[1]) for path in base_frames)
    assert last_frame in numbers, (last_frame, numbers)
    assert all(status == 200 for status, _ in frames), [f for f in frames if f[0] != 200][:5]
    assert page.evaluate("document.body.dataset.frameErrors") == "0"
    corner = page.locator("#viewport").screenshot()
    (ARTIFACTS / "dicom-microscopy-viewer-corner.png").write_bytes(corner)
    assert image_stats(corner)[1] > 20
    errors = [e for e in errors if not e.startswith(REFUSED_TOOLTIP_STYLE)]
    assert not errors, errors


def test_a_series_of_another_collection_does_not_open(
    reader: Any, site: DicomSite, browser: Any
) -> None:
    """b1 belongs to case-b: its UIDs, as a user of case-b finds them, open nothing here."""
    other = logged_in(browser, site, site.other)
    try:
        study, series = find_series(other, site.b1)
    finally:
        other.close()
    page = reader.new_page()
    page.goto(f"{PAGE}?study={study}&series={series}")
    poll(page, "document.body.dataset.open !== 'pending'")
    assert page.evaluate("document.body.dataset.open") == "failed"
    assert page.is_visible("#message")
    metadata = reader.request.get(
        f"/dicomweb/studies/{study}/series/{series}/metadata", headers=DICOM_JSON
    )
    assert metadata.status == 404


@pytest.mark.parametrize("query", ["", "?study=not-a-uid&series=1.2.3", "?study=1.2&series=3.4"])
def test_a_bad_or_unknown_series_is_said_plainly(reader: Any, query: str) -> None:
    page = reader.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{PAGE}{query}")
    poll(page, "document.body.dataset.open !== 'pending'")
    assert page.evaluate("document.body.dataset.open") == "failed"
    assert "Cannot show the series" in (page.text_content("#message") or "")
    assert not errors, errors  # refused by the server, not a crash in the page


@pytest.mark.parametrize(
    "path",
    [
        "/static/vendor/dicom-microscopy-viewer/%2e%2e/package.json",
        "/static/vendor/dicom-microscopy-viewer/../package.json",
        "/static/vendor/dicom-microscopy-viewer/dynamic-import/..%2f..%2fpackage.json",
        "/static/vendor/dicomweb-client/../package.json",
        "/static/vendor/dicomweb-client/",
        "/static/vendor/dicom-microscopy-viewer",
        "/static/vendor/unknown-package/index.js",
        "/static/vendor/dicom-microscopy-viewer//etc/passwd",
    ],
)
def test_vendor_paths_stay_inside_their_package(site: DicomSite, path: str) -> None:
    reply = site.server.get(path)
    assert reply.status == 404, (path, reply.status)
    assert b'"name"' not in reply.body and b"root:" not in reply.body


def test_vendor_files_are_served_with_their_types(site: DicomSite) -> None:
    server = site.server
    script = server.get(f"{DMV}dicomMicroscopyViewer.min.js")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    wasm = server.get(f"{DMV}libjpegturbowasm_decode.wasm")
    assert wasm.status == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.body[:4] == b"\0asm"
    client = server.get("/static/vendor/dicomweb-client/dicomweb-client.js")
    assert client.status == 200 and b"DICOMwebClient" in client.body


def test_a_missing_package_is_a_404_saying_how_to_install_it(
    site: DicomSite, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("TILESERVER_DICOM_MICROSCOPY_VIEWER", str(tmp_path / "absent"))
    with run_server(site.server.directory, tmp_path / "home") as server:
        reply = server.get(f"{DMV}dicomMicroscopyViewer.min.js")
        assert reply.status == 404
        assert b"dicom-microscopy-viewer is not installed" in reply.body
        assert b"setup-browser.sh (npm ci)" in reply.body
        # The other packages are unaffected.
        assert server.get("/static/vendor/dicomweb-client/dicomweb-client.js").status == 200


def test_a_losslessly_stored_slide_displays_too(reader: Any, site: DicomSite) -> None:
    study, series = find_series(reader, site.a2)
    page = reader.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/frames/" in r.url else None)
    page.goto(f"{PAGE}?study={study}&series={series}")
    poll(page, "document.body.dataset.open !== 'pending'")
    assert page.evaluate("document.body.dataset.open") == "true", page.text_content("#message")
    poll(page, "Number(document.body.dataset.frames) >= 4")
    page.wait_for_timeout(1500)
    assert statuses and all(status == 200 for status in statuses), statuses
    assert page.evaluate("document.body.dataset.frameErrors") == "0"
    shot = page.locator("#viewport").screenshot()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dicom-microscopy-viewer-lossless.png").write_bytes(shot)
    thumbnail = reader.request.get(f"/api/slides/{site.a2}/thumbnail?max=600&format=png")
    assert thumbnail.status == 200, thumbnail.text()
    (shown, share), (expected, _) = tissue_colour(shot), tissue_colour(thumbnail.body())
    assert share > 0.3, share
    assert abs(shown - expected).max() < 15, (shown, expected)
