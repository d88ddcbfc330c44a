"""Authorization answers cached under the auth database's change counter.

Every authenticated request reads the counter once (``generation``: one small indexed read).
An answer is used only when it was looked up under the very counter value this request
read, so a revoked token, a disabled user, a removed grant or an ended session is refused on
the next request, whichever process or server made the change: every such write bumps the
counter in its own transaction (``Accounts._db``). What only the clock decides (token expiry,
session idle and absolute timeouts) is checked against the clock on every request.

Only positive answers about callers are kept (a credential that failed is looked up again),
keyed by the SHA-256 of the credential, never the credential. Slide collections and grants
are kept either way: assigning a slide or granting a collection bumps the counter too. Each
table is a bounded LRU, so a flood of distinct credentials or slides cannot grow memory.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from tileserver.security.accounts import USER_SCOPES, Accounts, Principal

MAX_PRINCIPALS = 16_384
MAX_SLIDES = 65_536  # slide -> collection, and (user, collection) -> grant
MAX_LISTINGS = 64  # visible-slide sets can be large: few of them
REFRESH_AFTER = 30.0  # Accounts.session_user writes last_seen at most this often

K = TypeVar("K")
V = TypeVar("V")


class Lookup(enum.Enum):
    MISS = "miss"  # the cache cannot answer: ask the database (off the event loop)


@dataclass(frozen=True)
class Caller:
    """A cached caller: the principal, and for sessions the times the clock is checked on."""

    principal: Principal
    created: float | None = None  # sessions only
    last_seen: float | None = None  # sessions only, as this process last saw it


class _Lru(Generic[K, V]):
    """A bounded map of (generation, value); the caller holds the lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, tuple[int, V]] = OrderedDict()

    def get(self, key: K, generation: int) -> tuple[bool, V | None]:
        item = self._items.get(key)
        if item is None or item[0] != generation:
            return False, None
        self._items.move_to_end(key)
        return True, item[1]

    def put(self, key: K, value: V, generation: int) -> None:
        self._items[key] = (generation, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def credential_key(kind: str, credential: str) -> str:
    """What the cache files a credential under: a hash, so the secret itself is not kept."""
    return kind + ":" + hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()


class AuthzCache:
    """Thread-safe: the event loop looks up, worker threads fill in what it missed."""

    def __init__(
        self,
        accounts: Accounts,
        *,
        max_principals: int = MAX_PRINCIPALS,
        max_slides: int = MAX_SLIDES,
        max_listings: int = MAX_LISTINGS,
    ) -> None:
        self.accounts = accounts
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._callers: _Lru[str, Caller] = _Lru(max_principals)
        self._collections: _Lru[str, str | None] = _Lru(max_slides)
        self._grants: _Lru[tuple[str, str], tuple[bool, bool]] = _Lru(max_slides)
        self._listings: _Lru[tuple[str, str, frozenset[str] | None], frozenset[str]] = _Lru(
            max_listings
        )

    def generation(self) -> int:
        """Read the change counter (once per request); forget answers of any other value."""
        n = self.accounts.generation()
        with self._lock:
            if n != self._generation:
                self._generation = n
                for table in (self._callers, self._collections, self._grants, self._listings):
                    table.clear()
        return n

    def sizes(self) -> tuple[int, int, int, int]:
        """Entries held: callers, slide collections, grants, listings."""
        with self._lock:
            tables = (self._callers, self._collections, self._grants, self._listings)
            return len(tables[0]), len(tables[1]), len(tables[2]), len(tables[3])

    # -- callers ---------------------------------------------------------------------------
    def caller(self, key: str, generation: int) -> Caller | None:
        with self._lock:
            return self._callers.get(key, generation)[1]

    def remember_caller(self, key: str, caller: Caller, generation: int) -> None:
        with self._lock:
            self._callers.put(key, caller, generation)

    # -- what a caller may do with a slide -------------------------------------------------
    def knows(self, principal: Principal, slide_id: str, generation: int) -> bool:
        """Whether ``allows`` for this slide can answer without the database."""
        with self._lock:
            found, collection = self._collections.get(slide_id, generation)
            if not found:
                return False
            if collection is None or principal.kind != "user":
                return True
            return self._grants.get((principal.name, collection), generation)[0]

    def learn(self, principal: Principal, slide_id: str, generation: int) -> None:
        """Look up what ``allows`` needs for this slide (in a worker thread, before
        ``allows`` is asked on the event loop)."""
        collection = self._collection_of(slide_id, generation)
        if collection is not None and principal.kind == "user":
            self._grant_of(principal.name, collection, generation)

    def allows(self, principal: Principal, slide_id: str, scope: str, generation: int) -> bool:
        """``Accounts.allows``, from the cache where it can (deny by default)."""
        collection = self._collection_of(slide_id, generation)
        if collection is None:
            return False
        if principal.kind == "token":
            in_scope = scope in principal.scopes
            return in_scope and (
                principal.collections is None or collection in principal.collections
            )
        if principal.kind != "user":
            return False
        may_view, may_label = self._grant_of(principal.name, collection, generation)
        return may_label if scope == "labels" else may_view and scope in USER_SCOPES

    def visible_slides(self, principal: Principal, generation: int) -> set[str]:
        key = (principal.kind, principal.name, principal.collections)
        with self._lock:
            found, cached = self._listings.get(key, generation)
        if found and cached is not None:
            return set(cached)
        visible = self.accounts.visible_slides(principal)
        with self._lock:
            self._listings.put(key, frozenset(visible), generation)
        return visible

    def _collection_of(self, slide_id: str, generation: int) -> str | None:
        with self._lock:
            found, collection = self._collections.get(slide_id, generation)
        if found:
            return collection
        collection = self.accounts.collection_of(slide_id)
        with self._lock:
            self._collections.put(slide_id, collection, generation)
        return collection

    def _grant_of(self, user: str, collection: str, generation: int) -> tuple[bool, bool]:
        with self._lock:
            found, grant = self._grants.get((user, collection), generation)
        if found and grant is not None:
            return grant
        grant = self.accounts.grant_of(user, collection)
        with self._lock:
            self._grants.put((user, collection), grant, generation)
        return grant
