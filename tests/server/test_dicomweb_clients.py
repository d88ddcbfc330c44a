"""Real DICOMweb clients against the real HTTPS server (issue 16): dicomweb-client searches
and retrieves frames, which equal our DeepZoom tiles (the same bytes where passed through);
wsidicom opens the slide over DICOMweb as a WSI and reads regions equal to our REST regions.
Both authenticate with a bearer token and verify our TLS certificate."""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from requests.adapters import HTTPAdapter
from wsidicom import WsiDicom, WsiDicomWebClient  # type: ignore[import-untyped]

from tests.cli import cli
from tests.corpus import SLIDES, require_corpus
from tests.server.conftest import Server, run_server
from tests.stores import open_reader
from tileserver.protocols import dicom
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

CMU = SLIDES / "svs" / "CMU-1-Small-Region.svs"


class _TrustOnly(HTTPAdapter):
    """Verify with this SSL context: Python's defaults, as the other tests' clients do
    (urllib3's own context adds X.509 strict mode, which refuses a self-signed leaf)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)


@dataclass
class Site:
    server: Server
    home: Path
    slides: dict[str, str]  # name -> slide ID
    token: str

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        cafile = str(self.home / "tls" / "cert.pem")
        session.verify = cafile  # our certificate, verified
        session.mount("https://", _TrustOnly(ssl.create_default_context(cafile=cafile)))
        return session

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.server.base}/dicomweb", session=self.session())

    def get(self, path: str) -> bytes:
        reply = self.server.get(path, {"Authorization": f"Bearer {self.token}"})
        assert reply.status == 200, (path, reply.body[:200])
        return reply.body


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dicomweb-clients")
    home = root / "home"
    KeyRing(home).initialise()
    sources = {"synthetic": synthetic_svs}
    if CMU.exists():  # real Aperio JPEG tiles: RGB JPEGs at level 0, ours above
        sources["cmu"] = CMU
    slides = {}
    for name, path in sources.items():
        slide_id = new_slide_id()
        with open_slide(path) as source:
            store = LocalObjects(root / "stores" / slide_id)
            convert(source, store, slide_id, ConvertOptions(), KeyRing(home))
        assert cli(home, "slides", "assign", "case-a", slide_id).returncode == 0
        slides[name] = slide_id
    made = cli(
        home,
        "tokens",
        "create",
        "pacs",
        "--scope",
        "metadata,tiles,regions",
        "--collection",
        "case-a",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    with run_server(root / "stores", home, secure=True) as server:
        yield Site(server, home, slides, token)


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_dicomweb_client_searches_and_retrieves_frames(site: Site) -> None:
    client = site.client()
    slide_id = site.slides["synthetic"]
    uids = dicom.derive_uids(slide_id, 5)
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": uids.study})
    assert [s["0020000D"]["Value"][0] for s in studies] == [uids.study]
    assert len(client.search_for_studies()) == len(site.slides)
    series = client.search_for_series(uids.study)
    assert [s["0020000E"]["Value"][0] for s in series] == [uids.series]
    instances = client.search_for_instances(uids.study, uids.series)
    assert [i["00080018"]["Value"][0] for i in instances] == list(uids.instances)
    metadata = client.retrieve_series_metadata(uids.study, uids.series)
    assert len(metadata) == 5
    reader = open_reader(Path(site.server.directory) / slide_id, KeyRing(site.home))
    positions = [(c, r) for r in range(8) for c in range(12) if reader.chunk_bytes(0, c, r)][:6]
    numbers = [r * 13 + c + 1 for c, r in positions]
    jpeg = client.retrieve_instance_frames(
        uids.study,
        uids.series,
        uids.instances[0],
        frame_numbers=numbers,
        media_types=(("image/jpeg", dicom.JPEG_BASELINE),),
    )
    native = client.retrieve_instance_frames(
        uids.study,
        uids.series,
        uids.instances[0],
        frame_numbers=numbers,
        media_types=(("application/octet-stream", dicom.EXPLICIT_VR_LITTLE_ENDIAN),),
    )
    assert len(jpeg) == len(native) == len(positions)
    for (c, r), frame, pixels in zip(positions, jpeg, native, strict=True):
        tile = site.get(f"/deepzoom/{slide_id}_files/12/{c}_{r}.jpeg")
        assert frame == tile  # pass-through: the very bytes of the DeepZoom tile
        decoded = np.frombuffer(pixels, np.uint8).reshape(240, 240, 3).astype(np.int16)
        assert np.abs(decoded - rgb(tile)).max() <= 1


def test_wsidicom_opens_the_slide_and_reads_regions(site: Site) -> None:
    check_wsidicom(site, site.slides["synthetic"])


@pytest.mark.slides
def test_wsidicom_reads_a_real_svs_with_rgb_jpeg_tiles(site: Site) -> None:
    """CMU-1-Small-Region's Aperio tiles are RGB JPEGs, copied as level 0; the levels we
    encode are YCbCr (4:4:4, declared YBR_FULL_422 as the WSI IOD enumerates): each
    instance declares its own frames' photometric."""
    require_corpus()
    slide_id = site.slides["cmu"]
    uids = dicom.derive_uids(slide_id, 1)
    metadata = site.client().retrieve_series_metadata(uids.study, uids.series)
    photometrics = [m["00280004"]["Value"][0] for m in metadata]
    assert photometrics[0] == "RGB" and set(photometrics[1:]) == {"YBR_FULL_422"}
    check_wsidicom(site, slide_id)


def check_wsidicom(site: Site, slide_id: str) -> None:
    uids = dicom.derive_uids(slide_id, 1)
    client = WsiDicomWebClient(site.client())
    with WsiDicom.open_web(client, uids.study, [uids.series]) as wsi:
        doc = json.loads(site.get(f"/api/slides/{slide_id}"))
        assert (wsi.size.width, wsi.size.height) == (doc["width"], doc["height"])
        assert len(wsi.levels) == len(doc["levels"])
        for level, (x, y, w, h) in [(0, (300, 200, 500, 400)), (2, (40, 30, 150, 100))]:
            region = np.asarray(wsi.read_region((x, y), level, (w, h)).convert("RGB"))
            k = 2**level
            ours = rgb(
                site.get(
                    f"/api/slides/{slide_id}/region?x={x * k}&y={y * k}&width={w * k}"
                    f"&height={h * k}&out_width={w}&out_height={h}&format=png"
                )
            )
            assert region.shape == ours.shape, level
            difference = np.abs(region.astype(np.int16) - ours)
            assert difference.max() <= 2, (level, difference.max())
