"""The REST API: listing, metadata, thumbnails, regions, associated images, OpenAPI."""

from __future__ import annotations

import io

from PIL import Image

from tests.server.conftest import Server, Stores


def test_list_and_paginate(server: Server, stores: Stores) -> None:
    page = server.get("/api/slides?limit=1").json()
    expected = 2 if stores.cmu else 1
    assert page["total"] == expected and len(page["items"]) == 1
    ids = {item["id"] for item in server.get("/api/slides").json()["items"]}
    assert stores.synthetic in ids
    second = server.get("/api/slides?offset=1&limit=1").json()
    assert len(second["items"]) == expected - 1
    for bad in ["limit=0", "limit=501", "offset=-1", "limit=x"]:
        reply = server.get(f"/api/slides?{bad}")
        assert reply.status == 400 and bad.split("=")[0] in reply.json()["error"]


def test_metadata(server: Server, stores: Stores) -> None:
    slide = server.get(f"/api/slides/{stores.synthetic}").json()
    assert (slide["width"], slide["height"]) == (3000, 2000)
    assert slide["mpp"] == [0.25, 0.25] and slide["objective_power"] == 40
    assert slide["vendor"] == "aperio" and slide["tile_size"] == 240
    assert [lv["downsample"] for lv in slide["levels"]][:3] == [1, 2, 4]
    assert slide["associated"] == []
    assert "aperio.Filename" not in slide["properties"]


def test_thumbnail(server: Server, stores: Stores) -> None:
    for fmt, pil in [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]:
        reply = server.get(f"/api/slides/{stores.synthetic}/thumbnail?max=512&format={fmt}")
        assert reply.status == 200
        img = Image.open(io.BytesIO(reply.body))
        assert img.format == pil and img.size == (512, 341)
    assert server.get(f"/api/slides/{stores.synthetic}/thumbnail?max=0").status == 400
    assert server.get(f"/api/slides/{stores.synthetic}/thumbnail?format=gif").status == 400


def test_region_in_pixels_and_micrometres(server: Server, stores: Stores) -> None:
    base = f"/api/slides/{stores.synthetic}/region"
    px = server.get(f"{base}?x=1000&y=500&width=400&height=200&format=png")
    assert Image.open(io.BytesIO(px.body)).size == (400, 200)
    um = server.get(f"{base}?unit=um&x=250&y=125&width=100&height=50&format=png")  # 0.25 µm/px
    assert um.status == 200 and um.body == px.body
    scaled = server.get(f"{base}?x=0&y=0&width=2000&height=1000&max=500")
    assert Image.open(io.BytesIO(scaled.body)).size == (500, 250)
    sized = server.get(f"{base}?x=0&y=0&width=2000&height=1000&out_width=100")
    assert Image.open(io.BytesIO(sized.body)).size == (100, 50)


def test_region_errors(server: Server, stores: Stores) -> None:
    base = f"/api/slides/{stores.synthetic}/region"
    cases = {
        "x=0&y=0&width=100": "height",
        "x=a&y=0&width=1&height=1": "'x'",
        "x=0&y=0&width=9000&height=100": "8192",
        "x=2900&y=0&width=500&height=10": "not inside",
        "unit=furlong&x=0&y=0&width=1&height=1": "unit",
    }
    for query, needle in cases.items():
        reply = server.get(f"{base}?{query}")
        assert reply.status == 400, query
        assert needle in reply.json()["error"], (query, reply.json())


def test_associated_images_are_not_there_unless_kept(server: Server, stores: Stores) -> None:
    for name in ["label", "macro", "thumbnail"]:
        assert server.get(f"/api/slides/{stores.synthetic}/associated/{name}").status == 404


def test_openapi_document(server: Server) -> None:
    doc = server.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in [
        "/api/slides",
        "/api/slides/{slide_id}",
        "/api/slides/{slide_id}/thumbnail",
        "/api/slides/{slide_id}/region",
    ]:
        assert "get" in doc["paths"][path]
    # Clients must know that renders are budgeted and a busy server asks them to come back.
    region = doc["paths"]["/api/slides/{slide_id}/region"]["get"]["responses"]
    for status in ("429", "503"):
        assert "Retry-After" in region[status]["headers"]


def test_security_headers(server: Server, stores: Stores) -> None:
    reply = server.get(f"/api/slides/{stores.synthetic}")
    assert reply.headers["server"] == "tileserver"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"].startswith("private")
