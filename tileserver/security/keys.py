"""Envelope keys: a data key per slide, wrapped by a key-encryption key (KEK).

Layout under ``TILESERVER_HOME/keys`` (directories 0700, files 0600):

    kek/<kek id>.key       32 random bytes; a KEK file readable by group or others is refused
    current                the id of the KEK that wraps new and rotated data keys
    slides/<slide id>.json {"slide_id", "kek_id", "algorithm", "wrapped"[, "store"]}: the
                           sealed data key, and where its store-side copy is

With ``keys_in_store`` (``convert --keys store``, the default) a copy of the record without
"store" is also the object ``tileserver-key.json`` of the slide's store, so any host holding
the same KEK (the same token, KMS or KEK file) opens the slide without this directory
(decision 0004). Lookups try here first, then the store. ``shred`` deletes both copies;
``rotate`` re-wraps both under a new KEK and destroys the old one, which also kills the copies
in backups. A record is bound to its slide and KEK (the wrap's associated data), so one moved
to another slide or wrapped by another KEK is an IntegrityError. An external KMS plugs in by
implementing ``KeyEncryptionKey``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tileserver.errors import IntegrityError, KeyUnavailable
from tileserver.files import write_atomic
from tileserver.security.crypto import ALGORITHM, KEY_BYTES, Sealer, new_key
from tileserver.slide_ids import is_slide_id
from tileserver.store.layout import KEY_OBJECT

if TYPE_CHECKING:
    from tileserver.security.pkcs11 import TokenConfig
    from tileserver.store.objects import ObjectStore

TOKEN_KEY_PREFIX = "p11:"  # key IDs of KEKs inside a PKCS#11 token (security/pkcs11.py)
# KEK ids name files and token objects, and store-side records are untrusted input.
_KEK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_RECORD_BYTES = 4096  # a record is about 200 bytes; anything larger is not one of ours


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

    def __init__(
        self,
        home: Path,
        kek: str | None = None,
        pin: str | None = None,
        *,
        keys_in_store: bool = False,
    ) -> None:
        """``kek``: a ``pkcs11:`` URI when key-encryption keys live in a PKCS#11 token
        (``pin`` its user PIN); None for KEK files under ``home/keys/kek``.
        ``keys_in_store``: new data keys also go into the slide's store (readers always look
        there when this home has no record)."""
        self.root = home / "keys"
        self.keys_in_store = keys_in_store
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
        if not _KEK_ID.fullmatch(key_id.removeprefix(TOKEN_KEY_PREFIX)):
            raise IntegrityError(f"not a key-encryption key id: {key_id[:80]!r}")
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

    def has_data_key(self, slide_id: str, store: ObjectStore | None = None) -> bool:
        """Whether this home, or else the slide's ``store``, holds the slide's data key."""
        if self._slide_path(slide_id).is_file():
            return True
        return store is not None and store.exists(KEY_OBJECT)

    def data_key(self, slide_id: str, store: ObjectStore | None = None) -> bytes:
        """The slide's data key (unwrapped once, then cached): this home's record first, then
        the one in the slide's ``store``."""
        with self._lock:
            cached = self._data_keys.get(slide_id)
        if cached is not None:
            return cached
        path = self._slide_path(slide_id)
        record = self._read_record(path) if path.is_file() else None
        if record is None and store is not None:
            record = self._store_copy(slide_id, store)
        if record is None:
            raise KeyUnavailable(f"{slide_id}: no data key (never encrypted, or shredded)")
        key = self._unwrap(record)
        with self._lock:
            self._data_keys[slide_id] = key
        return key

    def data_key_for_writing(self, slide_id: str, store: ObjectStore | None = None) -> bytes:
        """The existing data key (a resumed conversion; here or in ``store``) or a new one
        wrapped by the current KEK. With ``keys_in_store`` the store gets its copy, and the
        home record says where it is (for ``shred`` and ``rotate``)."""
        target = store if self.keys_in_store else None
        if self.has_data_key(slide_id, store):
            key = self.data_key(slide_id, store)
        else:
            key = new_key()
            if target is not None and not target.put_if_absent(
                KEY_OBJECT, self._record(slide_id, key, self.current_kek())
            ):
                key = self.data_key(slide_id, target)  # another converter's key stands
        if target is not None and not target.exists(KEY_OBJECT):
            target.put_if_absent(KEY_OBJECT, self._record(slide_id, key, self.current_kek()))
        where = _location(target) if target is not None else None
        path = self._slide_path(slide_id)
        if not path.is_file():
            if not self._save_record(slide_id, key, self.current_kek(), where, exclusive=True):
                return self.data_key(slide_id)  # another converter here made it first
        elif where is not None and self._read_record(path).get("store") != where:
            self._save_record(slide_id, key, self.current_kek(), where)
        return key

    def _record(self, slide_id: str, key: bytes, kek: KeyEncryptionKey, **extra: str) -> bytes:
        wrapped = kek.wrap(key, _wrap_aad(slide_id, kek.key_id))
        record = {
            "slide_id": slide_id,
            "kek_id": kek.key_id,
            "algorithm": ALGORITHM,
            "wrapped": base64.b64encode(wrapped).decode(),
            **extra,
        }
        return json.dumps(record, indent=1).encode()

    def _save_record(
        self,
        slide_id: str,
        key: bytes,
        kek: KeyEncryptionKey,
        store: str | None = None,
        *,
        exclusive: bool = False,
    ) -> bool:
        """This home's record of a data key; ``store``: where its store-side copy is."""
        data = self._record(slide_id, key, kek, **({"store": store} if store else {}))
        for directory in (self.root.parent, self.root, self.root / "slides"):
            make_private_dir(directory)  # a home set up by hand may lack them
        return self._write(f"slides/{slide_id}.json", data, exclusive=exclusive)

    def _read_record(self, path: Path) -> dict[str, str]:
        return _parse_record(path.read_bytes(), path.stem, path.name)

    def _store_copy(self, slide_id: str, store: ObjectStore) -> dict[str, str] | None:
        """The record in the slide's store, or None when it has none."""
        data = store.get(KEY_OBJECT)
        if data is None:
            return None
        record = _parse_record(data, slide_id, f"{store.url}/{KEY_OBJECT}")
        record.pop("store", None)  # only a home record says where copies are
        return record

    def _unwrap(self, record: dict[str, str]) -> bytes:
        slide_id = record["slide_id"]
        kek = self.kek(record["kek_id"])
        try:
            wrapped = base64.b64decode(record["wrapped"], validate=True)
        except binascii.Error as exc:
            raise IntegrityError(f"{slide_id}: data-key record is not base64") from exc
        what = f"{slide_id}: data key (wrapped by {kek.key_id})"
        return kek.unwrap(wrapped, _wrap_aad(slide_id, kek.key_id), what)

    def _records(self) -> list[dict[str, str]]:
        return [self._read_record(p) for p in sorted((self.root / "slides").glob("*.json"))]

    def _rewrap_store_copy(self, slide_id: str, store: ObjectStore, kek: KeyEncryptionKey) -> str:
        """Re-wrap the record in a slide's store under ``kek``; its old KEK id, or "" when
        the store holds no record."""
        record = self._store_copy(slide_id, store)
        if record is None:
            return ""
        store.put(KEY_OBJECT, self._record(slide_id, self._unwrap(record), kek))
        return record["kek_id"]

    def rotate(self, locations: Sequence[ObjectStore] = ()) -> tuple[str, int]:
        """Re-wrap every data key under a new KEK, then delete KEKs nothing uses any more.

        Re-wrapped: this home's records, their store-side copies, and the records in every
        slide store at ``locations`` (where other hosts' converters may have put keys this
        home never saw). Returns the new KEK id and how many records were re-wrapped. Any
        failure stops before a KEK is destroyed: running it again finishes the job."""
        new_id = self._new_kek()
        new_kek = self.kek(new_id)
        records = self._records()
        old_keks = {r["kek_id"] for r in records} | {self.current_kek().key_id}
        count = 0
        for record in records:
            slide_id, where = record["slide_id"], record.get("store")
            if where:
                old_keks.add(self._rewrap_store_copy(slide_id, _open(where), new_kek))
            self._save_record(slide_id, self._unwrap(record), new_kek, where)
            count += 1
        done = {r["slide_id"] for r in records}
        for location in locations:
            for slide_id in location.children():
                if is_slide_id(slide_id) and slide_id not in done:
                    old = self._rewrap_store_copy(slide_id, location.child(f"{slide_id}/"), new_kek)
                    old_keks.add(old)
                    count += bool(old)
        self._write("current", new_id.encode())
        for path in (self.root / "kek").glob("*.key"):
            if path.stem != new_id:
                path.unlink()
        if self._token is not None:
            from tileserver.security.pkcs11 import destroy_key

            for key_id in old_keks - {new_id}:
                if key_id.startswith(TOKEN_KEY_PREFIX):
                    destroy_key(self._token, key_id.removeprefix(TOKEN_KEY_PREFIX))
        return new_id, count

    def shred(self, slide_id: str, locations: Sequence[ObjectStore] = ()) -> list[str]:
        """Destroy a slide's data key: this home's record, the store-side copy it names, and
        the copy in the slide's store at each of ``locations``. Returns what was destroyed.

        Store copies go first, so a store that cannot be reached leaves everything in place
        for a second try. Copies in backups of a store die with the KEK: ``rotate``."""
        path = self._slide_path(slide_id)
        stores = [location.child(f"{slide_id}/") for location in locations]
        if path.is_file():
            try:
                where = self._read_record(path).get("store")
            except IntegrityError:  # a damaged record is destroyed all the same
                where = None
            if where:
                stores.append(_open(where))
        destroyed = []
        for store in stores:
            if store.exists(KEY_OBJECT):
                store.delete(KEY_OBJECT)
                destroyed.append(f"{store.url}/{KEY_OBJECT}")
        if path.is_file():
            _destroy(path)
            destroyed.append(str(path))
        with self._lock:
            self._data_keys.pop(slide_id, None)
        if not destroyed:
            raise KeyUnavailable(f"{slide_id}: no data key to shred")
        return destroyed


def _parse_record(data: bytes, slide_id: str, what: str) -> dict[str, str]:
    """A data-key record, checked to be the one of ``slide_id``."""
    if len(data) > MAX_RECORD_BYTES:
        raise IntegrityError(f"{what}: not a data-key record ({len(data)} bytes)")
    try:
        record = json.loads(data)
        if record["algorithm"] != ALGORITHM:
            raise ValueError(f"unknown algorithm {str(record['algorithm'])[:40]!r}")
        fields = {k: str(record[k]) for k in ("slide_id", "kek_id", "wrapped")}
        if isinstance(record.get("store"), str):
            fields["store"] = record["store"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{what}: malformed data-key record: {exc}") from exc
    if fields["slide_id"] != slide_id:
        raise IntegrityError(
            f"{what}: the data-key record of another slide ({fields['slide_id'][:40]!r}), "
            f"not of {slide_id}"
        )
    return fields


def _location(store: ObjectStore) -> str:
    """Where a slide's store is, so that any later command can open it again."""
    url = store.url
    return url if "://" in url else str(Path(url).absolute())


def _open(location: str) -> ObjectStore:
    from tileserver.store.location import open_location  # the store backends load lazily

    return open_location(location)
