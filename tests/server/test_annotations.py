"""The annotations API end to end: the real server over HTTPS, two people in one case and one
outside it, machine tokens with and without the scope, GeoJSON round trip, audit."""

from __future__ import annotations

import http.client
import json
import math
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.cli import cli
from tests.server.conftest import Response, Server, Stores, converted, run_server
from tests.server.test_security import PASSWORD_A, PASSWORD_B, Person, enrol, last_line_token
from tileserver.annotations import MAX_BODY_BYTES
from tileserver.security.keys import KeyRing

PASSWORD_C = "correct horse battery staple C"  # test-only, generated for this suite
LABEL = "margin-9c41e"  # distinctive: looked for in the audit trail
MPP = 0.25  # the synthetic slide's


@dataclass
class Site:
    server: Server
    home: Path
    slide: str  # case-a, encrypted
    other: str  # case-b, encrypted
    plain: str  # case-a, a plaintext store (convert --no-encrypt)
    alice: Person  # case-a
    bob: Person  # case-a
    carol: Person  # case-b only
    lis: str  # token: metadata, tiles (no annotations)
    notes: str  # token: metadata, annotations


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("annotations")
    home, out = root / "home", root / "stores"
    KeyRing(home).initialise()
    ids = []
    for encrypted in (True, True, False):
        ids.append(converted(synthetic_svs, out, KeyRing(home) if encrypted else None))
    slide, other, plain = ids
    assert cli(home, "slides", "assign", "case-a", slide, plain).returncode == 0
    assert cli(home, "slides", "assign", "case-b", other).returncode == 0
    with run_server(out, home, secure=True) as server:
        boot = cli(home, "users", "bootstrap", "--url", server.base)
        alice = enrol(server, last_line_token(boot.stdout, "setup"), "alice", PASSWORD_A)
        people = [alice]
        for name, password in (("bob", PASSWORD_B), ("carol", PASSWORD_C)):
            added = cli(home, "users", "add", name, "--url", server.base)
            person = enrol(server, last_line_token(added.stdout, "setup"), name, password)
            person.name = name
            people.append(person)
        for name, case in (("alice", "case-a"), ("bob", "case-a"), ("carol", "case-b")):
            assert cli(home, "users", "grant", name, case).returncode == 0
        tokens = []
        for name, scopes in (("lis", "metadata,tiles"), ("notes", "metadata,annotations")):
            made = cli(home, "tokens", "create", name, "--scope", scopes)
            assert made.returncode == 0, made.stderr
            tokens.append(made.stdout.strip().splitlines()[-1])
        alice, bob, carol = people
        yield Site(server, home, slide, other, plain, alice, bob, carol, tokens[0], tokens[1])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def send(
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> Response:
    """A request with any body and content type (Server.request sends JSON objects only)."""
    url = urlsplit(server.base)
    assert url.hostname is not None
    context = ssl.create_default_context(cafile=server.home / "tls" / "cert.pem")
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=60, context=context)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = dict(headers)
    if data is not None:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=data, headers=headers)
        reply = conn.getresponse()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        conn.close()


def rectangle(x: float, y: float, w: float, h: float, **props: Any) -> dict[str, Any]:
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"shape": "rectangle", **props},
    }


def base(slide: str) -> str:
    return f"/api/slides/{slide}/annotations"


