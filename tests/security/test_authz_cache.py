"""Cached authorization under the auth database's change counter: every change that takes
access away is seen on the very next request with a warm cache, whoever made it (this
``Accounts``, another ``Accounts`` on the same file as another process would have); what the
clock decides is checked per request; the cache stays bounded and never holds a credential.

``request`` below does what the auth middleware does per request (server/auth.py): read the
counter, answer from the cache, go to the database only on a miss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tileserver.security.accounts import Accounts, Principal
from tileserver.security.audit import AuditLog
from tileserver.security.authz_cache import AuthzCache, Caller, Lookup, credential_key
from tileserver.security.crypto import new_key
from tileserver.security.login import ABSOLUTE_TIMEOUT, IDLE_TIMEOUT, Authenticator

SLIDE = "a" * 32
OTHER_SLIDE = "b" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    auth: Authenticator  # the server's
    other: Accounts  # another process's view of the same database (the CLI, another server)
    clock: Clock
    misses: list[str]


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = Clock()
    key = new_key()
    accounts = Accounts(tmp_path / "auth.db", key, now=clock)
    auth = Authenticator(accounts, AuditLog(tmp_path / "audit.jsonl", new_key()), now=clock)
    other = Accounts(tmp_path / "auth.db", key, now=clock)
    other.assign(SLIDE, "case-1")
    other.assign(OTHER_SLIDE, "case-2")
    other.add_pending("alice", "pathologist")
    other.grant("alice", "case-1", labels=False)
    return World(auth, other, clock, [])


def request(
    world: World,
    *,
    bearer: str | None = None,
    session: str | None = None,
    slide: str = SLIDE,
    scope: str = "tiles",
) -> Principal | None:
    """One request's authentication and authorization, as the middleware does them; a
    refusal is None (the server answers 401 or 404)."""
    auth = world.auth
    generation = auth.authz.generation()
    found = auth.cached_principal(session, bearer, None, generation)
    if found is Lookup.MISS:
        world.misses.append("principal")
        found = auth.principal(session, bearer, None, generation)
    if found is None:
        return None
    if not auth.authz.knows(found, slide, generation):
        world.misses.append("slide")
        auth.authz.learn(found, slide, generation)
    return found if auth.authz.allows(found, slide, scope, generation) else None


def warm(world: World, **credentials: str) -> Principal:
    """Two granted requests: the second is answered by the cache alone."""
    first = request(world, **credentials)
    world.misses.clear()
    second = request(world, **credentials)
    assert first is not None and second == first
    assert world.misses == [], "the second request should not have needed the database"
    return second


def token(world: World, name: str = "lis", expires: float | None = None) -> str:
    scopes = frozenset({"tiles", "metadata"})
    return world.other.create_token(name, scopes, frozenset({"case-1"}), expires)


def session(world: World) -> str:
    return world.auth.accounts.create_session("alice")


# -- changes made elsewhere take effect on the next request -------------------------------------
def test_a_revoked_token_is_refused_on_the_next_request(world: World) -> None:
    bearer = token(world)
    warm(world, bearer=bearer)
    world.other.revoke_token("lis")
    assert request(world, bearer=bearer) is None


def test_a_slide_moved_out_of_the_tokens_collection_is_refused(world: World) -> None:
    bearer = token(world)
    warm(world, bearer=bearer)
    world.other.assign(SLIDE, "case-2")
    assert request(world, bearer=bearer) is None


def test_a_disabled_user_is_refused_on_the_next_request(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    world.other.set_disabled("alice", True)
    assert request(world, session=cookie) is None


def test_a_removed_grant_is_refused_on_the_next_request(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    world.other.revoke_grant("alice", "case-1")
    assert request(world, session=cookie) is None


def test_an_ended_session_is_refused_on_the_next_request(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    world.other.end_session(cookie)
    assert request(world, session=cookie) is None


def test_a_logout_through_the_server_is_refused_on_the_next_request(world: World) -> None:
    cookie = session(world)
    principal = warm(world, session=cookie)
    world.auth.logout(cookie, principal, "127.0.0.1")
    assert request(world, session=cookie) is None


def test_a_reset_user_is_refused_on_the_next_request(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    world.other.reset("alice")
    assert request(world, session=cookie) is None


def test_access_given_elsewhere_is_seen_on_the_next_request(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    assert request(world, session=cookie, slide=OTHER_SLIDE) is None
    assert request(world, session=cookie, scope="labels") is None
    world.other.grant("alice", "case-2", labels=True)
    assert request(world, session=cookie, slide=OTHER_SLIDE, scope="labels") is not None


def test_the_listing_follows_a_removed_grant(world: World) -> None:
    cookie = session(world)
    principal = warm(world, session=cookie)
    cache = world.auth.authz
    assert cache.visible_slides(principal, cache.generation()) == {SLIDE}
    world.other.revoke_grant("alice", "case-1")
    assert cache.visible_slides(principal, cache.generation()) == set()


# -- what the clock decides is decided per request ----------------------------------------------
def test_an_expired_token_is_refused_with_a_warm_cache(world: World) -> None:
    bearer = token(world, expires=world.clock.t + 60)
    warm(world, bearer=bearer)
    world.clock.t += 61
    assert request(world, bearer=bearer) is None
    assert world.misses == [], "expiry is the clock's answer, not the database's"


def test_an_idle_session_is_refused_with_a_warm_cache(world: World) -> None:
    cookie = session(world)
    warm(world, session=cookie)
    world.clock.t += IDLE_TIMEOUT + 1
    assert request(world, session=cookie) is None


def test_a_session_past_its_absolute_timeout_is_refused(world: World) -> None:
    cookie = session(world)
    for _ in range(int(ABSOLUTE_TIMEOUT // (IDLE_TIMEOUT / 2)) + 1):
        warm(world, session=cookie)  # active all along: refreshed well within the idle time
        world.clock.t += IDLE_TIMEOUT / 2
    assert request(world, session=cookie) is None


def test_a_session_kept_alive_by_another_server_is_not_idle_here(world: World) -> None:
    """Last-seen times written by another process count: a stale cached one sends the
    request to the database, which has the fresh one."""
    cookie = session(world)
    warm(world, session=cookie)
    for _ in range(4):  # 20 minutes of activity elsewhere, idle limit 15 minutes
        world.clock.t += 5 * 60
        assert world.other.session_user(cookie, IDLE_TIMEOUT, ABSOLUTE_TIMEOUT) is not None
    assert request(world, session=cookie) is not None


# -- the counter -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.revoke_token("lis"),
        lambda a: a.set_disabled("alice", True),
        lambda a: a.set_disabled("alice", False),
        lambda a: a.reset("alice"),
        lambda a: a.grant("alice", "case-2", True),
        lambda a: a.revoke_grant("alice", "case-1"),
        lambda a: a.assign(SLIDE, "case-2"),
        lambda a: a.add_pending("bob", "viewer"),
        lambda a: a.create_token("other", frozenset({"tiles"}), None, None),
    ],
    ids=[
        "revoke-token",
        "disable",
        "enable",
        "reset",
        "grant",
        "revoke-grant",
        "assign",
        "add-user",
        "create-token",
    ],
)
def test_every_access_change_bumps_the_counter(
    world: World, change: Callable[[Accounts], None]
) -> None:
    token(world)
    before = world.other.generation()
    change(world.other)
    assert world.other.generation() == before + 1


def test_refreshes_logins_and_guesses_leave_the_counter_alone(world: World) -> None:
    """last_seen refreshes, new sessions and counted login attempts change no cached answer;
    if they bumped the counter, every viewer's refresh would empty every server's cache."""
    accounts = world.auth.accounts
    before = accounts.generation()
    cookie = accounts.create_session("alice")
    world.clock.t += 31
    assert accounts.session_user(cookie, IDLE_TIMEOUT, ABSOLUTE_TIMEOUT) is not None
    accounts.begin_attempt("mallory", False, world.clock.t, lambda _: 0.0)
    accounts.clear_attempts("mallory")
    assert accounts.generation() == before


def test_a_failed_write_does_not_bump_the_counter(world: World) -> None:
    before = world.other.generation()
    with pytest.raises(ValueError, match="no token"):
        world.other.revoke_token("nobody")
    assert world.other.generation() == before


def test_a_lookup_started_before_a_change_is_not_used_after_it(world: World) -> None:
    """An answer is filed under the counter its request read; a later request with a newer
    counter must not take it, even if it was filed after the change."""
    bearer = token(world)
    cache = world.auth.authz
    old = cache.generation()
    world.other.revoke_token("lis")
    new = cache.generation()
    assert new != old
    principal = Principal("token", "lis", "service", frozenset({"tiles"}), frozenset({"case-1"}))
    cache.remember_caller(credential_key("token", bearer), Caller(principal), old)
    assert request(world, bearer=bearer) is None


# -- bounds and secrets ------------------------------------------------------------------------
def test_the_cache_is_bounded(world: World) -> None:
    cache = AuthzCache(world.auth.accounts, max_principals=3, max_slides=4)
    world.auth.authz = cache
    for n in range(10):
        world.other.assign(f"{n:032x}", "case-1")
    generation = cache.generation()
    cookie = session(world)
    for n in range(10):
        bearer = token(world, f"lis-{n}")
        generation = cache.generation()
        assert world.auth.principal(None, bearer, None, generation) is not None
    principal = world.auth.principal(cookie, None, None, generation)
    assert principal is not None
    for n in range(10):
        cache.learn(principal, f"{n:032x}", generation)
    callers, collections, grants, _ = cache.sizes()
    assert callers <= 3 and collections <= 4 and grants <= 4
    assert cache.allows(principal, f"{9:032x}", "tiles", generation)  # still right when evicted
    assert cache.allows(principal, f"{0:032x}", "tiles", generation)


def test_the_cache_never_holds_a_credential(world: World) -> None:
    bearer = token(world)
    cookie = session(world)
    warm(world, bearer=bearer)
    warm(world, session=cookie)
    held = repr(vars(world.auth.authz)) + repr(vars(world.auth.authz._callers))
    assert bearer not in held and cookie not in held
    assert "lis" in held  # it does hold the callers, under hashes of their credentials
