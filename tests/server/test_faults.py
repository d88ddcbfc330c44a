"""The server under bad input and bad stores: traversal tricks, tampering, incomplete stores,
slide files served directly, several worker processes, abandoned requests."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from tests.cli import cli
from tests.corpus import require_corpus
from tests.server.conftest import Server, Stores, run_server
from tests.stores import open_reader
from tileserver.library import SlideLibrary
from tileserver.security.keys import KeyRing
from tileserver.server.app import SERVICE, create_app
from tileserver.server.auth import Security
from tileserver.server.run import make_runner
from tileserver.service import ServiceSettings
from tileserver.store.layout import COMPLETE_MARKER

TRICKS = [
    "/deepzoom/..%2F..%2F..%2Fetc%2Fpasswd.dzi",
    "/deepzoom/%2e%2e/%2e%2e/etc/passwd",
    "/deepzoom/..\\..\\etc\\passwd.dzi",
    "/api/slides/..%2F..%2Fhome",
    "/api/slides/%252e%252e%252f%252e%252e%252fetc",
    "/iiif/3/../../../../etc/passwd/info.json",
    "/iiif/3/%2e%2e%2f%2e%2e%2f/info.json",
    "/api/slides/{id}%2F..%2F..%2Fkeys/thumbnail",
    "/api/slides/{id}/associated/..%2F..%2Fzarr.json",
    "/api/slides/{id}/associated/%2e%2e",
    "/deepzoom/{id}_files/12/0_0.jpeg%00.png",
    "/static/../../etc/passwd",
]


def test_path_tricks_never_leave_the_directory(server: Server, stores: Stores) -> None:
    # A complete store right beside the served directory: reachable only by traversal.
    outside = stores.directory.parent / stores.synthetic
    if not outside.exists():
        shutil.copytree(stores.directory / stores.synthetic, outside)
    for trick in TRICKS:
        reply = server.get(trick.format(id=stores.synthetic))
        assert reply.status in (400, 404), trick
        assert b"root:" not in reply.body and b"zarr_format" not in reply.body
    assert server.get(f"/api/slides/{stores.synthetic}").status == 200


def _copy(stores: Stores, tmp_path: Path) -> tuple[Path, Path]:
    directory = tmp_path / "stores"
    shutil.copytree(stores.directory, directory)
    return directory, directory / stores.synthetic


def test_tampered_chunk_fails_alone(stores: Stores, tmp_path: Path) -> None:
    directory, store = _copy(stores, tmp_path)
    reader = open_reader(store, KeyRing(stores.home))
    grid = reader.layout.grid(0)
    stored = [
        (t_col, t_row)
        for t_row in range(grid.height)
        for t_col in range(grid.width)
        if reader.chunk_bytes(0, t_col, t_row) is not None
    ]
    t_col, t_row = stored[-1]  # the last chunk in level 0's shard: its tag is the last byte
    shard = store / "0" / "c.0.0.0"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x40
    shard.write_bytes(bytes(data))
    with run_server(directory, stores.home) as srv:
        bad = srv.get(f"/deepzoom/{stores.synthetic}_files/12/{t_col}_{t_row}.jpeg")
        assert bad.status == 500
        body = bad.json()
        assert len(body["correlation_id"]) == 32
        # A generic message: the detail (slide, object, reason) goes to the log only.
        assert body["error"] == "internal error: the slide could not be read"
        # The rest of that slide, and every other slide, keep being served.
        t_col, t_row = stored[0]
        assert srv.get(f"/deepzoom/{stores.synthetic}_files/12/{t_col}_{t_row}.jpeg").status == 200
        assert srv.get(f"/deepzoom/{stores.synthetic}_files/11/0_0.jpeg").status == 200
        if stores.cmu:
            assert srv.get(f"/deepzoom/{stores.cmu}_files/11/1_1.jpeg").status == 200
        assert srv.get("/health").status == 200


def test_deleted_shard_is_an_error_never_background(stores: Stores, tmp_path: Path) -> None:
    directory, store = _copy(stores, tmp_path)
    (store / "0" / "c.0.0.0").unlink()  # level 0 of the synthetic slide is one shard
    with run_server(directory, stores.home) as srv:
        for tile in ("12/0_0.jpeg", "12/5_4.png"):
            reply = srv.get(f"/deepzoom/{stores.synthetic}_files/{tile}")
            assert reply.status == 500 and len(reply.json()["correlation_id"]) == 32, tile
        assert srv.get(f"/deepzoom/{stores.synthetic}_files/11/0_0.jpeg").status == 200
        assert srv.get("/health").status == 200


def test_a_deleted_shard_is_audited_as_a_security_alert(stores: Stores, tmp_path: Path) -> None:
    directory, store = _copy(stores, tmp_path)
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    assert cli(home, "slides", "assign", "case-x", stores.synthetic).returncode == 0
    made = cli(home, "tokens", "create", "faults", "--scope", "tiles")
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    (store / "0" / "c.0.0.0").unlink()
    with run_server(directory, home, secure=True) as srv:
        reply = srv.get(f"/deepzoom/{stores.synthetic}_files/12/0_0.jpeg", bearer)
        assert reply.status == 500 and len(reply.json()["correlation_id"]) == 32
    records = [
        json.loads(line) for line in (home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    alerts = [r for r in records if "integrity" in json.dumps(r)]
    assert alerts and stores.synthetic in json.dumps(alerts[0]), records[-3:]


def test_replaced_metadata_fails_that_slide_only(stores: Stores, tmp_path: Path) -> None:
    directory = tmp_path / "stores"
    shutil.copytree(stores.directory, directory)
    (directory / stores.synthetic / "zarr.json").write_text('{"zarr_format": 3}')
    with run_server(directory, stores.home) as srv:
        reply = srv.get(f"/api/slides/{stores.synthetic}")
        assert reply.status == 500 and reply.json()["correlation_id"]
        if stores.cmu:
            assert srv.get(f"/api/slides/{stores.cmu}").status == 200


def test_incomplete_store_is_neither_listed_nor_served(stores: Stores, tmp_path: Path) -> None:
    directory = tmp_path / "stores"
    shutil.copytree(stores.directory, directory)
    (directory / stores.synthetic / COMPLETE_MARKER).unlink()
    with run_server(directory, stores.home) as srv:
        ids = [s["id"] for s in srv.get("/api/slides").json()["items"]]
        assert stores.synthetic not in ids
        assert srv.get(f"/deepzoom/{stores.synthetic}.dzi").status == 404


def test_slide_files_served_directly(stores: Stores, tmp_path: Path) -> None:
    corpus = require_corpus()
    directory = tmp_path / "files"
    directory.mkdir()
    shutil.copy(corpus / "svs" / "CMU-1-Small-Region.svs", directory / "cmu.svs")
    shutil.copy(corpus / "broken" / "unreadable.svs", directory / "bad-pixels.svs")
    shutil.copy(corpus / "broken" / "histolab_broken.svs", directory / "not-a-slide.svs")
    (directory / "sub").mkdir()
    shutil.copy(corpus / "generic-tiff" / "boxes.tiff", directory / "sub" / "boxes.tiff")
    # A link to a slide outside the directory is not served.
    (directory / "outside.svs").symlink_to(corpus / "svs" / "openslide-python_small.svs")
    with run_server(directory, stores.home, "--sources") as srv:
        items = srv.get("/api/slides").json()["items"]
        assert len(items) == 4
        widths = sorted(s.get("width", 0) for s in items)
        assert widths == [0, 16, 300, 2220]  # the unopenable file is listed as unavailable
        assert [s["available"] for s in items].count(False) == 1
        good = next(s["id"] for s in items if s.get("width") == 2220)
        bad = next(s["id"] for s in items if s.get("width") == 16)
        broken = srv.get(f"/deepzoom/{bad}_files/4/0_0.jpeg")
        assert broken.status == 500 and broken.json()["correlation_id"]
        assert srv.get(f"/deepzoom/{good}.dzi").status == 200
        assert srv.get(f"/deepzoom/{good}_files/12/3_4.jpeg").status == 200
        assert srv.get(f"/api/slides/{good}/thumbnail?max=256").status == 200
        assert srv.get(f"/api/slides/{good}/associated/label").status == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_processes_share_the_port(stores: Stores) -> None:
    import os
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = {**os.environ, "TILESERVER_HOME": str(stores.home)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tileserver.cli",
            "serve",
            str(stores.directory),
            "--port",
            str(port),
            "--workers",
            "2",
            "--insecure-http",
            "--no-auth",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.2)

        def fetch(i: int) -> int:
            path = f"/deepzoom/{stores.synthetic}_files/{10 + i % 3}/{i % 3}_{i % 2}.jpeg"
            with urllib.request.urlopen(url + path, timeout=30) as reply:
                return int(reply.status)

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(fetch, range(60))) == {200}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_abandoned_requests_do_not_run(stores: Stores) -> None:
    """With one render thread busy, clients that give up leave no work behind."""

    async def scenario() -> int:
        library = SlideLibrary(stores.directory, sources=False, keyring=KeyRing(stores.home))
        app = create_app(
            library,
            ServiceSettings(threads=1, chunk_cache_items=0, response_cache_bytes=0),
            Security(None, None, None, tls=False, loopback=True),
        )
        runner = make_runner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}/api/slides/{stores.synthetic}/region"
        try:
            timeout = aiohttp.ClientTimeout(total=0.05)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def abandon(i: int) -> None:
                    url = f"{base}?x=0&y={i}&width=3000&height=1980&format=png"
                    try:
                        async with session.get(url) as reply:
                            pytest.fail(f"answered {reply.status}: {await reply.text()}")
                    except TimeoutError:
                        pass

                await asyncio.gather(*(abandon(i) for i in range(20)))
            await asyncio.sleep(3)  # let whatever did start finish
            return int(app[SERVICE].stats["rendered"])
        finally:
            await runner.cleanup()

    rendered = asyncio.run(scenario())
    assert rendered <= 3, f"{rendered} of 20 abandoned renders ran"


def test_refused_login_summaries_are_written_when_the_server_stops(
    stores: Stores, tmp_path: Path
) -> None:
    """Refusals after an address's first in a minute wait for that minute's summary record;
    a server that stops first writes the summary then, so none go unrecorded."""
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    trail = home / "audit" / "audit.jsonl"
    earlier = len(trail.read_text().splitlines()) if trail.exists() else 0  # other tests'
    body = {"username": "nobody-here", "password": "x" * 16, "code": "123456"}
    with run_server(stores.directory, home, "--login-rate", "0.5", secure=True) as srv:
        statuses = [srv.post("/auth/login", body).status for _ in range(4)]
    assert statuses == [401] * 4
    records = [json.loads(line) for line in trail.read_text().splitlines()[earlier:]]
    refused = [r for r in records if "invalid_credentials" in json.dumps(r)]
    total = sum(
        r["detail"].get("refused", 1) if r["detail"].get("aggregated") else 1 for r in refused
    )
    assert total == 4, refused
