"""Annotations at rest: sealed, versioned, private to their author unless shared.

Tables (accounts migration 5, SQLite or PostgreSQL through ``security/database.py``):
``annotations`` names each annotation's newest version; ``annotation_versions`` holds every
version ever written and is only ever inserted into. An edit adds a version; a delete adds a
tombstone version; nothing is lost, and the author can read the whole history.

Every version's body is sealed (AES-256-GCM) under a key derived from the slide's data key,
so shredding a slide's key shreds its annotations too. The associated data binds the slide
ID, the annotation ID, the version, the author, the sharing flag and the tombstone flag: a
row copied to another slide, annotation or version, or given another author, or flipped to
shared or to deleted, fails to open (IntegrityError) instead of showing someone something.
Who may see a version is decided from those authenticated values, never from columns alone.

Rules (the server maps the errors: 404, 403, 412):
- an author sees their annotations; everyone else who may view the slide sees the shared ones;
- another author's private annotation does not exist for you (AnnotationNotFound);
- only the author edits or deletes (someone else's shared one: AnnotationForbidden);
- only the author reads the history.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tileserver.annotations import Annotation
from tileserver.errors import TileserverError
from tileserver.security.crypto import Sealer
from tileserver.security.database import Database, Row, Transaction

_KEY_LABEL = b"tileserver-annotation-key/v1"
MAX_VERSIONS_LISTED = 1000


class AnnotationNotFound(TileserverError):
    """No such annotation on this slide, or not one the caller may see (the same answer)."""


class AnnotationForbidden(TileserverError):
    """The caller sees this annotation (it is shared) but is not its author."""


class AnnotationsUnavailable(TileserverError):
    """The slide has no data key (a plaintext store, or a slide file served as it is), so
    there is nothing to seal its annotations with: they are refused, never stored in clear."""


class AnnotationStale(TileserverError):
    """The write named a version (If-Match) that is no longer the newest."""


@dataclass(frozen=True)
class Record:
    """One version of an annotation, opened."""

    id: str
    slide_id: str
    author: str  # the principal, "user:NAME" or "token:NAME"
    version: int
    shared: bool
    deleted: bool
    created: float  # when the annotation was first made
    updated: float  # when this version was written
    annotation: Annotation | None  # None: a tombstone


def annotation_key(data_key: bytes) -> bytes:
    """The slide's annotation key: derived, so it never seals anything a store holds."""
    return hmac.new(data_key, _KEY_LABEL, hashlib.sha256).digest()


def version_aad(
    slide_id: str, annotation_id: str, version: int, author: str, shared: bool, deleted: bool
) -> bytes:
    fields = (slide_id, annotation_id, str(version), author, str(int(shared)), str(int(deleted)))
    return "\x00".join(("tileserver-annotation/v1", *fields)).encode()


def new_annotation_id() -> str:
    return secrets.token_hex(16)  # 128 random bits, like slide IDs


_VERSION_COLUMNS = (
    "v.annotation_id, v.version, v.author, v.shared, v.deleted, v.created, v.sealed, h.created"
)


