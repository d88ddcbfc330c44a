"""Channel (fluorescence) and z-stack slides over the real server (issue 15): composite tiles
with the channel parameters on DeepZoom and REST, IIIF's default composite, describe's
channels and planes, 400s naming the parameter. Stores are written through the real writer
(tests/channel_stores.py), or converted from a synthetic OME-TIFF by the real converter, and
served over HTTPS with authentication off."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from sample_data.fluorescence import write_fluorescence, write_rgb_z_stack
from tests.channel_stores import level_samples, write_store
from tests.server.conftest import Server, converted, run_server
from tileserver.geometry import Region
from tileserver.render.composite import composite_reference
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.layout import ChannelInfo

TILE = 128
INFO = (
    ChannelInfo("DAPI", "0000FF", 461.0, (100.0, 3000.0)),
    ChannelInfo("FITC", "00FF00", 519.0, (0.0, 5000.0), active=False),
    ChannelInfo("Cy3", "FFFF00", 570.0, (200.0, 60000.0)),
    ChannelInfo("Cy5", "FF0000", 670.0, (0.0, 65535.0), active=False),
)


@dataclass
class Site:
    server: Server
    fluor: str
    stack: str
    samples: np.ndarray  # the fluorescence slide's (C, Z, h, w)
    rgb: np.ndarray  # the RGB z-stack's (3, Z, h, w)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("channels")
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    out = root / "stores"
    rng = np.random.default_rng(15)
    samples = rng.integers(0, 65535, (4, 3, 300, 400), dtype=np.uint16, endpoint=True)
    samples[:, :, :TILE, :TILE] = 0  # a dark corner: never written, served as background
    fluor, stack = new_slide_id(), new_slide_id()
    write_store(
        out,
        fluor,
        samples,
        tile=TILE,
        channels=INFO,
        plane_offsets=(-2.0, 0.0, 2.0),
        default_plane=1,
        keyring=keyring,
    )
    rgb = rng.integers(0, 255, (3, 2, 200, 260), dtype=np.uint8, endpoint=True)
    write_store(out, stack, rgb, tile=TILE, plane_offsets=(0.0, 1.5), keyring=keyring)
    with run_server(out, home, "--no-auth", secure=True) as server:
        yield Site(server, fluor, stack, samples, rgb)


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def composite_of(
    site: Site,
    region: tuple[int, int, int, int],
    channels: list[int],
    z: int,
    colors: list[tuple[int, int, int]],
    windows: list[tuple[float, float]],
    level: int = 0,
) -> np.ndarray:
    x, y, w, h = region
    cut = level_samples(site.samples, level)[channels, z, y : y + h, x : x + w]
    return composite_reference(cut, colors, windows)


def default_composite(site: Site, region: tuple[int, int, int, int]) -> np.ndarray:
    """The fluorescence slide as stored for display: its active channels (DAPI, Cy3) in their
    colours and windows, at the default plane (1)."""
    shown = [i for i, c in enumerate(INFO) if c.active]
    colors = [(r, g, b) for r, g, b in (bytes.fromhex(INFO[i].color) for i in shown)]
    windows = [INFO[i].display_window("uint16") for i in shown]
    return composite_of(site, region, shown, 1, colors, windows)


def test_describe_lists_channels_and_planes(site: Site) -> None:
    doc = site.server.get(f"/api/slides/{site.fluor}").json()
    assert doc["kind"] == "channels" and doc["dtype"] == "uint16"
    assert [c["name"] for c in doc["channels"]] == ["DAPI", "FITC", "Cy3", "Cy5"]
    assert doc["channels"][2] == {
        "index": 2,
        "name": "Cy3",
        "color": "ffff00",
        "emission_nm": 570.0,
        "window": [200.0, 60000.0],
        "active": True,
    }
    assert doc["planes"] == [-2.0, 0.0, 2.0] and doc["default_plane"] == 1
    stack = site.server.get(f"/api/slides/{site.stack}").json()
    assert stack["kind"] == "rgb" and stack["channels"] == [] and stack["planes"] == [0.0, 1.5]


def test_deepzoom_default_and_chosen_composites(site: Site) -> None:
    # DeepZoom level 9 of a 400x300 slide is store level 0; tile (1, 1) is x, y 128..255.
    base = f"/deepzoom/{site.fluor}_files/9/1_1.png"
    reply = site.server.get(base)
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    want = default_composite(site, (128, 128, 128, 128))
    np.testing.assert_array_equal(pixels(reply.body), want)
    chosen = site.server.get(f"{base}?channels=3,1&colors=ff00ff,00ffff&windows=0-40000,10-900&z=2")
    want = composite_of(
        site,
        (128, 128, 128, 128),
        [3, 1],
        2,
        [(255, 0, 255), (0, 255, 255)],
        [(0.0, 40000.0), (10.0, 900.0)],
    )
    np.testing.assert_array_equal(pixels(chosen.body), want)
    assert chosen.headers["etag"] != reply.headers["etag"]
    # The dark corner was never stored: background is black, not white.
    corner = site.server.get(f"/deepzoom/{site.fluor}_files/9/0_0.png")
    assert corner.status == 200 and not pixels(corner.body).any()


def test_rest_region_and_thumbnail(site: Site) -> None:
    url = f"/api/slides/{site.fluor}/region?x=130&y=140&width=90&height=60&format=png"
    reply = site.server.get(f"{url}&channels=1&colors=00ff00&windows=0-5000&z=0")
    assert reply.status == 200
    want = composite_of(site, (130, 140, 90, 60), [1], 0, [(0, 255, 0)], [(0.0, 5000.0)])
    np.testing.assert_array_equal(pixels(reply.body), want)
    thumb = site.server.get(f"/api/slides/{site.fluor}/thumbnail?max=200&format=png&channels=0")
    got = pixels(thumb.body)
    assert got.shape == (150, 200, 3)
    assert got[..., :2].max() == 0 and got[..., 2].max() > 0  # DAPI in blue only


def test_iiif_serves_the_default_composite(site: Site) -> None:
    reply = site.server.get(f"/iiif/3/{site.fluor}/128,128,128,128/max/0/default.png")
    assert reply.status == 200
    want = default_composite(site, (128, 128, 128, 128))
    np.testing.assert_array_equal(pixels(reply.body), want)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("channels=4", "channels"),
        ("channels=0,0", "channels"),
        ("channels=x", "channels"),
        ("colors=00ff00", "colors"),  # one colour for the two default channels
        ("colors=00ff00,nothex", "colors"),
        ("windows=5-1,0-10", "windows"),
        ("windows=0-70000,0-10", "windows"),
        ("z=3", "z"),
        ("z=-1", "z"),
    ],
)
def test_bad_parameters_are_400_naming_them(site: Site, query: str, name: str) -> None:
    for url in (
        f"/deepzoom/{site.fluor}_files/9/1_1.jpeg?{query}",
        f"/api/slides/{site.fluor}/thumbnail?max=64&{query}",
        f"/api/slides/{site.fluor}/region?x=0&y=0&width=10&height=10&{query}",
    ):
        reply = site.server.get(url)
        assert reply.status == 400, (url, reply.body)
        assert f"'{name}'" in reply.json()["error"], reply.json()


def test_rgb_z_stack_takes_z_only(site: Site) -> None:
    for z in (0, 1):
        reply = site.server.get(f"/deepzoom/{site.stack}_files/9/1_0.png?z={z}")
        assert reply.status == 200
        np.testing.assert_array_equal(
            pixels(reply.body), np.moveaxis(site.rgb[:, z, :128, 128:256], 0, -1)
        )
    default = site.server.get(f"/deepzoom/{site.stack}_files/9/1_0.png")
    np.testing.assert_array_equal(
        pixels(default.body), np.moveaxis(site.rgb[:, 0, :128, 128:256], 0, -1)
    )
    bad = site.server.get(f"/deepzoom/{site.stack}_files/9/1_0.png?channels=0")
    assert bad.status == 400 and "'channels'" in bad.json()["error"]


def test_converted_ome_tiff_serves_composites_of_its_samples(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """End to end: sample_data's synthetic immunofluorescence (OME-TIFF, 5 channels, uint16,
    3 focal planes) converted by the real converter, served over HTTPS: level-0 tiles are the
    composite of the source's own samples (stored losslessly), in the stored display."""
    root = tmp_path_factory.mktemp("converted-channels")
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    slide = write_fluorescence(root / "if.ome.tif", 600, 400, channels=5, planes=3, tile=256)
    slide_id = converted(slide, root / "stores", keyring)
    with run_server(root / "stores", home, "--no-auth", secure=True) as server:
        doc = server.get(f"/api/slides/{slide_id}").json()
        assert doc["kind"] == "channels" and len(doc["channels"]) == 5
        assert len(doc["planes"]) == 3 and doc["default_plane"] == 1
        shown = [c["index"] for c in doc["channels"] if c["active"]]
        tile = doc["tile_size"]
        with open_slide(slide) as source:
            samples = source.read_channels(0, Region(tile, 0, tile, tile), z=2)
        for query, channels in (("?z=2", shown), ("?z=2&channels=4,1", [4, 1])):
            reply = server.get(f"/deepzoom/{slide_id}_files/10/1_0.png{query}")
            assert reply.status == 200, reply.body
            colors = [tuple(bytes.fromhex(doc["channels"][c]["color"])) for c in channels]
            windows = [tuple(doc["channels"][c]["window"]) for c in channels]
            want = composite_reference(
                np.ascontiguousarray(np.moveaxis(samples, -1, 0)[channels]),
                colors,  # type: ignore[arg-type]
                windows,
            )
            np.testing.assert_array_equal(pixels(reply.body)[:, : want.shape[1]], want)


