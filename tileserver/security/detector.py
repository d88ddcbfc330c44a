"""Detection rules over a stream of access events (DET-01): pure, clocked by the events.

The server feeds live events (every tile, refused requests, failed logins) and the audit
records it writes; ``tileserver audit watch`` feeds the records of an audit file. Each rule
keeps sliding windows per key (a principal or a client address), bounded in size, and raises
at most one ``Alert`` per (rule, key) per cooldown. Time is the events' own ``time``, so a
test replays half an hour of traffic in a second. Rules, thresholds and how they were chosen:
docs/detection.md.

    bulk_crawl           one principal: > 4000 tiles in 60 s, or > 150 tiles in 60 s with no
                         neighbouring tile fetched in the minute before (random access, not
                         panning), or > 40 distinct slides in 10 minutes
    enumeration          one principal or address: >= 20 distinct slide IDs refused (404 or
                         not granted) in 60 s
    credential_stuffing  one address: >= 50 refused logins or bearer tokens in 60 s, or >= 10
                         distinct user names refused in 60 s
    new_client           a token (or a user's session) used from a new client address or with a
                         new client certificate, after its first one
    off_hours            access to a collection outside its usual hours (configured, or learned
                         once the collection has been used on ``learn_days`` days)
    label_bulk           one principal: >= 20 label or macro views in 10 minutes
    integrity            any integrity failure, security alert from the server, or break in the
                         audit chain
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
)
from tileserver.security.refusals import address_key as refused_address

# Event kinds.
TILE = "tile"  # one tile served
REFUSED = "refused"  # a slide refused: 404 (missing, or not granted), or denied
AUTH_FAILED = "auth_failed"  # a refused login or bearer token
LABEL = "label"  # a label or macro image viewed
ACCESS = "access"  # anything else done with a slide (thumbnail, region, metadata)
INTEGRITY = "integrity"  # an integrity failure, a server security alert, a broken chain

RULES = (
    "bulk_crawl",
    "enumeration",
    "credential_stuffing",
    "new_client",
    "off_hours",
    "label_bulk",
    "integrity",
)
RESPONSES = ("alert", "throttle", "suspend")
# A crawl empties the store: stop it at once. Stuffing comes from an address, which may be a
# ward's NAT: slow it down rather than lock everyone out. The rest needs a person to look.
DEFAULT_RESPONSES: Mapping[str, str] = {
    "bulk_crawl": "suspend",
    "credential_stuffing": "throttle",
}
MAX_KEYS = 4096  # keys (principals, addresses) tracked per rule; least recently seen go first
MAX_DISTINCT = 1024  # distinct items kept per key and window
MAX_CLIENTS = 16  # addresses and certificates remembered per principal
MAX_COLLECTIONS = 4096


class Event(NamedTuple):
    """One thing that happened, as the rules see it (a tuple: one is made per tile)."""

    time: float  # seconds since the epoch
    kind: str
    principal: str | None = None  # "token:lis", "user:alice", "url:<address>"; None: nobody
    source_ip: str | None = None
    slide: str | None = None
    level: int | None = None
    col: int | None = None  # tile column and row where known (DeepZoom)
    row: int | None = None
    collection: str | None = None
    reason: str | None = None
    certificate: str | None = None  # serial number of a verified client certificate
    session: str | None = None  # a keyed tag of the session, for users
    weight: int = 1  # how many tiles or refusals one aggregated record stands for
    users: tuple[str, ...] = ()  # user names a refused-login record names
    objects: tuple[str, ...] = ()  # slide IDs an aggregated refusal names


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule: str
    key: str  # the principal or address the rule counted under
    time: float
    summary: str  # one line, no secrets: names, counts, thresholds
    response: str  # alert, throttle or suspend
    principal: str | None = None
    source_ip: str | None = None
    slide: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """The rules' settings: frozen, read once (serve flags or defaults)."""

    window: float = 60.0  # the minute most rules count over
    crawl_tiles: int = 4000
    crawl_scattered: int = 150
    crawl_slides: int = 40
    slides_window: float = 600.0
    enumeration_slides: int = 20
    stuffing_failures: int = 50
    stuffing_users: int = 10
    label_views: int = 20
    label_window: float = 600.0
    cooldown: float = 900.0  # one alert per (rule, key) in this time
    # Configured usual hours per collection ("*" for all): [start, end) in local hours.
    usual_hours: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    learn_days: int = 7  # days of use before a collection's hours are learned
    utc_offset: float = 0.0  # seconds east of UTC for "hours"
    responses: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_RESPONSES))

    def response(self, rule: str) -> str:
        return self.responses.get(rule, "alert")