class AnnotationStore:
    """Thread-safe (the database is); every method does I/O: call it off the event loop."""

    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self.db = db
        self.now = now

    # -- writing -------------------------------------------------------------------------------
    def create(
        self, slide_id: str, author: str, data_key: bytes, annotations: Sequence[Annotation]
    ) -> list[Record]:
        """New annotations (an import is all or nothing), each at version 1."""
        sealer = Sealer(annotation_key(data_key))
        now = self.now()
        records = []
        with self.db.transaction(serial=None) as tx:
            # Listed by (created, id): sorted IDs keep an import's order under one timestamp.
            ids = sorted(new_annotation_id() for _ in annotations)
            for aid, annotation in zip(ids, annotations, strict=True):
                record = Record(
                    aid, slide_id, author, 1, annotation.shared, False, now, now, annotation
                )
                tx.execute(
                    "INSERT INTO annotations"
                    " (id, slide_id, author, version, shared, deleted, created, updated)"
                    " VALUES (?, ?, ?, 1, ?, 0, ?, ?)",
                    (aid, slide_id, author, int(annotation.shared), now, now),
                )
                self._insert_version(tx, sealer, record)
                records.append(record)
        return records

    def update(
        self,
        slide_id: str,
        annotation_id: str,
        editor: str,
        data_key: bytes,
        annotation: Annotation,
        expected: int | None = None,
    ) -> Record:
        """A new version with this content (and sharing); ``expected``: the version the
        editor last saw (If-Match), refused when another was written since."""
        return self._write(slide_id, annotation_id, editor, data_key, annotation, expected)

    def delete(
        self,
        slide_id: str,
        annotation_id: str,
        editor: str,
        data_key: bytes,
        expected: int | None = None,
    ) -> Record:
        """A tombstone version: the annotation disappears, its history stays."""
        return self._write(slide_id, annotation_id, editor, data_key, None, expected)

    def _write(
        self,
        slide_id: str,
        annotation_id: str,
        editor: str,
        data_key: bytes,
        annotation: Annotation | None,
        expected: int | None,
    ) -> Record:
        sealer = Sealer(annotation_key(data_key))
        # Edits of one annotation run one after another on every host.
        with self.db.transaction(serial=f"annotation:{annotation_id}") as tx:
            rows = tx.execute(
                f"SELECT {_VERSION_COLUMNS} FROM annotations h JOIN annotation_versions v"
                " ON v.annotation_id = h.id AND v.version = h.version"
                " WHERE h.id = ? AND h.slide_id = ?",
                (annotation_id, slide_id),
            ).fetchall()
            head = self._open(sealer, slide_id, rows[0]) if rows else None
            if head is None or head.deleted or not _may_see(head, editor):
                raise AnnotationNotFound("no such annotation")
            if head.author != editor:
                raise AnnotationForbidden("only the author may change or delete an annotation")
            if expected is not None and expected != head.version:
                raise AnnotationStale(
                    f"annotation is at version {head.version}, not {expected}: reload it"
                )
            now = self.now()
            shared = head.shared if annotation is None else annotation.shared
            record = Record(
                annotation_id,
                slide_id,
                head.author,
                head.version + 1,
                shared,
                annotation is None,
                head.created,
                now,
                annotation,
            )
            self._insert_version(tx, sealer, record)
            tx.execute(
                "UPDATE annotations SET version = ?, shared = ?, deleted = ?, updated = ?"
                " WHERE id = ? AND version = ?",
                (
                    record.version,
                    int(shared),
                    int(record.deleted),
                    now,
                    annotation_id,
                    head.version,
                ),
            )
        return record

    def _insert_version(self, tx: Transaction, sealer: Sealer, record: Record) -> None:
        body = b"" if record.annotation is None else record.annotation.body()
        aad = version_aad(
            record.slide_id, record.id, record.version, record.author, record.shared, record.deleted
        )
        tx.execute(
            "INSERT INTO annotation_versions"
            " (annotation_id, version, slide_id, author, shared, deleted, created, sealed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.version,
                record.slide_id,
                record.author,
                int(record.shared),
                int(record.deleted),
                record.updated,
                sealer.seal(body, aad),
            ),
        )

    # -- reading -------------------------------------------------------------------------------
    def visible(self, slide_id: str, viewer: str, data_key: bytes) -> list[Record]:
        """The newest version of every live annotation on the slide the viewer may see,
        oldest first."""
        sealer = Sealer(annotation_key(data_key))
        rows = self.db.read(
            f"SELECT {_VERSION_COLUMNS} FROM annotations h JOIN annotation_versions v"
            " ON v.annotation_id = h.id AND v.version = h.version"
            " WHERE h.slide_id = ? AND h.deleted = 0 AND (h.author = ? OR h.shared = 1)"
            " ORDER BY h.created, h.id",
            (slide_id, viewer),
        )
        records = [self._open(sealer, slide_id, row) for row in rows]
        # Decided again on the authenticated values: a column flipped behind our back
        # cannot show a private annotation to someone else.
        return [r for r in records if not r.deleted and _may_see(r, viewer)]

    def get(self, slide_id: str, annotation_id: str, viewer: str, data_key: bytes) -> Record:
        """The newest version, if the viewer may see it (else AnnotationNotFound)."""
        record = self._head(Sealer(annotation_key(data_key)), slide_id, annotation_id)
        if record is None or record.deleted or not _may_see(record, viewer):
            raise AnnotationNotFound("no such annotation")
        return record

    def versions(
        self, slide_id: str, annotation_id: str, viewer: str, data_key: bytes
    ) -> list[Record]:
        """The versions, oldest first, tombstones included (the newest MAX_VERSIONS_LISTED):
        for the author only."""
        sealer = Sealer(annotation_key(data_key))
        head = self._head(sealer, slide_id, annotation_id)
        if head is None or (head.author != viewer and (head.deleted or not head.shared)):
            raise AnnotationNotFound("no such annotation")
        if head.author != viewer:
            raise AnnotationForbidden("only the author may read an annotation's history")
        rows = self.db.read(
            f"SELECT {_VERSION_COLUMNS} FROM annotation_versions v JOIN annotations h"
            " ON h.id = v.annotation_id WHERE h.id = ? AND h.slide_id = ?"
            " ORDER BY v.version DESC LIMIT ?",
            (annotation_id, slide_id, MAX_VERSIONS_LISTED),
        )
        return [self._open(sealer, slide_id, row) for row in reversed(rows)]

    def _head(self, sealer: Sealer, slide_id: str, annotation_id: str) -> Record | None:
        rows = self.db.read(
            f"SELECT {_VERSION_COLUMNS} FROM annotations h JOIN annotation_versions v"
            " ON v.annotation_id = h.id AND v.version = h.version"
            " WHERE h.id = ? AND h.slide_id = ?",
            (annotation_id, slide_id),
        )
        return self._open(sealer, slide_id, rows[0]) if rows else None

    @staticmethod
    def _open(sealer: Sealer, slide_id: str, row: Row) -> Record:
        aid, version, author, shared, deleted, updated, sealed, created = row
        version, shared, deleted = int(version), bool(shared), bool(deleted)
        aad = version_aad(slide_id, str(aid), version, str(author), shared, deleted)
        body = sealer.open(bytes(sealed or b""), aad, f"annotation {aid} version {version}")
        annotation = None if deleted else Annotation.from_body(body, shared)
        return Record(
            str(aid),
            slide_id,
            str(author),
            version,
            shared,
            deleted,
            float(created),
            float(updated),
            annotation,
        )


def _may_see(record: Record, viewer: str) -> bool:
    return record.author == viewer or record.shared
