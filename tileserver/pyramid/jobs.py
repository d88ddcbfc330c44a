"""Converting slide files into a place of stores: store naming, resume, and the journal.

The journal maps a content fingerprint of each source (never its name) to its slide ID, one
object per source (``.tileserver-journal/{fingerprint}``) written create-if-absent: of two
converters starting on the same slide at once, both go on under the first one's slide ID.
Running a conversion again resumes an incomplete store under the same ID and skips a
complete one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tileserver.errors import StoreError
from tileserver.pyramid.builder import ConvertResult, Progress, convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id, new_slide_id
from tileserver.sources import SlideSource, open_slide
from tileserver.store.layout import COMPLETE_MARKER
from tileserver.store.location import open_location
from tileserver.store.objects import ObjectStore

JOURNAL = ".tileserver-journal"
LEGACY_JOURNAL = ".tileserver-journal.json"  # one JSON map, before format 2
_SAMPLE = 1 << 20


def fingerprint(path: Path) -> str:
    """sha256 over the size, first and last MiB: identifies content, reveals no name."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_SAMPLE))
        f.seek(max(size - _SAMPLE, 0))
        digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


def series_fingerprint(files: tuple[Path, ...]) -> str:
    """A slide's fingerprint over the files it is read from: one file's own, or for a DICOM
    series over its files' fingerprints, sorted, so the series has one whether it is named by
    its folder or by any of its files, and whatever the names."""
    if len(files) == 1:
        return fingerprint(files[0])
    digest = hashlib.sha256(b"dicom-series")
    for part in sorted(fingerprint(path) for path in files):
        digest.update(part.encode())
    return digest.hexdigest()


def source_fingerprint(source: SlideSource) -> str:
    return series_fingerprint(source.files)


def slide_id_for(stores: ObjectStore, key: str) -> str:
    """The slide ID this source has (or had, in a legacy journal), or a new one claimed."""
    legacy = stores.get(LEGACY_JOURNAL)
    if legacy is not None:
        try:
            known = json.loads(legacy).get(key)
        except (ValueError, AttributeError) as exc:
            raise StoreError(f"{stores.url}: {LEGACY_JOURNAL} is malformed") from exc
        if isinstance(known, str) and is_slide_id(known):
            return known
    entry = f"{JOURNAL}/{key}"
    stores.put_if_absent(entry, new_slide_id().encode())  # the first converter's ID stands
    recorded = (stores.get(entry) or b"").decode(errors="replace")
    if not is_slide_id(recorded):
        raise StoreError(f"{stores.url}: journal entry {entry} is malformed")
    return recorded


def convert_file(
    path: Path,
    out: str,
    options: ConvertOptions,
    keyring: KeyRing | None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> ConvertResult | str:
    """Convert one slide into the stores at ``out`` (a path or URL); returns the result, or
    the slide ID when it was already complete."""
    with open_slide(path, backend) as source:
        stores = open_location(out)
        slide_id = slide_id_for(stores, source_fingerprint(source))
        store = stores.child(f"{slide_id}/")
        if store.exists(COMPLETE_MARKER):
            return slide_id
        return convert(source, store, slide_id, options, keyring, progress)
