"""Colour management over HTTP (``?icc=none|embed|srgb``) on a slide tagged with a wide-gamut
profile: converted pixels equal an independent ImageCms transform of the raw ones, ``embed``
carries the profile, ``none`` is raw, pass-through tiles stay raw unless asked, ETags differ
per choice, and a bad value is a 400 naming ``icc``. Served from an encrypted store and, with
``--sources``, from the file itself."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from sample_data.icc import DESCRIPTION, wide_gamut_profile, write_icc
from sample_data.synthetic import write_svs
from tests.server.conftest import Server, converted, run_server
from tests.stores import open_reader
from tileserver.security.keys import KeyRing

TOP = 11  # DeepZoom level of full resolution for a 1200 x 1000 slide: ceil(log2(1200))


def pixels(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as image:
        return np.asarray(image.convert("RGB"))


def profile_of(body: bytes) -> bytes | None:
    with Image.open(io.BytesIO(body)) as image:
        return image.info.get("icc_profile")


def reference_srgb(raw: np.ndarray) -> np.ndarray:
    """The conversion done independently of the server."""
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(wide_gamut_profile())),
        ImageCms.createProfile("sRGB"),
        "RGB",
        "RGB",
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
    )
    return np.asarray(ImageCms.applyTransform(Image.fromarray(raw), transform))


@dataclass(frozen=True)
class Served:
    server: Server
    tagged: str  # slide IDs: tagged with the wide-gamut profile, and without a profile
    plain: str
    home: Path
    root: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("icc-served")
    slide = write_icc(root / "icc.svs", 1200, 1000, fmt="svs", seed=2)
    untagged = write_svs(root / "plain.svs", 600, 480, seed=3)
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    tagged = converted(slide, root / "stores", keyring)
    plain = converted(untagged, root / "stores", keyring)
    with run_server(root / "stores", home) as server:
        yield Served(server, tagged, plain, home, root)


def test_metadata_describes_the_profile(served: Served) -> None:
    doc = served.server.get(f"/api/slides/{served.tagged}").json()
    icc = doc["icc_profile"]
    assert icc["description"] == DESCRIPTION and icc["colour_space"] == "RGB"
    assert icc["size"] == len(wide_gamut_profile()) and icc["usable"] is True
    assert served.server.get(f"/api/slides/{served.plain}").json()["icc_profile"] is None
    reply = served.server.get(f"/api/slides/{served.tagged}/icc")
    assert reply.status == 200 and reply.body == wide_gamut_profile()
    assert reply.headers["content-type"] == "application/vnd.iccprofile"
    assert served.server.get(f"/api/slides/{served.plain}/icc").status == 404


@pytest.mark.parametrize(
    ("path", "default"),
    [
        ("/api/slides/{id}/region?x=100&y=200&width=300&height=200&format=png", "srgb"),
        ("/api/slides/{id}/thumbnail?max=300&format=png", "srgb"),
        ("/iiif/3/{id}/0,0,600,480/300,/0/default.png", "srgb"),
        # a viewer's tiles, rendered ones too (PNG, edges, small levels), stay raw by default
        # so they match the stored tiles passed through beside them
        ("/iiif/3/{id}/960,720,240,240/240,/0/default.png", "none"),
        ("/deepzoom/{id}_files/9/0_0.png", "none"),
        ("/deepzoom/{id}_files/11/2_4.jpeg", "none"),  # edge tile (40 px high): rendered
    ],
)
def test_rendered_images(served: Served, path: str, default: str) -> None:
    base = path.format(id=served.tagged)
    sep = "&" if "?" in base else "?"
    replies = {c: served.server.get(f"{base}{sep}icc={c}") for c in ("none", "embed", "srgb")}
    plain = served.server.get(base)
    assert all(r.status == 200 for r in [*replies.values(), plain])
    raw = pixels(replies["none"].body)
    # none: raw, untagged; embed: the same raw pixels with the profile inside
    assert profile_of(replies["none"].body) is None
    assert profile_of(replies["embed"].body) == wide_gamut_profile()
    np.testing.assert_array_equal(pixels(replies["embed"].body), raw)
    converted_pixels = pixels(replies["srgb"].body)
    if base.endswith(".jpeg"):  # raw decoded, converted, encoded again
        expected = reference_srgb(raw).astype(int)
        assert np.abs(converted_pixels.astype(int) - expected).mean() < 2.0
    else:  # srgb: the reference transform of the raw pixels, exactly
        np.testing.assert_array_equal(converted_pixels, reference_srgb(raw))
    assert np.abs(converted_pixels.astype(int) - raw).max() > 5  # a real change
    assert plain.body == replies[default].body and profile_of(plain.body) is None
    etags = {c: r.headers["etag"] for c, r in replies.items()}
    assert len(set(etags.values())) == 3 and plain.headers["etag"] == etags[default]
    # an ETag names its variant only: If-None-Match of another choice is not a 304
    other = served.server.get(f"{base}{sep}icc=embed", headers={"If-None-Match": etags["srgb"]})
    assert other.status == 200
    assert served.server.get(f"{base}{sep}icc=none", {"If-None-Match": etags["none"]}).status == 304


def test_passthrough_tiles_stay_raw_unless_asked(served: Served) -> None:
    reader = open_reader(served.root / "stores" / served.tagged, KeyRing(served.home))
    for t_col, t_row in [(1, 1), (2, 2)]:
        stored = reader.chunk_bytes(0, t_col, t_row)
        assert stored is not None
        url = f"/deepzoom/{served.tagged}_files/{TOP}/{t_col}_{t_row}.jpeg"
        assert served.server.get(url).body == stored  # default: the stored bytes
        assert served.server.get(f"{url}?icc=none").body == stored
        embedded = served.server.get(f"{url}?icc=embed").body
        assert profile_of(embedded) == wide_gamut_profile()
        np.testing.assert_array_equal(pixels(embedded), pixels(stored))  # scan untouched
        converted_tile = pixels(served.server.get(f"{url}?icc=srgb").body).astype(int)
        expected = reference_srgb(pixels(stored)).astype(int)
        assert np.abs(converted_tile - expected).mean() < 2.0  # re-encoded: JPEG tolerance
        assert np.abs(pixels(stored).astype(int) - expected).mean() > 4


def test_slide_without_profile_ignores_the_choice(served: Served) -> None:
    base = f"/api/slides/{served.plain}/region?x=0&y=0&width=200&height=200&format=png"
    replies = [served.server.get(f"{base}&icc={c}") for c in ("none", "embed", "srgb")]
    assert len({r.body for r in replies}) == 1 and len({r.headers["etag"] for r in replies}) == 1
    assert profile_of(replies[0].body) is None


@pytest.mark.parametrize(
    "path",
    [
        "/api/slides/{id}/region?x=0&y=0&width=10&height=10&icc=adobe",
        "/api/slides/{id}/thumbnail?icc=1",
        "/iiif/3/{id}/full/100,/0/default.jpg?icc=p3",
        "/deepzoom/{id}_files/9/0_0.jpeg?icc=",
    ],
)
def test_bad_icc_is_400_naming_it(served: Served, path: str) -> None:
    reply = served.server.get(path.format(id=served.tagged))
    assert reply.status == 400 and "icc" in reply.json()["error"]


def test_sources_serve_the_files_profile(served: Served) -> None:
    directory = served.root / "files"
    directory.mkdir()
    write_icc(directory / "icc.tif", 700, 500, tile=256, seed=4)
    with run_server(directory, served.home, "--sources") as server:
        (item,) = server.get("/api/slides").json()["items"]
        assert item["icc_profile"]["description"] == DESCRIPTION
        base = f"/api/slides/{item['id']}/region?x=0&y=0&width=256&height=256&format=png"
        raw = pixels(server.get(f"{base}&icc=none").body)
        np.testing.assert_array_equal(pixels(server.get(base).body), reference_srgb(raw))
