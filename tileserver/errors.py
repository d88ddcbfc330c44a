"""The exception tree: every error the project raises on purpose derives from one root.

    TileserverError
    ├── SlideError                 a slide file cannot be used (carries the file name)
    │   ├── SlideNotFound          (also FileNotFoundError) no such file
    │   ├── UnsupportedFormat      no backend reads this kind of file
    │   │   └── UnsupportedFeature the format is known, but uses a feature no backend reads right
    │   └── CorruptSlide           the file claims a format but its bytes are broken
    ├── RegionError                (also ValueError) a request outside the slide or over a cap
    ├── StoreError                 a store that is missing, incomplete, malformed or unwritable
    │   └── IntegrityError         a stored object failed authentication (tampered, swapped, cut)
    ├── KeyUnavailable             a key that is missing, shredded, wrong or unsafely stored
    ├── ResourceLimit              work stopped at a memory, CPU or wall-clock limit
    │   └── Overloaded             refused for now: a budget or capacity is spent (retry later)
    └── ConfigError                settings that are missing, invalid or unsafe

Messages name the file and the reason in one line, so the CLI can print them as they are
and the server can map them to statuses in one table.
"""

from __future__ import annotations

import math


class TileserverError(Exception):
    """Root of every error raised on purpose by this package."""


class SlideError(TileserverError):
    """A slide file cannot be used."""


class SlideNotFound(SlideError, FileNotFoundError):
    """The slide file does not exist."""


class UnsupportedFormat(SlideError):
    """No backend reads this kind of file (or this backend does not)."""


class UnsupportedFeature(UnsupportedFormat):
    """A known format using a feature we refuse (other backends would give wrong pixels)."""


class CorruptSlide(SlideError):
    """The file looks like a slide but its structure or pixel data is broken."""


class RegionError(TileserverError, ValueError):
    """A level, region or output size outside the slide or over a configured cap."""


class StoreError(TileserverError):
    """A store that is missing, incomplete, malformed, or cannot be written."""


class StoreUnavailable(StoreError):
    """The store's backend failed in a way that may pass (unreachable, throttled, 5xx)."""


class IntegrityError(StoreError):
    """A sealed object failed authentication: flipped, truncated, swapped or replaced."""


class KeyUnavailable(TileserverError):
    """A key-encryption or data key that is missing, shredded, wrong or unsafely stored."""


class ResourceLimit(TileserverError):
    """Work stopped at a limit: out of its memory, CPU time or wall-clock time, or killed."""


class Overloaded(ResourceLimit):
    """Refused for now, before any work: the caller's budget or the server's capacity is spent.
    ``retry_after`` is whole seconds (at least 1) until trying again makes sense."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class ConfigError(TileserverError):
    """Settings that are missing, invalid or unsafe."""
