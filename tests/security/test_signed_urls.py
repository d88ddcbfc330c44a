"""URL-01: the signed-URL check, case by case (the HTTP side is in tests/server)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from tileserver.errors import KeyUnavailable
from tileserver.security.keys import KeyRing
from tileserver.security.signed_urls import MAX_LIFETIME, SignatureRejected, UrlKeys, check

NOW = 1_800_000_000.0
SLIDE = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def keys(tmp_path: Path) -> UrlKeys:
    return UrlKeys(KeyRing(tmp_path / "home"))


def pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def test_a_fresh_signature_is_accepted(keys: UrlKeys) -> None:
    query = keys.sign(SLIDE, "tiles", int(NOW) + 600)
    check(pairs(query), SLIDE, "tiles", NOW, keys.key_of)
    assert keys.kids() == ["1"]


def _tamper(query: str, how: str) -> str:
    fields = dict(pairs(query))
    if how == "duplicated exp":
        return f"{query}&exp={fields['exp']}"
    if how == "re-cased name":
        return query.replace("exp=", "Exp=")
    if how == "truncated sig":
        return query[:-1]
    if how == "missing kid":
        return "&".join(p for p in query.split("&") if not p.startswith("kid="))
    if how == "exp not a number":
        return query.replace(f"exp={fields['exp']}", "exp=1e9")
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["duplicated exp", "re-cased name", "truncated sig", "missing kid", "exp not a number"]
)
def test_altered_queries_are_rejected(keys: UrlKeys, how: str) -> None:
    query = _tamper(keys.sign(SLIDE, "tiles", int(NOW) + 600), how)
    with pytest.raises(SignatureRejected):
        check(pairs(query), SLIDE, "tiles", NOW, keys.key_of)


def test_another_slide_or_scope_is_rejected(keys: UrlKeys) -> None:
    query = keys.sign(SLIDE, "tiles", int(NOW) + 600)
    with pytest.raises(SignatureRejected, match="does not match"):
        check(pairs(query), OTHER, "tiles", NOW, keys.key_of)
    with pytest.raises(SignatureRejected, match="does not match"):
        check(pairs(query), SLIDE, "regions", NOW, keys.key_of)


def test_expired_and_too_long_lived_are_rejected(keys: UrlKeys) -> None:
    past = keys.sign(SLIDE, "tiles", int(NOW) - 1)
    with pytest.raises(SignatureRejected, match="expired"):
        check(pairs(past), SLIDE, "tiles", NOW, keys.key_of)
    far = keys.sign(SLIDE, "tiles", int(NOW) + MAX_LIFETIME + 1)
    with pytest.raises(SignatureRejected, match="more than 15 minutes"):
        check(pairs(far), SLIDE, "tiles", NOW, keys.key_of)


def test_rotation_keeps_old_urls_until_their_key_is_retired(keys: UrlKeys) -> None:
    old = keys.sign(SLIDE, "tiles", int(NOW) + 600)
    assert keys.rotate() == "2"
    new = keys.sign(SLIDE, "tiles", int(NOW) + 600)
    assert "kid=2" in new
    check(pairs(old), SLIDE, "tiles", NOW, keys.key_of)
    keys.retire("1")
    with pytest.raises(SignatureRejected, match="retired"):
        check(pairs(old), SLIDE, "tiles", NOW, keys.key_of)
    check(pairs(new), SLIDE, "tiles", NOW, keys.key_of)
    with pytest.raises(KeyUnavailable):
        keys.retire("1")


def test_only_read_only_scopes_can_be_signed(keys: UrlKeys) -> None:
    for scope in ("metadata", "labels", "thumbnails"):
        with pytest.raises(SignatureRejected):
            keys.sign(SLIDE, scope, int(NOW) + 60)
