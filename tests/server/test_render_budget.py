"""Issue 14, finding 3: renders are limited by cost, per principal, not by request count.

The real application in process on loopback with real tokens, except the last test, which
runs the real CLI to show the ``serve`` flags reach it.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.cli import cli
from tests.server.conftest import Stores, run_server
from tests.server.test_probe_findings import fetch, library, running, secured
from tileserver.geometry import Region, Size
from tileserver.render.admission import RenderBusy
from tileserver.server.app import create_app
from tileserver.service import LARGE_RENDER_NICENESS, Encoded, ServiceSettings, SlideService

SCOPES = frozenset({"tiles", "thumbnails", "regions", "metadata"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_spent_budget_is_429_for_that_principal_only(tmp_path: Path, stores: Stores) -> None:
    security, accounts = secured(tmp_path)
    slide = stores.synthetic
    accounts.assign(slide, "case-a")
    flood = bearer(accounts.create_token("flood", SCOPES, None, None))
    other = bearer(accounts.create_token("other", SCOPES, None, None))
    assert security.url_keys is not None
    link = security.url_keys.sign(slide, "regions", int(time.time()) + 300)
    # 3 megapixels at once, then 0.1 a second: a 1000 x 1000 region needs 10 s to earn.
    settings = ServiceSettings(render_budget_mpx=0.1, render_burst_mpx=3)

    def region(x: int) -> str:
        return f"/api/slides/{slide}/region?x={x}&y=0&width=1000&height=1000"

    async def scenario() -> dict[str, tuple[int, object, dict[str, str]]]:
        app = create_app(library(stores), settings, security)
        async with running(app) as base, aiohttp.ClientSession() as session:
            replies = {}
            for x in (0, 10, 20):  # three distinct renders: the burst
                replies[f"burst {x}"] = await fetch(session, base + region(x), flood)
            replies["over"] = await fetch(session, base + region(30), flood)
            replies["iiif over"] = await fetch(
                session, f"{base}/iiif/3/{slide}/40,0,1000,1000/max/0/default.png", flood
            )
            replies["thumbnail over"] = await fetch(
                session, f"{base}/api/slides/{slide}/thumbnail?max=300", flood
            )
            # What costs no rendering is never refused: a cached response, a stored tile.
            replies["cached"] = await fetch(session, base + region(0), flood)
            replies["passthrough"] = await fetch(
                session, f"{base}/deepzoom/{slide}_files/12/1_1.jpeg", flood
            )
            replies["other"] = await fetch(session, base + region(50), other)
            replies["link"] = await fetch(session, f"{base}{region(60)}&{link}", None)
            return replies

    replies = asyncio.run(scenario())
    for name in ("burst 0", "burst 10", "burst 20", "cached", "passthrough", "other", "link"):
        assert replies[name][0] == 200, (name, replies[name][1])
    for name in ("over", "iiif over", "thumbnail over"):
        status, body, headers = replies[name]
        assert status == 429, (name, body)
        assert isinstance(body, dict) and "render budget exceeded" in body["error"]
        assert "0.1 megapixels per second" in body["error"]
        assert int(headers["Retry-After"]) >= 1


def test_upscaling_is_capped(tmp_path: Path, stores: Stores) -> None:
    security, accounts = secured(tmp_path)
    slide = stores.synthetic
    accounts.assign(slide, "case-a")
    token = bearer(accounts.create_token("viewer", SCOPES, None, None))

    async def scenario() -> list[tuple[int, object, bytes]]:
        app = create_app(library(stores), ServiceSettings(), security)
        paths = [
            f"/iiif/3/{slide}/0,0,100,100/^max/0/default.jpg",  # 8192 x 8192 before: now 2x
            f"/iiif/3/{slide}/0,0,100,100/^201,/0/default.jpg",
            f"/iiif/3/{slide}/0,0,100,100/^pct:300/0/default.jpg",
            f"/api/slides/{slide}/region?x=0&y=0&width=100&height=100&out_width=201",
            f"/api/slides/{slide}/region?x=0&y=0&width=100&height=100&max=200",
        ]
        async with running(app) as base, aiohttp.ClientSession() as session:
            replies = []
            for path in paths:
                async with session.get(base + path, headers=token) as reply:
                    data = await reply.read()
                    body = await reply.json() if reply.content_type.endswith("json") else None
                    replies.append((reply.status, body, data))
            return replies

    up_max, over_w, over_pct, rest_over, rest_ok = asyncio.run(scenario())
    assert up_max[0] == 200 and Image.open(io.BytesIO(up_max[2])).size == (200, 200)
    for status, body, _ in (over_w, over_pct):
        assert status == 400 and isinstance(body, dict)
        assert "over the maximum upscaling of 2x the 100x100 region" in body["error"]
    assert rest_over[0] == 400 and isinstance(rest_over[1], dict)
    assert "maximum upscaling of 2x" in rest_over[1]["error"]
    assert rest_ok[0] == 200 and Image.open(io.BytesIO(rest_ok[2])).size == (200, 200)


def test_the_render_memory_ceiling(tmp_path: Path, stores: Stores) -> None:
    security, accounts = secured(tmp_path)
    slide = stores.synthetic
    accounts.assign(slide, "case-a")
    flood = bearer(accounts.create_token("flood", SCOPES, None, None))
    # 200 MiB, 32 of them kept for the two render threads' small renders: room for one
    # full-resolution 3000 x 2000 render (about 92 MiB) at a time, none at 6000 x 4000.
    settings = ServiceSettings(render_memory_mib=200, render_wait=0, render_budget_mpx=0)

    async def scenario() -> tuple[list[tuple[int, object, dict[str, str]]], ...]:
        app = create_app(library(stores), settings, security)
        async with running(app) as base, aiohttp.ClientSession() as session:
            too_big = [
                await fetch(
                    session,
                    f"{base}/api/slides/{slide}/region?x=0&y=0&width=3000&height=2000"
                    "&out_width=6000",
                    flood,
                )
            ]
            # Four at once from one principal: one runs, the others find it holding its share.
            at_once = await asyncio.gather(
                *[
                    fetch(session, f"{base}/iiif/3/{slide}/full/max/{r}/default.png", flood)
                    for r in ("0", "90", "180", "270")
                ]
            )
            small = [await fetch(session, f"{base}/api/slides/{slide}/thumbnail?max=512", flood)]
            return too_big, list(at_once), small

    too_big, at_once, small = asyncio.run(scenario())
    status, body, _ = too_big[0]
    assert status == 400 and isinstance(body, dict)
    assert "render memory ceiling of 200 MiB" in body["error"], body
    statuses = sorted(reply[0] for reply in at_once)
    assert statuses[0] == 200 and statuses[-1] == 503, statuses
    assert set(statuses) == {200, 503}
    for status, body, headers in at_once:
        if status == 503:
            assert isinstance(body, dict) and "already has 1 large render" in body["error"]
            assert int(headers["Retry-After"]) >= 1
    assert small[0][0] == 200


def test_small_renders_never_queue_behind_large_ones(stores: Stores) -> None:
    """A flood holds the large-render pool; everyone's tiles and thumbnails still render,
    and a large render of another principal waits for room (bounded), not for the flood."""

    async def scenario() -> None:
        service = SlideService(library(stores), ServiceSettings(render_wait=30))
        release = threading.Event()
        try:
            # The flood's render, holding the only large-render thread until released.
            service._large.submit(release.wait)
            slide = stores.synthetic
            thumb = await asyncio.wait_for(service.thumbnail(slide, 512, "jpeg", (), "u:a"), 60)
            assert isinstance(thumb, Encoded)
            tile = await asyncio.wait_for(
                service.iiif_image(slide, ("0,0,480,480", "240,", "0", "gray", "png"), (), "u:b"),
                60,
            )
            assert isinstance(tile, Encoded)
            assert service.stats["rendered"] == 2 and service.stats["rendered_large"] == 0
            large = asyncio.create_task(
                service.region(slide, Region(0, 0, 3000, 2000), Size(3000, 2000), "png", (), "u:c")
            )
            await asyncio.sleep(0.2)
            assert not large.done()  # admitted, queued behind the held thread
            assert service.stats["rendered_large"] == 1
            release.set()
            assert isinstance(await asyncio.wait_for(large, 60), Encoded)
            assert service.gate.used == 0  # released once the work was over
        finally:
            release.set()
            service.close()

    asyncio.run(scenario())


def test_large_renders_run_at_a_lower_cpu_priority(stores: Stores) -> None:
    service = SlideService(library(stores), ServiceSettings())
    try:
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        large = service._large.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result(timeout=60)
        small = service._executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result(timeout=60)
    finally:
        service.close()
    assert large == min(19, ours + LARGE_RENDER_NICENESS) and small == ours


def test_a_second_large_render_of_one_principal_is_refused_without_waiting(
    stores: Stores,
) -> None:
    async def scenario() -> None:
        service = SlideService(library(stores), ServiceSettings(render_wait=0))
        slide = stores.synthetic
        full = Region(0, 0, 3000, 2000)
        try:
            await service.pyramid(slide)
            first = asyncio.create_task(service.region(slide, full, full.size, "png", (), "u:a"))
            await asyncio.sleep(0)  # admitted and handed to the large-render thread
            with pytest.raises(RenderBusy):
                await service.region(slide, full, Size(2999, 1999), "png", (), "u:a")
            other = service.region(slide, full, Size(2998, 1998), "png", (), "u:b")
            assert isinstance(await first, Encoded)
            assert isinstance(await other, Encoded)  # room again once the first was done
        finally:
            service.close()

    asyncio.run(scenario())


def test_serve_flags(tmp_path: Path, stores: Stores) -> None:
    for flags, message in [
        (["--render-memory", "40"], "--render-memory must be 48.."),
        (["--render-budget", "-1"], "--render-budget must be >= 0"),
        (["--render-burst", "0"], "--render-burst positive"),
        (["--max-upscale", "0.5"], "--max-upscale must be at least 1"),
    ]:
        refused = cli(tmp_path, "serve", str(stores.directory), "--port", "0", *flags)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    budget = ("--render-budget", "0.01", "--render-burst", "0.5", "--max-upscale", "1")
    with run_server(stores.directory, stores.home, *budget) as server:
        base = f"/api/slides/{stores.synthetic}/region?y=0&width=500&height=500"
        assert server.get(f"{base}&x=0").status == 200  # 0.25 MPx of 0.5
        assert server.get(f"{base}&x=0&out_width=501").status == 400  # no upscaling at all
        assert server.get(f"{base}&x=10").status == 200
        refused_reply = server.get(f"{base}&x=20")
        assert refused_reply.status == 429 and int(refused_reply.headers["retry-after"]) >= 1
