"""The real-slide corpus in ../shared/slides and what its MANIFEST.md records about each file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "slides"


@dataclass(frozen=True)
class Expected:
    """What OpenSlide reported for a file, as the manifest records it."""

    path: Path
    vendor: str
    dimensions: tuple[int, int]
    level_count: int
    mpp: float | None
    objective: float | None
    associated: tuple[str, ...]


_SECTION = re.compile(r"^### `([^`]+)`", re.M)
_OPENS = re.compile(
    r"^- OpenSlide(?: \(opening `(?P<file>[^`]+)`\))?: (?:yes; )?vendor `(?P<vendor>[^`]+)`; "
    r"(?P<levels>\d+) level\(s\): (?P<w>\d+)x(?P<h>\d+)[^;]*; mpp (?P<mpp>none|[\d.]+)[^;]*; "
    r"objective (?P<obj>none|[\d.]+); [^;]*; associated: (?P<assoc>.*)$",
    re.M,
)


def require_corpus() -> Path:
    if not (SLIDES / "MANIFEST.md").exists():
        pytest.skip(f"real-slide corpus not found at {SLIDES}")
    return SLIDES


def openable() -> list[Expected]:
    """Every file the manifest marks as opened by OpenSlide, with its recorded metadata."""
    manifest = SLIDES / "MANIFEST.md"
    if not manifest.exists():
        return []
    text = manifest.read_text(encoding="utf-8")
    found = []
    starts = [(m.start(), m.group(1)) for m in _SECTION.finditer(text)]
    for (start, name), end in zip(starts, [s for s, _ in starts[1:]] + [len(text)], strict=True):
        match = _OPENS.search(text, start, end)
        if not match:
            continue
        path = SLIDES / name
        if match.group("file"):
            path = path / match.group("file")
        assoc = match.group("assoc")
        found.append(
            Expected(
                path=path,
                vendor=match.group("vendor"),
                dimensions=(int(match.group("w")), int(match.group("h"))),
                level_count=int(match.group("levels")),
                mpp=None if match.group("mpp") == "none" else float(match.group("mpp")),
                objective=None if match.group("obj") == "none" else float(match.group("obj")),
                associated=()
                if assoc == "none"
                else tuple(sorted(a.split()[0] for a in assoc.split(", "))),
            )
        )
    return found


def bad_files() -> list[Path]:
    """Every file under broken/ and edge-cases/."""
    return sorted(
        p for d in ("broken", "edge-cases") for p in (SLIDES / d).rglob("*") if p.is_file()
    )
