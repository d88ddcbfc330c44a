"""The change mark beside the SQLite auth database: readers skip the counter's read only
while no write has committed since they read it, including when a writer died between its
commit and its mark, and when the mark's file was removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tileserver.security.accounts import Accounts
from tileserver.security.crypto import new_key


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Accounts, Accounts]:
    """A reader and a writer on one file, as two processes would have them."""
    key = new_key()
    return Accounts(tmp_path / "auth.db", key), Accounts(tmp_path / "auth.db", key)


def counting_reads(accounts: Accounts) -> list[str]:
    reads: list[str] = []
    real = accounts._read

    def spy(sql: str, args: tuple[object, ...] = ()) -> list[object]:
        reads.append(sql)
        return real(sql, args)  # type: ignore[return-value]

    accounts._read = spy  # type: ignore[method-assign]
    return reads


def test_readers_skip_the_database_until_a_write_commits(pair: tuple[Accounts, Accounts]) -> None:
    reader, writer = pair
    before = reader.generation()
    reads = counting_reads(reader)
    assert [reader.generation() for _ in range(3)] == [before] * 3
    assert reads == []
    writer.add_pending("alice", "pathologist")  # bumps the counter
    assert reader.generation() > before
    assert len(reads) == 1
    assert reader.generation() == reader.generation() and len(reads) == 1


def test_a_writer_killed_after_its_commit_is_seen(pair: tuple[Accounts, Accounts]) -> None:
    """Killed between its commit and its final mark: the mark stays odd, and readers read the
    database until the next writer finishes."""
    reader, _ = pair
    before = reader.generation()
    reader.generation()  # the pair (mark, counter) is kept
    db = reader.db.describe()
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tileserver.security.change_mark import ChangeMark\n"
        "from tileserver.security.database import SqliteDatabase\n"
        "db = SqliteDatabase(Path(sys.argv[1]))\n"
        "mark = ChangeMark.beside(db.path)\n"
        "with mark.writing():\n"
        "    with db.transaction(serial='accounts') as tx:\n"
        "        tx.execute('UPDATE generation SET n = n + 1 WHERE id = 1')\n"
        "    os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, db], capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr
    reads = counting_reads(reader)
    assert reader.generation() == before + 1
    assert reader.generation() == before + 1 and len(reads) == 2  # no trusted mark meanwhile


def test_a_removed_mark_is_not_trusted(tmp_path: Path, pair: tuple[Accounts, Accounts]) -> None:
    reader, writer = pair
    before = reader.generation()
    mark = tmp_path / "auth.db.changes"
    assert mark.stat().st_mode & 0o777 == 0o600
    mark.unlink()
    writer.add_pending("bob", "viewer")  # its marks go to a new file
    assert mark.exists()
    assert reader.generation() == before + 1
    reads = counting_reads(reader)
    assert reader.generation() == before + 1 and reads  # the new file, read once
    assert reader.generation() == before + 1 and len(reads) == 1
