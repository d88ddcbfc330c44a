"""Key-encryption keys inside a PKCS#11 token (an HSM, or SoftHSM2 in tests). The only module
that imports python-pkcs11.

Configured by an RFC 7512 URI, ``pkcs11:token=LABEL;object=KEY?module-path=/path/lib.so``,
and a user PIN from ``TILESERVER_PKCS11_PIN`` (or ``pin-source=file:/path`` in the URI). The
KEK is an AES-256 key generated inside the token as sensitive and non-extractable: wrapping
and unwrapping a data key is AES-GCM done by the token, so the KEK never exists in this
process's memory or on its disk. Wrapped keys have the same sealed format as with a KEK file.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.exceptions import NoSuchKey, NoSuchToken, PKCS11Error
from pkcs11.mechanisms import GCMParams

from tileserver.errors import ConfigError, IntegrityError, KeyUnavailable
from tileserver.security.crypto import MAGIC, NONCE_BYTES, TAG_BYTES
from tileserver.security.keys import TOKEN_KEY_PREFIX

_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class TokenConfig:
    module: str
    token: str
    label: str  # the current KEK's object label
    pin: str

    def __repr__(self) -> str:
        return f"TokenConfig({self.module!r}, {self.token!r}, {self.label!r}, <pin hidden>)"


def parse_uri(uri: str, pin: str | None) -> TokenConfig:
    """An RFC 7512 ``pkcs11:`` URI (token, object, module-path, pin-source) and a PIN."""
    if not uri.startswith("pkcs11:"):
        raise ConfigError(f"not a pkcs11: URI: {uri.split('?')[0]!r}")
    path, _, query = uri.removeprefix("pkcs11:").partition("?")
    attrs = dict(part.split("=", 1) for part in path.split(";") if "=" in part)
    params = {k: v[0] for k, v in parse_qs(query).items()}
    if "pin-value" in params:
        raise ConfigError("a PIN in the URI would end up in logs: use TILESERVER_PKCS11_PIN")
    module = unquote(params.get("module-path", ""))
    token, label = unquote(attrs.get("token", "")), unquote(attrs.get("object", ""))
    if not module or not token or not label:
        raise ConfigError("pkcs11: URI needs token=, object= and ?module-path=")
    source = params.get("pin-source", "")
    if source.startswith("file:"):
        try:
            pin = Path(unquote(source.removeprefix("file:"))).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the PKCS#11 PIN file: {exc.strerror}") from exc
    if not pin:
        raise ConfigError("no PKCS#11 PIN: set TILESERVER_PKCS11_PIN (or pin-source=file:)")
    return TokenConfig(module, token, label, pin)


class Pkcs11Kek:
    """One AES key in the token; wraps with AES-GCM inside it."""

    def __init__(self, config: TokenConfig, label: str) -> None:
        self.config = config
        self.label = label
        self.key_id = TOKEN_KEY_PREFIX + label

    def __repr__(self) -> str:
        return f"Pkcs11Kek({self.key_id!r})"

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        with _session(self.config) as session:
            key = _key(session, self.label)
            sealed = key.encrypt(
                data_key,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad, 8 * TAG_BYTES),
            )
        return MAGIC + nonce + bytes(sealed)

    def unwrap(self, wrapped: bytes, aad: bytes, what: str) -> bytes:
        if not wrapped.startswith(MAGIC) or len(wrapped) < len(MAGIC) + NONCE_BYTES + TAG_BYTES:
            raise IntegrityError(f"{what}: not a wrapped key")
        nonce, body = (
            wrapped[len(MAGIC) : len(MAGIC) + NONCE_BYTES],
            wrapped[len(MAGIC) + NONCE_BYTES :],
        )
        with _session(self.config) as session:
            key = _key(session, self.label)
            try:
                plain = key.decrypt(
                    body,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, aad, 8 * TAG_BYTES),
                )
            except PKCS11Error as exc:  # the token says only that it failed: a bad tag
                raise IntegrityError(f"{what}: failed authentication in the token") from exc
        return bytes(plain)


def ensure_key(config: TokenConfig, label: str) -> bool:
    """Generate the AES-256 KEK ``label`` in the token unless it exists; True if made."""
    with _session(config, rw=True) as session:
        try:
            _key(session, label)
            return False
        except KeyUnavailable:
            pass
        session.generate_key(
            KeyType.AES,
            256,
            label=label,
            store=True,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        return True


def destroy_key(config: TokenConfig, label: str) -> None:
    with _session(config, rw=True) as session:
        _key(session, label).destroy()


def _key(session: pkcs11.Session, label: str) -> Any:  # a SecretKey with encrypt/decrypt
    try:
        return session.get_key(label=label, key_type=KeyType.AES)
    except NoSuchKey as exc:
        raise KeyUnavailable(f"no key {label!r} in the PKCS#11 token") from exc


class _session:
    """A logged-in session (the library is loaded once per process; sessions are cheap)."""

    def __init__(self, config: TokenConfig, rw: bool = False) -> None:
        self.config, self.rw = config, rw

    def __enter__(self) -> pkcs11.Session:
        try:
            with _PROCESS_LOCK:
                lib = pkcs11.lib(self.config.module)
            token = lib.get_token(token_label=self.config.token)
            self._session = token.open(user_pin=self.config.pin, rw=self.rw)
        except NoSuchToken as exc:
            raise KeyUnavailable(f"no PKCS#11 token labelled {self.config.token!r}") from exc
        except (PKCS11Error, RuntimeError, OSError) as exc:
            msg = f"PKCS#11 token {self.config.token!r}: {type(exc).__name__} {exc}".strip()
            raise KeyUnavailable(msg) from exc
        return self._session

    def __exit__(self, *exc: object) -> None:
        self._session.close()
