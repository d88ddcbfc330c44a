"""Time-based one-time passwords (RFC 6238 over HOTP, RFC 4226) for the second login factor.

The verifier keeps, per user, the last accepted time step and passes it back in; ``verify``
refuses that step and every earlier one, so a code is accepted at most once and an older code
is useless after a newer one (RFC 6238 §5.2; AUTH-03). Time comes from the server clock only;
the caller passes ``now`` so tests need no sleeping and no client can supply its own time.

The only module that imports ``segno`` (QR codes for enrolment).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import struct
from urllib.parse import quote, urlencode

import segno

SECRET_BYTES = 20  # as long as the HMAC-SHA1 output: 160 bits (RFC 4226 §4, 800-63B)
DIGITS = 6
PERIOD = 30
SKEW = 1  # one step each way for clock drift and network delay, no more (800-63B-4)
ALGORITHM = "SHA1"  # what authenticator apps universally support


def new_secret() -> bytes:
    """A fresh 160-bit secret from the OS CSPRNG. Store it sealed, never in a log."""
    return secrets.token_bytes(SECRET_BYTES)


def b32(secret: bytes) -> str:
    """Base32 without padding, the form authenticator apps accept for manual entry."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def step_of(t: float, period: int = PERIOD) -> int:
    """The RFC 6238 time step containing Unix time ``t``."""
    return int(t // period)


def code_at(secret: bytes, step: int, digits: int = DIGITS) -> str:
    """The HOTP value (RFC 4226, HMAC-SHA1, dynamic truncation) for counter ``step``."""
    if not 6 <= digits <= 10:
        raise ValueError("digits must be between 6 and 10")
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def verify(
    secret: bytes,
    code: str,
    *,
    now: float,
    last_step: int | None,
    skew: int = SKEW,
    digits: int = DIGITS,
    period: int = PERIOD,
) -> int | None:
    """The time step ``code`` belongs to, or None when it is wrong, stale, or replayed.

    Accepts only steps within ``skew`` of the step of ``now`` and strictly after ``last_step``.
    Store the returned step as the user's new ``last_step`` in the same transaction that opens
    the session, or the code can be replayed.
    """
    if not isinstance(code, str) or len(code) != digits:
        return None
    if not (code.isascii() and code.isdigit()):
        return None
    current = step_of(now, period)
    accepted: int | None = None
    # Compare against every candidate step, without stopping early, so the time taken does
    # not say which step (if any) matched.
    for step in range(current - skew, current + skew + 1):
        if step < 0:
            continue
        matches = hmac.compare_digest(code_at(secret, step, digits), code)
        if matches and (last_step is None or step > last_step):
            accepted = step if accepted is None else max(accepted, step)
    return accepted


def provisioning_uri(secret: bytes, account: str, issuer: str = "tileserver") -> str:
    """The ``otpauth://totp/...`` URI authenticator apps enrol from (Key Uri Format).

    The URI contains the secret: show it once during enrolment, never log or cache it.
    """
    if ":" in issuer or ":" in account:
        # The label is "issuer:account"; a colon in either part would make it ambiguous.
        raise ValueError("issuer and account must not contain ':'")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": b32(secret),
            "issuer": issuer,
            "algorithm": ALGORITHM,
            "digits": str(DIGITS),
            "period": str(PERIOD),
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def qr_svg(uri: str) -> str:
    """The URI as a QR code in SVG (serve with ``Cache-Control: no-store``: it holds a secret)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(buffer, kind="svg", scale=4, border=4)
    return buffer.getvalue().decode("utf-8")


def qr_png(uri: str) -> bytes:
    """The URI as a QR code in PNG (same caution as ``qr_svg``)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(buffer, kind="png", scale=4, border=4)
    return buffer.getvalue()
