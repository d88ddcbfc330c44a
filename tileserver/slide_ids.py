"""Slide IDs: 128 random bits as 32 lowercase hex digits. They name stores, keys and URLs
without revealing anything about the slide (never a file name or accession number)."""

from __future__ import annotations

import re
import secrets

_SLIDE_ID = re.compile(r"[0-9a-f]{32}")


def new_slide_id() -> str:
    return secrets.token_hex(16)


def is_slide_id(text: str) -> bool:
    return _SLIDE_ID.fullmatch(text) is not None
