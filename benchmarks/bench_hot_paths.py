"""Micro-benchmarks of the hot paths (pytest-benchmark; not part of the default test run).

    .venv/bin/pytest benchmarks/bench_hot_paths.py --benchmark-only

JPEG decode and encode of a tile, half-size DCT decode, AES-GCM seal and open of a chunk,
and the in-process tile path of the service: a pass-through tile (read + decrypt) and a
rendered tile (decode, compose, encode), each with the response cache off.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sample_data import render_tile, write_svs
from tileserver.library import SlideLibrary
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.render.encode import decode_jpeg_half, encode
from tileserver.security.crypto import Sealer, new_key
from tileserver.security.keys import KeyRing
from tileserver.service import ServiceSettings, SlideService
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.chunks import decode_chunk, encode_chunk
from tileserver.store.local import LocalObjects

TILE = render_tile(9000, 9000, 240, 240, seed=1)  # a tissue tile
JPEG = encode_chunk(TILE, "jpeg", 85)


def test_jpeg_decode(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(decode_chunk, JPEG, "jpeg", 240).shape == (240, 240, 3)


def test_jpeg_decode_half(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(decode_jpeg_half, JPEG).shape == (120, 120, 3)


def test_jpeg_encode(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(encode_chunk, TILE, "jpeg", 85)[:2] == b"\xff\xd8"


def test_png_encode(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(encode, TILE, "png")[:4] == b"\x89PNG"


def test_seal(benchmark) -> None:  # type: ignore[no-untyped-def]
    sealer = Sealer(new_key())
    benchmark(sealer.seal, JPEG, b"aad")


def test_open(benchmark) -> None:  # type: ignore[no-untyped-def]
    sealer = Sealer(new_key())
    blob = sealer.seal(JPEG, b"aad")
    assert benchmark(sealer.open, blob, b"aad", "x") == JPEG


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlideService, str]:
    root = tmp_path_factory.mktemp("hot")
    slide = write_svs(root / "s.svs", 4800, 3600, seed=2)
    keyring = KeyRing(root / "home")
    keyring.initialise()
    slide_id = new_slide_id()
    with open_slide(slide) as source:
        convert(source, LocalObjects(root / "out" / slide_id), slide_id, ConvertOptions(), keyring)
    library = SlideLibrary(root / "out", sources=False, keyring=keyring)
    settings = ServiceSettings(response_cache_bytes=0, chunk_cache_items=0)
    return SlideService(library, settings), slide_id


def _tile(service: SlideService, slide_id: str, z: int, col: int, row: int) -> bytes:
    async def go() -> bytes:
        encoded = await service.deepzoom_tile(slide_id, z, col, row, "jpeg", frozenset())
        return encoded.data  # type: ignore[union-attr]

    return asyncio.run(go())


def test_service_passthrough_tile(benchmark, service) -> None:  # type: ignore[no-untyped-def]
    svc, slide_id = service
    data = benchmark(_tile, svc, slide_id, 13, 10, 7)
    assert data[:2] == b"\xff\xd8"


def test_service_rendered_tile(benchmark, service) -> None:  # type: ignore[no-untyped-def]
    svc, slide_id = service
    data = benchmark(_tile, svc, slide_id, 13, 19, 14)  # an edge tile: cropped, re-encoded
    assert data[:2] == b"\xff\xd8"
    assert np.frombuffer(data, np.uint8).size > 100
