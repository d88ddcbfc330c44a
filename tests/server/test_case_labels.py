"""Which slide is which, over HTTP: case, block, stain and scan date in the slide listing,
a slide's metadata and the worklist's cases (in reading order), and the LIS's launch link
``/view?case=CASE-ID`` (issue 17)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.cli import cli
from tests.server.conftest import Server, Stores, converted, run_server
from tests.server.test_security import Person, enrol, last_line_token
from tileserver.security.keys import KeyRing

PASSWORD = "correct horse battery staple C"  # test-only, generated for this suite
# Labels given in an order that is not the reading order: (case, block, stain, scan date).
LABELS = [
    ("S26-0042", "B1", "H&E", "2026-03-02"),
    ("S26-0042", "A10", "H&E", ""),
    ("S26-0042", "A2", "Ki-67", "2026-03-01"),
    ("S26-0042", "A2", "H&E", "2026-03-01"),
    ("S26-0099", "A1", "PAS", "2026-03-03"),
]
READING_ORDER = [3, 2, 1, 0]  # A2 H&E, A2 Ki-67, A10 H&E, B1 H&E


@dataclass
class Site:
    server: Server
    home: Path
    ids: list[str]
    carol: Person  # granted S26-0042 only


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("labels")
    home, out = root / "home", root / "stores"
    KeyRing(home).initialise()
    ids = []
    for case, block, stain, date in LABELS:
        slide_id = converted(synthetic_svs, out, KeyRing(home))
        labelled = cli(
            home, "slides", "label", slide_id, "--case", case, "--block", block,
            "--stain", stain, "--scan-date", date,
        )  # fmt: skip
        assert labelled.returncode == 0, labelled.stderr
        ids.append(slide_id)
    with run_server(out, home, secure=True) as server:
        boot = cli(home, "users", "bootstrap", "--url", server.base)
        carol = enrol(server, last_line_token(boot.stdout, "setup"), "carol", PASSWORD)
        assert cli(home, "users", "grant", "carol", "S26-0042").returncode == 0
        yield Site(server, home, ids, carol)


def labels_of(index: int) -> dict[str, str | None]:
    case, block, stain, date = LABELS[index]
    return {"case": case, "block": block, "stain": stain, "scan_date": date or None}


def test_listing_and_metadata_carry_the_labels_of_granted_slides(site: Site) -> None:
    server, carol = site.server, site.carol
    items = server.get("/api/slides", carol.headers()).json()["items"]
    assert {item["id"] for item in items} == {site.ids[i] for i in READING_ORDER}
    for item in items:
        expected = labels_of(site.ids.index(item["id"]))
        assert {k: item[k] for k in expected} == expected
        assert item["width"] == 3000  # the metadata is still there
    one = server.get(f"/api/slides/{site.ids[2]}", carol.headers()).json()
    assert {k: one[k] for k in ("case", "block", "stain", "scan_date")} == labels_of(2)
    assert server.get(f"/api/slides/{site.ids[4]}", carol.headers()).status == 404  # not hers


def test_cases_list_slides_in_reading_order_with_their_labels(site: Site) -> None:
    cases = site.server.get("/viewer/cases", site.carol.headers()).json()["cases"]
    assert [c["name"] for c in cases] == ["S26-0042"]  # the other case is not hers
    assert cases[0]["slides"] == [site.ids[i] for i in READING_ORDER]
    assert cases[0]["labels"][site.ids[1]] == {"block": "A10", "stain": "H&E", "scan_date": None}
    # A relabel takes effect on the next request, in every listing.
    assert cli(site.home, "slides", "label", site.ids[0], "--block", "A1").returncode == 0
    try:
        cases = site.server.get("/viewer/cases", site.carol.headers()).json()["cases"]
        assert cases[0]["slides"][0] == site.ids[0]
    finally:
        assert cli(site.home, "slides", "label", site.ids[0], "--block", "B1").returncode == 0


def test_a_token_sees_labels_only_with_metadata_and_its_collections(site: Site) -> None:
    made = cli(
        site.home, "tokens", "create", "lis-labels", "--scope", "metadata",
        "--collection", "S26-0099",
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    (item,) = site.server.get("/api/slides", bearer).json()["items"]
    assert item["id"] == site.ids[4] and item["case"] == "S26-0099" and item["stain"] == "PAS"
    thumbs = cli(site.home, "tokens", "create", "lis-thumbs", "--scope", "thumbnails")
    bearer = {"Authorization": f"Bearer {thumbs.stdout.strip().splitlines()[-1]}"}
    assert site.server.get("/api/slides", bearer).status == 403
    assert site.server.get("/viewer/cases", bearer).status == 403
    assert site.server.get("/view?case=S26-0099", bearer).status == 403


def test_the_lis_link_opens_the_first_slide_of_a_granted_case_only(site: Site) -> None:
    server, carol = site.server, site.carol
    opened = server.get("/view?case=S26-0042", carol.headers())
    assert opened.status == 303
    assert opened.headers["location"] == f"/view/{site.ids[READING_ORDER[0]]}"
    not_granted = server.get("/view?case=S26-0099", carol.headers())
    missing = server.get("/view?case=S26-0000", carol.headers())
    assert not_granted.status == missing.status == 404
    assert not_granted.json()["error"] == missing.json()["error"]  # denial looks like absence
    assert server.get("/view?case=", carol.headers()).status == 404
    bare = server.get("/view", carol.headers())
    assert bare.status == 400 and "?case=CASE-ID" in bare.json()["error"]
    # Before login: to the login page, which comes back to the same link.
    browser = server.get("/view?case=S26-0042", {"Accept": "text/html"})
    assert browser.status == 303
    target = urlsplit(browser.headers["location"])
    assert target.path == "/login" and parse_qs(target.query)["next"] == ["/view?case=S26-0042"]


def test_a_case_not_granted_is_audited_as_a_refusal(site: Site) -> None:
    made = cli(
        site.home, "tokens", "create", "lis-probe", "--scope", "metadata",
        "--collection", "S26-0042",
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    assert site.server.get("/view?case=S26-0099", bearer).status == 404
    assert site.server.get("/view?case=S26-0042", bearer).status == 303
    records = [
        json.loads(line) for line in (site.home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    (refused,) = [r for r in records if r["user"] == "lis-probe"]
    assert refused["object"] == site.ids[4] and refused["detail"] == {"reason": "not_granted"}
    assert refused["outcome"] == 4


def test_the_openapi_document_names_the_labels(server: Server) -> None:
    slide = server.get("/api/openapi.json").json()["components"]["schemas"]["Slide"]
    for name in ("case", "block", "stain", "scan_date"):
        assert slide["properties"][name]["nullable"] is True


def test_without_accounts_slides_have_no_labels(server: Server, stores: Stores) -> None:
    item = server.get(f"/api/slides/{stores.synthetic}").json()
    assert [item[k] for k in ("case", "block", "stain", "scan_date")] == [None] * 4
    assert server.get("/view?case=Unassigned").status == 404  # no cases without accounts
