"""Stores on S3 end to end, against a real SeaweedFS on loopback: the CLI converts synthetic and
real slides onto S3, the server serves them from there (the same pixels as from local disk),
and a failing S3 costs the affected requests a 503 while the server stays up."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli import cli
from tests.corpus import require_corpus
from tests.s3proxy import faulty_proxy
from tests.s3server import S3Server
from tests.server.conftest import Server, run_server
from tileserver.geometry import Region
from tileserver.security.keys import KeyRing
from tileserver.sources import open_slide
from tileserver.store.location import open_location
from tileserver.store.reader import StoreReader

FOREVER = 10**9


def _pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.int16)


def _slides(srv: Server) -> list[str]:
    reply = srv.get("/api/slides")
    assert reply.status == 200, reply.body
    return [item["id"] for item in reply.json()["items"]]


def _convert(home: Path, out: str, *slides: Path) -> None:
    proc = cli(home, "convert", "--quiet", *map(str, slides), "--out", out)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert cli(home, "keys", "init").returncode == 0
    return home


def test_convert_onto_s3_and_serve_from_it(
    home: Path, s3_env: str, synthetic_svs: Path, tmp_path: Path
) -> None:
    _convert(home, s3_env, synthetic_svs)
    local = tmp_path / "local"
    _convert(home, str(local), synthetic_svs)
    stores = open_location(s3_env)
    (slide_id,) = [name for name in stores.children() if len(name) == 32]
    assert not any("/c/" in key for key in stores.list_keys())  # shards, not chunk objects
    again = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", s3_env)
    assert again.returncode == 0 and "already converted" in again.stdout
    with run_server(s3_env, home) as srv, run_server(local, home) as local_srv:
        (local_id,) = _slides(local_srv)
        assert _slides(srv) == [slide_id]
        for tile in ("12/5_4.jpeg", "12/0_0.jpeg", "11/2_2.jpeg", "9/0_0.png"):
            ours = srv.get(f"/deepzoom/{slide_id}_files/{tile}")
            theirs = local_srv.get(f"/deepzoom/{local_id}_files/{tile}")
            assert ours.status == 200 and theirs.status == 200, tile
            if tile.endswith(".jpeg") and tile.startswith("12/"):  # pass-through: same bytes
                assert ours.body == theirs.body, tile
            else:
                assert np.abs(_pixels(ours.body) - _pixels(theirs.body)).max() <= 2, tile
        thumb = srv.get(f"/api/slides/{slide_id}/thumbnail?max=256")
        assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_real_slides_convert_onto_s3_and_read_back(home: Path, s3_env: str) -> None:
    corpus = require_corpus()
    names = ["svs/CMU-1-Small-Region.svs", "ndpi/test3-DAPI-2-(387).ndpi"]
    _convert(home, s3_env, *(corpus / name for name in names))
    stores = open_location(s3_env)
    ids = [name for name in stores.children() if len(name) == 32]
    assert len(ids) == 2
    keyring = KeyRing(home)
    readers = [StoreReader.open(stores.child(f"{i}/"), i, keyring) for i in ids]
    region = Region(700, 900, 400, 300)
    for name in names:
        with open_slide(corpus / name) as source:
            expected = source.read_region(0, region)
            size = source.info.dimensions
        (reader,) = [r for r in readers if r.layout.levels[0] == size]
        diff = np.abs(reader.read_region(0, region).astype(int) - expected)
        assert diff.mean() < 2.0, name
    with run_server(s3_env, home) as srv:
        assert sorted(_slides(srv)) == sorted(ids)
        for slide_id in ids:
            assert srv.get(f"/api/slides/{slide_id}/thumbnail?max=128").status == 200


def test_failing_s3_costs_503s_and_the_server_stays_up(
    home: Path,
    s3_server: S3Server,
    s3_env: str,
    synthetic_svs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _convert(home, s3_env, synthetic_svs)
    with faulty_proxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with run_server(s3_env, home) as srv:
            (slide_id,) = _slides(srv)
            assert srv.get(f"/deepzoom/{slide_id}_files/12/0_0.jpeg").status == 200
            proxy.fail("status", FOREVER, status=503)
            down = srv.get(f"/deepzoom/{slide_id}_files/12/5_4.jpeg")  # not cached yet
            assert down.status == 503, down.body
            assert down.json()["error"] == "the slide store is unavailable: try again shortly"
            assert len(down.json()["correlation_id"]) == 32
            assert srv.get("/health").status == 200
            proxy.heal()
            proxy.fail("reset", FOREVER, method="GET")  # cut mid-answer: never short data
            cut = srv.get(f"/deepzoom/{slide_id}_files/12/6_4.jpeg")
            assert cut.status == 503, cut.body
            proxy.heal()
            assert srv.get(f"/deepzoom/{slide_id}_files/12/5_4.jpeg").status == 200
            assert srv.get(f"/deepzoom/{slide_id}_files/12/6_4.jpeg").status == 200


def test_s3_errors_are_one_line_cli_errors(
    home: Path,
    s3_server: S3Server,
    s3_env: str,
    synthetic_svs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_server.secret_key[:8])
    proc = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", s3_env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "credentials rejected" in proc.stderr
    assert s3_server.secret_key not in proc.stderr
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    missing = s3_env.replace(s3_server.bucket, "no-such-bucket", 1)
    proc = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", missing)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    for name, value in s3_server.env(readonly=True).items():
        monkeypatch.setenv(name, value)
    proc = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", s3_env)
    assert proc.returncode == 1 and "access denied" in proc.stderr
    served = cli(home, "migrate", s3_env, "--quiet")  # reading is allowed: nothing to do
    assert served.returncode == 0, served.stderr
