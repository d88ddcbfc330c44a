"""Slide labels (block, stain, scan date) in the auth database: the same on SQLite and
PostgreSQL, checked before they are stored, and ordering a case's slides."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tileserver.security.accounts import Accounts
from tileserver.security.slide_labels import (
    NONE,
    LabelError,
    LabelStore,
    SlideLabels,
    check_case,
    check_scan_date,
    check_text,
    order_key,
)

KEY = bytes(range(32))  # a test TOTP service key
NOW = 1_800_000_000.0
A, B, C = "a" * 32, "b" * 32, "c" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    target = (
        tmp_path / "auth.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    )
    accounts = Accounts(target, KEY, now=lambda: NOW)
    yield LabelStore(accounts.db)
    accounts.db.close()


def test_labels_are_set_kept_and_cleared_one_by_one(store: LabelStore) -> None:
    assert store.get(A) == NONE
    assert store.set(A, block="A2", stain="H&E", now=NOW) == SlideLabels("A2", "H&E", None)
    assert store.set(A, scan_date="2026-03-01", now=NOW) == SlideLabels("A2", "H&E", "2026-03-01")
    assert store.set(A, stain=None, now=NOW) == SlideLabels("A2", None, "2026-03-01")
    assert store.get(A) == SlideLabels("A2", None, "2026-03-01")
    store.set(B, stain="Ki-67", now=NOW)
    assert store.of([A, B, C]) == {
        A: SlideLabels("A2", None, "2026-03-01"),
        B: SlideLabels(None, "Ki-67", None),
        C: NONE,
    }


def test_writing_labels_changes_no_authorization_answer(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "auth.db", KEY, now=lambda: NOW)
    before = accounts.generation()
    LabelStore(accounts.db).set(A, block="1", now=NOW)
    assert accounts.generation() == before  # caches of every server stay valid
    accounts.db.close()


@pytest.mark.parametrize(
    ("value", "stored"), [("  A2 ", "A2"), ("", None), ("   ", None), ("H&E <b>", "H&E <b>")]
)
def test_text_labels_are_stripped_and_empty_clears(value: str, stored: str | None) -> None:
    assert check_text("block", value) == stored


@pytest.mark.parametrize("value", ["x" * 65, "A\n2", "A\x1b[31m", "A\x7f"])
def test_bad_text_labels_are_refused_with_a_message(value: str) -> None:
    with pytest.raises(LabelError, match="block must be at most 64 printable characters"):
        check_text("block", value)


def test_a_case_name_is_never_empty() -> None:
    assert check_case(" S26-123 ") == "S26-123"
    with pytest.raises(LabelError, match="case must not be empty"):
        check_case("  ")


@pytest.mark.parametrize(
    "value", ["2026-02-30", "2026-2-3", "20260203", "yesterday", "\uff12\uff10\uff12\uff16-01-01"]
)
def test_scan_dates_are_real_days_as_yyyy_mm_dd(value: str) -> None:
    with pytest.raises(LabelError, match="scan date must be a day as YYYY-MM-DD"):
        check_scan_date(value)
    assert check_scan_date("2024-02-29") == "2024-02-29"
    assert check_scan_date("") is None


def test_a_case_reads_by_block_then_stain_then_date_then_id() -> None:
    slides = {
        "f" * 32: SlideLabels("A10", "H&E", None),
        "e" * 32: SlideLabels("A2", "Ki-67", None),
        "d" * 32: SlideLabels("A2", "h&e", "2026-01-02"),
        "c" * 32: SlideLabels("A2", "H&E", "2026-01-01"),
        "b" * 32: NONE,
        "a" * 32: SlideLabels(None, "H&E", None),
        "9" * 32: SlideLabels("A2", "H&E", "2026-01-01"),
    }
    ordered = sorted(slides, key=lambda s: order_key(s, slides[s]))
    assert ordered == [
        "9" * 32,  # A2 H&E 2026-01-01, the smaller ID first
        "c" * 32,
        "d" * 32,  # A2 h&e (case does not matter) 2026-01-02
        "e" * 32,  # A2 Ki-67
        "f" * 32,  # A10 after A2
        "a" * 32,  # no block
        "b" * 32,  # nothing at all
    ]
