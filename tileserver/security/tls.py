"""HTTPS: the operator's certificate or a self-signed one made on first run, and a server
TLS context stricter than Python's default (Mozilla "intermediate")."""

from __future__ import annotations

import ssl
from pathlib import Path

from tileserver.errors import ConfigError
from tileserver.files import write_atomic
from tileserver.security.crypto import self_signed_certificate
from tileserver.security.keys import check_private, make_private_dir

# TLS 1.2 suites: ECDHE key exchange with AEAD only (TLS 1.3 suites are all AEAD already).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def ensure_certificate(home: Path, hosts: list[str]) -> tuple[Path, Path, bool]:
    """(certificate, key, created?) under ``home/tls``, generating a self-signed pair once."""
    make_private_dir(home)
    tls = make_private_dir(home / "tls")
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.exists() and key.exists():
        return cert, key, False
    cert_pem, key_pem = self_signed_certificate(hosts)
    write_atomic(str(key), key_pem, durable=True, mode=0o600)
    write_atomic(str(cert), cert_pem, durable=True)
    return cert, key, True


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with ECDHE and AEAD ciphers only, no compression, P-256/X25519 curves.

    With ``client_ca``, clients may present a certificate (machines, TLS-04); one that does
    not chain to that CA, or has expired, fails the handshake. Browsers present none and
    log in as usual."""
    if not cert.is_file() or not key.is_file():
        raise ConfigError(f"TLS certificate or key not found: {cert}, {key}")
    check_private(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_ecdh_curve("prime256v1")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert}: {exc}") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load client CA {client_ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
