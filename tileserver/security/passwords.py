"""Password policy and storage per NIST SP 800-63B-4 (AUTH-01, AUTH-02, AUTH-05).

Policy (``check_password``): 12 to 256 characters after NFKC normalisation, every character
counts (spaces, punctuation, any Unicode), no composition rules, no truncation, and a blocklist:

* the common-password list shipped next to this module (``common_passwords.txt``);
* context words: the product, the field, and the user's own name. A password is refused when,
  ignoring case and common look-alike digits/symbols (``p@th0l0gy``), it is one context word,
  once or repeated, with only digits, punctuation or spaces around or between the copies:
  ``pathologypathology``, ``Tileserver2026!!``, ``hospital-hospital``. A context word *inside*
  a longer passphrase (``my pathology slides are purple``) is fine: that is a passphrase.

Storage: Argon2id with the OWASP Password Storage Cheat Sheet parameters (19 MiB, t=2, p=1) and
a random 16-byte salt per hash. ``dummy_verify`` spends one real verification for unknown user
names so the response time does not reveal which accounts exist.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import unicodedata
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from tileserver.errors import TileserverError

# 800-63B-4 allows 8 characters when the password is one factor of MFA and asks for 15 when it
# is used alone. Every person here logs in with password + TOTP, so 8 would be compliant; we ask
# for 12 because a stolen hash database is attacked offline where TOTP does not help, and 12
# still fits a short passphrase that clinicians can type at a shared workstation.
MIN_LENGTH = 12
# Long enough for any passphrase; the cap only keeps hashing cost bounded.
MAX_LENGTH = 256
CONTEXT_WORDS = ("tileserver", "pathology", "pathologist", "hospital", "password")

# OWASP Password Storage Cheat Sheet, Argon2id: m=19 MiB, t=2, p=1.
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

# Look-alike characters people substitute for letters; each letter matches itself or these.
_LOOKALIKES = {
    "a": "@4",
    "e": "3",
    "i": "1!",
    "l": "1|",
    "o": "0",
    "s": "$5",
    "t": "7+",
    "g": "9",
    "b": "8",
}
# What may surround or separate the repeated word: anything that is not a letter (digits,
# punctuation, spaces, symbols); \W is Unicode-aware, so a non-ASCII letter is not filler.
# Possessive (*+): filler never gives characters back, so matching cannot backtrack
# exponentially even for a one-letter user name against 256 look-alike digits.
_FILLER = r"[\d\W_]*+"


class PasswordRejected(TileserverError, ValueError):
    """A new password breaks the policy; the message says why and is safe to show the user."""


class PasswordHashInvalid(TileserverError, ValueError):
    """A stored hash is not an Argon2 hash (a damaged or foreign credential record)."""


def normalise(password: str) -> str:
    """NFKC, so the same password typed on another keyboard or OS hashes the same (800-63B)."""
    return unicodedata.normalize("NFKC", password)


def check_password(password: str, *, username: str) -> str:
    """The NFKC-normalised password, or PasswordRejected saying what is wrong with it."""
    if not isinstance(password, str):
        raise PasswordRejected("The password must be text.")
    normal = normalise(password)
    if len(normal) < MIN_LENGTH:
        raise PasswordRejected(
            f"Use at least {MIN_LENGTH} characters; a short phrase of several words works well."
        )
    if len(normal) > MAX_LENGTH:
        raise PasswordRejected(f"Use at most {MAX_LENGTH} characters.")
    folded = normal.casefold()
    if folded in _common_passwords():
        raise PasswordRejected(
            "This password appears in lists of commonly used or breached passwords; choose another."
        )
    for word in _context_words(username):
        if _context_pattern(word).fullmatch(folded):
            raise PasswordRejected(
                "This password is built from a word that is easy to guess here (the product, "
                "the field, or your user name); choose another."
            )
    return normal


def hash_password(password: str) -> str:
    """An Argon2id hash (``$argon2id$...``) of the NFKC-normalised password, salted per call."""
    return _HASHER.hash(normalise(password))


def verify_password(hash: str, password: str) -> bool:
    """True when ``password`` matches ``hash``; False for a wrong password, never an exception.

    Raises PasswordHashInvalid when ``hash`` itself is not an Argon2 hash: that is a damaged
    credential record, which must be noticed rather than look like a typo.
    """
    if not isinstance(password, str) or len(password) > 4 * MAX_LENGTH:
        # No stored password can be this long; refuse without spending Argon2 on it.
        return False
    try:
        return _HASHER.verify(hash, normalise(password))
    except InvalidHashError as exc:
        raise PasswordHashInvalid("stored password hash is not a valid Argon2 hash") from exc
    except VerificationError:
        return False


def dummy_verify(password: str) -> None:
    """Spend one real Argon2id verification and discard the result (unknown user names).

    Same parameters as a real hash, so a login for a user who does not exist takes as long as
    one with a wrong password, and timing does not enumerate accounts (AUTH-05).
    """
    candidate = password if isinstance(password, str) else ""
    if len(candidate) > 4 * MAX_LENGTH:
        return
    with contextlib.suppress(VerificationError):
        _HASHER.verify(_dummy_hash(), normalise(candidate))


@functools.cache
def _dummy_hash() -> str:
    # A hash of a random throwaway value: nobody knows a password that matches it.
    return _HASHER.hash(secrets.token_urlsafe(32))


@functools.cache
def _common_passwords() -> frozenset[str]:
    text = resources.files(__package__).joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        normalise(line.strip()).casefold()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def _context_words(username: str) -> list[str]:
    words = list(CONTEXT_WORDS)
    name = normalise(username).casefold().strip()
    if name:
        words.append(name)
    return words


@functools.lru_cache(maxsize=256)
def _context_pattern(word: str) -> re.Pattern[str]:
    # fullmatch(filler (word filler)+): the word one or more times, only non-letters around.
    parts = []
    for char in word:
        alternatives = char + _LOOKALIKES.get(char, "")
        parts.append(f"[{re.escape(alternatives)}]" if len(alternatives) > 1 else re.escape(char))
    return re.compile(f"{_FILLER}(?:{''.join(parts)}{_FILLER})+")