def audit_records(home: Path) -> list[dict[str, Any]]:
    text = (home / "audit" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_private_by_default_shared_read_only_in_the_case(site: Site) -> None:
    server, alice, bob, carol = site.server, site.alice, site.bob, site.carol
    made = send(
        server,
        "POST",
        base(site.slide),
        alice.headers(),
        rectangle(100, 200, 400, 300, label=LABEL, color="#FF0000"),
    )
    assert made.status == 201, made.body
    doc = made.json()
    aid, props = doc["id"], doc["properties"]
    assert made.headers["location"] == f"{base(site.slide)}/{aid}" and made.headers["etag"] == '"1"'
    assert (props["label"], props["color"], props["shared"], props["own"]) == (
        LABEL,
        "#ff0000",
        False,
        True,
    )
    assert props["author"] == "user:alice" and props["version"] == 1
    assert props["measurements"]["area_um2"] == pytest.approx(400 * 300 * MPP**2)
    assert props["measurements"]["perimeter_um"] == pytest.approx(1400 * MPP)

    one = f"{base(site.slide)}/{aid}"
    assert server.get(one, alice.headers()).json()["geometry"] == doc["geometry"]
    assert aid not in {
        f["id"] for f in server.get(base(site.slide), bob.headers()).json()["features"]
    }
    for method in ("GET", "PUT", "DELETE"):  # another's private annotation does not exist
        reply = send(
            server, method, one, bob.headers(), rectangle(0, 0, 5, 5) if method == "PUT" else None
        )
        assert reply.status == 404, (method, reply.body)
    assert server.get(f"{one}/versions", bob.headers()).status == 404
    # Outside the case the slide itself is not there.
    assert server.get(base(site.slide), carol.headers()).status == 404
    assert server.get(one, carol.headers()).status == 404

    shared = send(
        server,
        "POST",
        base(site.slide),
        alice.headers(),
        rectangle(10, 10, 20, 20, label="for the board", shared=True),
    ).json()
    listed = server.get(base(site.slide), bob.headers()).json()["features"]
    assert [f["id"] for f in listed] == [shared["id"]]
    assert listed[0]["properties"]["own"] is False
    shared_one = f"{base(site.slide)}/{shared['id']}"
    assert server.get(shared_one, bob.headers()).status == 200
    assert send(server, "PUT", shared_one, bob.headers(), rectangle(0, 0, 5, 5)).status == 403
    assert send(server, "DELETE", shared_one, bob.headers()).status == 403
    assert server.get(f"{shared_one}/versions", bob.headers()).status == 403
    assert server.get(shared_one, carol.headers()).status == 404


def test_edits_are_versions_and_a_delete_keeps_the_history(site: Site) -> None:
    server, alice, bob = site.server, site.alice, site.bob
    made = send(server, "POST", base(site.slide), alice.headers(), rectangle(0, 0, 10, 10))
    one = f"{base(site.slide)}/{made.json()['id']}"
    edited = send(
        server,
        "PUT",
        one,
        {**alice.headers(), "If-Match": '"1"'},
        rectangle(0, 0, 20, 10, label="wider", shared=True),
    )
    assert edited.status == 200 and edited.headers["etag"] == '"2"'
    assert edited.json()["properties"]["measurements"]["area_px2"] == 200
    stale = send(server, "PUT", one, {**alice.headers(), "If-Match": '"1"'}, rectangle(0, 0, 5, 5))
    assert stale.status == 412 and "version 2" in stale.json()["error"]
    assert server.get(one, bob.headers()).json()["properties"]["label"] == "wider"
    assert send(server, "DELETE", one, alice.headers()).status == 204
    assert server.get(one, alice.headers()).status == 404
    assert server.get(one, bob.headers()).status == 404
    history = server.get(f"{one}/versions", alice.headers()).json()["versions"]
    assert [v["version"] if "version" in v else v["properties"]["version"] for v in history] == [
        1,
        2,
        3,
    ]
    assert history[-1]["deleted"] is True and history[1]["properties"]["label"] == "wider"
    assert server.get(f"{one}/versions", bob.headers()).status == 404


def test_geojson_import_and_export_round_trip(site: Site) -> None:
    """A QuPath-style FeatureCollection in level-0 pixels goes in, comes out of the export as
    it went in, and the export imports again unchanged."""
    server, bob = site.server, site.bob
    n = 32
    oval = [
        [1500 + 200 * math.cos(2 * math.pi * k / n), 1000 + 100 * math.sin(2 * math.pi * k / n)]
        for k in range(n)
    ]
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [12.5, 40]},
                "properties": {"objectType": "annotation", "name": "mitosis"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[0, 0], [300, 400]]},
                "properties": {"objectType": "annotation", "color": [0, 0, 255]},
            },
            rectangle(2000, 1500, 100, 50, label="box"),
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*oval, oval[0]]]},
                "properties": {
                    "shape": "ellipse",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                },
            },
        ],
    }
    made = send(server, "POST", base(site.other), site.carol.headers(), collection)
    assert made.status == 201, made.body
    assert [f["properties"]["shape"] for f in made.json()["features"]] == [
        "point",
        "polyline",
        "rectangle",
        "ellipse",
    ]
    line = made.json()["features"][1]["properties"]["measurements"]
    assert line["length_px"] == 500 and line["length_um"] == 500 * MPP

    export = server.get(f"{base(site.other)}.geojson", site.carol.headers())
    assert export.status == 200
    assert export.headers["content-type"].startswith("application/geo+json")
    assert "attachment" in export.headers["content-disposition"]
    exported = export.json()["features"]
    for sent, got in zip(collection["features"], exported, strict=True):
        assert got["geometry"]["type"] == sent["geometry"]["type"]
        expected = np.array(sent["geometry"]["coordinates"], dtype=float)
        assert np.allclose(got["geometry"]["coordinates"], expected, rtol=0, atol=5e-4)
        assert got["properties"]["objectType"] == "annotation"
    assert [f["properties"]["name"] for f in exported] == ["mitosis", "", "box", "Tumor"]
    assert exported[1]["properties"]["color"] == [0, 0, 255]

    again = send(
        server,
        "POST",
        base(site.other),
        site.carol.headers(),
        {"type": "FeatureCollection", "features": exported},
        content_type="application/geo+json",
    )
    assert again.status == 201, again.body
    for first, second in zip(made.json()["features"], again.json()["features"], strict=True):
        assert second["geometry"] == first["geometry"]
        for key in ("label", "color", "shape", "measurements"):
            assert second["properties"][key] == first["properties"][key]
    assert bob.name == "bob"  # bob is not in case-b: the export is not his to read
    assert server.get(f"{base(site.other)}.geojson", bob.headers()).status == 404


