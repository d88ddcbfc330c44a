"""Envelope keys: a data key per slide, wrapped by a key-encryption key (KEK).

Layout under ``TILESERVER_HOME/keys`` (directories 0700, files 0600):

    kek/<kek id>.key       32 random bytes; a KEK file readable by group or others is refused
    current                the id of the KEK that wraps new and rotated data keys
    slides/<slide id>.json {"slide_id", "kek_id", "algorithm", "wrapped"}: the sealed data key

Data keys live here, not in the stores, so deleting one (``shred``) makes a store and every
copy of it unreadable. ``rotate`` re-wraps every data key under a new KEK without touching a
chunk. An external KMS plugs in by implementing ``KeyEncryptionKey``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.files import write_atomic
from tileserver.security.crypto import ALGORITHM, KEY_BYTES, Sealer, new_key
from tileserver.slide_ids import is_slide_id

if TYPE_CHECKING:
    from tileserver.security.pkcs11 import TokenConfig

TOKEN_KEY_PREFIX = "p11:"  # key IDs of KEKs inside a PKCS#11 token (security/pkcs11.py)


class KeyEncryptionKey(Protocol):
    """What the key ring needs from a KEK: a file here, or a KMS elsewhere."""

    key_id: str

    def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes, what: str) -> bytes: ...


class FileKek:
    """A KEK held in a local file that only its owner can read."""

    def __init__(self, key_id: str, key: bytes) -> None:
        self.key_id = key_id
        self._sealer = Sealer(key)

    def __repr__(self) -> str:
        return f"FileKek({self.key_id!r}, <key hidden>)"

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return self._sealer.seal(data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes, what: str) -> bytes:
        return self._sealer.open(wrapped, aad, what)


def _wrap_aad(slide_id: str, kek_id: str) -> bytes:
    return f"tileserver-data-key/v1\x00{slide_id}\x00{kek_id}".encode()


def check_private(path: Path) -> None:
    """Refuse key material that group or others can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyUnavailable(
            f"{path} is accessible by group or others (mode {stat.filemode(mode)}); "
            f"run: chmod go-rwx {path}"
        )


