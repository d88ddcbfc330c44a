"""Signed URLs (URL-01): read-only tiles or regions of one slide for at most 15 minutes,
without a session or a token (a conference-room screen, a link in a tumour-board deck).

A signed URL is a protected URL plus ``exp`` (Unix seconds), ``kid`` (which signing key) and
``sig``: hex HMAC-SHA256 over ``GET\\n{slide_id}\\n{scope}\\n{exp}\\n{kid}``. It opens every
route of that slide and scope (a DeepZoom descriptor and the tiles a viewer derives from it
carry the same query), nothing else. Each of the three parameters must appear exactly once,
spelled as here. Keys are service keys ``url1``, ``url2``, ...: the highest signs, every one
still on disk verifies, and a retired (destroyed) one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

from tileserver.errors import TileserverError
from tileserver.security.keys import KeyRing

MAX_LIFETIME = 15 * 60  # seconds
PARAMS = ("exp", "kid", "sig")
SCOPES = ("tiles", "regions")  # read-only, one slide


class SignatureRejected(TileserverError):
    """A signed URL that is expired, too long-lived, altered, or signed with a retired key."""


def signature(key: bytes, slide_id: str, scope: str, exp: int, kid: str) -> str:
    message = f"GET\n{slide_id}\n{scope}\n{exp}\n{kid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def is_signed(params: Iterable[str]) -> bool:
    """Whether a query tries to be a signed URL (any case, so a re-cased one is refused)."""
    return any(name.lower() in PARAMS for name in params)


def check(
    pairs: Iterable[tuple[str, str]],
    slide_id: str,
    scope: str,
    now: float,
    key_of: Callable[[str], bytes | None],
) -> None:
    """Accept the query of a signed URL for ``slide_id`` and ``scope``, or raise
    SignatureRejected saying why (never echoing the signature)."""
    pairs = list(pairs)
    values = {}
    for name in PARAMS:
        found = [value for key, value in pairs if key == name]
        if len(found) != 1:
            raise SignatureRejected(f"signed URL: '{name}' must appear exactly once")
        values[name] = found[0]
    if not values["exp"].isdecimal() or len(values["exp"]) > 12:
        raise SignatureRejected("signed URL: 'exp' is not a time")
    exp = int(values["exp"])
    if exp <= now:
        raise SignatureRejected("signed URL: expired")
    if exp > now + MAX_LIFETIME:
        raise SignatureRejected(f"signed URL: valid for more than {MAX_LIFETIME // 60} minutes")
    kid = values["kid"]
    key = key_of(kid) if kid.isdecimal() and len(kid) <= 6 else None
    if key is None:
        raise SignatureRejected("signed URL: unknown or retired key")
    expected = signature(key, slide_id, scope, exp, kid)
    if not hmac.compare_digest(expected.encode(), values["sig"].encode()):
        raise SignatureRejected("signed URL: signature does not match this slide and scope")


class UrlKeys:
    """The signing keys, as service keys ``url<kid>`` of a key ring."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def kids(self) -> list[str]:
        names = self.keyring.service_key_names()
        return sorted((n[3:] for n in names if n.startswith("url") and n[3:].isdecimal()), key=int)

    def key_of(self, kid: str) -> bytes | None:
        return self.keyring.existing_service_key(f"url{kid}")

    def current(self) -> tuple[str, bytes]:
        """(kid, key) to sign with: the newest, made on first use."""
        kids = self.kids()
        kid = kids[-1] if kids else "1"
        return kid, self.keyring.service_key(f"url{kid}")

    def rotate(self) -> str:
        """A new signing key; the older ones still verify until retired."""
        kids = self.kids()
        kid = str(int(kids[-1]) + 1 if kids else 1)
        self.keyring.service_key(f"url{kid}")
        return kid

    def retire(self, kid: str) -> None:
        if not kid.isdecimal():
            raise SignatureRejected(f"not a key id: {kid[:12]!r}")
        self.keyring.retire_service_key(f"url{kid}")

    def sign(self, slide_id: str, scope: str, exp: int) -> str:
        """The query string (``exp=...&kid=...&sig=...``) that signs ``slide_id`` and ``scope``."""
        if scope not in SCOPES:
            raise SignatureRejected(f"signed URLs are for {' or '.join(SCOPES)} only")
        kid, key = self.current()
        return f"exp={exp}&kid={kid}&sig={signature(key, slide_id, scope, exp, kid)}"
