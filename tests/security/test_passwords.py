"""AUTH-01/02/05: password policy, Argon2id storage, dummy verification."""

from __future__ import annotations

import secrets
import string

import pytest

from tileserver.security import passwords
from tileserver.security.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordHashInvalid,
    PasswordRejected,
    check_password,
    dummy_verify,
    hash_password,
    verify_password,
)

ALPHABET = string.ascii_letters + string.digits + string.punctuation + " "


def fake_password(length: int) -> str:
    """A throwaway random test password (never a real credential)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def test_long_random_password_accepted_and_normalised() -> None:
    candidate = fake_password(64)
    assert check_password(candidate, username="alice") == candidate


def test_twelve_accepted_eleven_rejected() -> None:
    assert check_password("correct horse", username="alice") == "correct horse"
    with pytest.raises(PasswordRejected, match="at least 12"):
        check_password(fake_password(MIN_LENGTH - 1), username="alice")


def test_too_long_rejected() -> None:
    with pytest.raises(PasswordRejected, match="at most"):
        check_password("x" * (MAX_LENGTH + 1), username="alice")


def test_length_counts_code_points_after_nfkc() -> None:
    # Twelve non-ASCII code points are twelve characters, whatever their UTF-8 length.
    assert check_password("ĝĥĵŝŭĉ" * 2, username="alice") == "ĝĥĵŝŭĉ" * 2


@pytest.mark.parametrize(
    "candidate",
    [
        "pathologypathology",
        "Tileserver2026!!",
        "TILESERVER2026",
        "hospital-hospital",
        "!!Pathologist123",
        "P@th0l0gy2026",
        "password1234567",
        "  pathology  pathology ",
    ],
)
def test_context_words_rejected(candidate: str) -> None:
    with pytest.raises(PasswordRejected, match="easy to guess"):
        check_password(candidate, username="alice")


def test_username_rejected_as_password() -> None:
    with pytest.raises(PasswordRejected):
        check_password("dr.longusername", username="dr.longusername")
    with pytest.raises(PasswordRejected):
        check_password("Dr.LongUserName99", username="dr.longusername")
    with pytest.raises(PasswordRejected):
        check_password("bobbobbobbob!", username="bob")


def test_context_check_cannot_backtrack_exponentially() -> None:
    # A one-letter user name against a long run of its look-alike: must finish at once.
    with pytest.raises(PasswordRejected):
        check_password("4" * 255 + "a", username="a")
    assert check_password("4" * 255 + "b", username="a")


def test_context_word_inside_a_passphrase_is_fine() -> None:
    phrase = "my pathology slides are purple"
    assert check_password(phrase, username="alice") == phrase


@pytest.mark.parametrize(
    "entry", ["123456789012", "qwertyuiopasdf", "passwordpassword", "iloveyou1234", "QwErTy123456"]
)
def test_common_passwords_rejected(entry: str) -> None:
    with pytest.raises(PasswordRejected):
        check_password(entry, username="alice")


def test_common_password_list_is_loaded_and_long_enough() -> None:
    common = passwords._common_passwords()
    assert len(common) >= 300
    assert all(len(entry) >= MIN_LENGTH for entry in common)
    assert all(entry == entry.casefold() for entry in common)


def test_hash_is_argon2id_with_owasp_parameters() -> None:
    candidate = fake_password(20)
    stored = hash_password(candidate)
    assert stored.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in stored
    assert candidate not in stored
    assert verify_password(stored, candidate)
    assert not verify_password(stored, candidate + "x")


def test_salted_per_hash() -> None:
    candidate = fake_password(20)
    assert hash_password(candidate) != hash_password(candidate)


def test_no_truncation_at_char_75() -> None:
    first = fake_password(80)
    replacement = "a" if first[74] != "a" else "b"
    second = first[:74] + replacement + first[75:]
    assert len(second) == 80 and second != first
    stored = hash_password(first)
    assert verify_password(stored, first)
    assert not verify_password(stored, second)


def test_nfkc_equivalent_forms_verify() -> None:
    ligature = "of\ufb01ce keyboard layouts"  # U+FB01 LATIN SMALL LIGATURE FI
    plain = "office keyboard layouts"
    assert check_password(ligature, username="alice") == plain
    assert verify_password(hash_password(ligature), plain)
    assert verify_password(hash_password(plain), ligature)


def test_wrong_password_never_raises() -> None:
    stored = hash_password(fake_password(16))
    assert verify_password(stored, "") is False
    assert verify_password(stored, fake_password(5000)) is False


def test_invalid_hash_is_loud() -> None:
    for damaged in ("not-a-hash", "$2b$12$notargon"):
        with pytest.raises(PasswordHashInvalid):
            verify_password(damaged, "whatever it is")


def test_dummy_verify_runs() -> None:
    assert dummy_verify(fake_password(16)) is None
    assert dummy_verify("") is None
