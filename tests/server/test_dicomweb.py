"""DICOMweb over HTTP (issue 16): QIDO-RS, WADO-RS metadata, frames, rendered images and
thumbnails on the real server; bad input (400, 404, 406); and the authorization matrix
(collections, token scopes, signed links, identified vs de-identified metadata)."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli import cli
from tests.server.conftest import Response, Server, Stores, run_server
from tests.server.test_security import enrol, last_line_token
from tests.stores import open_reader
from tileserver.geometry import Size
from tileserver.protocols import dicom
from tileserver.protocols.dicomweb import ATTRIBUTES
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.render.encode import encode_jpeg_as
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.layout import StoreLayout, pyramid_sizes
from tileserver.store.local import LocalObjects
from tileserver.store.writer import StoreWriter

JPEG = 'multipart/related; type="image/jpeg"'
NATIVE = 'multipart/related; type="application/octet-stream"'
STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PASSWORD = "dicomweb test password alice 1"  # test-only
TILE = 240  # the synthetic slide's JPEG tile edge: 3000 x 2000 is 13 x 9 tiles at level 0


def tag(keyword: str) -> str:
    if keyword == "DimensionOrganizationType":  # not a QIDO attribute
        return "00209311"
    return ATTRIBUTES[keyword][0]


def value(record: dict[str, object], keyword: str) -> object:
    element = record.get(tag(keyword)) or record.get(keyword)
    assert isinstance(element, dict), keyword
    values = element.get("Value")
    return values[0] if values else None


def parts(reply: Response) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related reply: (media type; transfer syntax, body), in
    order."""
    assert reply.headers["content-type"].startswith("multipart/related"), reply.headers
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {reply.headers['content-type']}\r\n\r\n".encode() + reply.body
    )
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        syntax = part.get_param("transfer-syntax")
        out.append((f"{part.get_content_type()}; {syntax}", payload))
    return out


def rgb(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.int16)


@dataclass(frozen=True)
class Uids:
    study: str
    series: str
    instances: list[str]  # level 0 first

    def instance(self, level: int) -> str:
        return (
            f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.instances[level]}"
        )


def uids_of(slide_id: str, levels: int = 5) -> Uids:
    made = dicom.derive_uids(slide_id, levels)
    return Uids(made.study, made.series, list(made.instances))


# -- the protocol, without authentication -------------------------------------------------


