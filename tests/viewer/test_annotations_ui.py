"""Drawing annotations in the viewer (static/js/annotate.js), in Debian Chromium against the
real HTTPS server and its annotations API: each shape drawn with the mouse, labelled, seen
again after a reload; a rectangle's area as the server measured it (w x h x mpp^2); a colleague
in the case sees a shared annotation and not a private one; edit and delete keep versions on
the server; export downloads GeoJSON that imports again; a label's markup stays text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Server, run_server
from tests.viewer.conftest import Person, _cli, enrol, poll
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

PASSWORDS = {"ann": "annotation test password ann", "ben": "annotation test password ben"}
VIEWPORT = {"width": 1400, "height": 860}
COUNT = "Number(document.body.dataset.annotations || -1)"


@dataclass
class Clinic:
    server: Server
    slide: str
    storage: dict[str, dict[str, Any]]  # signed-in browser state per user


@pytest.fixture(scope="module")
def clinic(
    tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path, browser: Any
) -> Iterator[Clinic]:
    """One encrypted slide in case-n; ann and ben, both granted the case, each signed in once
    (TOTP codes are single use: the tests reuse the sessions)."""
    root = tmp_path_factory.mktemp("annotations-ui")
    home = root / "home"
    KeyRing(home).initialise()
    out = root / "stores"
    slide = new_slide_id()
    with open_slide(synthetic_svs) as source:
        convert(source, LocalObjects(out / slide), slide, ConvertOptions(), KeyRing(home))
    _cli(home, "slides", "assign", "case-n", slide)
    with run_server(out, home, secure=True) as server:
        storage = {}
        for name, password in PASSWORDS.items():
            person = Person(name, password)
            enrol(server, home, person, "case-n")
            context = browser.new_context(base_url=server.base, ignore_https_errors=True)
            login = {"username": name, "password": password, "code": person.fresh_code()}
            assert context.request.post("/auth/login", data=login).status == 200
            storage[name] = context.storage_state()
            context.close()
        yield Clinic(server, slide, storage)


@pytest.fixture
def open_viewer(browser: Any, clinic: Clinic) -> Iterator[Any]:
    """A page of the slide for a user, the annotations panel opened by its key (A)."""
    contexts = []

    def make(who: str) -> Any:
        context = browser.new_context(
            base_url=clinic.server.base,
            ignore_https_errors=True,
            viewport=VIEWPORT,
            storage_state=clinic.storage[who],
            accept_downloads=True,
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
        page.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and "400" not in m.text  # a refused label logs its 400
                else None
            ),
        )
        page.errors = errors
        show(page, clinic)
        return page

    yield make
    for context in contexts:
        context.close()


def show(page: Any, clinic: Clinic) -> None:
    page.goto(f"/view/{clinic.slide}")
    page.wait_for_selector("body[data-open=true]")
    page.wait_for_selector("body[data-fully-loaded=true]", state="attached")
    poll(page, f"{COUNT} >= 0")  # the annotations are loaded
    page.locator("#osd .openseadragon-canvas").first.focus()
    page.keyboard.press("a")
    page.wait_for_selector("#annotations:not(.hidden)")
    assert page.get_attribute("#annotate-toggle", "aria-pressed") == "true"


def api(page: Any, clinic: Clinic, path: str = "") -> Any:
    response = page.request.get(f"/api/slides/{clinic.slide}/annotations{path}")
    assert response.status == 200, response.text()
    return response.json()


def at(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """A point of the slide's element, as fractions of its width and height, on the page."""
    box = page.locator("#osd").bounding_box()
    return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy


def image_point(page: Any, x: float, y: float) -> dict[str, float]:
    """Level-0 pixel under a page position, as OpenSeadragon converts it."""
    box = page.locator("#osd").bounding_box()
    result: dict[str, float] = page.evaluate(
        """([x, y]) => {
          const viewer = OpenSeadragon.getViewer(document.getElementById('osd'));
          const p = viewer.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point(x, y));
          return {x: p.x, y: p.y};
        }""",
        [x - box["x"], y - box["y"]],
    )
    return result


