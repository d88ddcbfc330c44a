"""IIIF Image API 3.0 level 2 over HTTP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.server.conftest import Server, Stores


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
