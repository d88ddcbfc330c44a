"""A slide's ICC profile in its store: one object of its own, sealed like every other
(so not readable in plaintext in an encrypted store), and recorded in the completion marker
with its digest, so a deleted or replaced profile is an IntegrityError, never a slide quietly
shown in the wrong colours. Stores converted before profiles were kept have no entry: None.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tileserver.errors import IntegrityError
from tileserver.store.objects import ObjectStore

ICC_OBJECT = "tileserver-icc.icc"
MARKER_KEY = "icc_profile"  # in the completion marker: {"object": ..., "sha256": ...}


def put_profile(objects: ObjectStore, profile: bytes) -> dict[str, Any]:
    """Store ``profile`` through ``objects`` (the store's sealing objects); returns the
    completion marker's entry for it."""
    objects.put(ICC_OBJECT, profile)
    return {MARKER_KEY: {"object": ICC_OBJECT, "sha256": hashlib.sha256(profile).hexdigest()}}


def get_profile(objects: ObjectStore, marker: dict[str, Any], name: str) -> bytes | None:
    """The profile the marker lists (None when it lists none), checked against its digest."""
    entry = marker.get(MARKER_KEY)
    if not entry:
        return None
    try:
        key, expected = str(entry["object"]), str(entry["sha256"])
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{name}: malformed ICC profile entry in the marker") from exc
    if key != ICC_OBJECT:
        raise IntegrityError(f"{name}: the marker names an unknown ICC object {key[:40]!r}")
    data = objects.get(ICC_OBJECT)
    if data is None:
        raise IntegrityError(f"{name}: ICC profile object is missing")
    if hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{name}: ICC profile is not the one this store was completed with")
    return data