class _Distinct:
    """Per key: the distinct items seen in a sliding window (each with its last time)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._keys: OrderedDict[str, OrderedDict[Hashable, float]] = OrderedDict()

    def add(self, key: str, now: float, item: Hashable) -> int:
        """Record ``item``; the number of distinct items in the window."""
        items = self._keys.get(key)
        if items is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.popitem(last=False)
            items = self._keys[key] = OrderedDict()
        elif next(reversed(items)) == item and now - items[item] < 1.0:
            return len(items)  # the same as just now (a viewer's tiles of one slide)
        else:
            self._keys.move_to_end(key)
        items[item] = now
        items.move_to_end(item)
        while items:
            oldest = next(iter(items.values()))
            if oldest > now - self.span and len(items) <= MAX_DISTINCT:
                break
            items.popitem(last=False)
        return len(items)

    def count(self, key: str) -> int:
        items = self._keys.get(key)
        return len(items) if items else 0


class _Counts:
    """Per key: a running count within a sliding window, without keeping each event
    (tiles arrive by the thousand; a deque of (second, count) buckets is enough)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._keys: OrderedDict[str, deque[list[float]]] = OrderedDict()
        self._sums: dict[str, float] = {}

    def add(self, key: str, now: float, n: int = 1) -> int:
        buckets = self._keys.get(key)
        if buckets is None:
            if len(self._keys) >= MAX_KEYS:
                old, _ = self._keys.popitem(last=False)
                self._sums.pop(old, None)
            buckets = self._keys[key] = deque()
            self._sums[key] = 0
        else:
            self._keys.move_to_end(key)
        second = float(int(now))
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += n
        else:
            buckets.append([second, n])
        self._sums[key] += n
        while buckets and buckets[0][0] <= now - self.span:
            self._sums[key] -= buckets.popleft()[1]
        return int(self._sums[key])


