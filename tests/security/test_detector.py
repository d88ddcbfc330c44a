"""Detection rules replayed on attack and normal traces with the events' own clock (DET-01).

Attacks: the load client's random trace as a crawl by one token, an enumeration script, credential
stuffing, a token from a new address or certificate, label harvesting, integrity failures,
access outside usual hours. Normal: 30 minutes of 8 pathologists panning slides with the load
client's pan trace (plus a LIS token fetching thumbnails), which must raise nothing.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Iterable, Iterator
from fractions import Fraction

import pytest

from tileserver.bench.traces import (
    Group,
    deepzoom_pyramid,
    first_requests,
    pan_trace,
    random_trace,
)
from tileserver.security import detector
from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
    iso_utc,
)
from tileserver.security.detector import (
    ACCESS,
    AUTH_FAILED,
    LABEL,
    REFUSED,
    TILE,
    Alert,
    Detector,
    Event,
    Thresholds,
    events_from_record,
)

# A 80k x 60k slide (about a 20x20 mm section at 0.25 um/px) in 256-pixel DeepZoom tiles.
PYRAMID = deepzoom_pyramid(80_000, 60_000, 256)
MONDAY_9AM = 1_780_304_400.0  # 2026-06-01 09:00:00 UTC
SLIDES = [f"{n:032x}" for n in range(1, 200)]


def tile_events(
    groups: tuple[Group, ...],
    principal: str,
    ip: str,
    slide: str,
    start: float,
    rng: random.Random,
    gap: tuple[float, float],
    session: str | None = None,
) -> Iterator[Event]:
    """One event per tile, a group (a screenful) every ``gap`` seconds; a browser's requests
    for one screenful arrive within 0.3 s, in any order."""
    t = start
    for group in groups:
        tiles = list(group.tiles)
        rng.shuffle(tiles)
        for i, tile in enumerate(tiles):
            yield Event(
                t + 0.3 * i / len(tiles),
                TILE,
                principal,
                ip,
                slide,
                tile.level,
                tile.col,
                tile.row,
                session=session,
            )
        t += rng.uniform(*gap)


CENTRES = [(x, y) for x in range(8_000, 80_000, 16_000) for y in range(6_000, 60_000, 12_000)]


@functools.cache
def region_of_interest(centre: int) -> tuple[Group, ...]:
    """The load client's pan trace around one of ``CENTRES``, each tile asked for once."""
    return first_requests(pan_trace(PYRAMID, centres=[CENTRES[centre]]).groups)


def regions_of_interest(centres: tuple[int, ...]) -> tuple[Group, ...]:
    return tuple(g for c in centres for g in region_of_interest(c))


def pathologist(number: int, minutes: float, start: float = MONDAY_9AM) -> Iterator[Event]:
    """One pathologist's working half hour: open a slide of the case (thumbnail and label),
    pan around one to three regions of interest at a screenful every 0.8-2.5 s, think,
    next slide. One stale link (404) and one mistyped login at the start."""
    rng = random.Random(number)
    user, ip, session = f"user:path{number}", f"10.1.0.{number}", f"s{number}"
    yield Event(start, AUTH_FAILED, source_ip=ip, users=(f"path{number}",))
    yield Event(start + 5, REFUSED, user, ip, SLIDES[150 + number], session=session)
    t = start + 10
    case = SLIDES[number * 12 : number * 12 + 12]
    while t < start + minutes * 60:
        slide = rng.choice(case)
        yield Event(t, ACCESS, user, ip, slide, session=session)
        yield Event(t + 0.5, LABEL, user, ip, slide, session=session)
        groups = regions_of_interest(tuple(rng.sample(range(len(CENTRES)), rng.randint(1, 3))))
        events = list(tile_events(groups, user, ip, slide, t + 1, rng, (0.8, 2.5), session=session))
        yield from events
        t = events[-1].time + rng.uniform(10, 40)


def lis(minutes: float, start: float = MONDAY_9AM) -> Iterator[Event]:
    """A lab system fetching a thumbnail every 5 s from its one address."""
    for i in range(int(minutes * 12)):
        yield Event(start + 5 * i, ACCESS, "token:lis", "10.2.0.1", SLIDES[i % len(SLIDES)])


def normal_traffic(minutes: float) -> list[Event]:
    streams = [sorted(pathologist(n, minutes), key=lambda e: e.time) for n in range(8)]
    return list(heapq.merge(*streams, lis(minutes), key=lambda e: e.time))


