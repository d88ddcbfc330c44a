"""URL-01/02 over HTTPS: a shared link opens one slide's tiles for minutes, and nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from tests.cli import cli
from tests.server.conftest import Server, run_server
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.security.signed_urls import MAX_LIFETIME, UrlKeys
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects


@dataclass
class Site:
    server: Server
    home: Path
    slide: str
    other: str  # another slide the token may also see
    bearer: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("signed")
    home = root / "home"
    KeyRing(home).initialise()
    ids = []
    for _ in range(2):
        slide = new_slide_id()
        with open_slide(synthetic_svs) as source:
            convert(
                source,
                LocalObjects(root / "stores" / slide),
                slide,
                ConvertOptions(),
                KeyRing(home),
            )
        assert cli(home, "slides", "assign", "case-a", slide).returncode == 0
        ids.append(slide)
    made = cli(home, "tokens", "create", "reports", "--scope", "tiles,metadata")
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    with run_server(root / "stores", home, secure=True) as server:
        yield Site(server, home, ids[0], ids[1], bearer)


def share(site: Site, slide: str) -> str:
    reply = site.server.request("POST", f"/api/slides/{slide}/share?minutes=5", site.bearer)
    assert reply.status == 200, reply.body
    assert reply.headers["cache-control"] == "no-store"
    doc = reply.json()
    assert doc["dzi"] == f"/deepzoom/{slide}.dzi?{doc['query']}"
    return str(doc["query"])


def test_a_shared_link_opens_the_slides_tiles_without_credentials(site: Site) -> None:
    query = share(site, site.slide)
    assert site.server.get(f"/deepzoom/{site.slide}.dzi?{query}").status == 200
    tile = site.server.get(f"/deepzoom/{site.slide}_files/12/3_2.jpeg?{query}")
    assert tile.status == 200 and tile.headers["content-type"] == "image/jpeg"
    assert site.server.get(f"/deepzoom/{site.slide}.dzi").status == 401  # no link, no entry


def test_a_shared_link_opens_nothing_else(site: Site) -> None:
    query = share(site, site.slide)
    for path in [
        f"/deepzoom/{site.other}.dzi",  # another slide
        f"/api/slides/{site.slide}",  # metadata: not a signed scope
        f"/api/slides/{site.slide}/region?x=0&y=0&width=64&height=64",  # regions: not this one
    ]:
        sep = "&" if "?" in path else "?"
        assert site.server.get(f"{path}{sep}{query}").status == 403, path
    # ... and cannot mint a longer-lived link for itself.
    minted = site.server.request("POST", f"/api/slides/{site.slide}/share?{query}")
    assert minted.status in (401, 403)


def _sign(site: Site, exp: int) -> str:
    return UrlKeys(KeyRing(site.home)).sign(site.slide, "tiles", exp)


@pytest.mark.parametrize(
    "case",
    [
        "exp in the past",
        "exp beyond the maximum lifetime",
        "duplicated exp",
        "re-cased parameter",
        "truncated signature",
    ],
)
def test_the_test_table_of_url_01(site: Site, case: str) -> None:
    now = int(time.time())
    good = _sign(site, now + 300)
    exp = dict(parse_qsl(good))["exp"]
    query = {
        "exp in the past": _sign(site, now - 5),
        "exp beyond the maximum lifetime": _sign(site, now + MAX_LIFETIME + 60),
        "duplicated exp": f"{good}&exp={exp}",
        "re-cased parameter": good.replace("kid=", "KID="),
        "truncated signature": good[:-1],
    }[case]
    reply = site.server.get(f"/deepzoom/{site.slide}.dzi?{query}")
    assert reply.status == 403, case
    assert dict(parse_qsl(good))["sig"] not in reply.body.decode()


def test_a_retired_key_is_refused(site: Site) -> None:
    query = share(site, site.slide)
    kid = dict(parse_qsl(query))["kid"]
    assert cli(site.home, "urls", "rotate").returncode == 0
    assert site.server.get(f"/deepzoom/{site.slide}.dzi?{query}").status == 200  # still valid
    assert cli(site.home, "urls", "retire", kid).returncode == 0
    assert site.server.get(f"/deepzoom/{site.slide}.dzi?{query}").status == 403
    fresh = share(site, site.slide)
    assert f"kid={int(kid) + 1}" in fresh
    assert site.server.get(f"/deepzoom/{site.slide}.dzi?{fresh}").status == 200


def test_signatures_never_reach_the_audit_log(site: Site) -> None:
    query = share(site, site.slide)
    assert site.server.get(f"/deepzoom/{site.slide}_files/12/0_0.jpeg?{query}").status == 200
    signature = dict(parse_qsl(query))["sig"]
    log = (site.home / "audit" / "audit.jsonl").read_text()
    assert '"signed-url"' in log  # the share was audited ...
    assert signature not in log  # ... without the secret part
