"""The object store contract (tileserver/store/objects.py) as one reusable test class.

A test module subclasses ``StoreContract`` (named so pytest does not collect it here) and
provides a ``subject`` fixture returning a ``Subject``: an empty store, plus a way to leave
an unfinished write in it the way that backend would (a temporary file, an uncompleted
upload), which no listing may show.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tileserver.errors import StoreError
from tileserver.store.objects import ObjectStore

BAD_KEYS = ["..", "a/../b", "/abs", "a//b", "a\\b", "", "a/", "./a", "a/./b", "a\x00b"]
BAD_PREFIXES = ["a", "/a/", "../", "a//", "a/../"]


@dataclass
class Subject:
    store: ObjectStore
    leave_unfinished: Callable[[str], None]  # a half-written object at this key


class StoreContract:
    """Every ObjectStore implementation passes these."""

    @pytest.fixture
    def store(self, subject: Subject) -> ObjectStore:
        return subject.store

    def test_put_then_get_returns_the_bytes(self, store: ObjectStore) -> None:
        store.put("one", b"first")
        store.put("0/c/0/3/7", b"nested")
        assert store.get("one") == b"first"
        assert store.get("0/c/0/3/7") == b"nested"
        assert isinstance(store.get("one"), bytes)
        assert store.exists("one") and store.exists("0/c/0/3/7")

    def test_missing_object_is_none(self, store: ObjectStore) -> None:
        store.put("present", b"x")
        assert store.get("absent") is None
        assert store.get("present/below") is None  # under an object, not a prefix
        assert store.get_range("absent", 0, 10) is None
        assert store.get_range("absent", 0, 0) is None
        assert not store.exists("absent")
        store.put("dir/file", b"x")  # "dir" is now a prefix (a directory), not an object
        assert store.get("dir") is None and not store.exists("dir")
        assert store.get_range("dir", 0, 10) is None
        assert asyncio.run(store.get_async("dir")) is None

    def test_get_range(self, store: ObjectStore) -> None:
        data = bytes(range(100))
        store.put("r", data)
        assert store.get_range("r", 0, 10) == data[:10]
        assert store.get_range("r", 37, 21) == data[37:58]
        assert store.get_range("r", 90, 50) == data[90:]  # past the end: what is there
        assert store.get_range("r", 99, 1) == data[99:]
        assert store.get_range("r", 100, 5) == b""  # starts at the end
        assert store.get_range("r", 1000, 5) == b""  # starts past the end
        assert store.get_range("r", 10, 0) == b""
        with pytest.raises(StoreError):
            store.get_range("r", -1, 5)

    def test_async_reads_match_sync_reads(self, store: ObjectStore) -> None:
        data = os.urandom(3000)
        store.put("a/sync", data)

        async def reads() -> list[bytes | None]:
            return list(
                await asyncio.gather(
                    store.get_async("a/sync"),
                    store.get_range_async("a/sync", 100, 200),
                    store.get_range_async("a/sync", 2900, 500),
                    store.get_range_async("a/sync", 5000, 10),
                    store.get_async("a/missing"),
                    store.get_range_async("a/missing", 0, 10),
                )
            )

        assert asyncio.run(reads()) == [data, data[100:300], data[2900:], b"", None, None]

    def test_put_overwrites_whole_objects(self, store: ObjectStore) -> None:
        old, new = b"A" * (1 << 20), b"B" * (1 << 20)
        store.put("swap", old)
        seen: set[bytes | None] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                seen.add(store.get("swap"))

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            for i in range(10):
                store.put("swap", new if i % 2 == 0 else old)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert seen <= {old, new}  # never None, never a mixture or a prefix
        assert store.get("swap") == old

    def test_put_if_absent_writes_once(self, store: ObjectStore) -> None:
        assert store.put_if_absent("marker", b"first")
        assert not store.put_if_absent("marker", b"second")
        assert store.get("marker") == b"first"
        store.delete("marker")
        assert store.put_if_absent("marker", b"third")
        assert store.get("marker") == b"third"

    def test_put_if_absent_race_has_one_winner(self, store: ObjectStore) -> None:
        start = threading.Barrier(8)

        def race(i: int) -> bool:
            start.wait()
            return store.put_if_absent("lock", f"writer {i}".encode())

        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(race, range(8)))
        assert won.count(True) == 1
        assert store.get("lock") == f"writer {won.index(True)}".encode()

    def test_delete(self, store: ObjectStore) -> None:
        store.put("d/gone", b"1")
        store.put("d/kept", b"2")
        store.delete("d/gone")
        assert store.get("d/gone") is None and not store.exists("d/gone")
        assert store.get("d/kept") == b"2"
        store.delete("d/gone")  # again: nothing to delete is fine
        store.delete("never/was")
        assert list(store.list_keys()) == ["d/kept"]

    def test_list_is_recursive_sorted_and_filtered(self, store: ObjectStore) -> None:
        keys = ["b", "a/2", "a/1/x", "a/10", "ab/c", "a-b", "z/y/x/w"]
        for key in keys:
            store.put(key, key.encode())
        assert list(store.list_keys()) == sorted(keys)
        assert list(store.list_keys("a/")) == ["a/1/x", "a/10", "a/2"]  # not "ab/c", not "a-b"
        assert list(store.list_keys("a/1/")) == ["a/1/x"]
        assert list(store.list_keys("z/y/")) == ["z/y/x/w"]
        assert list(store.list_keys("nothing/")) == []

    def test_list_hides_unfinished_writes(self, subject: Subject) -> None:
        store = subject.store
        store.put("u/done", b"1")
        subject.leave_unfinished("u/half")
        subject.leave_unfinished("u/more/half")
        assert list(store.list_keys()) == ["u/done"]
        assert list(store.list_keys("u/")) == ["u/done"]
        assert store.get("u/half") is None and not store.exists("u/half")

    def test_children(self, store: ObjectStore) -> None:
        for key in ["s1/zarr.json", "s1/0/c/0", "s2/zarr.json", "top", "s10/x"]:
            store.put(key, b"")
        assert store.children() == ["s1", "s10", "s2"]  # prefixes only, not "top"
        assert store.children("s1/") == ["0"]
        assert store.children("s1/0/") == ["c"]
        assert store.children("s2/") == []
        assert store.children("none/") == []

    def test_child_is_a_view_of_its_parent(self, store: ObjectStore) -> None:
        child = store.child("slide/")
        child.put("zarr.json", b"{}")
        child.put("0/c/1", b"chunk")
        assert store.get("slide/zarr.json") == b"{}"
        assert list(store.list_keys()) == ["slide/0/c/1", "slide/zarr.json"]
        assert list(child.list_keys()) == ["0/c/1", "zarr.json"]
        assert store.children() == ["slide"] and child.children() == ["0"]
        assert child.child("0/").get("c/1") == b"chunk"
        assert child.url != store.url
        store.put("other", b"x")
        assert child.get("other") is None and list(child.list_keys()) == ["0/c/1", "zarr.json"]

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_invalid_keys_are_refused(self, store: ObjectStore, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.get(key),
            lambda: store.get_range(key, 0, 1),
            lambda: asyncio.run(store.get_async(key)),
            lambda: asyncio.run(store.get_range_async(key, 0, 1)),
            lambda: store.exists(key),
            lambda: store.put(key, b"x"),
            lambda: store.put_if_absent(key, b"x"),
            lambda: store.delete(key),
        ]
        for call in calls:
            with pytest.raises(StoreError, match="invalid object key"):
                call()
        assert list(store.list_keys()) == []

    @pytest.mark.parametrize("prefix", BAD_PREFIXES)
    def test_invalid_prefixes_are_refused(self, store: ObjectStore, prefix: str) -> None:
        for call in (
            lambda: list(store.list_keys(prefix)),
            lambda: store.children(prefix),
            lambda: store.child(prefix),
        ):
            with pytest.raises(StoreError, match="invalid"):
                call()

    def test_binary_and_empty_objects(self, store: ObjectStore) -> None:
        every_byte = bytes(range(256)) * 4
        store.put("bin", every_byte)
        store.put("empty", b"")
        assert store.get("bin") == every_byte
        assert store.get("empty") == b"" and store.exists("empty")
        assert store.get_range("empty", 0, 10) == b""
        assert store.put_if_absent("empty2", b"") and store.get("empty2") == b""
        assert list(store.list_keys()) == ["bin", "empty", "empty2"]

    def test_large_object(self, store: ObjectStore) -> None:
        data = os.urandom(5 << 20)
        store.put("big", data)
        assert store.get("big") == data
        middle = (5 << 20) // 2
        assert store.get_range("big", middle, 1 << 20) == data[middle : middle + (1 << 20)]
        assert store.get_range("big", (5 << 20) - 10, 1 << 20) == data[-10:]
        assert asyncio.run(store.get_async("big")) == data