def _destroy(path: Path) -> None:
    """Overwrite a key file, then unlink it: unlinking alone leaves the bytes on disk."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def make_private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


@dataclass(frozen=True)
class KekInfo:
    key_id: str
    current: bool
    slides: int  # data keys it wraps


class KeyRing:
    """The keys under one home directory. Thread-safe; unwrapped data keys are cached."""

    def __init__(self, home: Path, kek: str | None = None, pin: str | None = None) -> None:
        """``kek``: a ``pkcs11:`` URI when key-encryption keys live in a PKCS#11 token
        (``pin`` its user PIN); None for KEK files under ``home/keys/kek``."""
        self.root = home / "keys"
        self._lock = threading.Lock()
        self._data_keys: dict[str, bytes] = {}
        self._token: TokenConfig | None = None
        if kek is not None:
            from tileserver.security.pkcs11 import parse_uri

            self._token = parse_uri(kek, pin)

    # -- set-up ----------------------------------------------------------------------------
    def initialise(self) -> tuple[str, bool]:
        """Create the first KEK if there is none; returns (current KEK id, created?)."""
        if (self.root / "current").exists():
            return self.current_kek().key_id, False
        make_private_dir(self.root.parent)
        make_private_dir(self.root)
        make_private_dir(self.root / "kek")
        make_private_dir(self.root / "slides")
        key_id = self._new_kek(self._token.label if self._token else None)
        self._write("current", key_id.encode())
        return key_id, True

    def _new_kek(self, label: str | None = None) -> str:
        """A new KEK: a file, or a key generated inside the token (``label``: its name)."""
        if self._token is None:
            key_id = secrets.token_hex(8)
            self._write(f"kek/{key_id}.key", new_key())
            return key_id
        from tileserver.security.pkcs11 import ensure_key

        label = label or f"{self._token.label}-{secrets.token_hex(4)}"
        ensure_key(self._token, label)
        return TOKEN_KEY_PREFIX + label

    def _write(self, key: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Write a key file (0600, durable); with ``exclusive`` only if it does not exist."""
        return write_atomic(
            str(self.root / key), data, durable=True, exclusive=exclusive, mode=0o600
        )

    def service_key(self, name: str) -> bytes:
        """A 32-byte key for one purpose (audit HMAC, TOTP sealing), made on first use."""
        if not name.isalnum():
            raise ValueError(f"bad key name {name!r}")
        key = self.existing_service_key(name)
        if key is None:
            make_private_dir(self.root.parent)
            make_private_dir(self.root)
            make_private_dir(self.root / "service")
            self._write(f"service/{name}.key", new_key())
            key = self.existing_service_key(name)
            assert key is not None
        return key

    def existing_service_key(self, name: str) -> bytes | None:
        """A service key if it exists (never made here): for keys that can be retired, and
        read per signed-URL request, so no directory is created or chmod-ed here."""
        path = self.root / "service" / f"{name}.key"
        if not name.isalnum() or not path.is_file():
            return None
        check_private(path)
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"{path} is not a {KEY_BYTES}-byte key")
        return key

    def service_key_names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "service").glob("*.key"))

    def retire_service_key(self, name: str) -> None:
        """Destroy a service key: whatever it signed or sealed is refused from now on."""
        path = self.root / "service" / f"{name}.key"
        if not name.isalnum() or not path.is_file():
            raise KeyUnavailable(f"no service key {name!r}")
        _destroy(path)

    # -- KEKs ------------------------------------------------------------------------------
    def kek(self, key_id: str) -> KeyEncryptionKey:
        if key_id.startswith(TOKEN_KEY_PREFIX):
            if self._token is None:
                raise KeyUnavailable(
                    f"key-encryption key {key_id} is in a PKCS#11 token: set TILESERVER_KEK"
                )
            from tileserver.security.pkcs11 import Pkcs11Kek

            return Pkcs11Kek(self._token, key_id.removeprefix(TOKEN_KEY_PREFIX))
        path = self.root / "kek" / f"{key_id}.key"
        if not path.is_file():
            raise KeyUnavailable(f"key-encryption key {key_id} not found in {self.root / 'kek'}")
        check_private(path)
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"{path} is not a {KEY_BYTES}-byte key")
        return FileKek(key_id, key)

    def current_kek(self) -> KeyEncryptionKey:
        current = self.root / "current"
        if not current.is_file():
            raise KeyUnavailable(
                f"no key-encryption key in {self.root}: run `tileserver keys init` "
                "(or set TILESERVER_HOME to the right directory)"
            )
        check_private(self.root)
        return self.kek(current.read_text().strip())

    def keks(self) -> list[KekInfo]:
        current = self.current_kek().key_id
        counts: dict[str, int] = {}
        for record in self._records():
            counts[record["kek_id"]] = counts.get(record["kek_id"], 0) + 1
        files = {p.stem for p in (self.root / "kek").glob("*.key")}
        in_tokens = {k for k in [current, *counts] if k.startswith(TOKEN_KEY_PREFIX)}
        return [KekInfo(k, k == current, counts.get(k, 0)) for k in sorted(files | in_tokens)]

    # -- data keys -------------------------------------------------------------------------
    def _slide_path(self, slide_id: str) -> Path:
        if not is_slide_id(slide_id):
            raise KeyUnavailable(f"not a slide ID: {slide_id!r}")
        return self.root / "slides" / f"{slide_id}.json"

    def has_data_key(self, slide_id: str) -> bool:
        return self._slide_path(slide_id).is_file()

    def data_key(self, slide_id: str) -> bytes:
        """The slide's data key (unwrapped once, then cached)."""
        with self._lock:
            cached = self._data_keys.get(slide_id)
        if cached is not None:
            return cached
        path = self._slide_path(slide_id)
        if not path.is_file():
            raise KeyUnavailable(f"{slide_id}: no data key (never encrypted, or shredded)")
        record = self._read_record(path)
        kek = self.kek(record["kek_id"])
        what = f"{slide_id}: data key"
        key = kek.unwrap(base64.b64decode(record["wrapped"]), _wrap_aad(slide_id, kek.key_id), what)
        with self._lock:
            self._data_keys[slide_id] = key
        return key

    def data_key_for_writing(self, slide_id: str) -> bytes:
        """The existing data key (a resumed conversion) or a new one wrapped by the current KEK."""
        if self.has_data_key(slide_id):
            return self.data_key(slide_id)
        key = new_key()
        if not self._store_record(slide_id, key, self.current_kek(), exclusive=True):
            return self.data_key(slide_id)  # another converter made it first: share theirs
        return key

    def _store_record(
        self, slide_id: str, key: bytes, kek: KeyEncryptionKey, *, exclusive: bool = False
    ) -> bool:
        wrapped = kek.wrap(key, _wrap_aad(slide_id, kek.key_id))
        record = {
            "slide_id": slide_id,
            "kek_id": kek.key_id,
            "algorithm": ALGORITHM,
            "wrapped": base64.b64encode(wrapped).decode(),
        }
        data = json.dumps(record, indent=1).encode()
        return self._write(f"slides/{slide_id}.json", data, exclusive=exclusive)

    def _read_record(self, path: Path) -> dict[str, str]:
        try:
            record = json.loads(path.read_text())
            if record["algorithm"] != ALGORITHM or record["slide_id"] != path.stem:
                raise ValueError("algorithm or slide ID mismatch")
            return {k: str(record[k]) for k in ("slide_id", "kek_id", "wrapped")}
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{path.name}: malformed data-key record: {exc}") from exc

    def _records(self) -> list[dict[str, str]]:
        return [self._read_record(p) for p in sorted((self.root / "slides").glob("*.json"))]

    def rotate(self) -> tuple[str, int]:
        """Re-wrap every data key under a new KEK, then delete KEKs nothing uses any more."""
        new_id = self._new_kek()
        new_kek = self.kek(new_id)
        records = self._records()
        old_token_keys = {r["kek_id"] for r in records} | {self.current_kek().key_id}
        for record in records:
            slide_id = record["slide_id"]
            old = self.kek(record["kek_id"])
            what = f"{slide_id}: data key"
            key = old.unwrap(
                base64.b64decode(record["wrapped"]), _wrap_aad(slide_id, old.key_id), what
            )
            self._store_record(slide_id, key, new_kek)
        self._write("current", new_id.encode())
        for path in (self.root / "kek").glob("*.key"):
            if path.stem != new_id:
                path.unlink()
        if self._token is not None:
            from tileserver.security.pkcs11 import destroy_key

            for key_id in old_token_keys - {new_id}:
                if key_id.startswith(TOKEN_KEY_PREFIX):
                    destroy_key(self._token, key_id.removeprefix(TOKEN_KEY_PREFIX))
        return new_id, len(records)

    def shred(self, slide_id: str) -> None:
        """Destroy a slide's data key: its store (and any copy of it) can never be read again."""
        path = self._slide_path(slide_id)
        if not path.is_file():
            raise KeyUnavailable(f"{slide_id}: no data key to shred")
        _destroy(path)
        with self._lock:
            self._data_keys.pop(slide_id, None)
