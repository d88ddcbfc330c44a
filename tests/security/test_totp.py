"""AUTH-03: RFC 6238 TOTP with a one-step window and replay protection."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tileserver.security.totp import (
    b32,
    code_at,
    new_secret,
    provisioning_uri,
    qr_png,
    qr_svg,
    step_of,
    verify,
)

RFC_SECRET = b"12345678901234567890"  # the published RFC 6238 Appendix B SHA-1 test key


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc6238_appendix_b_sha1(t: int, expected: str) -> None:
    assert code_at(RFC_SECRET, step_of(t), digits=8) == expected


def test_rfc4226_appendix_d_hotp() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314"]
    assert [code_at(RFC_SECRET, i) for i in range(5)] == expected


def test_new_secret_is_160_bits_and_fresh() -> None:
    first, second = new_secret(), new_secret()
    assert len(first) == 20 and first != second
    assert base64.b32decode(b32(first)) == first
    assert "=" not in b32(first)


def test_current_code_accepted_and_step_returned() -> None:
    secret = new_secret()
    now = 1_700_000_000.0
    step = step_of(now)
    assert verify(secret, code_at(secret, step), now=now, last_step=None) == step


def test_window_is_one_step_each_way() -> None:
    secret = new_secret()
    now = 1_700_000_015.0
    step = step_of(now)
    assert verify(secret, code_at(secret, step - 1), now=now, last_step=None) == step - 1
    assert verify(secret, code_at(secret, step + 1), now=now, last_step=None) == step + 1
    assert verify(secret, code_at(secret, step - 2), now=now, last_step=None) is None
    assert verify(secret, code_at(secret, step + 2), now=now, last_step=None) is None


def test_same_code_twice_rejected() -> None:
    secret = new_secret()
    now = 1_700_000_000.0
    code = code_at(secret, step_of(now))
    accepted = verify(secret, code, now=now, last_step=None)
    assert accepted is not None
    assert verify(secret, code, now=now + 5, last_step=accepted) is None


def test_older_code_after_newer_rejected() -> None:
    secret = new_secret()
    now = 1_700_000_000.0
    step = step_of(now)
    accepted = verify(secret, code_at(secret, step), now=now, last_step=None)
    assert verify(secret, code_at(secret, step - 1), now=now, last_step=accepted) is None
    # The next step's code is still good after the current one was used.
    later = verify(secret, code_at(secret, step + 1), now=now + 30, last_step=accepted)
    assert later == step + 1


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", " 12345", "١٢٣٤٥٦", "12 456"])
def test_malformed_codes_rejected(bad: str) -> None:
    secret = new_secret()
    assert verify(secret, bad, now=1_700_000_000.0, last_step=None) is None


def test_wrong_secret_rejected() -> None:
    now = 1_700_000_000.0
    code = code_at(new_secret(), step_of(now))
    other = new_secret()
    matches = [code_at(other, step_of(now) + d) for d in (-1, 0, 1)]
    if code not in matches:  # a 1-in-333,333 collision is not a bug
        assert verify(other, code, now=now, last_step=None) is None


def test_provisioning_uri_fields() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, "dr smith@example.org", issuer="Tile Server")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert unquote(parts.path) == "/Tile Server:dr smith@example.org"
    assert " " not in uri
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "secret": b32(secret),
        "issuer": "Tile Server",
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }


def test_provisioning_uri_refuses_colons() -> None:
    with pytest.raises(ValueError, match=":"):
        provisioning_uri(new_secret(), "evil:account")


def test_qr_codes() -> None:
    uri = provisioning_uri(new_secret(), "alice")
    svg = qr_svg(uri)
    assert svg.startswith(("<?xml", "<svg"))
    assert "<svg" in svg
    assert qr_png(uri).startswith(b"\x89PNG\r\n\x1a\n")
