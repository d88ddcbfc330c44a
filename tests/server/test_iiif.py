"""IIIF Image API 3.0 level 2 over HTTP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.server.conftest import Server, Stores, run_server


def image(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def test_info_json(server: Server, stores: Stores) -> None:
    reply = server.get(f"/iiif/3/{stores.synthetic}/info.json")
    assert reply.status == 200
    info = reply.json()
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert info["id"].endswith(f"/iiif/3/{stores.synthetic}")
    assert info["type"] == "ImageService3" and info["profile"] == "level2"
    assert (info["width"], info["height"]) == (3000, 2000)
    assert info["tiles"][0]["width"] == 240 and info["tiles"][0]["scaleFactors"][:3] == [1, 2, 4]
    assert "webp" in info["extraFormats"]
    base = server.get(f"/iiif/3/{stores.synthetic}")
    assert base.status == 303


def test_region_size_rotation_quality_format(server: Server, stores: Stores) -> None:
    base = f"/iiif/3/{stores.synthetic}"
    cases = {
        "full/max/0/default.jpg": ("JPEG", (3000, 2000)),
        "full/300,/0/default.png": ("PNG", (300, 200)),
        "square/100,100/0/default.webp": ("WEBP", (100, 100)),
        "0,0,480,480/240,240/0/default.jpg": ("JPEG", (240, 240)),
        "pct:10,10,50,50/,100/0/color.jpg": ("JPEG", (150, 100)),
        "1000,500,600,400/!300,300/90/gray.png": ("PNG", (200, 300)),
        "1000,500,600,400/pct:50/180/bitonal.png": ("PNG", (300, 200)),
        "2900,1900,500,500/max/!0/default.jpg": ("JPEG", (100, 100)),
        "0,0,100,100/^200,/0/default.jpg": ("JPEG", (200, 200)),
    }
    for path, (fmt, size) in cases.items():
        reply = server.get(f"{base}/{path}")
        assert reply.status == 200, (path, reply.body[:200])
        img = image(reply.body)
        assert (img.format, img.size) == (fmt, size), path
    gray = image(server.get(f"{base}/1000,500,600,400/!300,300/0/gray.png").body)
    assert gray.mode == "L"
    bitonal = np.asarray(image(server.get(f"{base}/1000,500,600,400/300,/0/bitonal.png").body))
    assert set(np.unique(bitonal)) <= {0, 255}


def test_rotation_and_mirror_move_pixels(server: Server, stores: Stores) -> None:
    base = f"/iiif/3/{stores.synthetic}/1000,500,400,200/200,/"

    def get(rotation: str) -> np.ndarray:
        return np.asarray(image(server.get(f"{base}{rotation}/default.png").body)).astype(int)

    upright = get("0")
    assert np.array_equal(get("90"), np.rot90(upright, -1))
    assert np.array_equal(get("180"), upright[::-1, ::-1])
    assert np.array_equal(get("!0"), upright[:, ::-1])


def test_aligned_tile_is_passed_through(server: Server, stores: Stores) -> None:
    dz = server.get(f"/deepzoom/{stores.synthetic}_files/12/3_2.jpeg")
    iiif = server.get(f"/iiif/3/{stores.synthetic}/720,480,240,240/240,240/0/default.jpg")
    assert iiif.status == 200 and iiif.body == dz.body


def test_errors_name_the_parameter(server: Server, stores: Stores) -> None:
    base = f"/iiif/3/{stores.synthetic}"
    cases = {
        "nonsense/max/0/default.jpg": "region",
        "5000,5000,10,10/max/0/default.jpg": "region",
        "full/abc/0/default.jpg": "size",
        "0,0,100,100/200,/0/default.jpg": "size",  # upscaling without ^
        "full/max/45/default.jpg": "rotation",
        "full/max/0/sepia.jpg": "quality",
        "full/max/0/default.gif": "format",
        "full/9000,/0/default.jpg": "size",
    }
    for path, parameter in cases.items():
        reply = server.get(f"{base}/{path}")
        assert reply.status == 400, path
        assert parameter in reply.json()["error"], (path, reply.json())
    assert "8192" in server.get(f"{base}/full/^9000,/0/default.jpg").json()["error"]
    assert server.get("/iiif/3/ffffffffffffffffffffffffffffffff/info.json").status == 404


PROFILE = '<http://iiif.io/api/image/3/level2.json>;rel="profile"'
JSON_LD = 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'


def test_info_json_media_type_and_profile_link(server: Server, stores: Stores) -> None:
    path = f"/iiif/3/{stores.synthetic}/info.json"
    for accept, expected in [
        (None, JSON_LD),  # spec 5.1: no Accept header
        ("application/ld+json", JSON_LD),
        (JSON_LD, JSON_LD),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
    ]:
        reply = server.get(path, {"Accept": accept} if accept else None)
        assert reply.status == 200
        assert reply.headers["content-type"] == expected, accept
        assert reply.headers["link"] == PROFILE
        assert "Accept" in reply.headers["vary"]
        assert reply.json()["profile"] == "level2"
    features = server.get(path).json()["extraFeatures"]
    assert {"profileLinkHeader", "mirroring", "sizeUpscaling"} <= set(features)
    assert "canonicalLinkHeader" not in features  # not sent, so not claimed


def test_images_carry_the_profile_link_and_http_features(server: Server, stores: Stores) -> None:
    path = f"/iiif/3/{stores.synthetic}/0,0,480,480/240,240/0/default.jpg"
    reply = server.get(path)
    assert reply.status == 200 and reply.headers["link"] == PROFILE
    again = server.get(path, {"If-None-Match": reply.headers["etag"]})
    assert again.status == 304 and again.headers["link"] == PROFILE
    head = server.request("HEAD", path)  # RECOMMENDED (spec 7)
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "image/jpeg" and head.headers["link"] == PROFILE
    # CORS (required at level 2) on every response, errors included; details: test_cors.py.
    for probe in [path, f"/iiif/3/{stores.synthetic}/full/max/45/default.jpg", "/iiif/3/x"]:
        answer = server.get(probe, {"Origin": "https://elsewhere.example"})
        assert answer.headers["access-control-allow-origin"] == "*", probe
    assert server.request("OPTIONS", path).status == 204


def test_every_size_and_tile_info_json_advertises_is_served(server: Server, stores: Stores) -> None:
    info = server.get(f"/iiif/3/{stores.synthetic}/info.json").json()
    base = f"/iiif/3/{stores.synthetic}"
    for size in info["sizes"]:
        reply = server.get(f"{base}/full/{size['width']},{size['height']}/0/default.jpg")
        assert reply.status == 200, size
        assert image(reply.body).size == (size["width"], size["height"])
    tiles = info["tiles"][0]
    width, height = info["width"], info["height"]
    for factor in tiles["scaleFactors"]:
        span = tiles["width"] * factor
        last_x, last_y = (width - 1) // span * span, (height - 1) // span * span
        for x, y in {(0, 0), (last_x, 0), (0, last_y), (last_x, last_y)}:
            w, h = min(span, width - x), min(span, height - y)
            out = (-(-w // factor), -(-h // factor))
            for size in (f"{out[0]},{out[1]}", f"{out[0]},"):  # OpenSeadragon; others
                reply = server.get(f"{base}/{x},{y},{w},{h}/{size}/0/default.jpg")
                assert reply.status == 200, (factor, x, y, size, reply.body[:200])
                assert abs(image(reply.body).size[1] - out[1]) <= 1
                assert image(reply.body).size[0] == out[0]


def test_status_codes(server: Server, stores: Stores) -> None:
    base = f"/iiif/3/{stores.synthetic}"
    # Unsupported rotation, quality and format are 400 (spec 4.3-4.5), as are sizes over the
    # caps (4.2); upscaling is supported, so ^ is never the 501 of 4.2.
    for path in ["full/max/22.5/default.png", "full/max/0/default.tif", "full/max/0/native.jpg"]:
        assert server.get(f"{base}/{path}").status == 400, path
    assert server.get(f"{base}/0,0,100,100/^pct:150/0/default.jpg").status == 200
    assert server.get(f"{base}/info.json").status == 200
    assert server.get(f"{base}/full/max/0").status == 404  # not an image request
    assert server.get(f"/iiif/3/{'0' * 32}/full/max/0/default.jpg").status == 404
    assert server.get(f"/iiif/3/{stores.synthetic.upper()}/info.json").status == 404
    redirect = server.get(base)
    assert redirect.status == 303 and redirect.headers["location"].endswith(f"{base}/info.json")


def test_id_is_the_public_url_never_the_host_header(server: Server, stores: Stores) -> None:
    """The id (and the base URI's redirect) come from --public-url, else from the address
    the connection reached: a client's Host header cannot point viewers elsewhere."""
    slide = stores.synthetic
    forged = {"Host": "evil.example:666", "X-Forwarded-Host": "evil.example"}
    port = server.base.rsplit(":", 1)[1]
    reply = server.get(f"/iiif/3/{slide}/info.json", forged)
    assert reply.json()["id"] == f"http://127.0.0.1:{port}/iiif/3/{slide}"
    assert "evil" not in server.get(f"/iiif/3/{slide}", forged).headers["location"]
    public = "https://tiles.hospital.example"
    with run_server(stores.directory, stores.home, "--public-url", f"{public}/") as other:
        reply = other.get(f"/iiif/3/{slide}/info.json", forged)
        assert reply.json()["id"] == f"{public}/iiif/3/{slide}"
        location = other.get(f"/iiif/3/{slide}", forged).headers["location"]
        assert location == f"{public}/iiif/3/{slide}/info.json"
