"""The viewer's page carries its slide's facts and DZI descriptor (a JSON data block), so the
viewer opens the slide without a round trip first; only for a caller who may read them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli import cli
from tests.server.conftest import Server, converted, run_server
from tests.server.test_security import Person, enrol, last_line_token
from tileserver.security.keys import KeyRing
from tileserver.server.routes.viewer import (
    SLIDE_DATA_ID,
    STATIC,
    slide_data_block,
    split_viewer_page,
)

PASSWORD = "correct horse battery staple V"  # test-only, generated for this suite
BLOCK = re.compile(
    rf'<script type="application/json" id="{SLIDE_DATA_ID}">(.*?)</script>', re.DOTALL
)


@dataclass
class Site:
    server: Server
    granted: str
    other: str
    dora: Person  # granted the case of ``granted`` only


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("viewer-page")
    home, out = root / "home", root / "stores"
    KeyRing(home).initialise()
    granted = converted(synthetic_svs, out, KeyRing(home))
    other = converted(synthetic_svs, out, KeyRing(home))
    for slide_id, case in ((granted, "V-1"), (other, "V-2")):
        labelled = cli(home, "slides", "label", slide_id, "--case", case, "--stain", "H&E")
        assert labelled.returncode == 0, labelled.stderr
    with run_server(out, home, secure=True) as server:
        boot = cli(home, "users", "bootstrap", "--url", server.base)
        dora = enrol(server, last_line_token(boot.stdout, "setup"), "dora", PASSWORD)
        assert cli(home, "users", "grant", "dora", "V-1").returncode == 0
        yield Site(server, granted, other, dora)


def page_data(body: bytes) -> list[object]:
    return [json.loads(found) for found in BLOCK.findall(body.decode())]


def test_the_page_carries_what_the_api_and_the_descriptor_say(site: Site) -> None:
    page = site.server.get(f"/view/{site.granted}", site.dora.headers())
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "private, no-cache"  # the caller's metadata
    assert "script-src 'self';" in page.headers["content-security-policy"]  # still strict
    info = site.server.get(f"/api/slides/{site.granted}", site.dora.headers()).json()
    dzi = site.server.get(f"/deepzoom/{site.granted}.dzi", site.dora.headers()).body.decode()
    assert page_data(page.body) == [{"info": info, "dzi": dzi}]
    assert info["case"] == "V-1"  # the labels too, as the API gives them
    text = page.body.decode()
    assert text.index(f'id="{SLIDE_DATA_ID}"') < text.index("</body>")  # inside the page


def test_a_slide_not_granted_gets_the_bare_page(site: Site) -> None:
    page = site.server.get(f"/view/{site.other}", site.dora.headers())
    assert page.status == 200  # the page asks the API, which answers 404 (and audits it)
    assert page_data(page.body) == []
    assert "</html>" in page.body.decode()
    assert site.server.get(f"/api/slides/{site.other}", site.dora.headers()).status == 404
    missing = "0" * 32
    assert page_data(site.server.get(f"/view/{missing}", site.dora.headers()).body) == []


def test_no_value_can_close_the_data_block() -> None:
    data = {"info": {"vendor": "</script><script>alert(1)</script>", "note": "<!--"}, "dzi": ""}
    block = slide_data_block(data)
    assert block.count("</script>") == 1 and "<!--" not in block
    assert page_data(block.encode()) == [data]
    assert slide_data_block(None) == ""


def test_the_block_goes_before_the_closing_body() -> None:
    head, tail = split_viewer_page("<html><body><p>x</p></body></html>\n")
    assert (head, tail) == ("<html><body><p>x</p>", "</body></html>\n")
    assert split_viewer_page("<p>no body</p>") == ("<p>no body</p>", "")


def test_static_files_from_memory_are_revalidated_as_from_disk(site: Site) -> None:
    served = site.server.get("/static/js/viewer.js")
    assert served.status == 200
    assert served.body == (STATIC / "js" / "viewer.js").read_bytes()
    assert served.headers["content-type"] == "text/javascript; charset=utf-8"
    assert served.headers["cache-control"] == "no-cache"
    etag, modified = served.headers["etag"], served.headers["last-modified"]
    again = site.server.get("/static/js/viewer.js", {"If-None-Match": etag})
    assert (again.status, again.body) == (304, b"")
    since = site.server.get("/static/js/viewer.js", {"If-Modified-Since": modified})
    assert since.status == 304
    other = site.server.get("/static/js/viewer.js", {"If-None-Match": '"0-0"'})
    assert (other.status, other.body) == (200, served.body)
    icon = site.server.get("/static/favicon.svg")
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.body.startswith(b"<svg")
    assert site.server.get("/static/js/none.js").status == 404