def replay(detector: Detector, events: Iterable[Event]) -> list[Alert]:
    """Every alert a stream of events raises, in order."""
    return [alert for event in events for alert in detector.observe(event)]


def first(alerts: list[Alert], rule: str) -> Alert:
    found = [a for a in alerts if a.rule == rule]
    assert found, f"no {rule} alert in {alerts}"
    return found[0]


# -- normal traffic ---------------------------------------------------------------------------
@functools.cache
def _half_hour() -> list[Event]:
    return normal_traffic(30)


@pytest.fixture
def half_hour() -> list[Event]:
    return _half_hour()


def normal(minutes: float) -> list[Event]:
    """The first ``minutes`` of the normal half hour."""
    return [e for e in _half_hour() if e.time < MONDAY_9AM + minutes * 60]


def test_thirty_minutes_of_eight_pathologists_raise_nothing(half_hour: list[Event]) -> None:
    assert half_hour[-1].time - half_hour[0].time > 29 * 60
    assert sum(e.kind == TILE for e in half_hour) > 50_000
    assert replay(Detector(), half_hour) == []


def test_thresholds_leave_a_margin_over_the_pan_traces(half_hour: list[Event]) -> None:
    """The busiest minute of any simulated pathologist stays well under each threshold
    (docs/detection.md quotes these figures)."""
    t = Thresholds()
    busiest_tiles = busiest_scattered = 0
    for n in range(8):
        mine = [e for e in half_hour if e.principal == f"user:path{n}" and e.kind == TILE]
        probe = Detector(Thresholds(crawl_tiles=10**9, crawl_scattered=10**9))
        recent = probe._recent  # the rule's own neighbourhood test
        per_second_tiles: dict[int, int] = {}
        per_second_scattered: dict[int, int] = {}
        for e in mine:
            assert e.level is not None and e.col is not None and e.row is not None
            second = int(e.time)
            per_second_tiles[second] = per_second_tiles.get(second, 0) + 1
            if recent.isolated("k", e.time, e.slide or "", e.level, e.col, e.row):
                per_second_scattered[second] = per_second_scattered.get(second, 0) + 1
        for counts, best in ((per_second_tiles, "tiles"), (per_second_scattered, "scattered")):
            seconds = sorted(counts)
            window = max(
                sum(counts.get(s, 0) for s in range(start, start + 60)) for start in seconds
            )
            if best == "tiles":
                busiest_tiles = max(busiest_tiles, window)
            else:
                busiest_scattered = max(busiest_scattered, window)
    print(f"busiest minute: {busiest_tiles} tiles, {busiest_scattered} scattered")
    assert 500 < busiest_tiles < t.crawl_tiles / 2
    assert busiest_scattered < t.crawl_scattered / 2


# -- attacks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("per_second", [4, 50, 500])
def test_crawl_by_one_token_with_the_random_trace_is_alerted_within_a_minute(
    per_second: int,
) -> None:
    """The load client's random trace (distinct tiles of the two finest levels), by one token,
    from slow and polite to as fast as the load client goes; normal traffic around it."""
    start = MONDAY_9AM + 600
    trace = random_trace(PYRAMID, count=2000, seed=7)
    crawl = [
        Event(
            start + i / per_second,
            TILE,
            "token:crawler",
            "10.9.0.1",
            SLIDES[0],
            t.level,
            t.col,
            t.row,
        )
        for i, group in enumerate(trace.groups)
        for t in group.tiles
    ]
    events = list(heapq.merge(normal(12), crawl, key=lambda e: e.time))
    alerts = replay(Detector(), events)
    assert {a.rule for a in alerts} == {"bulk_crawl"}
    alert = first(alerts, "bulk_crawl")
    assert alert.principal == "token:crawler"
    assert alert.response == "suspend"
    assert alert.time - start <= 60


def test_crawl_across_many_slides_is_alerted() -> None:
    """A crawler that takes a few screenfuls of each slide (like a viewer) but many slides."""
    rng = random.Random(3)
    start = MONDAY_9AM
    groups = first_requests(pan_trace(PYRAMID, pan_steps=2).groups)[:4]
    events: list[Event] = []
    for n, slide in enumerate(SLIDES[:60]):
        events += tile_events(
            groups, "user:mallory", "10.3.0.1", slide, start + n * 10, rng, (0.5, 0.5), session="m"
        )
    alerts = replay(Detector(), sorted(events, key=lambda e: e.time))
    alert = first(alerts, "bulk_crawl")
    assert "slides" in alert.summary
    assert alert.time - start <= 60 * 10  # 40 slides at one every 10 s: the 41st at 400 s


