"""Signed URLs (URL-01): read-only tiles or regions of one slide for at most 15 minutes,
without a session or a token (a conference-room screen, a link in a tumour-board deck).

A signed URL is a protected URL plus ``exp`` (Unix seconds), ``kid`` (which signing key) and
``sig``: hex HMAC-SHA256 over ``GET\\n{slide_id}\\n{scope}\\n{exp}\\n{kid}``. It opens every
route of that slide and scope (a DeepZoom descriptor and the tiles a viewer derives from it
carry the same query), nothing else. Each of the three parameters must appear exactly once,
spelled as here. Keys are service keys ``url1``, ``url2``, ...: the highest signs, every one
still on disk verifies, and a retired (destroyed) one is refused. Servers sharing PostgreSQL
keep them in the database instead (``SharedUrlKeys``), so a rotation or a retirement reaches
every host at its next signed request.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable

from tileserver.errors import TileserverError
from tileserver.security.accounts import AccountError, Accounts
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

    shared = False  # read from files as asked: nothing to refresh

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def refresh(self) -> None:
        """(``SharedUrlKeys``: read the keys again if they changed.)"""

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
        return _query(self.current, slide_id, scope, exp)


class SharedUrlKeys:
    """The signing keys in the state database (``Accounts.url_keys``), for servers on many
    hosts. ``key_of``, ``current`` and ``sign`` answer from what ``refresh`` last read (no
    I/O: the event loop asks); the server refreshes off the loop before every signed request
    and every share, and a refresh reads the keys again only when the change counter moved
    (rotating or retiring a key moves it)."""

    shared = True

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self._generation: int | None = None

    def refresh(self) -> None:
        """Blocking (database reads); the first key is made on first use."""
        generation = self.accounts.generation()
        with self._lock:
            if generation == self._generation:
                return
        keys = self.accounts.url_keys()
        if not keys:
            self.accounts.add_url_key(only_if_none=True)
            generation, keys = self.accounts.generation(), self.accounts.url_keys()
        with self._lock:
            self._keys, self._generation = keys, generation

    def kids(self) -> list[str]:
        return sorted(self.accounts.url_keys(), key=int)

    def key_of(self, kid: str) -> bytes | None:
        with self._lock:
            return self._keys.get(kid)

    def current(self) -> tuple[str, bytes]:
        with self._lock:
            if not self._keys:
                raise SignatureRejected("no URL signing key read yet")  # refresh first
            kid = max(self._keys, key=int)
            return kid, self._keys[kid]

    def rotate(self) -> str:
        return self.accounts.add_url_key()

    def retire(self, kid: str) -> None:
        try:
            self.accounts.retire_url_key(kid)
        except AccountError as exc:
            raise SignatureRejected(str(exc)) from None

    def sign(self, slide_id: str, scope: str, exp: int) -> str:
        return _query(self.current, slide_id, scope, exp)


def _query(current: Callable[[], tuple[str, bytes]], slide_id: str, scope: str, exp: int) -> str:
    if scope not in SCOPES:
        raise SignatureRejected(f"signed URLs are for {' or '.join(SCOPES)} only")
    kid, key = current()
    return f"exp={exp}&kid={kid}&sig={signature(key, slide_id, scope, exp, kid)}"


def signing_keys(accounts: Accounts, keyring: KeyRing) -> UrlKeys | SharedUrlKeys:
    """In the database for servers sharing PostgreSQL, else files of the key ring."""
    return SharedUrlKeys(accounts) if accounts.remote else UrlKeys(keyring)
