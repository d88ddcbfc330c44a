"""Annotations at rest, on SQLite and PostgreSQL: sealed, versioned, visible by the rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tileserver.annotations import Annotation
from tileserver.errors import IntegrityError
from tileserver.security import annotation_store
from tileserver.security.accounts import Accounts
from tileserver.security.annotation_store import (
    AnnotationForbidden,
    AnnotationNotFound,
    AnnotationStale,
    AnnotationStore,
)
from tileserver.security.crypto import new_key

NOW = 1_800_000_000.0
SLIDE_A, SLIDE_B = "a" * 32, "b" * 32
ALICE, BOB = "user:alice", "user:bob"
LABEL = "tumour-margin-7f3a"  # distinctive, to look for in the raw rows


def note(label: str = LABEL, shared: bool = False) -> Annotation:
    ring = [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0], [0.0, 0.0]]
    return Annotation(
        {"type": "Polygon", "coordinates": [ring]}, "rectangle", label, "#ff0000", shared
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnnotationStore]:
    target = (
        tmp_path / "auth.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    )
    accounts = Accounts(target, new_key(), now=lambda: NOW)  # runs the migrations
    clock = iter(range(10_000))
    yield AnnotationStore(accounts.db, now=lambda: NOW + next(clock))
    accounts.db.close()


KEY = new_key()


def tamper(store: AnnotationStore, sql: str, args: tuple[object, ...]) -> None:
    """What someone with write access to the database could do behind the store's back."""
    with store.db.transaction(serial=None) as tx:
        tx.execute(sql, args)


def test_private_by_default_shared_when_asked(store: AnnotationStore) -> None:
    private, shared = store.create(SLIDE_A, ALICE, KEY, [note(), note("shared one", True)])
    assert (private.version, private.shared, shared.shared) == (1, False, True)
    mine = store.visible(SLIDE_A, ALICE, KEY)
    assert [r.id for r in mine] == [private.id, shared.id]
    assert mine[0].annotation == note()
    assert [r.id for r in store.visible(SLIDE_A, BOB, KEY)] == [shared.id]
    assert store.visible(SLIDE_B, ALICE, KEY) == []
    assert store.get(SLIDE_A, shared.id, BOB, KEY).annotation == note("shared one", True)
    with pytest.raises(AnnotationNotFound):
        store.get(SLIDE_A, private.id, BOB, KEY)
    with pytest.raises(AnnotationNotFound):  # the right ID on another slide is nothing
        store.get(SLIDE_B, private.id, ALICE, KEY)


def test_only_the_author_edits_and_deletes(store: AnnotationStore) -> None:
    private, shared = store.create(SLIDE_A, ALICE, KEY, [note(), note("s", True)])
    with pytest.raises(AnnotationNotFound):
        store.update(SLIDE_A, private.id, BOB, KEY, note("bob's"))
    with pytest.raises(AnnotationNotFound):
        store.delete(SLIDE_A, private.id, BOB, KEY)
    with pytest.raises(AnnotationForbidden):
        store.update(SLIDE_A, shared.id, BOB, KEY, note("bob's", True))
    with pytest.raises(AnnotationForbidden):
        store.delete(SLIDE_A, shared.id, BOB, KEY)
    with pytest.raises(AnnotationForbidden):
        store.versions(SLIDE_A, shared.id, BOB, KEY)
    with pytest.raises(AnnotationNotFound):
        store.versions(SLIDE_A, private.id, BOB, KEY)
    assert store.get(SLIDE_A, shared.id, ALICE, KEY).version == 1  # nothing was written


def test_edits_add_versions_and_a_delete_is_a_tombstone(store: AnnotationStore) -> None:
    (first,) = store.create(SLIDE_A, ALICE, KEY, [note("v1")])
    second = store.update(SLIDE_A, first.id, ALICE, KEY, note("v2", shared=True))
    assert (second.version, second.shared, second.created) == (2, True, first.created)
    assert store.get(SLIDE_A, first.id, BOB, KEY).annotation == note("v2", True)
    gone = store.delete(SLIDE_A, first.id, ALICE, KEY)
    assert gone.deleted and gone.version == 3
    assert store.visible(SLIDE_A, ALICE, KEY) == []
    for reader in (ALICE, BOB):
        with pytest.raises(AnnotationNotFound):
            store.get(SLIDE_A, first.id, reader, KEY)
    with pytest.raises(AnnotationNotFound):
        store.update(SLIDE_A, first.id, ALICE, KEY, note("v4"))
    history = store.versions(SLIDE_A, first.id, ALICE, KEY)
    assert [(r.version, r.deleted) for r in history] == [(1, False), (2, False), (3, True)]
    assert [r.annotation.label for r in history if r.annotation] == ["v1", "v2"]
    with pytest.raises(AnnotationNotFound):  # a deleted shared one is gone for others
        store.versions(SLIDE_A, first.id, BOB, KEY)


