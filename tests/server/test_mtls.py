"""TLS-04: machine clients authenticate with certificates from the operator's private CA."""

from __future__ import annotations

import datetime
import http.client
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cli import cli
from tests.server.conftest import Server, run_server
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(*common_names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    paths = Issued(directory / f"{stem}.pem", directory / f"{stem}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class CertificateAuthority:
    """A throw-away private CA, made fresh for each test run (no key material in the repo)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, common_name: str, stem: str, *, expired: bool = False, also: tuple[str, ...] = ()
    ) -> Issued:
        """A client certificate for ``common_name`` (and ``also``: more common names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        end = NOW - datetime.timedelta(days=1) if expired else NOW + datetime.timedelta(days=7)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, *also))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=10))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        return _write(self.directory, stem, cert, key)


def get(server: Server, path: str, client: Issued | None) -> int:
    """Status of a GET made with (or without) a client certificate."""
    url = urlsplit(server.base)
    context = ssl.create_default_context(cafile=server.home / "tls" / "cert.pem")
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=30, context=context)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@dataclass
class Site:
    server: Server
    home: Path
    slide: str
    lis: Issued  # CN=lis from the trusted CA
    stranger: Issued  # CN=stranger from the trusted CA: no such service
    expired: Issued  # CN=lis, expired
    foreign: Issued  # CN=lis from another CA
    two_names: Issued  # CN=lis and CN=stranger from the trusted CA


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("mtls")
    home = root / "home"
    KeyRing(home).initialise()
    slide = new_slide_id()
    with open_slide(synthetic_svs) as source:
        convert(
            source, LocalObjects(root / "stores" / slide), slide, ConvertOptions(), KeyRing(home)
        )
    assert cli(home, "slides", "assign", "case-a", slide).returncode == 0
    made = cli(
        home, "tokens", "create", "lis", "--scope", "metadata,thumbnails", "--certificate-only"
    )
    assert made.returncode == 0, made.stderr
    assert "tst_" not in made.stdout  # no bearer secret exists to leak or reuse
    pki = root / "pki"
    pki.mkdir()
    ours, other = CertificateAuthority(pki, "hospital"), CertificateAuthority(pki, "elsewhere")
    with run_server(root / "stores", home, "--client-ca", str(ours.path), secure=True) as server:
        yield Site(
            server,
            home,
            slide,
            lis=ours.issue("lis", "lis"),
            stranger=ours.issue("stranger", "stranger"),
            expired=ours.issue("lis", "lis-expired", expired=True),
            foreign=other.issue("lis", "lis-foreign"),
            two_names=ours.issue("lis", "lis-and-stranger", also=("stranger",)),
        )


def test_a_certificate_from_the_client_ca_acts_as_its_service(site: Site) -> None:
    assert get(site.server, f"/api/slides/{site.slide}", site.lis) == 200
    assert get(site.server, f"/api/slides/{site.slide}/thumbnail?max=64", site.lis) == 200
    # Its scopes are the token's: no tiles scope, so a tile is as missing as a missing slide.
    assert get(site.server, f"/deepzoom/{site.slide}_files/12/0_0.jpeg", site.lis) == 404


def test_no_certificate_or_an_unknown_name_is_unauthenticated(site: Site) -> None:
    assert get(site.server, f"/api/slides/{site.slide}", None) == 401
    assert get(site.server, f"/api/slides/{site.slide}", site.stranger) == 401


def test_a_certificate_with_two_common_names_is_refused(site: Site) -> None:
    """Which CN counts would depend on the reader's order: neither does (issue 14, 8)."""
    assert get(site.server, f"/api/slides/{site.slide}", site.two_names) == 401
    assert get(site.server, f"/api/slides/{site.slide}", site.lis) == 200


@pytest.mark.parametrize("which", ["expired", "foreign"])
def test_expired_or_foreign_certificates_fail_the_handshake(site: Site, which: str) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(site.server, f"/api/slides/{site.slide}", getattr(site, which))
    assert get(site.server, f"/api/slides/{site.slide}", site.lis) == 200  # still serving


def test_revoking_the_service_stops_its_certificate_at_once(site: Site) -> None:
    assert cli(site.home, "tokens", "revoke", "lis").returncode == 0
    try:
        assert get(site.server, f"/api/slides/{site.slide}", site.lis) == 401
    finally:
        made = cli(site.home, "tokens", "create", "lis", "--scope", "metadata,thumbnails")
        assert made.returncode == 0


def test_client_ca_needs_tls_and_authentication(tmp_path: Path, site: Site) -> None:
    ca = CertificateAuthority(tmp_path, "any").path
    refused = cli(
        site.home, "serve", str(tmp_path), "--insecure-http", "--client-ca", str(ca), "--port", "0"
    )
    assert refused.returncode == 1
    assert "--client-ca needs TLS and authentication" in refused.stderr