def test_openapi_names_the_display_parameters(site: Site) -> None:
    doc = site.server.get("/api/openapi.json").json()
    for path in ("/api/slides/{slide_id}/region", "/api/slides/{slide_id}/thumbnail"):
        names = {p["name"] for p in doc["paths"][path]["get"]["parameters"]}
        assert {"channels", "colors", "windows", "z"} <= names, path
    slide = doc["components"]["schemas"]["Slide"]["properties"]
    assert {"kind", "dtype", "channels", "planes", "default_plane"} <= set(slide)


def test_dicomweb_frames_are_the_default_composite(site: Site) -> None:
    """DICOMweb has no display parameters: a channel slide's frames are its default
    composite (RGB, as its metadata says), never a 500."""
    study = site.server.get("/dicomweb/studies").json()
    uids = {s["0020000D"]["Value"][0] for s in study}
    for uid in uids:
        series = site.server.get(f"/dicomweb/studies/{uid}/series").json()
        se = series[0]["0020000E"]["Value"][0]
        base = f"/dicomweb/studies/{uid}/series/{se}"
        instances = site.server.get(f"{base}/instances").json()
        meta = [
            site.server.get(f"{base}/instances/{i['00080018']['Value'][0]}/metadata").json()[0]
            for i in instances
        ]
        level0 = [m for m in meta if m.get("00480006", {}).get("Value") == [400]]
        if level0:
            break
    else:
        raise AssertionError("no level-0 instance of the channel slide")
    inst = level0[0]["00080018"]["Value"][0]
    accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    reply = site.server.get(f"{base}/instances/{inst}/frames/2", accept)
    assert reply.status == 200, reply.body[:200]
    want = default_composite(site, (128, 0, 128, 128))
    assert want.tobytes() in reply.body