def test_if_match_refuses_a_stale_version(store: AnnotationStore) -> None:
    (first,) = store.create(SLIDE_A, ALICE, KEY, [note("v1")])
    store.update(SLIDE_A, first.id, ALICE, KEY, note("v2"), expected=1)
    with pytest.raises(AnnotationStale, match="version 2"):
        store.update(SLIDE_A, first.id, ALICE, KEY, note("lost update"), expected=1)
    with pytest.raises(AnnotationStale):
        store.delete(SLIDE_A, first.id, ALICE, KEY, expected=1)
    assert store.get(SLIDE_A, first.id, ALICE, KEY).annotation == note("v2")


def test_sealed_at_rest(store: AnnotationStore) -> None:
    store.create(SLIDE_A, ALICE, KEY, [note()])
    for table in ("annotations", "annotation_versions"):
        for row in store.db.read(f"SELECT * FROM {table}"):
            raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
            assert LABEL.encode() not in raw and b"coordinates" not in raw
    with pytest.raises(IntegrityError):  # another slide's key opens nothing
        store.visible(SLIDE_A, ALICE, new_key())


def test_a_row_copied_to_another_slide_or_version_fails_to_open(store: AnnotationStore) -> None:
    """The same key on purpose: what stops the copy is the associated data."""
    (a,) = store.create(SLIDE_A, ALICE, KEY, [note()])
    (b,) = store.create(SLIDE_B, ALICE, KEY, [note("on b")])
    sealed_a = store.db.read(
        "SELECT sealed FROM annotation_versions WHERE annotation_id = ?", (a.id,)
    )[0][0]
    tamper(
        store, "UPDATE annotation_versions SET sealed = ? WHERE annotation_id = ?", (sealed_a, b.id)
    )
    with pytest.raises(IntegrityError, match=f"annotation {b.id} version 1"):
        store.visible(SLIDE_B, ALICE, KEY)
    # Moving A's rows to slide B wholesale: its body is bound to slide A.
    tamper(store, "UPDATE annotations SET slide_id = ? WHERE id = ?", (SLIDE_B, a.id))
    with pytest.raises(IntegrityError):
        store.get(SLIDE_B, a.id, ALICE, KEY)
    # Version 1's body as version 2 of the same annotation.
    (c,) = store.create(SLIDE_A, ALICE, KEY, [note("c1")])
    store.update(SLIDE_A, c.id, ALICE, KEY, note("c2"))
    first = store.db.read(
        "SELECT sealed FROM annotation_versions WHERE annotation_id = ? AND version = 1", (c.id,)
    )[0][0]
    tamper(
        store,
        "UPDATE annotation_versions SET sealed = ? WHERE annotation_id = ? AND version = 2",
        (first, c.id),
    )
    with pytest.raises(IntegrityError):
        store.get(SLIDE_A, c.id, ALICE, KEY)


def test_flipping_columns_shows_nobody_anything(store: AnnotationStore) -> None:
    """Sharing, authorship and deletion are bound to the body: columns changed behind the
    store's back fail to open instead of showing a private annotation."""
    (private,) = store.create(SLIDE_A, ALICE, KEY, [note()])
    tamper(store, "UPDATE annotations SET shared = 1 WHERE id = ?", (private.id,))
    assert store.visible(SLIDE_A, BOB, KEY) == []  # the sealed version still says private
    tamper(
        store, "UPDATE annotation_versions SET shared = 1 WHERE annotation_id = ?", (private.id,)
    )
    with pytest.raises(IntegrityError):
        store.visible(SLIDE_A, BOB, KEY)
    (other,) = store.create(SLIDE_B, ALICE, KEY, [note()])
    tamper(store, "UPDATE annotations SET author = ? WHERE id = ?", (BOB, other.id))
    tamper(
        store, "UPDATE annotation_versions SET author = ? WHERE annotation_id = ?", (BOB, other.id)
    )
    with pytest.raises(IntegrityError):
        store.get(SLIDE_B, other.id, BOB, KEY)


def test_a_long_history_lists_its_newest_versions(
    store: AnnotationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(annotation_store, "MAX_VERSIONS_LISTED", 2)
    (first,) = store.create(SLIDE_A, ALICE, KEY, [note("v1")])
    store.update(SLIDE_A, first.id, ALICE, KEY, note("v2"))
    store.delete(SLIDE_A, first.id, ALICE, KEY)
    history = store.versions(SLIDE_A, first.id, ALICE, KEY)
    assert [(r.version, r.deleted) for r in history] == [(2, False), (3, True)]
