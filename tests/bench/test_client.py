"""The load client: loopback-only targets, TLS with self-signed certificates, headers, cookies."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tileserver.bench.cli import add_commands
from tileserver.bench.client import BenchError, RemoteTargetRefused, check_target, parse_header

TOKEN = "Bearer s3cret"


def bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "load", *argv])
    return args.func(args)


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.1/x.dzi",
        "https://10.1.2.3:8443/x.dzi",
        "http://[2001:db8::1]:80/info.json",
        "http://[::ffff:192.0.2.1]/x.dzi",
        "http://0.0.0.0:8000/x.dzi",
        "http://nonexistent.invalid/x.dzi",
    ],
)
def test_refuses_non_loopback_targets(url: str) -> None:
    with pytest.raises(RemoteTargetRefused):
        check_target(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/x.dzi", "https://127.8.9.10/x.dzi", "http://localhost/x", "http://[::1]/"],
)
def test_accepts_loopback_targets(url: str) -> None:
    check_target(url)


def test_allow_remote_and_bad_urls() -> None:
    check_target("http://192.0.2.1/x.dzi", allow_remote=True)  # resolves nothing, connects never
    with pytest.raises(BenchError):
        check_target("ftp://127.0.0.1/x.dzi")
    assert parse_header("Authorization: Bearer X") == ("Authorization", "Bearer X")
    with pytest.raises(BenchError):
        parse_header("no colon")


def test_cli_refuses_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # 192.0.2.1 (TEST-NET-1) never answers: a connection attempt would hang until the timeout.
    started = time.perf_counter()
    assert bench("http://192.0.2.1/x.dzi", "--timeout", "30") == 1
    assert time.perf_counter() - started < 1
    assert "not a loopback address" in capsys.readouterr().err


# -- a TLS server requiring a token and a cookie ------------------------------------------
def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import ssl

    cert, key = _certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    dzi = (
        '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" TileSize="254" Overlap="1" '
        'Format="jpeg"><Size Width="600" Height="500"/></Image>'
    )

    @web.middleware
    async def auth(request: web.Request, handler: object) -> web.StreamResponse:
        if request.headers.get("Authorization") != TOKEN or request.cookies.get("s") != "1":
            raise web.HTTPUnauthorized()
        return await handler(request)  # type: ignore[operator]

    async def get_dzi(request: web.Request) -> web.Response:
        return web.Response(text=dzi, content_type="application/xml")

    async def get_tile(request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8tile\xff\xd9", content_type="image/jpeg")

    app = web.Application(middlewares=[auth])
    app.router.add_get("/slide.dzi", get_dzi)
    app.router.add_get(r"/slide_files/{level:\d+}/{name}", get_tile)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}/slide.dzi", cert
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_tls_headers_and_cookies(
    tls_server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, cert = tls_server
    common = ["--trace", "pan", "--concurrency", "2", "--passes", "cold", "--max-requests", "20"]
    auth = ["--header", f"Authorization: {TOKEN}", "--cookie", "s=1"]
    # An unknown self-signed certificate is refused unless trusted or --insecure.
    assert bench(url, *common, *auth) == 1
    assert "certificate" in capsys.readouterr().err.lower()
    for trust in (["--insecure"], ["--cafile", str(cert)]):
        out = tmp_path / "r.json"
        assert bench(url, *common, *auth, *trust, "--json", str(out)) == 0
        (run,) = json.loads(out.read_text())["runs"]
        assert run["errors"] == 0 and run["statuses"] == {"200": run["requests"]} == {"200": 6}
    # Without the token the descriptor itself is refused (401).
    assert bench(url, *common, "--insecure", "--cookie", "s=1") == 1
    assert "401" in capsys.readouterr().err
