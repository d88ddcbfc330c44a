"""What the fixtures that start real servers (S3, PostgreSQL, HAProxy) share: free loopback
ports, children that die with the test run, log tails for errors, and stopping."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice, so parallel runs do not clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """A ``preexec_fn``: a killed test run must not leave a server behind. Runs after any
    user switch in Popen, which matters: changing credentials clears the death signal."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(command: list[str], log: Path, cwd: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``command`` started in ``cwd`` in a session of its own, its output in ``log``, dying
    with the test run (``popen``: more of Popen's arguments, such as ``env`` or ``user``)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
            **popen,
        )


def log_tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """``sig``, then a kill if the process has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
