"""Rate-limit budgets shared by every server process on every host, without a database
round trip per request.

Each key (``user:alice``, ``token:lis``, ``login:203.0.113.0``) has one token bucket in the
database (``budgets``). A process spends from a lease: a slice of the bucket (a tenth of a
second's worth of the rate, at least one request), taken with one ``INSERT ... ON CONFLICT
DO UPDATE ... RETURNING`` that also refills the bucket for the time since it was last
touched. A lease is spent locally, with no I/O; when it is empty the next request takes a
new one. Whatever the number of processes, no more than the bucket holds is ever handed
out, so the limit holds across hosts; what a process holds and has not spent is at most one
slice per key (lost if it dies, which only makes the limit stricter).

A key found empty is refused locally until the bucket will have refilled, so a flood of
refused requests does not become a flood of database writes.

``spend`` never touches the database (for the event loop); it says ``REFILL`` when only
``refill`` (one round trip: in a worker thread) can answer. Times are Unix seconds from each
host's clock; a host whose clock is behind takes a little less for that moment, and the
next refill adds it back.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tileserver.security.database import Database, Migration, migrate

LEASE_SECONDS = 0.1  # a lease is this long's worth of the rate (at least one request)
MAX_KEYS = 16_384  # leases held by one process; the least recently used are dropped
# Unix times near 2e9 carry ~2e-7 s of rounding: a grant that short of a whole request is one.
ROUNDING = 1e-6

MIGRATIONS = [
    Migration(
        1,
        """
CREATE TABLE IF NOT EXISTS budgets (
    key TEXT PRIMARY KEY, tokens REAL NOT NULL, granted REAL NOT NULL, stamp REAL NOT NULL)
""",
    ),
]

# The bucket refilled for the time since its stamp, capped at the burst; the grant is a
# slice of it, the rest stays. SET expressions all see the row as it was, so they agree.
_REFILLED = "{least}(:burst, budgets.tokens + (:now - budgets.stamp) * :rate)"
_LEASE = (
    "INSERT INTO budgets (key, tokens, granted, stamp) VALUES (:key, :burst - :first, :first, :now)"
    " ON CONFLICT (key) DO UPDATE SET"
    " granted = {least}(:size, {refilled}),"
    " tokens = {refilled} - {least}(:size, {refilled}),"
    " stamp = :now"
    " RETURNING granted"
)


class Refill(enum.Enum):
    REFILL = "refill"  # the local lease cannot answer: call ``refill`` off the event loop


REFILL = Refill.REFILL


@dataclass
class _Lease:
    tokens: float  # left to spend here
    empty_until: float = 0.0  # the shared bucket was empty: refuse locally until then


class SharedBudgets:
    """Token buckets (``rate`` per second, up to ``burst``) per key, shared through the
    database. Thread-safe; one per process."""

    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float = LEASE_SECONDS,
        max_keys: int = MAX_KEYS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_keys = max_keys
        self.now = now
        self._lock = threading.Lock()
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        migrate(db, "budgets", MIGRATIONS)
        least = "LEAST" if db.dialect == "postgresql" else "MIN"  # SQLite's two-argument min
        named = _LEASE.format(least=least, refilled=_REFILLED.format(least=least))
        self._names = re.findall(r":(\w+)", named)
        self._sql = re.sub(r":\w+", "?", named)

    def spend(self, key: str) -> float | Refill | None:
        """From this process's lease, no I/O: None (go ahead, one spent), seconds to wait,
        or ``REFILL``."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return REFILL
            self._leases.move_to_end(key)
            wait = lease.empty_until - self.now()
            if wait > 0:
                return wait
            if lease.tokens >= 1 - ROUNDING:
                lease.tokens -= 1
                return None
            return REFILL

    def refill(self, key: str, rate: float, burst: float) -> float | None:
        """A new lease from the shared bucket (one database statement), then ``spend``'s
        answer: None (go ahead, one spent) or seconds to wait."""
        now = self.now()
        size = max(1.0, rate * self.lease_seconds)
        values = {"key": key, "burst": burst, "first": min(size, burst), "now": now}
        values |= {"rate": rate, "size": size}
        rows = self.db.execute(self._sql, tuple(values[name] for name in self._names))
        granted = float(rows[0][0])
        lease = _Lease(granted)
        wait: float | None = None
        if granted >= 1 - ROUNDING:
            lease.tokens -= 1
        else:
            wait = (1 - granted) / rate
            lease.empty_until = now + wait
        with self._lock:
            old = self._leases.pop(key, None)
            if old is not None:
                lease.tokens += old.tokens  # a concurrent refill's remainder stays usable
            self._leases[key] = lease
            while len(self._leases) > self.max_keys:
                self._leases.popitem(last=False)  # its unspent slice is lost: stricter
        return wait

    def give_back(self, key: str) -> None:
        """Return one request to this process's lease (a login that succeeded)."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None:
                lease.tokens += 1

    def take(self, key: str, rate: float, burst: float) -> float | None:
        """``spend``, and ``refill`` when needed (blocking: not on the event loop)."""
        found = self.spend(key)
        return self.refill(key, rate, burst) if found is REFILL else found
