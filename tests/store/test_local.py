"""The local store's clean-up of unfinished writes spares a writer still at work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tileserver.files import TMP_PREFIX
from tileserver.store.local import LocalObjects


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_orphaned_temporaries_are_removed(tmp_path: Path) -> None:
    store = LocalObjects(tmp_path)
    store.put("0/c/0/0", b"chunk")
    # Killed, not yet reaped: a killed converter's worker until its adopter collects it.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _state(zombie.pid) != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    live = tmp_path / "0" / f"{TMP_PREFIX}{os.getpid()}-00aa-zarr.json"
    dead = tmp_path / "0" / f"{TMP_PREFIX}{_dead_pid()}-00bb-zarr.json"
    stale = tmp_path / "0" / f"{TMP_PREFIX}{os.getpid()}-00cc-zarr.json"
    unnamed = tmp_path / f"{TMP_PREFIX}00dd-zarr.json"  # before writers named themselves
    unreaped = tmp_path / "0" / f"{TMP_PREFIX}{zombie.pid}-00ee-zarr.json"
    for path in (live, dead, stale, unnamed, unreaped):
        path.write_bytes(b"x")
    os.utime(stale, (0, 0))
    try:
        store.remove_temporaries()
    finally:
        zombie.wait()
    assert sorted(p.name for p in tmp_path.rglob(f"{TMP_PREFIX}*")) == [live.name]
    assert store.get("0/c/0/0") == b"chunk"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_temporaries_name_their_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjects(tmp_path)
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.put("zarr.json", b"{}")
    assert seen and seen[0].startswith(f"{TMP_PREFIX}{os.getpid()}-")
