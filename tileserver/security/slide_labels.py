"""Which slide is which: the block, stain and scan date an operator gave a slide.

The case is the slide's collection (``Accounts.assign``); these labels sit beside it in the
auth database (``slide_labels``, migration 6), so every server sharing the database shows the
same ones. They decide no access: writing them leaves the change counter alone.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from tileserver.errors import TileserverError
from tileserver.security.database import Database

MAX_LABEL = 64
LABEL_FIELDS = ("case", "block", "stain", "scan_date")  # as the JSON API names them
# Printable text, no control characters (they would reach terminals and the audit trail).
_TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DIGITS = re.compile(r"(\d+)")


class LabelError(TileserverError, ValueError):
    """A label or case name that cannot be stored as given."""


class _Keep:
    """Leave a label as it is (``LabelStore.set``)."""


KEEP: Final = _Keep()


@dataclass(frozen=True)
class SlideLabels:
    block: str | None = None
    stain: str | None = None
    scan_date: str | None = None  # YYYY-MM-DD

    def as_json(self) -> dict[str, str | None]:
        return {"block": self.block, "stain": self.stain, "scan_date": self.scan_date}


NONE = SlideLabels()


def check_text(what: str, value: str) -> str | None:
    """A block or stain as stored: stripped; empty means "no label" (None)."""
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_LABEL or not _TEXT.fullmatch(value):
        raise LabelError(f"{what} must be at most {MAX_LABEL} printable characters")
    return value


def check_case(value: str) -> str:
    """A case (collection) name: like a label, and never empty."""
    checked = check_text("case", value)
    if checked is None:
        raise LabelError("case must not be empty")
    return checked


def check_scan_date(value: str) -> str | None:
    """A scan date as YYYY-MM-DD (a real calendar day); empty means "no date"."""
    value = value.strip()
    if not value:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        datetime.date.fromisoformat(value)
    except ValueError:
        raise LabelError(f"scan date must be a day as YYYY-MM-DD, not {value[:20]!r}") from None
    return value


def _natural(text: str) -> tuple[tuple[int, int, str], ...]:
    """Blocks as people number them: A2 before A10."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
        for part in _DIGITS.split(text)
        if part
    )


def order_key(slide_id: str, labels: SlideLabels) -> tuple[object, ...]:
    """A case's slides in reading order: block, stain, scan date, then ID; unlabelled last."""
    return (
        labels.block is None,
        _natural(labels.block or ""),
        labels.stain is None,
        (labels.stain or "").casefold(),
        labels.scan_date is None,
        labels.scan_date or "",
        slide_id,
    )


class LabelStore:
    """Slide labels in the auth database (SQLite or PostgreSQL, as ``Accounts`` opened it)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set(
        self,
        slide_id: str,
        *,
        block: str | _Keep | None = KEEP,
        stain: str | _Keep | None = KEEP,
        scan_date: str | _Keep | None = KEEP,
        now: float,
    ) -> SlideLabels:
        """Change the labels given (None clears one), keep the others; the labels after."""
        with self.db.transaction(serial="accounts") as tx:
            row = tx.execute(
                "SELECT block, stain, scan_date FROM slide_labels WHERE slide_id = ?",
                (slide_id,),
            ).fetchone()
            old = NONE if row is None else SlideLabels(*row)
            new = SlideLabels(
                old.block if isinstance(block, _Keep) else block,
                old.stain if isinstance(stain, _Keep) else stain,
                old.scan_date if isinstance(scan_date, _Keep) else scan_date,
            )
            tx.execute(
                "INSERT INTO slide_labels (slide_id, block, stain, scan_date, updated)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (slide_id) DO UPDATE SET"
                " block = excluded.block, stain = excluded.stain,"
                " scan_date = excluded.scan_date, updated = excluded.updated",
                (slide_id, new.block, new.stain, new.scan_date, now),
            )
        return new

    def get(self, slide_id: str) -> SlideLabels:
        rows = self.db.read(
            "SELECT block, stain, scan_date FROM slide_labels WHERE slide_id = ?", (slide_id,)
        )
        return SlideLabels(*rows[0]) if rows else NONE

    def of(self, slide_ids: Iterable[str]) -> dict[str, SlideLabels]:
        """The labels of each of ``slide_ids`` (every one present; unlabelled: no labels)."""
        wanted = set(slide_ids)
        found = {
            str(r[0]): SlideLabels(r[1], r[2], r[3])
            for r in self.db.read("SELECT slide_id, block, stain, scan_date FROM slide_labels")
            if r[0] in wanted
        }
        return {slide_id: found.get(slide_id, NONE) for slide_id in wanted}

    def cases(self, slide_ids: Iterable[str]) -> dict[str, str | None]:
        """The case (collection) of each of ``slide_ids``; None: in no case."""
        wanted = set(slide_ids)
        found = {
            str(r[0]): str(r[1])
            for r in self.db.read("SELECT slide_id, collection FROM slides")
            if r[0] in wanted
        }
        return {slide_id: found.get(slide_id) for slide_id in wanted}

    def describe(self, slide_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        """Case, block, stain and scan date of each slide, as the JSON API shows them."""
        wanted = list(slide_ids)
        cases, labels = self.cases(wanted), self.of(wanted)
        return {s: {"case": cases[s], **labels[s].as_json()} for s in wanted}
