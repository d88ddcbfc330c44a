"""Refused access in the audit trail, without letting a flood fill the disk (issue 14, 4).

Every refusal is counted in a window: one per event, event type, key and minute. The key is
the client address (an IPv4 address or an IPv6 /64) for refused credentials, or the
principal (``kind:name``) for an authenticated caller refused something. The first refusal of
a window is one record at once, so a detector sees it within the minute; the rest become one
summary when the minute is over (``flush``): at most two records per window, whatever the
request rate. Memory is bounded: at most ``MAX_KEYS`` windows (then one shared window per
event), and ``MAX_LISTED`` names or slide IDs per window, ``MAX_LISTED_TOTAL`` in all.

Records (the detector reads them; keep the shape stable). The first of a window::

    event_id    USER_AUTHENTICATION (110114): refused credentials, and anything refused to
                a signed URL, keyed per address;
                INSTANCES_ACCESSED (110103): an authenticated caller refused, per principal
    event_type  LOGIN (110122) for refused logins, else null
    outcome     4
    user        the principal's name; for logins an account name or "unknown:<keyed hash>";
                null when no one was authenticated
    role        the principal's role ("service": a machine token), else null
    source_ip   the client address
    object      the slide ID asked for, or null
    detail      {"reason": REASON, ...}; logins add "consecutive_failures"

and the summary of the rest of that window::

    event_id, event_type, outcome 4 as above
    user, role  the principal's for per-principal windows, else null
    source_ip   the address key for per-address windows ("other addresses" for the shared
                overflow window); the first address seen for per-principal windows
    object      null
    detail      {"aggregated": true, "reason": the commonest reason (a window may mix
                 reasons: read the per-reason counts),
                 "window_start", "first", "last": ISO-8601 UTC,
                 "refused": N (not counting the first record), REASON: count for each reason,
                 "distinct_users": n, "users": [at most 64],
                 "distinct_objects": n, "objects": [at most 64 slide IDs]}

Distinct counts stop growing at the memory caps. Nothing secret is recorded: no token,
cookie, signature or password, and refused user names only as the caller labels them.
Windows are per process: with ``--workers N`` each worker writes its own.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tileserver.security.audit import MAX_LIST, AuditLog, iso_utc

WINDOW = 60  # seconds of refusals summarised in one record per key
MAX_KEYS = 65_536  # windows open at once per process
MAX_LISTED = 1024  # distinct user names or slide IDs remembered per window
MAX_LISTED_TOTAL = 65_536  # ... and over all open windows
MAX_ITEM = 64  # characters kept of a listed name or ID
OVERFLOW = "other addresses"

# Reasons (detail["reason"]).
NO_CREDENTIALS = "no_credentials"  # a non-public route asked without any (401)
BAD_TOKEN = "bad_token"  # unknown, expired or revoked bearer token
BAD_SESSION = "bad_session"  # unknown, expired or ended session, or a disabled user
BAD_CERTIFICATE = "bad_certificate"  # a client certificate without a live token of its name
BAD_SIGNED_URL = "bad_signed_url"  # forged, expired, other slide or scope, or beyond its reach
NOT_GRANTED = "not_granted"  # a slide the caller may not see (answered like a missing one)
FORBIDDEN = "forbidden"  # a route or scope the caller may not use (403)
RATE_LIMITED = "rate_limited"  # the per-principal request rate (429)


def address_key(source_ip: str) -> str:
    """What one client controls: an IPv4 address, or an IPv6 /64 (one site's network)."""
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return source_ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class Refusal:
    """One refused request or login, as the audit trail will name it."""

    event_id: int
    reason: str
    source_ip: str
    user: str | None = None
    role: str | None = None  # the principal's role ("service" for machines)
    obj: str | None = None  # the slide ID, when there is one
    principal: str | None = None  # "kind:name": windows per principal; None: per address
    event_type: int | None = None
    consecutive_failures: int | None = None  # refused logins only

    def detail(self) -> dict[str, str | int | None]:
        detail: dict[str, str | int | None] = {"reason": self.reason}
        if self.consecutive_failures is not None:
            detail["consecutive_failures"] = self.consecutive_failures
        return detail


@dataclass
class _Window:
    """Refusals of one key in one minute, after the first."""

    event_id: int
    event_type: int | None
    minute: int
    source_ip: str
    user: str | None  # the principal's name and role (per-principal windows)
    role: str | None
    first_written: bool = False  # the first refusal, written on its own at once
    first: float = 0.0
    last: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    users: dict[str, None] = field(default_factory=dict)  # ordered sets
    objects: dict[str, None] = field(default_factory=dict)


_Key = tuple[int, int | None, str]


class RefusalAudit:
    """Counts refusals per window and writes the first at once and the rest as a summary.

    Thread-safe. ``count`` does no I/O (safe on the event loop) and says whether the caller
    must ``write`` this refusal now; ``refused`` does both, for worker threads.
    """

    def __init__(
        self, audit: AuditLog, now: Callable[[], float] = time.time, max_keys: int = MAX_KEYS
    ) -> None:
        self.audit = audit
        self.now = now
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._windows: dict[_Key, _Window] = {}
        self._due: list[_Window] = []
        self._listed = 0
        self._swept = -1  # the minute of the last sweep

    def refused(self, refusal: Refusal, *, immediate: bool = True) -> None:
        """Count one refusal, writing it at once if it opens its window (this thread waits
        for the fsync); ``immediate=False`` never writes, leaving it to the summary."""
        if self.count(refusal, immediate=immediate):
            self.write(refusal)

    def count(self, refusal: Refusal, *, immediate: bool = True) -> bool:
        """Count one refusal without I/O; True when it opens its window and the caller must
        ``write`` it now (off the event loop)."""
        now = self.now()
        minute = int(now // WINDOW)
        if refusal.principal is not None:
            key: _Key = (refusal.event_id, refusal.event_type, refusal.principal)
        else:
            key = (refusal.event_id, refusal.event_type, address_key(refusal.source_ip))
        with self._lock:
            window = self._windows.get(key)
            if window is not None and window.minute != minute:
                self._due.append(self._windows.pop(key))
                window = None
            if window is None:
                if len(self._windows) >= self._max_keys and self._swept != minute:
                    self._sweep(minute)  # windows that are over make room (once a minute)
                if len(self._windows) >= self._max_keys:
                    # A flood from everywhere: one shared window per event.
                    key = (refusal.event_id, refusal.event_type, OVERFLOW)
                    window = self._windows.get(key)
                    if window is not None and window.minute != minute:
                        self._due.append(self._windows.pop(key))
                        window = None
                if window is None:
                    per_principal = refusal.principal is not None and key[2] != OVERFLOW
                    window = self._windows[key] = _Window(
                        refusal.event_id,
                        refusal.event_type,
                        minute,
                        refusal.source_ip if per_principal else key[2],
                        refusal.user if per_principal else None,
                        refusal.role if per_principal else None,
                    )
            if immediate and not window.first_written:
                window.first_written = True
                return True
            if not window.counts:
                window.first = now
            window.last = now
            window.counts[refusal.reason] = window.counts.get(refusal.reason, 0) + 1
            self._list(window.users, refusal.user)
            self._list(window.objects, refusal.obj)
        return False

    def _sweep(self, minute: int) -> None:
        self._swept = minute
        for key in [k for k, w in self._windows.items() if w.minute != minute]:
            self._due.append(self._windows.pop(key))

    def _list(self, items: dict[str, None], item: str | None) -> None:
        if item is None or len(items) >= MAX_LISTED or self._listed >= MAX_LISTED_TOTAL:
            return
        item = item[:MAX_ITEM]
        if item not in items:
            items[item] = None
            self._listed += 1

    def write(self, refusal: Refusal) -> None:
        """The record of a refusal that opened its window (it fsyncs)."""
        self.audit.append(
            refusal.event_id,
            event_type=refusal.event_type,
            outcome=4,
            user=refusal.user,
            role=refusal.role,
            source_ip=refusal.source_ip,
            obj=refusal.obj,
            detail=refusal.detail(),
        )

    def pending(self) -> bool:
        with self._lock:
            return bool(self._windows or self._due)

    def due_in(self) -> float:
        """Seconds until the oldest window is over (0 when one already is)."""
        with self._lock:
            if self._due or not self._windows:
                return 0.0
            end = (min(w.minute for w in self._windows.values()) + 1) * WINDOW
        return max(0.0, end - self.now())

    def flush(self, *, everything: bool = False) -> int:
        """Write the summaries of windows that are over (or all); the number written."""
        minute = int(self.now() // WINDOW)
        with self._lock:
            if everything:
                self._due.extend(self._windows.values())
                self._windows.clear()
            else:
                self._sweep(minute)
            due, self._due = self._due, []
        written = 0
        for position, window in enumerate(due):
            if window.counts:
                try:
                    self._summary(window)
                except BaseException:
                    with self._lock:  # keep what was not written: the next flush tries again
                        self._due[:0] = due[position:]
                    raise
                written += 1
            with self._lock:
                self._listed -= len(window.users) + len(window.objects)
        return written

    def _summary(self, window: _Window) -> None:
        users, objects = list(window.users), list(window.objects)
        reason = min(window.counts.items(), key=lambda item: (-item[1], item[0]))[0]
        self.audit.append(
            window.event_id,
            event_type=window.event_type,
            outcome=4,
            user=window.user,
            role=window.role,
            source_ip=window.source_ip,
            detail={
                "aggregated": True,
                "reason": reason,
                "window_start": iso_utc(window.minute * WINDOW),
                "first": iso_utc(window.first),
                "last": iso_utc(window.last),
                "refused": sum(window.counts.values()),
                **dict(sorted(window.counts.items())),
                "distinct_users": len(users),
                "users": users[:MAX_LIST],
                "distinct_objects": len(objects),
                "objects": objects[:MAX_LIST],
            },
        )