def test_tokens_need_the_annotations_scope(site: Site) -> None:
    server = site.server
    assert server.get(f"/api/slides/{site.slide}", bearer(site.lis)).status == 200
    assert server.get(base(site.slide), bearer(site.lis)).status == 404
    assert (
        send(server, "POST", base(site.slide), bearer(site.lis), rectangle(0, 0, 5, 5)).status
        == 404
    )
    made = send(server, "POST", base(site.slide), bearer(site.notes), rectangle(0, 0, 5, 5))
    assert made.status == 201 and made.json()["properties"]["author"] == "token:notes"
    listed = server.get(base(site.slide), bearer(site.notes)).json()["features"]
    assert made.json()["id"] in {f["id"] for f in listed}
    assert all(f["properties"]["own"] or f["properties"]["shared"] for f in listed)
    # The token's private annotation is not alice's to see.
    alice_sees = server.get(base(site.slide), site.alice.headers()).json()["features"]
    assert made.json()["id"] not in {f["id"] for f in alice_sees}


def test_signed_urls_never_open_annotations(site: Site) -> None:
    server = site.server
    shared = send(server, "POST", f"/api/slides/{site.slide}/share?minutes=5", site.alice.headers())
    assert shared.status == 200, shared.body
    query = shared.json()["query"]
    assert server.get(f"/deepzoom/{site.slide}.dzi?{query}").status == 200
    for path in (base(site.slide), f"{base(site.slide)}.geojson"):
        reply = server.get(f"{path}?{query}")
        assert reply.status == 403, (path, reply.body)
    posted = send(server, "POST", f"{base(site.slide)}?{query}", {}, rectangle(0, 0, 5, 5))
    assert posted.status == 403


