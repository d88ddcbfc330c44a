"""Recognising DICOM files and series folders by their header bytes, without importing
wsidicom (half a second: every CLI command and server worker would pay it). The
backend choice and folder listings use these; ``dicom.py`` reads what they find."""

from __future__ import annotations

from pathlib import Path


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def holds_dicom(directory: Path) -> bool:
    """A folder with at least one DICOM file in it (not below it)."""
    try:
        return any(p.is_file() and is_dicom(p) for p in directory.iterdir())
    except OSError:
        return False