def draw(page: Any, tool: str, label: str, points: list[tuple[float, float]], **kw: Any) -> None:
    """Choose ``tool``, type ``label``, draw through ``points`` (fractions of the slide's
    element, right of the panel's 300 px) with the mouse, and wait until the server has it."""
    before = page.evaluate(COUNT)
    if page.get_attribute(f"[data-tool={tool}]", "aria-pressed") != "true":
        page.click(f"[data-tool={tool}]")
    page.fill("#annotation-label", label)
    page.set_checked("#annotation-shared", kw.get("shared", False))
    positions = [at(page, fx, fy) for fx, fy in points]
    if tool in ("rectangle", "ellipse"):
        (x0, y0), (x1, y1) = positions
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=8)
        page.mouse.up()
    elif tool == "point":
        page.mouse.click(*positions[0])
    else:
        for x, y in positions[:-1]:
            page.mouse.click(x, y)
            page.wait_for_timeout(350)  # single clicks, not a double-click
        if kw.get("enter"):
            page.mouse.click(*positions[-1])
            page.keyboard.press("Enter")
        else:
            page.mouse.dblclick(*positions[-1])
    if kw.get("refused"):
        poll(page, "document.getElementById('annotation-status').dataset.kind === 'error'")
    else:
        try:
            poll(page, f"{COUNT} === {before + 1}")
        except AssertionError as error:
            status = page.text_content("#annotation-status")
            raise AssertionError(f"{tool} {label!r} not saved: {status!r}") from error


