"""AES-256-GCM sealing of byte strings, Ed25519 signatures and the self-signed TLS
certificate. The only module that imports cryptography's hazmat.

A sealed object is ``MAGIC (4 bytes) || nonce (12 random bytes) || ciphertext || tag (16)``.
The associated data is supplied by the caller and binds the object to where it belongs; a
flipped bit, a cut, or the right bytes in the wrong place all fail to open.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tileserver.errors import IntegrityError

ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAGIC = b"TSE\x01"  # "tileserver sealed", version 1
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


class Sealer:
    """Seals and opens with one key. Thread-safe; the key never appears in repr."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"{ALGORITHM} needs a {KEY_BYTES}-byte key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes, what: str) -> bytes:
        """The plaintext, or IntegrityError naming ``what`` when authentication fails."""
        if not is_sealed(blob):
            raise IntegrityError(f"{what}: not a sealed object (replaced or unencrypted?)")
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what}: sealed object is truncated")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise IntegrityError(
                f"{what}: failed authentication (modified, truncated, moved, or wrong key)"
            ) from exc


def self_signed_certificate(hosts: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed server certificate for ``hosts`` (names or IPs).

    Returns (certificate PEM, unencrypted PKCS#8 key PEM); the caller stores the key 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def new_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key: (unencrypted PKCS#8 private PEM, public PEM)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def sign(private_pem: bytes, message: bytes) -> bytes:
    """Ed25519 signature of ``message``; ValueError when the PEM is not an Ed25519 key."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key.sign(message)


def signature_valid(public_pem: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` under ``public_pem``;
    ValueError when the PEM is not an Ed25519 public key."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