def test_an_alert_per_rule_and_principal_per_cooldown_not_a_flood() -> None:
    start = MONDAY_9AM
    tiles = [
        Event(start + i / 100, TILE, "token:crawler", "10.9.0.1", SLIDES[0], 17, i, 0)
        for i in range(30_000)
    ]  # five minutes at 100 tiles/s
    alerts = replay(Detector(), tiles)
    assert [a.rule for a in alerts] == ["bulk_crawl"]


def replay_batched(detector: Detector, events: Iterable[Event], span: float) -> list[Alert]:
    """As the server feeds them: tiles in batches of up to ``span`` seconds, the rest one by
    one (a batch goes to the detector before the next event that is not a tile)."""
    alerts: list[Alert] = []
    batch: list[Event] = []
    for event in events:
        if batch and (event.kind != TILE or event.time - batch[0].time > span):
            alerts += detector.observe_tiles(batch)
            batch = []
        if event.kind == TILE:
            batch.append(event)
        else:
            alerts += detector.observe(event)
    return alerts + (detector.observe_tiles(batch) if batch else [])


def test_tiles_in_batches_raise_what_single_tiles_raise() -> None:
    """A crawl by random access, fast and slow, one across many slides, a token from a new
    address, amid normal traffic: batches of 0.2 s raise the same alerts, at most 0.2 s
    later; the normal half hour alone raises nothing either way."""
    start = MONDAY_9AM + 600
    trace = random_trace(PYRAMID, count=2000, seed=7)
    events: list[Event] = []
    for principal, per_second, slide in (("token:fast", 500, 0), ("token:slow", 4, 1)):
        events += [
            Event(start + i / per_second, TILE, principal, "10.9.0.1", SLIDES[slide])._replace(
                level=t.level, col=t.col, row=t.row
            )
            for i, t in enumerate(t for group in trace.groups for t in group.tiles)
        ]
    events += [
        Event(start + n * 0.5, TILE, "token:wide", "10.9.0.2", slide, 17, n, 0)
        for n, slide in enumerate(SLIDES[:60])
    ]
    events.append(Event(start + 31, TILE, "token:fast", "10.9.0.3", SLIDES[0], 17, 0, 0))
    events = sorted(normal(20) + events, key=lambda e: e.time)
    single = replay(Detector(), events)
    batched = replay_batched(Detector(), events, 0.2)
    assert {a.rule for a in single} == {"bulk_crawl", "new_client"}

    def what(alerts: list[Alert]) -> list[tuple[str, str, str]]:  # counts differ: words only
        return [(a.rule, a.key, "".join(c for c in a.summary if not c.isdigit())) for a in alerts]

    assert what(batched) == what(single)
    assert all(0 <= b.time - a.time <= 0.2 for a, b in zip(single, batched, strict=True))
    assert replay_batched(Detector(), normal(30), 0.2) == []


def test_enumeration_script_is_alerted() -> None:
    """A script trying one random slide ID a second; every answer a 404."""
    start = MONDAY_9AM
    rng = random.Random(5)
    probes = [
        Event(start + i, REFUSED, "token:lis", "10.2.0.1", f"{rng.getrandbits(128):032x}")
        for i in range(120)
    ]
    events = list(heapq.merge(normal(3), probes, key=lambda e: e.time))
    alerts = replay(Detector(), events)
    assert [a.rule for a in alerts] == ["enumeration"]
    assert alerts[0].key == "token:lis"
    assert alerts[0].time - start <= 60
    assert alerts[0].response == "alert"


def test_unauthenticated_enumeration_is_keyed_by_address() -> None:
    probes = [
        Event(MONDAY_9AM + i, REFUSED, None, f"2001:db8:1:2::{i:x}", f"{i:032x}") for i in range(30)
    ]
    alerts = replay(Detector(), probes)
    assert [a.key for a in alerts] == ["addr:2001:db8:1:2::/64"]


def test_credential_stuffing_many_user_names_from_one_address() -> None:
    """Leaked name/password pairs, one every 2 s (under the per-address login limiter), as
    the refused-login records name them."""
    start = MONDAY_9AM
    tries = [
        Event(
            start + 2 * i,
            AUTH_FAILED,
            source_ip="198.51.100.7",
            users=(f"unknown:{i:016x}",),
            reason="invalid_credentials",
        )
        for i in range(100)
    ]
    events = list(heapq.merge(normal(3), tries, key=lambda e: e.time))
    alerts = replay(Detector(), events)
    assert [a.rule for a in alerts] == ["credential_stuffing"]
    assert alerts[0].key == "addr:198.51.100.7"
    assert alerts[0].response == "throttle"
    assert alerts[0].time - start <= 60