class _RecentTiles:
    """Per principal: tiles fetched in the last ``span`` seconds, to tell a pan (each tile
    next to one just fetched) from a crawl's random access (most tiles next to none)."""

    def __init__(self, span: float, limit: int) -> None:
        self.span = span
        self.limit = limit
        self._keys: OrderedDict[str, tuple[dict[tuple[Any, ...], float], deque[Any]]]
        self._keys = OrderedDict()

    def isolated(self, key: str, now: float, slide: str, level: int, col: int, row: int) -> bool:
        """Record the tile; True when no tile at or next to it was fetched within the span."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.popitem(last=False)
            entry = self._keys[key] = ({}, deque())
        else:
            self._keys.move_to_end(key)
        seen, order = entry
        while order and (order[0][1] <= now - self.span or len(order) > self.limit):
            tile, stamp = order.popleft()
            if seen.get(tile) == stamp:
                del seen[tile]
        cutoff = now - self.span
        get = seen.get
        # Next to it on its level, or under or over it one level up or down (a zoom); the
        # likeliest first, and each key built only if the ones before missed.
        alone = not (
            get((slide, level, col - 1, row), cutoff) > cutoff
            or get((slide, level, col, row - 1), cutoff) > cutoff
            or get((slide, level, col + 1, row), cutoff) > cutoff
            or get((slide, level, col, row + 1), cutoff) > cutoff
            or get((slide, level, col, row), cutoff) > cutoff
            or get((slide, level - 1, col // 2, row // 2), cutoff) > cutoff
            or any(
                get((slide, level, col + dc, row + dr), cutoff) > cutoff
                for dc, dr in ((-1, -1), (1, -1), (-1, 1), (1, 1))
            )
            or any(
                get((slide, level + 1, 2 * col + dc, 2 * row + dr), cutoff) > cutoff
                for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1))
            )
        )
        tile = (slide, level, col, row)
        seen[tile] = now
        order.append((tile, now))
        return alone


@dataclass
class _Client:
    """Where a token or session has been used from."""

    last: tuple[str | None, str | None]  # (raw address, certificate) of the last event
    addresses: set[str]
    certificates: set[str]


def address_key(source_ip: str | None) -> str:
    """What one client controls: an IPv4 address or an IPv6 /64 (as refusals count them)."""
    return refused_address(source_ip) if source_ip else "unknown"


class Detector:
    """The rules. ``observe`` takes one event and returns the alerts it raises (usually none).

    Not thread-safe: the caller serialises (alerts.Monitor holds a lock). ``collection_of``
    maps a slide to its collection for the hours rule (None: that rule only sees events that
    carry a collection).
    """

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        collection_of: Callable[[str], str | None] | None = None,
        new_id: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        t = self.t = thresholds or Thresholds()
        self._collection_of = collection_of
        self._new_id = new_id
        self._tiles = _Counts(t.window)
        self._scattered = _Counts(t.window)
        self._recent = _RecentTiles(t.window, t.crawl_tiles + 1)
        self._slides = _Distinct(t.slides_window)
        self._refused = _Distinct(t.window)
        self._failures = _Counts(t.window)
        self._failed_users = _Distinct(t.window)
        self._labels = _Counts(t.label_window)
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._hours: OrderedDict[str, tuple[list[int], set[int]]] = OrderedDict()
        self._hour_seen: OrderedDict[str, tuple[str | None, int]] = OrderedDict()
        self._collections: OrderedDict[str, str | None] = OrderedDict()
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def observe(self, event: Event) -> list[Alert]:
        alerts: list[Alert] = []
        if event.kind == TILE:
            self._crawl(event, alerts)
        elif event.kind == REFUSED:
            self._enumeration(event, alerts)
        elif event.kind == AUTH_FAILED:
            self._stuffing(event, alerts)
        elif event.kind == LABEL:
            self._label(event, alerts)
        elif event.kind == INTEGRITY:
            self._raise(
                alerts,
                "integrity",
                event.slide or event.principal or "server",
                event,
                f"integrity failure: {event.reason or 'unspecified'}",
            )
        if event.principal is not None and event.kind in (TILE, LABEL, ACCESS):
            self._new_client(event, alerts)
            self._off_hours(event, alerts)
        return alerts

    def observe_tiles(self, events: Sequence[Event]) -> list[Alert]:
        """Many TILE events, in the order they happened (the server's batches): the alerts
        ``observe`` raises for them one by one, with tile and slide counts added once per
        principal and batch (an alert then carries the time of that principal's last tile in
        the batch: at most a batch's span, a fraction of a second, after the crossing)."""
        alerts: list[Alert] = []
        counts: dict[str, list[Any]] = {}  # key: [tiles, scattered tiles, last event]
        slides: dict[tuple[str, str], Event] = {}
        for e in events:
            key = e.principal or "url:" + address_key(e.source_ip)
            entry = counts.get(key)
            if entry is None:
                entry = counts[key] = [0, 0, e]
            entry[0] += e.weight
            entry[1] += self._isolated(key, e)
            entry[2] = e
            if e.slide is not None:
                slides[(key, e.slide)] = e
            if e.principal is not None:
                self._new_client(e, alerts)
                self._off_hours(e, alerts)
        for key, (tiles, scattered, last) in counts.items():
            self._count_tiles(key, last, tiles, scattered, alerts)
        for (key, _), last in slides.items():
            self._count_slides(key, last, alerts)
        return alerts

    # -- rules ------------------------------------------------------------------------------
    def _crawl(self, e: Event, alerts: list[Alert]) -> None:
        key = e.principal or "url:" + address_key(e.source_ip)
        self._count_tiles(key, e, e.weight, self._isolated(key, e), alerts)
        if e.slide is not None:
            self._count_slides(key, e, alerts)

    def _isolated(self, key: str, e: Event) -> int:
        """1 when the tile is next to none fetched in the window (random access), else 0."""
        if e.slide is None or e.level is None or e.col is None or e.row is None:
            return 0
        return int(self._recent.isolated(key, e.time, e.slide, e.level, e.col, e.row))

    def _count_tiles(
        self, key: str, e: Event, tiles: int, scattered: int, alerts: list[Alert]
    ) -> None:
        t = self.t
        total = self._tiles.add(key, e.time, tiles)
        if total > t.crawl_tiles:
            self._raise(
                alerts,
                "bulk_crawl",
                key,
                e,
                f"{key} fetched {total} tiles in {t.window:.0f} s (threshold {t.crawl_tiles})",
            )
        if scattered:
            total = self._scattered.add(key, e.time, scattered)
            if total > t.crawl_scattered:
                self._raise(
                    alerts,
                    "bulk_crawl",
                    key,
                    e,
                    f"{key} fetched {total} scattered tiles in {t.window:.0f} s "
                    f"(random access, threshold {t.crawl_scattered})",
                )

    def _count_slides(self, key: str, e: Event, alerts: list[Alert]) -> None:
        assert e.slide is not None
        t = self.t
        slides = self._slides.add(key, e.time, e.slide)
        if slides > t.crawl_slides:
            self._raise(
                alerts,
                "bulk_crawl",
                key,
                e,
                f"{key} fetched tiles of {slides} slides in "
                f"{t.slides_window / 60:.0f} min (threshold {t.crawl_slides})",
            )

    def _enumeration(self, e: Event, alerts: list[Alert]) -> None:
        key = e.principal or "addr:" + address_key(e.source_ip)
        for slide in (e.slide, *e.objects):
            if slide is not None:
                self._refused.add(key, e.time, slide)
        refused = self._refused.count(key)
        if refused >= self.t.enumeration_slides:
            self._raise(
                alerts,
                "enumeration",
                key,
                e,
                f"{key} was refused {refused} distinct slide IDs in "
                f"{self.t.window:.0f} s (threshold {self.t.enumeration_slides})",
            )

    def _stuffing(self, e: Event, alerts: list[Alert]) -> None:
        key = "addr:" + address_key(e.source_ip)
        failures = self._failures.add(key, e.time, e.weight) if e.weight else 0
        for user in e.users:
            self._failed_users.add(key, e.time, user)
        users = self._failed_users.count(key)
        t = self.t
        if failures >= t.stuffing_failures or users >= t.stuffing_users:
            self._raise(
                alerts,
                "credential_stuffing",
                key,
                e,
                f"{key}: {failures} refused logins or tokens and {users} distinct user "
                f"names in {t.window:.0f} s (thresholds {t.stuffing_failures}, "
                f"{t.stuffing_users})",
            )

    def _label(self, e: Event, alerts: list[Alert]) -> None:
        key = e.principal or "url:" + address_key(e.source_ip)
        views = self._labels.add(key, e.time)
        if views >= self.t.label_views:
            self._raise(
                alerts,
                "label_bulk",
                key,
                e,
                f"{key} viewed {views} label or macro images in "
                f"{self.t.label_window / 60:.0f} min (threshold {self.t.label_views})",
            )

    def _new_client(self, e: Event, alerts: list[Alert]) -> None:
        assert e.principal is not None
        if e.principal.startswith("token:"):
            key = e.principal
        elif e.principal.startswith("user:") and e.session:
            key = f"{e.principal}/{e.session}"  # people move between workstations; sessions not
        else:
            return
        known = self._clients.get(key)
        if known is not None and known.last == (e.source_ip, e.certificate):
            self._clients.move_to_end(key)
            return  # as last time: the usual case, without parsing the address again
        address = address_key(e.source_ip)
        if known is None:
            if len(self._clients) >= MAX_KEYS:
                self._clients.popitem(last=False)
            certificates = {e.certificate} if e.certificate else set()
            self._clients[key] = _Client((e.source_ip, e.certificate), {address}, certificates)
            return
        self._clients.move_to_end(key)
        known.last = (e.source_ip, e.certificate)
        news = []
        if address not in known.addresses:
            news.append(f"new client address {address}")
            if len(known.addresses) < MAX_CLIENTS:
                known.addresses.add(address)
        if e.certificate and e.certificate not in known.certificates:
            if known.certificates:
                news.append(f"new client certificate (serial {e.certificate[:40]})")
            if len(known.certificates) < MAX_CLIENTS:
                known.certificates.add(e.certificate)
        if news:
            self._raise(
                alerts,
                "new_client",
                f"{key}@{address}",
                e,
                f"{e.principal} used from a " + " and a ".join(news),
            )

    def _off_hours(self, e: Event, alerts: list[Alert]) -> None:
        assert e.principal is not None
        hours = int((e.time + self.t.utc_offset) // 3600)
        if self._hour_seen.get(e.principal) == (e.slide, hours):
            return  # decided for this principal, slide and hour already
        self._hour_seen[e.principal] = (e.slide, hours)
        if len(self._hour_seen) > MAX_KEYS:
            self._hour_seen.popitem(last=False)
        collection = e.collection or self._collection(e.slide)
        if collection is None:
            return
        hour, day = hours % 24, hours // 24
        configured = self.t.usual_hours.get(collection) or self.t.usual_hours.get("*")
        if configured is not None:
            start, end = configured
            usual = start <= hour < end if start <= end else hour >= start or hour < end
            why = f"usual hours {start:02d}-{end:02d}"
        else:
            counts, days = self._learned(collection)
            usual = len(days) < self.t.learn_days or counts[hour] > 0
            why = f"no access at this hour in {len(days)} days of use"
            counts[hour] += 1
            if len(days) < 64:
                days.add(day)
        if not usual:
            self._raise(
                alerts,
                "off_hours",
                f"{e.principal}/{collection}",
                e,
                f"{e.principal} accessed collection {collection} at {hour:02d}:00 ({why})",
            )

    # -- helpers ----------------------------------------------------------------------------
    def _learned(self, collection: str) -> tuple[list[int], set[int]]:
        entry = self._hours.get(collection)
        if entry is None:
            if len(self._hours) >= MAX_COLLECTIONS:
                self._hours.popitem(last=False)
            entry = self._hours[collection] = ([0] * 24, set())
        return entry

    def _collection(self, slide: str | None) -> str | None:
        if slide is None or self._collection_of is None:
            return None
        if slide in self._collections:
            self._collections.move_to_end(slide)
            return self._collections[slide]
        found = self._collection_of(slide)
        self._collections[slide] = found
        if len(self._collections) > MAX_COLLECTIONS:
            self._collections.popitem(last=False)
        return found

    def _raise(self, alerts: list[Alert], rule: str, key: str, e: Event, summary: str) -> None:
        last = self._last.get((rule, key))
        if last is not None and e.time - last < self.t.cooldown:
            return
        self._last[(rule, key)] = e.time
        self._last.move_to_end((rule, key))
        if len(self._last) > MAX_KEYS * len(RULES):
            self._last.popitem(last=False)
        alerts.append(
            Alert(
                self._new_id(),
                rule,
                key,
                e.time,
                summary[:240],
                self.t.response(rule),
                e.principal,
                e.source_ip,
                e.slide,
            )
        )


# -- audit records -> events ----------------------------------------------------------------
def record_time(record: Mapping[str, Any]) -> float:
    """Seconds since the epoch of a record's ``ts`` (``2026-01-02T03:04:05.678Z``)."""
    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


def principal_of_record(record: Mapping[str, Any]) -> str | None:
    user = record.get("user")
    if not isinstance(user, str) or user.startswith("unknown:"):
        return None
    return ("token:" if record.get("role") == "service" else "user:") + user


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def events_from_record(record: Mapping[str, Any], *, live: bool) -> list[Event]:
    """The events one audit record stands for.

    ``live``: the server also feeds every tile and refusal as it happens, so records that
    only repeat them (view summaries, refusal counts) add nothing but the names they carry.
    Alerts of our own (detail.rule) are never fed back.
    """
    detail = record.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    event_id, outcome = record.get("event_id"), record.get("outcome")
    now = record_time(record)
    principal = principal_of_record(record)
    ip = record.get("source_ip") if isinstance(record.get("source_ip"), str) else None
    slide = record.get("object") if isinstance(record.get("object"), str) else None
    common: dict[str, Any] = {"principal": principal, "source_ip": ip, "slide": slide}
    if event_id == SECURITY_ALERT:
        if "rule" in detail:
            return []
        reason = str(detail.get("reason", ""))
        if "integrity" in reason or "tamper" in reason or "chain" in reason:
            return [Event(now, INTEGRITY, reason=reason[:120], **common)]
        return []
    aggregated = bool(detail.get("aggregated"))
    count = detail.get("refused", 1) if aggregated else 1
    count = count if isinstance(count, int) and count > 0 else 1
    if event_id == USER_AUTHENTICATION and outcome != 0:
        user = record.get("user")
        users = _strings(detail.get("users")) + ((user,) if isinstance(user, str) else ())
        # Requests without credentials (browsers before login) are not an attack; a summary
        # may mix them with other reasons, so only its other counts are weighed.
        if aggregated:
            anonymous = detail.get("no_credentials", 0)
            count -= anonymous if isinstance(anonymous, int) else 0
            if count <= 0:
                return []
        elif detail.get("reason") == "no_credentials":
            return []
        return [
            Event(
                now,
                AUTH_FAILED,
                source_ip=ip,
                users=users,
                weight=0 if live else count,
                reason=str(detail.get("reason", ""))[:40],
            )
        ]
    if event_id != INSTANCES_ACCESSED:
        return []
    if outcome != 0:
        objects = _strings(detail.get("objects"))
        if live and not objects and slide is None:
            return []
        return [
            Event(
                now,
                REFUSED,
                objects=objects,
                weight=count,
                reason=str(detail.get("reason", ""))[:40],
                **common,
            )
        ]
    if detail.get("kind") == "associated" and detail.get("identifying"):
        return [Event(now, LABEL, **common)]
    if "tiles" in detail:  # a (session, slide) view summary
        if live:
            return []
        tiles = detail.get("tiles")
        return [
            Event(
                now,
                TILE,
                weight=tiles if isinstance(tiles, int) else 1,
                session=str(detail.get("session")),
                **common,
            )
        ]
    return [Event(now, ACCESS, **common)]