def test_bad_input_is_refused_with_a_status_and_a_message(site: Site) -> None:
    server, headers, url = site.server, site.alice.headers(), base(site.slide)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"raw": b"label=x", "content_type": "application/x-www-form-urlencoded"}, 415, "json"),
        ({"raw": b"{}", "content_type": "text/plain"}, 415, "json"),
        ({"raw": b"{not json"}, 400, "not JSON"),
        ({"body": {"type": "Feature"}}, 400, "geometry"),
        ({"body": rectangle(0, 0, 5, 5, label="<script>x</script>")}, 400, "plain text"),
        ({"body": rectangle(0, 0, 5, 5, colour="#ffffff")}, 400, "unknown key"),
        ({"body": rectangle(0, 0, 99_999, 5)}, 400, "outside the slide"),
        (
            {
                "body": {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [[1.0, 1.0]] * 10_001},
                }
            },
            400,
            "10000 vertices",
        ),
        ({"raw": b" " * (MAX_BODY_BYTES + 1)}, 413, str(MAX_BODY_BYTES)),
    ]
    for kwargs, status, needle in cases:
        reply = send(server, "POST", url, headers, **kwargs)
        assert reply.status == status, (kwargs.get("body"), reply.body[:200])
        assert needle in reply.json()["error"], reply.json()
    # Bigger than the app's 64 KiB form limit but within the annotation limit: taken.
    ring = [[1000 + 500 * math.cos(k / 800), 1000 + 500 * math.sin(k / 800)] for k in range(5000)]
    big = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}
    assert len(json.dumps(big)) > 64 * 1024
    assert send(server, "POST", url, headers, big).status == 201
    # A plaintext slide has no key to seal with: refused, never stored in clear.
    plain = send(server, "POST", base(site.plain), headers, rectangle(0, 0, 5, 5))
    assert plain.status == 409 and "not encrypted" in plain.json()["error"]
    # Another origin's page cannot write with the session (CSRF).
    forged = send(
        server,
        "POST",
        url,
        {**headers, "Origin": "https://elsewhere.example"},
        rectangle(0, 0, 5, 5),
    )
    assert forged.status == 403
    assert server.get(f"{url}/{'0' * 32}", headers).status == 404
    bad_match = send(server, "DELETE", f"{url}/{'0' * 32}", {**headers, "If-Match": "x"})
    assert bad_match.status == 400 and "If-Match" in bad_match.json()["error"]


def test_changes_are_audited_with_ids_only(site: Site) -> None:
    server, alice = site.server, site.alice
    made = send(
        server, "POST", base(site.slide), alice.headers(), rectangle(0, 0, 9, 9, label=LABEL)
    )
    aid = made.json()["id"]
    one = f"{base(site.slide)}/{aid}"
    send(server, "PUT", one, alice.headers(), rectangle(0, 0, 9, 9, label=LABEL + "-2"))
    send(server, "DELETE", one, alice.headers())
    mine = [r for r in audit_records(site.home) if aid in json.dumps(r["detail"])]
    assert [r["action"] for r in mine] == ["C", "U", "D"]
    assert all(r["event_id"] == 110103 and r["user"] == "alice" for r in mine)
    assert all(r["object"] == site.slide for r in mine)
    assert [r["detail"].get("version") for r in mine] == [1, 2, 3]
    server.get(f"{base(site.slide)}.geojson", alice.headers())
    exports = [
        r for r in audit_records(site.home) if r["detail"].get("kind") == "annotations-geojson"
    ]
    assert exports and exports[-1]["event_id"] == 110106
    assert LABEL not in (site.home / "audit" / "audit.jsonl").read_text()


def test_openapi_lists_the_annotation_routes(site: Site) -> None:
    doc = site.server.get("/api/openapi.json", site.alice.headers()).json()
    paths = doc["paths"]
    assert set(paths["/api/slides/{slide_id}/annotations"]) == {"get", "post"}
    assert set(paths["/api/slides/{slide_id}/annotations/{annotation_id}"]) == {
        "get",
        "put",
        "delete",
    }
    assert "get" in paths["/api/slides/{slide_id}/annotations/{annotation_id}/versions"]
    assert "get" in paths["/api/slides/{slide_id}/annotations.geojson"]


def test_without_authentication_there_are_no_annotations(server: Server, stores: Stores) -> None:
    reply = server.get(base(stores.synthetic))
    assert reply.status == 404 and "authentication" in reply.json()["error"]