def test_credential_stuffing_by_count_alone() -> None:
    """What the server sees live: refused attempts without names (the limiter's 429s too)."""
    start = MONDAY_9AM
    tries = [Event(start + i / 5, AUTH_FAILED, source_ip="198.51.100.8") for i in range(200)]
    alerts = replay(Detector(), tries)
    assert [a.rule for a in alerts] == ["credential_stuffing"]
    assert alerts[0].time - start <= 60


def test_token_from_a_new_address_or_certificate() -> None:
    start = MONDAY_9AM
    usual = [
        Event(start + i, ACCESS, "token:lis", "10.2.0.1", SLIDES[1], certificate="01AB")
        for i in range(50)
    ]
    stolen = Event(start + 100, ACCESS, "token:lis", "203.0.113.9", SLIDES[1])
    cloned = Event(start + 200, ACCESS, "token:lis", "10.2.0.1", SLIDES[1], certificate="FF00")
    alerts = replay(Detector(), [*usual, stolen, cloned])
    assert [a.rule for a in alerts] == ["new_client", "new_client"]
    assert "203.0.113.9" in alerts[0].summary and alerts[0].time == start + 100
    assert "certificate" in alerts[1].summary


def test_a_session_from_a_new_address_but_not_a_new_session() -> None:
    """People change workstations (a new session: fine); a session cookie that moves to
    another address was taken."""
    e = [
        Event(MONDAY_9AM, ACCESS, "user:alice", "10.1.0.1", SLIDES[1], session="s1"),
        Event(MONDAY_9AM + 60, ACCESS, "user:alice", "10.1.0.2", SLIDES[1], session="s2"),
        Event(MONDAY_9AM + 90, ACCESS, "user:alice", "192.0.2.1", SLIDES[1], session="s2"),
    ]
    alerts = replay(Detector(), e)
    assert [a.rule for a in alerts] == ["new_client"]
    assert alerts[0].time == MONDAY_9AM + 90


def test_label_views_in_bulk() -> None:
    start = MONDAY_9AM
    views = [Event(start + 2 * i, LABEL, "user:path9", "10.1.0.9", SLIDES[i]) for i in range(40)]
    events = list(heapq.merge(normal(3), views, key=lambda e: e.time))
    alerts = replay(Detector(), events)
    assert [a.rule for a in alerts] == ["label_bulk"]
    assert alerts[0].time - start <= 60


def test_integrity_failures_and_server_security_alerts() -> None:
    record = {
        "seq": 5,
        "ts": iso_utc(MONDAY_9AM),
        "event_id": SECURITY_ALERT,
        "event_type": None,
        "action": "E",
        "outcome": 8,
        "user": "alice",
        "role": "pathologist",
        "source_ip": "10.1.0.1",
        "object": SLIDES[3],
        "detail": {"reason": "stored object failed its integrity check"},
    }
    events = events_from_record(record, live=True)
    alerts = replay(Detector(), events)
    assert [a.rule for a in alerts] == ["integrity"]
    assert alerts[0].slide == SLIDES[3] and alerts[0].time == MONDAY_9AM
    own = dict(record, detail={"rule": "integrity", "alert_id": "x", "summary": "s"})
    assert events_from_record(own, live=True) == []  # our own alerts are not fed back


def test_configured_usual_hours() -> None:
    t = Thresholds(usual_hours={"case-a": (7, 19)})
    d = Detector(t, collection_of=lambda slide: "case-a")
    day = Event(MONDAY_9AM + 3600, ACCESS, "user:alice", "10.1.0.1", SLIDES[1])
    night = Event(MONDAY_9AM + 17 * 3600, ACCESS, "user:alice", "10.1.0.1", SLIDES[1])  # 02:00
    assert d.observe(day) == []
    alerts = d.observe(night)
    assert [a.rule for a in alerts] == ["off_hours"]
    assert "case-a" in alerts[0].summary and "02:00" in alerts[0].summary


def test_learned_usual_hours() -> None:
    d = Detector(collection_of=lambda slide: "case-b")
    for day in range(8):
        for hour in range(8, 18):
            t = MONDAY_9AM - 3600 + day * 86400 + hour * 3600 - 8 * 3600
            assert d.observe(Event(t, ACCESS, "user:bob", "10.1.0.2", SLIDES[2])) == []
    late = MONDAY_9AM + 8 * 86400 + 18 * 3600  # 03:00
    alerts = d.observe(Event(late, ACCESS, "user:bob", "10.1.0.2", SLIDES[2]))
    assert [a.rule for a in alerts] == ["off_hours"]