def test_serve_sources_composites_a_channel_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``serve --sources``: the OME-TIFF read as it is, with windows from its smallest level
    (as the converter takes them), and the same composites."""
    root = tmp_path_factory.mktemp("sources-channels")
    home = root / "home"
    KeyRing(home).initialise()
    (root / "slides").mkdir()
    slide = write_fluorescence(root / "slides" / "if.ome.tif", 600, 400, channels=3, tile=256)
    with run_server(root / "slides", home, "--sources", "--no-auth", secure=True) as server:
        (doc,) = server.get("/api/slides").json()["items"]
        assert doc["kind"] == "channels" and len(doc["channels"]) == 3
        windows = [tuple(c["window"]) for c in doc["channels"]]
        assert all(end < 65535 for _, end in windows), windows  # not the full range
        reply = server.get(f"/deepzoom/{doc['id']}_files/10/1_1.png?channels=2,0")
        assert reply.status == 200, reply.body
        with open_slide(slide) as source:
            samples = source.read_channels(0, Region(256, 256, 256, 144))
        want = composite_reference(
            np.ascontiguousarray(np.moveaxis(samples, -1, 0)[[2, 0]]),
            [tuple(bytes.fromhex(doc["channels"][c]["color"])) for c in (2, 0)],  # type: ignore[misc]
            [windows[2], windows[0]],
        )
        np.testing.assert_array_equal(pixels(reply.body), want)


def test_dicomweb_frames_of_a_jpeg_z_stack_are_its_default_plane(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A converted RGB z-stack (JPEG chunks, 3 planes, default the middle one): DICOMweb's
    rendered frame is the default plane, as the DeepZoom tile without z= is, not plane 0."""
    root = tmp_path_factory.mktemp("z-stack-dicomweb")
    home = root / "home"
    KeyRing(home).initialise()
    slide = write_rgb_z_stack(root / "z.ome.tif", 2048, 2048, planes=3, tile=256)
    slide_id = converted(slide, root / "stores", None)
    with run_server(root / "stores", home, "--no-auth", secure=True) as server:
        doc = server.get(f"/api/slides/{slide_id}").json()
        assert len(doc["planes"]) == 3 and doc["default_plane"] == 1
        (study,) = server.get("/dicomweb/studies").json()
        uid = study["0020000D"]["Value"][0]
        (series,) = server.get(f"/dicomweb/studies/{uid}/series").json()
        base = f"/dicomweb/studies/{uid}/series/{series['0020000E']['Value'][0]}"
        for inst in server.get(f"{base}/instances").json():
            sop = inst["00080018"]["Value"][0]
            meta = server.get(f"{base}/instances/{sop}/metadata").json()[0]
            if meta.get("00480006", {}).get("Value") == [2048]:
                break
        else:
            raise AssertionError("no level-0 instance")
        for n in range(64):  # the first tile where the planes differ (not background)
            row, col = divmod(n, 8)
            tiles = {
                z: pixels(server.get(f"/deepzoom/{slide_id}_files/11/{col}_{row}.png?z={z}").body)
                for z in (0, 1)
            }
            if not np.array_equal(tiles[0], tiles[1]):
                break
        else:
            raise AssertionError("the planes do not differ")
        frame = server.get(
            f"{base}/instances/{sop}/frames/{n + 1}/rendered", {"Accept": "image/png"}
        )
        assert frame.status == 200, frame.body[:200]
        np.testing.assert_array_equal(pixels(frame.body), tiles[1])
        # As JPEG too: not the stored chunk of plane 0 passed through.
        jpeg = server.get(
            f"{base}/instances/{sop}/frames/{n + 1}/rendered", {"Accept": "image/jpeg"}
        )
        got = pixels(jpeg.body).astype(np.int16)
        err = [float(np.abs(got - tiles[z]).mean()) for z in (0, 1)]
        assert err[1] < err[0], err
