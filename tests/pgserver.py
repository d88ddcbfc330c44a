"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, a throwaway cluster
(initdb) in a temporary directory, listening on a free loopback port, with a superuser whose
password is generated at run time.

Run as root (CI), the cluster belongs to the ``postgres`` system user, since PostgreSQL
refuses to run as root; otherwise it runs as the current user. The server process is a child
of the test run (never daemonised by pg_ctl) and dies with it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.processes import free_port, log_tail, spawn, stop

START_TIMEOUT = 60.0
SUPERUSER = "tileserver_test"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL not found: run scripts/setup-services.sh")


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass
class PgServer:
    host: str
    port: int
    password: str
    directory: Path

    def dsn(self, database: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        secret = quote(password or self.password, safe="")
        return f"postgresql://{user}:{secret}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its name."""
        import psycopg

        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, not user input
        return name


def _as_owner() -> dict[str, object]:
    """Popen arguments that drop root to the postgres user (nothing when not root)."""
    if os.getuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _chown_for_owner(path: Path) -> None:
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)


@contextlib.contextmanager
def postgresql() -> Iterator[PgServer]:
    """Run a fresh PostgreSQL cluster until the block ends, then stop it and delete it."""
    binaries = bin_dir()
    # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user
    # cannot traverse.
    directory = Path(tempfile.mkdtemp(prefix="tileserver-pg-"))
    _chown_for_owner(directory)
    data = directory / "data"
    password = secrets.token_urlsafe(24)
    pwfile = directory / "pw"
    pwfile.write_text(password)
    pwfile.chmod(0o600)
    _chown_for_owner(pwfile)
    log = directory / "postgres.log"
    try:
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=directory,
            **_as_owner(),  # type: ignore[call-overload]
        )
        pwfile.unlink()
        port = free_port()
        command = [
            str(binaries / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={directory}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]  # fsync off: throwaway data, and the suite must not wait on the disk
        process = spawn(command, log, directory, **_as_owner())
        server = PgServer("127.0.0.1", port, password, directory)
        try:
            _wait_ready(server, process, log)
            yield server
        finally:
            stop(process, signal.SIGINT, grace=10)  # "fast" shutdown: roll back, disconnect
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(server: PgServer, process: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < START_TIMEOUT:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}: {log_tail(log, 20)}")
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = str(exc).strip()
            time.sleep(0.1)
    raise RuntimeError(
        f"PostgreSQL not ready after {START_TIMEOUT:.0f} s ({last}): {log_tail(log, 20)}"
    )