def test_memory_is_bounded_under_a_flood_of_keys() -> None:
    d = Detector()
    for i in range(3 * detector.MAX_KEYS):
        d.observe(
            Event(
                MONDAY_9AM + i / 1000,
                REFUSED,
                None,
                f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}",
                SLIDES[0],
            )
        )
        d.observe(Event(MONDAY_9AM + i / 1000, TILE, f"token:t{i}", "10.0.0.1", SLIDES[0], 1, i, 0))
    assert len(d._refused._keys) <= detector.MAX_KEYS
    assert len(d._tiles._keys) <= detector.MAX_KEYS
    assert len(d._recent._keys) <= detector.MAX_KEYS
    assert len(d._clients) <= detector.MAX_KEYS


# -- audit records -> events --------------------------------------------------------------------
def _record(
    event_id: int, outcome: int, detail: dict[str, object], **fields: object
) -> dict[str, object]:
    return {
        "seq": 0,
        "ts": iso_utc(MONDAY_9AM),
        "event_id": event_id,
        "event_type": None,
        "action": "E",
        "outcome": outcome,
        "user": None,
        "role": None,
        "source_ip": "10.0.0.9",
        "object": None,
        "detail": detail,
        **fields,
    }


def test_refusal_records_become_events() -> None:
    summary = _record(
        USER_AUTHENTICATION,
        4,
        {"aggregated": True, "refused": 30, "users": ["a", "b"], "reason": "bad_token"},
    )
    (live,) = events_from_record(summary, live=True)
    (watched,) = events_from_record(summary, live=False)
    assert live.kind == watched.kind == AUTH_FAILED
    assert live.weight == 0 and watched.weight == 30  # live: the server counted them already
    assert watched.users == ("a", "b")
    assert (
        events_from_record(
            _record(USER_AUTHENTICATION, 4, {"reason": "no_credentials"}), live=False
        )
        == []
    )
    # A summary mixing anonymous requests with bad tokens: only the bad tokens are weighed,
    # even when anonymous requests are the commonest reason.
    mixed = {"aggregated": True, "refused": 50, "no_credentials": 40, "bad_token": 10}
    (event,) = events_from_record(
        _record(USER_AUTHENTICATION, 4, {**mixed, "reason": "no_credentials"}), live=False
    )
    assert event.weight == 10
    anonymous = {"aggregated": True, "refused": 7, "no_credentials": 7, "reason": "no_credentials"}
    assert events_from_record(_record(USER_AUTHENTICATION, 4, anonymous), live=False) == []
    refused = _record(
        INSTANCES_ACCESSED,
        4,
        {"aggregated": True, "refused": 5, "objects": [SLIDES[1], SLIDES[2]]},
        user="lis",
        role="service",
    )
    (event,) = events_from_record(refused, live=False)
    assert event.kind == REFUSED and event.principal == "token:lis"
    assert event.objects == (SLIDES[1], SLIDES[2])


def test_view_records_count_tiles_only_when_not_live() -> None:
    view = _record(
        INSTANCES_ACCESSED,
        0,
        {"session": "ab", "levels": [12], "tiles": 5000},
        user="alice",
        role="pathologist",
        object=SLIDES[1],
    )
    assert events_from_record(view, live=True) == []
    (event,) = events_from_record(view, live=False)
    assert event.kind == TILE and event.weight == 5000 and event.principal == "user:alice"
    alerts = replay(Detector(), [event])
    assert [a.rule for a in alerts] == ["bulk_crawl"]
    label = _record(
        INSTANCES_ACCESSED,
        0,
        {"kind": "associated", "name": "label", "identifying": True},
        user="alice",
    )
    assert [e.kind for e in events_from_record(label, live=True)] == [LABEL]


def test_fractions_of_the_pan_trace_are_panned_not_scattered() -> None:
    """Sanity of the neighbourhood rule itself: a pan's tiles are next to earlier ones."""
    groups = first_requests(pan_trace(PYRAMID, centres=[(40_000, 30_000)]).groups)
    recent = detector._RecentTiles(60, 10_000)
    tiles = [t for g in groups for t in g.tiles]
    alone = sum(recent.isolated("k", 0.0, "s", t.level, t.col, t.row) for t in tiles)
    assert alone <= len(groups)  # at most one new start per screenful
    assert Fraction(alone, len(tiles)) < Fraction(1, 20)
