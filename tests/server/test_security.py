"""Security of the running server (security-requirements §4): TLS, no default credentials,
enrolment, two-factor login, sessions, scoped tokens, per-slide authorization, audit."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.cli import cli
from tests.server.conftest import Server, Stores, run_server
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security import totp
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

PASSWORD_A = "correct horse battery staple A"  # test-only, generated for this suite
PASSWORD_B = "correct horse battery staple B"


def last_line_token(output: str, key: str) -> str:
    url = output.strip().splitlines()[-1]
    return parse_qs(urlsplit(url).query)[key][0]


@dataclass
class Person:
    name: str
    password: str
    secret: bytes
    cookie: str

    def headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie}


def session_cookie(reply_headers: dict[str, str]) -> str:
    cookie = reply_headers["set-cookie"]
    return cookie.split(";")[0]


def enrol(server: Server, token: str, name: str, password: str) -> Person:
    started = server.post("/auth/enrol", {"token": token, "username": name, "password": password})
    assert started.status == 200, started.body
    uri = started.json()["otpauth_uri"]
    assert started.json()["qr_svg"].lstrip().startswith(("<?xml", "<svg"))
    import base64

    b32 = parse_qs(urlsplit(uri).query)["secret"][0]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    code = totp.code_at(secret, totp.step_of(time.time()))
    done = server.post("/auth/enrol/confirm", {"token": token, "code": code})
    assert done.status == 200, done.body
    return Person(name, password, secret, session_cookie(done.headers))


def login(
    server: Server, person: Person, step_offset: int = 0
) -> http.client.HTTPResponse | object:
    code = totp.code_at(person.secret, totp.step_of(time.time()) + step_offset)
    return server.post(
        "/auth/login", {"username": person.name, "password": person.password, "code": code}
    )


@dataclass
class Site:
    server: Server
    stores: Stores
    slide_a: str  # in collection "case-a"; both keep their label, macro and thumbnail
    slide_b: str  # in collection "case-b"
    alice: Person  # admin (bootstrap), grant on case-a without labels
    bob: Person  # pathologist, grant on case-b


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("secure")
    home = root / "home"
    KeyRing(home).initialise()
    out = root / "stores"
    ids = []
    for _ in range(2):
        slide_id = new_slide_id()
        with open_slide(synthetic_svs) as source:
            convert(
                source,
                LocalObjects(out / slide_id),
                slide_id,
                ConvertOptions(keep_associated=True),
                KeyRing(home),
            )
        ids.append(slide_id)
    assert cli(home, "slides", "assign", "case-a", ids[0]).returncode == 0
    assert cli(home, "slides", "assign", "case-b", ids[1]).returncode == 0
    with run_server(out, home, secure=True) as server:
        boot = cli(home, "users", "bootstrap", "--url", server.base)
        assert boot.returncode == 0, boot.stderr
        alice = enrol(server, last_line_token(boot.stdout, "setup"), "alice", PASSWORD_A)
        add = cli(home, "users", "add", "bob", "--url", server.base)
        bob = enrol(server, last_line_token(add.stdout, "setup"), "ignored", PASSWORD_B)
        assert bob.name == "ignored"
        bob.name = "bob"
        assert cli(home, "users", "grant", "alice", "case-a").returncode == 0
        assert cli(home, "users", "grant", "bob", "case-b").returncode == 0
        yield Site(server, Stores(out, home, ids[0], None), ids[0], ids[1], alice, bob)


def test_vendor_default_pairs_fail_on_a_fresh_install(tmp_path: Path, stores: Stores) -> None:
    home = tmp_path / "home"
    with run_server(stores.directory, home, secure=True) as server:
        for user, password in [
            ("admin", "admin"),
            ("root", "root"),
            ("orthanc", "orthanc"),
            ("service", "service"),
            ("admin", "password"),
            ("user", "user"),
            ("admin", ""),
            ("", ""),
        ]:
            reply = server.post(
                "/auth/login", {"username": user, "password": password, "code": "000000"}
            )
            assert reply.status == 401, (user, password)
            assert "set-cookie" not in reply.headers
        assert server.get("/api/slides").status == 401


def test_bootstrap_link_is_single_use(site: Site) -> None:
    boot = cli(site.stores.home, "users", "bootstrap")
    assert boot.returncode == 1 and "already has users" in boot.stderr


def test_login_needs_password_and_fresh_totp(site: Site) -> None:
    server, alice = site.server, site.alice
    wrong = server.post(
        "/auth/login", {"username": "alice", "password": PASSWORD_A, "code": "000000"}
    )
    assert wrong.status == 401
    assert (
        server.post("/auth/login", {"username": "alice", "password": PASSWORD_A, "code": ""}).status
        == 401
    )
    # Wait for a step nobody used yet (enrolment consumed the current one).
    step = totp.step_of(time.time())
    while totp.step_of(time.time()) == step:
        time.sleep(0.5)
    first = login(server, alice)
    assert first.status == 200, first.body
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("__Host-tileserver=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie
    replay = login(server, alice)
    assert replay.status == 401, "a TOTP code was accepted twice"
    older = login(server, alice, step_offset=-2)
    assert older.status == 401


def test_users_see_only_their_collections(site: Site) -> None:
    server, alice, bob = site.server, site.alice, site.bob
    a, b = site.slide_a, site.slide_b
    paths = [
        "/deepzoom/{id}.dzi",
        "/deepzoom/{id}_files/12/3_3.jpeg",
        "/iiif/3/{id}/info.json",
        "/iiif/3/{id}/0,0,512,512/256,/0/default.jpg",
        "/api/slides/{id}",
        "/api/slides/{id}/thumbnail?max=128",
        "/api/slides/{id}/region?x=0&y=0&width=300&height=200",
        "/api/slides/{id}/associated/thumbnail",
    ]
    for template in paths:
        own = server.get(template.format(id=a), alice.headers())
        assert own.status == 200, template
        other = server.get(template.format(id=b), alice.headers())
        missing = server.get(template.format(id="0" * 32), alice.headers())
        assert other.status == 404 and missing.status == 404, template
        assert other.json()["error"] == missing.json()["error"], "denial looks different"
        assert server.get(template.format(id=b), bob.headers()).status == 200
        assert server.get(template.format(id=a), bob.headers()).status == 404
    listed = {s["id"] for s in server.get("/api/slides", alice.headers()).json()["items"]}
    assert listed == {a}


def test_labels_need_their_own_permission(site: Site) -> None:
    server, alice = site.server, site.alice
    label = f"/api/slides/{site.slide_a}/associated/label"
    assert server.get(label, alice.headers()).status == 404
    assert (
        server.get(f"/api/slides/{site.slide_a}/associated/thumbnail", alice.headers()).status
        == 200
    )
    assert cli(site.stores.home, "users", "grant", "alice", "case-a", "--labels").returncode == 0
    assert server.get(label, alice.headers()).status == 200
    assert cli(site.stores.home, "users", "grant", "alice", "case-a").returncode == 0
    assert server.get(label, alice.headers()).status == 404
    records = [
        json.loads(line)
        for line in (site.stores.home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    label_reads = [r for r in records if r["detail"].get("name") == "label"]
    assert label_reads and label_reads[-1]["detail"]["identifying"] is True
    assert label_reads[-1]["event_id"] == 110103 and label_reads[-1]["user"] == "alice"


def test_revoked_grant_and_disabled_user_take_effect_at_once(site: Site) -> None:
    server, bob = site.server, site.bob
    tile = f"/deepzoom/{site.slide_b}_files/12/2_2.jpeg"
    assert server.get(tile, bob.headers()).status == 200  # now in the server's cache
    assert cli(site.stores.home, "users", "grant", "bob", "case-b", "--revoke").returncode == 0
    assert server.get(tile, bob.headers()).status == 404
    assert cli(site.stores.home, "users", "grant", "bob", "case-b").returncode == 0
    assert server.get(tile, bob.headers()).status == 200
    assert cli(site.stores.home, "users", "disable", "bob").returncode == 0
    assert server.get(tile, bob.headers()).status == 401
    assert cli(site.stores.home, "users", "enable", "bob").returncode == 0
    assert server.get(tile, bob.headers()).status == 401  # the session is gone for good


def test_scoped_tokens(site: Site) -> None:
    server, home = site.server, site.stores.home
    made = cli(
        home, "tokens", "create", "lis", "--scope", "thumbnails,metadata", "--collection", "case-a"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    bearer = {"Authorization": f"Bearer {token}"}
    a, b = site.slide_a, site.slide_b
    assert server.get(f"/api/slides/{a}/thumbnail?max=64", bearer).status == 200
    assert server.get(f"/api/slides/{a}", bearer).status == 200
    assert server.get(f"/deepzoom/{a}_files/12/3_3.jpeg", bearer).status == 404  # not in scope
    assert server.get(f"/api/slides/{a}/region?x=0&y=0&width=10&height=10", bearer).status == 404
    assert server.get(f"/api/slides/{a}/associated/label", bearer).status == 404
    assert server.get(f"/api/slides/{b}/thumbnail", bearer).status == 404  # other collection
    assert {s["id"] for s in server.get("/api/slides", bearer).json()["items"]} == {a}
    stored = (home / "auth.db").read_bytes()
    assert token.encode() not in stored
    assert cli(home, "tokens", "revoke", "lis").returncode == 0
    assert server.get(f"/api/slides/{a}/thumbnail", bearer).status == 401
    tiles_only = cli(home, "tokens", "create", "viewer", "--scope", "tiles").stdout.splitlines()[-1]
    assert server.get("/api/slides", {"Authorization": f"Bearer {tiles_only}"}).status == 403


def test_cross_origin_posts_are_refused(site: Site) -> None:
    reply = site.server.post(
        "/auth/logout", {}, {"Origin": "https://evil.example", **site.alice.headers()}
    )
    assert reply.status == 403


def test_transport_security(site: Site) -> None:
    url = urlsplit(site.server.base)
    reply = site.server.get("/health")
    assert reply.headers["strict-transport-security"].startswith("max-age=31536000")
    for header in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert header in reply.headers
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["server"] == "tileserver"

    def client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
        # SECLEVEL=0 so that our client is willing to speak TLS 1.1: a refusal must come
        # from the server, not from the client's own OpenSSL defaults.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
        return context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_version = ssl.TLSVersion.TLSv1_1
    old = client(old_version)
    with (
        socket.create_connection((url.hostname, url.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    tls12 = client(ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection((url.hostname, url.port), timeout=10) as raw,
        tls12.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        assert tls.cipher()[0].startswith("ECDHE") and (
            "GCM" in tls.cipher()[0] or "CHACHA" in tls.cipher()[0]
        )
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(5)
        try:
            data = raw.recv(4096)
        except (TimeoutError, ConnectionResetError):
            data = b""
        assert b"ok" not in data and b"HTTP/1.1 200" not in data  # no plaintext service


def test_slow_header_client_is_disconnected(site: Site) -> None:
    """A client trickling one header byte every 3 s is cut off after the keep-alive timeout."""
    url = urlsplit(site.server.base)
    context = ssl.create_default_context(cafile=site.stores.home / "tls" / "cert.pem")
    closed_after = None
    with (
        socket.create_connection((url.hostname, url.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        tls.settimeout(3)
        while time.monotonic() - started < 30:
            try:
                tls.sendall(b"X")
                if tls.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue  # still open: trickle on
            except (OSError, ssl.SSLError):
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "a slow-header client kept its connection for 30 s"
    assert closed_after < 10 + 4


def test_audit_trail_records_and_detects_edits(site: Site) -> None:
    home = site.stores.home
    path = home / "audit" / "audit.jsonl"
    events = [json.loads(line)["event_id"] for line in path.read_text().splitlines()]
    for code in (110100, 110114, 110103, 110136):
        assert code in events, code
    assert cli(home, "audit", "verify").returncode == 0
    text = path.read_text()
    for secret in (PASSWORD_A, PASSWORD_B, site.alice.cookie.split("=", 1)[1]):
        assert secret not in text
    lines = text.splitlines()
    k = len(lines) // 2
    record = json.loads(lines[k])
    record["user"] = "mallory"
    lines[k] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    try:
        broken = cli(home, "audit", "verify")
        assert broken.returncode != 0
        assert re.search(rf"\b{record['seq']}\b", broken.stderr), broken.stderr
    finally:
        path.write_text(text)
    exported = cli(home, "audit", "export")
    assert exported.returncode == 0 and len(exported.stdout.splitlines()) >= len(lines)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--host", "0.0.0.0", "--no-auth"], "without authentication"),
        (["--host", "0.0.0.0", "--insecure-http"], "TLS is required"),
        (["--host", "0.0.0.0", "--login-link", "alice"], "loopback"),
    ],
)
def test_unsafe_configurations_are_refused(
    stores: Stores, tmp_path: Path, flags: list[str], needle: str
) -> None:
    proc = cli(tmp_path / "home", "serve", str(stores.directory), "--port", "0", *flags)
    assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_exposed_key_files_are_refused(site: Site, tmp_path: Path) -> None:
    home = tmp_path / "home"
    KeyRing(home).service_key("audit")
    key = home / "keys" / "service" / "audit.key"
    key.chmod(0o644)
    proc = cli(home, "serve", str(site.stores.directory), "--port", "0")
    assert proc.returncode == 1 and "chmod" in proc.stderr and "Traceback" not in proc.stderr