def items(page: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('#annotation-list .annotation-item')].map(li => ({
          id: li.dataset.id, shape: li.dataset.shape, own: li.dataset.own === 'true',
          shared: li.dataset.shared === 'true', areaUm2: li.dataset.areaUm2,
          name: li.querySelector('.annotation-name').textContent,
          measure: li.querySelector('.annotation-measure').textContent,
          owner: li.querySelector('.annotation-owner').textContent,
          deletable: !!li.querySelector('.annotation-delete'),
        }))"""
    )
    return rows


def by_label(features: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["properties"]["label"]: f for f in features}


def test_each_shape_drawn_with_the_mouse_is_kept_and_measured(
    open_viewer: Any, clinic: Clinic, tmp_path: Path
) -> None:
    page = open_viewer("ann")
    draw(page, "point", "P mitosis", [(0.30, 0.30)])
    draw(page, "polyline", "L margin", [(0.35, 0.35), (0.45, 0.40), (0.50, 0.55)])
    draw(page, "polygon", "G tumour", [(0.55, 0.30), (0.70, 0.32), (0.66, 0.50), (0.56, 0.45)])
    start, end = at(page, 0.30, 0.60), at(page, 0.45, 0.80)
    draw(page, "rectangle", "R field", [(0.30, 0.60), (0.45, 0.80)])
    draw(page, "ellipse", "E gland", [(0.60, 0.60), (0.75, 0.85)])

    features = by_label(api(page, clinic)["features"])
    wanted = {
        "P mitosis": ("point", "Point"),
        "L margin": ("polyline", "LineString"),
        "G tumour": ("polygon", "Polygon"),
        "R field": ("rectangle", "Polygon"),
        "E gland": ("ellipse", "Polygon"),
    }
    for label, (shape, kind) in wanted.items():
        assert features[label]["properties"]["shape"] == shape
        assert features[label]["geometry"]["type"] == kind
    assert len(features["L margin"]["geometry"]["coordinates"]) == 3
    assert len(features["G tumour"]["geometry"]["coordinates"][0]) == 5  # 4 corners, closed
    assert len(features["E gland"]["geometry"]["coordinates"][0]) == 65

    # The rectangle is where the mouse dragged, in level-0 pixels.
    ring = features["R field"]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    a, b = image_point(page, *start), image_point(page, *end)
    assert min(xs) == pytest.approx(a["x"], abs=2) and max(xs) == pytest.approx(b["x"], abs=2)
    assert min(ys) == pytest.approx(a["y"], abs=2) and max(ys) == pytest.approx(b["y"], abs=2)

    # Seen again after a reload, on the slide and in the list, with the server's measurements.
    show(page, clinic)
    poll(page, f"{COUNT} === {len(features)}")
    rows = {row["name"]: row for row in items(page)}
    assert set(wanted) <= set(rows)
    page.screenshot(path=str(tmp_path / "annotations.png"))
    shapes = page.locator("#annotation-layer .annotation-shape").count()
    texts = page.locator("#annotation-layer .annotation-text").all_text_contents()
    assert shapes == len(features) and set(wanted) <= set(texts)
    info = page.request.get(f"/api/slides/{clinic.slide}").json()
    mpp_x, mpp_y = info["mpp"]
    area = (max(xs) - min(xs)) * (max(ys) - min(ys)) * mpp_x * mpp_y
    measured = features["R field"]["properties"]["measurements"]
    assert measured["area_um2"] == pytest.approx(area, rel=1e-4)
    assert float(rows["R field"]["areaUm2"]) == pytest.approx(area, rel=1e-4)
    assert "µm²" in rows["R field"]["measure"] and "perimeter" in rows["R field"]["measure"]
    shown = float(rows["R field"]["measure"].split(" µm²")[0].replace(",", ""))
    assert shown == pytest.approx(area, rel=0.01)
    assert rows["L margin"]["measure"].endswith("µm")
    assert rows["P mitosis"]["measure"] == ""
    assert not page.errors, page.errors


def test_a_colleague_sees_a_shared_annotation_not_a_private_one(
    open_viewer: Any, clinic: Clinic
) -> None:
    ann = open_viewer("ann")
    draw(ann, "rectangle", "for the tumour board", [(0.35, 0.10), (0.45, 0.20)], shared=True)
    draw(ann, "rectangle", "my own note", [(0.47, 0.10), (0.55, 0.20)])
    private = by_label(api(ann, clinic)["features"])["my own note"]

    ben = open_viewer("ben")
    rows = {row["name"]: row for row in items(ben)}
    assert "for the tumour board" in rows and "my own note" not in rows
    shared = rows["for the tumour board"]
    assert shared["owner"] == "shared by ann" and not shared["own"] and not shared["deletable"]
    assert "my own note" not in ben.locator("#annotation-layer").text_content()
    # Read-only for him: selecting it leaves Save disabled.
    ben.click(f"[data-id='{shared['id']}'] .annotation-name")
    assert ben.locator("#annotation-save").is_disabled()
    hidden = ben.request.get(f"/api/slides/{clinic.slide}/annotations/{private['id']}")
    assert hidden.status == 404
    assert not ann.errors and not ben.errors, (ann.errors, ben.errors)


def test_edit_and_delete_keep_the_versions(open_viewer: Any, clinic: Clinic) -> None:
    page = open_viewer("ann")
    # By keyboard where it can be: the tool by Enter on its button, the polygon ended by Enter.
    page.focus("[data-tool=polygon]")
    page.keyboard.press("Enter")
    assert page.get_attribute("[data-tool=polygon]", "aria-pressed") == "true"
    corners = [(0.40, 0.62), (0.50, 0.62), (0.45, 0.75)]
    draw(page, "polygon", "draft outline", corners, enter=True)
    row = next(r for r in items(page) if r["name"] == "draft outline")
    page.keyboard.press("Escape")  # the tool off: the list is for choosing now
    page.click(f"[data-id='{row['id']}'] .annotation-name")
    page.fill("#annotation-label", "final outline")
    page.fill("#annotation-color", "#00ff80")
    page.click("#annotation-save")
    poll(page, "document.getElementById('annotation-status').textContent === 'Changes saved.'")

    show(page, clinic)
    edited = next(r for r in items(page) if r["id"] == row["id"])
    assert edited["name"] == "final outline"
    one = api(page, clinic, f"/{row['id']}")
    assert one["properties"]["color"] == "#00ff80" and one["properties"]["version"] == 2

    before = page.evaluate(COUNT)
    page.click(f"[data-id='{row['id']}'] .annotation-delete")
    poll(page, f"{COUNT} === {before - 1}")
    show(page, clinic)
    assert row["id"] not in {r["id"] for r in items(page)}
    history = api(page, clinic, f"/{row['id']}/versions")
    versions = history["versions"] if isinstance(history, dict) else history
    assert len(versions) == 3, history
    assert not page.errors, page.errors


def test_export_downloads_geojson_that_imports_again(
    open_viewer: Any, clinic: Clinic, tmp_path: Path
) -> None:
    page = open_viewer("ann")
    draw(page, "point", "exported point", [(0.78, 0.3)])
    count = page.evaluate(COUNT)
    own = [f for f in api(page, clinic)["features"] if f["properties"]["own"]]
    with page.expect_download() as waiting:
        page.click("#annotation-export")
    path = tmp_path / "export.geojson"
    waiting.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["type"] == "FeatureCollection"
    # What the user sees: her own and the shared ones of others (none here but hers).
    assert len(exported["features"]) == count >= len(own)
    names = {f["properties"]["name"] for f in exported["features"]}
    assert "exported point" in names

    page.set_input_files("#annotation-import", str(path))
    poll(page, f"{COUNT} === {2 * count}")
    labels = [r["name"] for r in items(page)]
    assert labels.count("exported point") == 2
    assert not page.errors, page.errors


def test_markup_in_a_label_is_shown_as_text(open_viewer: Any, clinic: Clinic) -> None:
    page = open_viewer("ann")
    looks_like_html = '&lt;b&gt;bold&lt;/b&gt; & "quoted"'
    draw(page, "point", looks_like_html, [(0.40, 0.88)])
    row = next(r for r in items(page) if r["name"] == looks_like_html)
    assert row["name"] == looks_like_html  # the entities are characters, not decoded
    assert looks_like_html in page.locator("#annotation-layer").all_text_contents()[0]
    assert page.locator("#annotations b, #annotation-layer b").count() == 0

    # Real markup: the server refuses it (400), the viewer says why, as text, and adds nothing.
    before = page.evaluate(COUNT)
    attack = "<img src=x onerror=alert(1)>"
    draw(page, "point", attack, [(0.43, 0.88)], refused=True)
    status = page.text_content("#annotation-status") or ""
    assert status.startswith("Not saved:"), status
    assert page.evaluate(COUNT) == before
    assert page.locator("#annotations img, #annotation-layer img").count() == 0
    assert attack not in page.locator("#annotation-layer").text_content()
    assert not page.errors, page.errors


def test_a_rectangle_is_reshaped_by_dragging_its_corner(open_viewer: Any, clinic: Clinic) -> None:
    page = open_viewer("ann")
    draw(page, "rectangle", "to reshape", [(0.55, 0.62), (0.65, 0.72)])
    row = next(r for r in items(page) if r["name"] == "to reshape")
    page.keyboard.press("Escape")  # the tool off
    page.click(f"[data-id='{row['id']}'] .annotation-name")  # chosen: the view goes to it
    page.wait_for_timeout(700)  # the view's animation (0.45 s) has started and ended
    poll(page, "document.getElementById('osd').dataset.sharp === 'true'")
    handle = page.locator("#annotation-layer .annotation-handle[data-index='2']").bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y + 50, steps=8)
    page.mouse.up()
    poll(page, "document.getElementById('annotation-status').textContent === 'Moved.'")

    moved = api(page, clinic, f"/{row['id']}")
    assert moved["properties"]["version"] == 2 and moved["properties"]["shape"] == "rectangle"
    ring = moved["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    corner = image_point(page, x + 80, y + 50)
    assert max(xs) == pytest.approx(corner["x"], abs=1) and max(ys) == pytest.approx(
        corner["y"], abs=1
    )
    mpp_x, mpp_y = page.request.get(f"/api/slides/{clinic.slide}").json()["mpp"]
    area = (max(xs) - min(xs)) * (max(ys) - min(ys)) * mpp_x * mpp_y
    assert moved["properties"]["measurements"]["area_um2"] == pytest.approx(area, rel=1e-4)
    shown = next(r for r in items(page) if r["id"] == row["id"])
    assert float(shown["areaUm2"]) == pytest.approx(area, rel=1e-4)
    assert not page.errors, page.errors