def test_qido_at_every_level(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    studies = server.get("/dicomweb/studies")
    assert studies.status == 200
    assert studies.headers["content-type"].startswith("application/dicom+json")
    assert u.study in [value(r, "StudyInstanceUID") for r in studies.json()]
    one = server.get(f"/dicomweb/studies?StudyInstanceUID={u.study}").json()
    assert len(one) == 1
    assert value(one[0], "NumberOfStudyRelatedInstances") == 5
    assert value(one[0], "ModalitiesInStudy") == "SM"
    by_tag = server.get(f"/dicomweb/studies?0020000D={u.study}&includefield=00100020").json()
    assert by_tag == server.get(f"/dicomweb/studies?StudyInstanceUID={u.study}").json()
    for path in (f"/dicomweb/studies/{u.study}/series", "/dicomweb/series?Modality=SM"):
        found = [r for r in server.get(path).json() if value(r, "SeriesInstanceUID") == u.series]
        assert len(found) == 1, path
        assert value(found[0], "NumberOfSeriesRelatedInstances") == 5
    for path in (
        f"/dicomweb/studies/{u.study}/series/{u.series}/instances",
        f"/dicomweb/studies/{u.study}/instances",
        f"/dicomweb/instances?StudyInstanceUID={u.study}",
    ):
        found = server.get(path).json()
        assert [value(r, "SOPInstanceUID") for r in found] == u.instances, path
        assert [value(r, "TotalPixelMatrixColumns") for r in found] == [3000, 1500, 750, 375, 188]
        assert value(found[0], "SOPClassUID") == dicom.WSI_SOP_CLASS
        syntaxes = found[0][tag("AvailableTransferSyntaxUID")]["Value"]
        assert syntaxes[0] == dicom.JPEG_BASELINE and dicom.EXPLICIT_VR_LITTLE_ENDIAN in syntaxes
    # wsidicom's search: instances of a study by series (a list) and SOP class.
    wsi = server.get(
        f"/dicomweb/studies/{u.study}/instances?SOPClassUID={dicom.WSI_SOP_CLASS}"
        f"&SeriesInstanceUID={u.series},2.25.1&Modality=SM&includefield=AvailableTransferSyntaxUID"
    ).json()
    assert len(wsi) == 5
    paged = server.get(f"/dicomweb/studies/{u.study}/instances?offset=1&limit=2")
    assert [value(r, "SOPInstanceUID") for r in paged.json()] == u.instances[1:3]
    assert "offset=3" in paged.headers["warning"]
    rest = server.get(f"/dicomweb/studies/{u.study}/instances?offset=3&limit=2")
    assert [value(r, "SOPInstanceUID") for r in rest.json()] == u.instances[3:]
    assert "warning" not in rest.headers
    numbered = server.get(f"/dicomweb/studies/{u.study}/instances?InstanceNumber=3").json()
    assert [value(r, "SOPInstanceUID") for r in numbered] == [u.instances[2]]
    everything = server.get(f"/dicomweb/studies/{u.study}/instances?includefield=all&limit=1")
    assert len(everything.json()[0]) > 30  # the whole instance
    none = server.get(f"/dicomweb/studies/{u.study}/series?Modality=CT").json()
    assert none == []
    fuzzy = server.get(f"/dicomweb/studies?StudyInstanceUID={u.study}&fuzzymatching=true")
    assert len(fuzzy.json()) == 1


def test_metadata(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    series = server.get(f"/dicomweb/studies/{u.study}/series/{u.series}/metadata")
    assert series.status == 200
    assert series.headers["content-type"].startswith("application/dicom+json")
    assert series.headers["cache-control"] == "private, no-cache"
    instances = series.json()
    assert [value(r, "SOPInstanceUID") for r in instances] == u.instances
    first = instances[0]
    assert (value(first, "Rows"), value(first, "Columns")) == (TILE, TILE)
    assert value(first, "NumberOfFrames") == 13 * 9
    assert value(first, "TotalPixelMatrixRows") == 2000
    assert value(first, "DimensionOrganizationType") == "TILED_FULL"
    one = server.get(f"{u.instance(2)}/metadata").json()
    assert one == [instances[2]]
    plain = server.get(f"{u.instance(2)}/metadata", {"Accept": "application/json"})
    assert plain.headers["content-type"].startswith("application/json") and plain.json() == one
    dicom_json = server.get(f"{u.instance(2)}/metadata", {"Accept": "application/dicom+json"})
    assert dicom_json.json() == one
    for path in (f"{u.instance(2)}/metadata", "/dicomweb/studies"):
        refused = server.get(path, {"Accept": 'multipart/related; type="application/dicom+xml"'})
        assert refused.status == 406 and "application/dicom+json" in refused.json()["error"]


def test_frames_pass_the_stored_chunks_through(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    reader = open_reader(stores.directory / stores.synthetic, KeyRing(stores.home))
    stored = [
        (c, r)
        for r in range(9)
        for c in range(13)
        if reader.chunk_bytes(0, c, r) is not None and c < 12 and r < 8
    ][:4]
    assert len(stored) == 4
    numbers = [r * 13 + c + 1 for c, r in stored]
    reply = server.get(f"{u.instance(0)}/frames/{','.join(map(str, numbers))}", {"Accept": JPEG})
    assert reply.status == 200 and reply.headers["cache-control"].startswith("private")
    got = parts(reply)
    assert [t for t, _ in got] == [f"image/jpeg; {dicom.JPEG_BASELINE}"] * 4
    for (c, r), (_, body) in zip(stored, got, strict=True):
        assert body == reader.chunk_bytes(0, c, r)
        tile = server.get(f"/deepzoom/{stores.synthetic}_files/12/{c}_{r}.jpeg")
        assert body == tile.body  # the same bytes the DeepZoom pass-through serves
    # dicom-microscopy-viewer's ask: octet-stream, any transfer syntax: the stored JPEG.
    as_stored = server.get(f"{u.instance(0)}/frames/{numbers[0]}", {"Accept": STORED})
    ((part_type, body),) = parts(as_stored)
    assert body == reader.chunk_bytes(0, *stored[0])
    assert part_type == f"application/octet-stream; {dicom.JPEG_BASELINE}"
    single = server.get(f"{u.instance(0)}/frames/{numbers[1]}", {"Accept": "image/jpeg"})
    assert single.headers["content-type"] == "image/jpeg"
    assert single.body == reader.chunk_bytes(0, *stored[1])


def test_native_frames_are_full_size_pixels(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    # An interior frame: the decoded chunk, as the DeepZoom tile decodes.
    reply = server.get(f"{u.instance(0)}/frames/{3 * 13 + 5}", {"Accept": NATIVE})
    assert reply.status == 200
    ((part_type, body),) = parts(reply)
    assert part_type == f"application/octet-stream; {dicom.EXPLICIT_VR_LITTLE_ENDIAN}"
    assert len(body) == TILE * TILE * 3
    frame = np.frombuffer(body, np.uint8).reshape(TILE, TILE, 3).astype(np.int16)
    tile = rgb(server.get(f"/deepzoom/{stores.synthetic}_files/12/4_3.png").body)
    assert np.abs(frame - tile).max() <= 1
    # The last frame: padded to Rows x Columns, its inside the cropped DeepZoom edge tile.
    edge = parts(server.get(f"{u.instance(0)}/frames/{13 * 9}", {"Accept": NATIVE}))[0][1]
    assert len(edge) == TILE * TILE * 3
    inside = np.frombuffer(edge, np.uint8).reshape(TILE, TILE, 3)[:80, :120].astype(np.int16)
    dz = rgb(server.get(f"/deepzoom/{stores.synthetic}_files/12/12_8.png").body)
    assert dz.shape == (80, 120, 3) and np.abs(inside - dz).max() <= 1
    # JPEG frames of an edge are full size too (DICOM frames are never cropped).
    jpeg_edge = parts(server.get(f"{u.instance(0)}/frames/{13 * 9}", {"Accept": JPEG}))[0][1]
    assert rgb(jpeg_edge).shape == (TILE, TILE, 3)


def test_frames_etag_and_304(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    path = f"{u.instance(1)}/frames/1,2"
    first = server.get(path, {"Accept": JPEG})
    etag = first.headers["etag"]
    again = server.get(path, {"Accept": JPEG, "If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    other = server.get(path, {"Accept": NATIVE, "If-None-Match": etag})
    assert other.status == 200 and other.headers["etag"] != etag


def test_rendered_and_thumbnails(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    reader = open_reader(stores.directory / stores.synthetic, KeyRing(stores.home))
    rendered = server.get(f"{u.instance(0)}/frames/{3 * 13 + 5}/rendered")
    assert rendered.headers["content-type"] == "image/jpeg"
    assert rendered.body == reader.chunk_bytes(0, 4, 3)
    png = server.get(f"{u.instance(0)}/frames/1/rendered", {"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and rgb(png.body).shape == (TILE, TILE, 3)
    level = server.get(f"{u.instance(3)}/rendered", {"Accept": "image/png"})
    assert level.status == 200 and rgb(level.body).shape == (250, 375, 3)
    fitted = server.get(f"{u.instance(0)}/rendered?viewport=300,300")
    assert rgb(fitted.body).shape == (200, 300, 3)
    for path in (
        f"/dicomweb/studies/{u.study}/thumbnail",
        f"/dicomweb/studies/{u.study}/series/{u.series}/thumbnail",
        f"{u.instance(2)}/thumbnail?viewport=64,64",
    ):
        thumb = server.get(path, {"Accept": "image/*"})
        assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg", path
        assert max(rgb(thumb.body).shape[:2]) in (256, 64)
    assert server.get(f"{u.instance(0)}/rendered", {"Accept": "image/png"}).status == 200
    big = server.get(f"{u.instance(0)}/rendered?viewport=9000,10")
    assert big.status == 400


@pytest.mark.parametrize(
    "path, status, needle",
    [
        ("/dicomweb/studies/1.02.3/series", 400, "StudyInstanceUID"),
        ("/dicomweb/studies/abc/series/1.2/metadata", 400, "StudyInstanceUID"),
        ("/dicomweb/studies/{study}/series/x.y/metadata", 400, "SeriesInstanceUID"),
        ("/dicomweb/studies/{study}/series/{series}/instances/1..2/metadata", 400, "SOPInstance"),
        ("/dicomweb/studies/2.25.12345/series/2.25.1/metadata", 404, "not found"),
        ("/dicomweb/studies/{study}/series/2.25.1/metadata", 404, "not found"),
        ("/dicomweb/studies/{study}/series/{series}/instances/2.25.1/metadata", 404, "not found"),
        ("{instance}/frames/0", 400, "frame numbers"),
        ("{instance}/frames/1,x", 400, "frame numbers"),
        ("{instance}/frames/118", 404, "not found"),
        ("{instance}/frames/" + ",".join(["1"] * 300), 400, "at most 256"),
        ("/dicomweb/studies?PatientNmae=x", 400, "PatientNmae"),
        ("/dicomweb/studies?StudyDate=yesterday", 400, "StudyDate"),
        ("/dicomweb/studies?limit=0", 400, "limit"),
        ("/dicomweb/series?includefield=Nonsense", 400, "Nonsense"),
    ],
)
def test_bad_input(server: Server, stores: Stores, path: str, status: int, needle: str) -> None:
    u = uids_of(stores.synthetic)
    url = path.format(study=u.study, series=u.series, instance=u.instance(0))
    reply = server.get(url, {"Accept": JPEG} if "/frames/" in url else {})
    assert reply.status == status, (url, reply.body)
    assert needle in reply.json()["error"]


def test_unsupported_transfer_syntax_is_406(server: Server, stores: Stores) -> None:
    u = uids_of(stores.synthetic)
    for accept in (
        'multipart/related; type="image/jp2"',
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
        "text/html",
    ):
        reply = server.get(f"{u.instance(0)}/frames/1", {"Accept": accept})
        assert reply.status == 406, accept
        assert dicom.JPEG_BASELINE in reply.json()["error"]
    assert server.get(f"{u.instance(0)}/frames/1,2", {"Accept": "image/jpeg"}).status == 406
    assert server.get(f"{u.instance(0)}/rendered", {"Accept": "image/gif"}).status == 406


def test_uid_root(stores: Stores, tmp_path: Path) -> None:
    bad = cli(tmp_path, "serve", str(stores.directory), "--dicom-uid-root", "1.02.x", "--port", "0")
    assert bad.returncode == 1 and "--dicom-uid-root" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    with run_server(
        stores.directory, stores.home, "--dicom-uid-root", "1.2.826.0.1.3680043.10.999"
    ) as srv:
        studies = [value(r, "StudyInstanceUID") for r in srv.get("/dicomweb/studies").json()]
        assert studies and all(str(s).startswith("1.2.826.0.1.3680043.10.999.") for s in studies)
        ours = dicom.derive_uids(stores.synthetic, 5, "1.2.826.0.1.3680043.10.999")
        assert ours.study in studies


# -- authorization ----------------------------------------------------------------------------


@dataclass
class Site:
    server: Server
    home: Path
    a: str  # collection case-a
    b: str  # collection case-b
    tokens: dict[str, str]

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dicomweb-secure")
    home = root / "home"
    KeyRing(home).initialise()
    ids = []
    for case in ("case-a", "case-b"):
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            convert(
                source,
                LocalObjects(root / "stores" / slide_id),
                slide_id,
                ConvertOptions(),
                KeyRing(home),
            )
        assert cli(home, "slides", "assign", case, slide_id).returncode == 0
        ids.append(slide_id)
    tokens = {}
    for name, scopes, collection in [
        ("a", "metadata,tiles,thumbnails,regions", "case-a"),
        ("a-labels", "metadata,tiles,thumbnails,regions,labels", "case-a"),
        ("b", "metadata,tiles,thumbnails,regions", "case-b"),
        ("a-tiles", "tiles", "case-a"),
        ("a-thumbs", "thumbnails,metadata", "case-a"),
    ]:
        made = cli(home, "tokens", "create", name, "--scope", scopes, "--collection", collection)
        assert made.returncode == 0, made.stderr
        tokens[name] = made.stdout.strip().splitlines()[-1]
    with run_server(root / "stores", home, secure=True) as server:
        yield Site(server, home, ids[0], ids[1], tokens)


def templates(u: Uids) -> list[str]:
    base = f"/dicomweb/studies/{u.study}"
    return [
        f"{base}/series",
        f"{base}/instances",
        f"{base}/series/{u.series}/instances",
        f"{base}/series/{u.series}/metadata",
        f"{u.instance(0)}/metadata",
        f"{u.instance(0)}/frames/1",
        f"{u.instance(0)}/frames/1,2",
        f"{u.instance(0)}/frames/1/rendered",
        f"{u.instance(3)}/rendered",
        f"{base}/thumbnail",
        f"{u.instance(1)}/thumbnail",
    ]


def test_collections_and_guessed_uids(site: Site) -> None:
    a, b = uids_of(site.a), uids_of(site.b)
    for path in templates(a):
        own = site.server.get(path, site.bearer("a"))
        other = site.server.get(path, site.bearer("b"))
        if path.endswith(("/series", "/instances")):  # searches: the other sees nothing
            assert own.status == 200 and own.json(), path
            assert other.status == 200 and other.json() == [], path
            continue
        assert own.status == 200, (path, own.body)
        assert other.status == 404, path
    # Guessing: a made-up study, or mixing one slide's study with the other's series or
    # instance, reaches nothing, and looks like any other unknown UID.
    unknown = site.server.get(
        "/dicomweb/studies/2.25.424242/series/2.25.1/metadata", site.bearer("a")
    )
    assert unknown.status == 404
    for path in (
        f"/dicomweb/studies/{a.study}/series/{b.series}/metadata",
        f"/dicomweb/studies/{a.study}/series/{a.series}/instances/{b.instances[0]}/frames/1",
        f"/dicomweb/studies/{b.study}/series/{a.series}/instances/{a.instances[0]}/frames/1",
    ):
        reply = site.server.get(path, site.bearer("a"))
        assert reply.status == 404 and reply.json()["error"] == unknown.json()["error"], path
    searched = site.server.get("/dicomweb/studies", site.bearer("a")).json()
    assert [value(r, "StudyInstanceUID") for r in searched] == [a.study]
    assert (
        site.server.get(f"/dicomweb/studies?StudyInstanceUID={b.study}", site.bearer("a")).json()
        == []
    )
    assert site.server.get("/dicomweb/studies").status == 401


def test_token_scopes(site: Site) -> None:
    a = uids_of(site.a)
    tiles = site.bearer("a-tiles")
    assert site.server.get(f"{a.instance(0)}/frames/1", {**tiles, "Accept": JPEG}).status == 200
    assert site.server.get(f"{a.instance(0)}/metadata", tiles).status == 200  # a viewer's need
    assert site.server.get("/dicomweb/studies", tiles).status == 403  # searching lists slides
    assert site.server.get(f"/dicomweb/studies/{a.study}/thumbnail", tiles).status == 404
    assert site.server.get(f"{a.instance(3)}/rendered", tiles).status == 404  # regions
    thumbs = site.bearer("a-thumbs")
    assert site.server.get(f"/dicomweb/studies/{a.study}/thumbnail", thumbs).status == 200
    assert site.server.get(f"{a.instance(0)}/metadata", thumbs).status == 200
    assert site.server.get(f"{a.instance(0)}/frames/1", thumbs).status == 404
    assert len(site.server.get("/dicomweb/studies", thumbs).json()) == 1


def test_signed_links(site: Site) -> None:
    a, b = uids_of(site.a), uids_of(site.b)
    shared = site.server.request("POST", f"/api/slides/{site.a}/share?minutes=5", site.bearer("a"))
    assert shared.status == 200, shared.body
    query = shared.json()["query"]
    frames = site.server.get(f"{a.instance(0)}/frames/1?{query}", {"Accept": JPEG})
    assert frames.status == 200
    metadata = site.server.get(f"/dicomweb/studies/{a.study}/series/{a.series}/metadata?{query}")
    assert metadata.status == 200
    assert value(metadata.json()[0], "PatientIdentityRemoved") == "YES"
    for path in (f"/dicomweb/studies?{query}", f"/dicomweb/studies/{a.study}/series?{query}"):
        assert site.server.get(path).status == 403, path  # searches refuse signed links
    assert site.server.get(f"{b.instance(0)}/frames/1?{query}").status == 403  # not its slide
    assert (
        site.server.get(f"/dicomweb/studies/2.25.77/series/2.25.1/metadata?{query}").status == 403
    )
    assert site.server.get(f"/dicomweb/studies/{a.study}/thumbnail?{query}").status == 403
    tampered = query.replace("sig=", "sig=0")
    assert site.server.get(f"{a.instance(0)}/frames/1?{tampered}").status == 403


def test_identifying_attributes_need_the_labels_grant(site: Site) -> None:
    a = uids_of(site.a)
    plain = site.server.get(f"{a.instance(0)}/metadata", site.bearer("a")).json()[0]
    assert value(plain, "PatientIdentityRemoved") == "YES"
    assert value(plain, "AccessionNumber") is None
    assert "00120063" in plain  # DeidentificationMethod
    labelled = site.server.get(f"{a.instance(0)}/metadata", site.bearer("a-labels")).json()[0]
    assert value(labelled, "AccessionNumber") == "case-a"
    assert "00120063" not in labelled
    searched = site.server.get(
        "/dicomweb/studies?AccessionNumber=case-a", site.bearer("a-labels")
    ).json()
    assert len(searched) == 1
    assert (
        site.server.get("/dicomweb/studies?AccessionNumber=case-a", site.bearer("a")).json() == []
    )
    # A person: identified only once granted labels on the collection, at once.
    boot = cli(site.home, "users", "bootstrap", "--url", site.server.base)
    assert boot.returncode == 0, boot.stderr
    alice = enrol(site.server, last_line_token(boot.stdout, "setup"), "alice", PASSWORD)
    assert cli(site.home, "users", "grant", "alice", "case-a").returncode == 0
    path = f"{a.instance(0)}/metadata"
    seen = site.server.get(path, alice.headers()).json()[0]
    assert value(seen, "PatientIdentityRemoved") == "YES"
    assert site.server.get(f"{uids_of(site.b).instance(0)}/metadata", alice.headers()).status == 404
    assert cli(site.home, "users", "grant", "alice", "case-a", "--labels").returncode == 0
    seen = site.server.get(path, alice.headers()).json()[0]
    assert value(seen, "AccessionNumber") == "case-a" and "00120063" not in seen
    records = [
        json.loads(line) for line in (site.home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    reads = [r for r in records if r["detail"].get("kind") == "dicom-metadata"]
    assert {r["detail"]["identified"] for r in reads} == {True, False}
    assert all(r["event_id"] == 110103 and r["object"] == site.a for r in reads)
    queries = [r for r in records if r["detail"].get("kind") == "qido"]
    assert queries and all(r["event_id"] == 110112 for r in queries)
    assert all("case-a" not in json.dumps(r["detail"]) for r in queries)  # keys, not values


def test_frames_declare_one_colour_model_per_level(tmp_path: Path) -> None:
    """A level mixing RGB and YCbCr JPEG chunks declares its first chunk's model; frames in
    another model are re-encoded to it, and background frames are white in it."""
    slide_id, tile = new_slide_id(), 32
    layout = StoreLayout(slide_id, pyramid_sizes(Size(64, 64), tile), tile, "jpeg", 90)
    writer = StoreWriter.create(LocalObjects(tmp_path / "stores" / slide_id), layout, {}, None)
    colours, models = [(200, 30, 60), (20, 160, 90), (40, 60, 210)], ["RGB", "YBR_FULL", "RGB"]
    stored = []
    for i, (colour, model) in enumerate(zip(colours, models, strict=True)):
        pixels = np.full((tile, tile, 3), colour, np.uint8)
        stored.append(encode_jpeg_as(pixels, model, 95))
        writer.write_chunk(0, i % 2, i // 2, stored[-1])  # chunk (1, 1) stays background
    writer.end_row(0, 0)
    writer.end_row(0, 1)
    writer.write_chunk(1, 0, 0, encode_jpeg_as(np.full((32, 32, 3), 99, np.uint8), "YBR_FULL", 95))
    writer.end_row(1, 0)
    assert writer.finish({"slide_id": slide_id})
    home = tmp_path / "home"
    KeyRing(home).initialise()
    u = uids_of(slide_id, 2)
    with run_server(tmp_path / "stores", home) as srv:
        metadata = srv.get(f"/dicomweb/studies/{u.study}/series/{u.series}/metadata").json()
        # a 4:4:4 YCbCr JPEG is declared YBR_FULL_422, the value the WSI IOD enumerates
        assert [value(m, "PhotometricInterpretation") for m in metadata] == [
            "RGB",
            "YBR_FULL_422",
        ]
        frames = [
            body for _, body in parts(srv.get(f"{u.instance(0)}/frames/1,2,3,4", {"Accept": JPEG}))
        ]
    assert frames[0] == stored[0] and frames[2] == stored[2]  # passed through
    assert frames[1] != stored[1] and dicom.jpeg_photometric(frames[1]) == "RGB"
    assert np.abs(rgb(frames[1]).reshape(-1, 3).mean(axis=0) - colours[1]).max() < 4
    assert dicom.jpeg_photometric(frames[3]) == "RGB" and (rgb(frames[3]) >= 250).all()


def test_slide_files_served_directly(stores: Stores, synthetic_svs: Path, tmp_path: Path) -> None:
    """``serve --sources``: no stored chunks, so every frame is made (JPEG in the declared
    colour model, or native pixels), still full Rows x Columns."""
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(synthetic_svs, folder / "synthetic.svs")  # a link out of the folder is refused
    with run_server(folder, stores.home, "--sources") as srv:
        studies = srv.get("/dicomweb/studies").json()
        assert len(studies) == 1
        study = str(value(studies[0], "StudyInstanceUID"))
        series = srv.get(f"/dicomweb/studies/{study}/series").json()
        metadata = srv.get(
            f"/dicomweb/studies/{study}/series/{value(series[0], 'SeriesInstanceUID')}/metadata"
        ).json()
        first = metadata[0]
        # Nothing is stored: the instance is native (RGB); JPEG frames are made on request.
        assert value(first, "PhotometricInterpretation") == "RGB"
        edge = int(str(value(first, "Rows")))
        base = (
            f"/dicomweb/studies/{study}/series/{value(first, 'SeriesInstanceUID')}"
            f"/instances/{value(first, 'SOPInstanceUID')}/frames/2"
        )
        ((_, jpeg),) = parts(srv.get(base, {"Accept": JPEG}))
        assert dicom.jpeg_photometric(jpeg) == "YBR_FULL_422"
        assert rgb(jpeg).shape == (edge, edge, 3)
        ((_, native),) = parts(srv.get(base, {"Accept": NATIVE}))
        assert len(native) == edge * edge * 3
        pixels = np.frombuffer(native, np.uint8).reshape(edge, edge, 3).astype(np.int16)
        assert np.abs(pixels - rgb(jpeg)).mean() < 3


def test_lossless_stores_serve_native_frames(
    stores: Stores, synthetic_tiff: Path, tmp_path: Path
) -> None:
    """A zstd store: instances are Explicit VR Little Endian (RGB), frames its exact pixels;
    ``transfer-syntax=*`` gets those, and JPEG is made on request."""
    slide_id = new_slide_id()
    with open_slide(synthetic_tiff) as source:
        store = LocalObjects(tmp_path / "stores" / slide_id)
        options = ConvertOptions(codec="zstd", tile=512)
        convert(source, store, slide_id, options, KeyRing(stores.home))
    reader = open_reader(tmp_path / "stores" / slide_id, KeyRing(stores.home))
    tile = reader.layout.tile
    u = uids_of(slide_id, len(reader.layout.levels))
    with run_server(tmp_path / "stores", stores.home) as srv:
        first = srv.get(f"{u.instance(0)}/metadata").json()[0]
        assert value(first, "PhotometricInterpretation") == "RGB"
        found = srv.get(f"/dicomweb/studies/{u.study}/instances?InstanceNumber=1").json()
        syntaxes = found[0][tag("AvailableTransferSyntaxUID")]["Value"]
        assert syntaxes == [dicom.EXPLICIT_VR_LITTLE_ENDIAN, dicom.JPEG_BASELINE]
        for accept in (STORED, NATIVE, None):
            reply = srv.get(f"{u.instance(0)}/frames/2", {"Accept": accept} if accept else {})
            ((kind, body),) = parts(reply)
            assert kind == f"application/octet-stream; {dicom.EXPLICIT_VR_LITTLE_ENDIAN}"
            pixels = np.frombuffer(body, np.uint8).reshape(tile, tile, 3)
            assert np.array_equal(pixels, reader.read_chunk(0, 1, 0)), accept
        # Frames per request are capped by their pixels too (48 MiB of native frames).
        most = (1 << 24) // (tile * tile)
        assert most < 256, tile  # this store's tiles are big enough for the pixel cap to bite
        over = srv.get(f"{u.instance(0)}/frames/{','.join(['1'] * (most + 1))}", {"Accept": NATIVE})
        assert over.status == 400 and f"at most {most} frames" in over.json()["error"]
        ((kind, jpeg),) = parts(srv.get(f"{u.instance(0)}/frames/2", {"Accept": JPEG}))
        assert dicom.jpeg_photometric(jpeg) == "YBR_FULL_422"
        assert np.abs(rgb(jpeg) - reader.read_chunk(0, 1, 0)).mean() < 3
