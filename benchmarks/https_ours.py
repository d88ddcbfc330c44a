"""Our server as a deployment runs it, for benchmarks: HTTPS (its own self-signed certificate,
trusted by exactly that file) and authentication on, reached with a scoped bearer token.

``tileserver.bench.comparators.ours_server`` serves plain HTTP without auth; this one keeps
TLS and the per-request token check (and its audit) in the measured path.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tileserver.bench.client import ClientOptions

CLI = [sys.executable, "-m", "tileserver.cli"]
COLLECTION = "bench"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class HttpsServer:
    url: str  # the slide's .dzi
    options: ClientOptions  # what the load client needs: the token, the certificate
    pid: int  # the serve process (its workers are its children)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (from /proc)."""
    ticks, stack = 0, [pid]
    while stack:
        proc = f"/proc/{stack.pop()}"
        try:
            with open(f"{proc}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
            for task in os.listdir(f"{proc}/task"):
                with open(f"{proc}/task/{task}/children") as f:
                    stack += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return ticks / os.sysconf("SC_CLK_TCK")


def bench_token(
    home: Path, slide_ids: Sequence[str], name: str = "bench-tiles", scope: str = "tiles"
) -> str:
    """A fresh bearer token limited to ``scope`` on a collection holding the slides."""
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    for slide_id in slide_ids:
        run = [*CLI, "slides", "assign", COLLECTION, slide_id]
        subprocess.run(run, check=True, env=env, capture_output=True)
    subprocess.run([*CLI, "tokens", "revoke", name], env=env, capture_output=True)
    made = subprocess.run(
        [*CLI, "tokens", "create", name, "--scope", scope, "--collection", COLLECTION],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return made.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, token: str, cafile: Path) -> bool:
    if not cafile.exists():
        return False
    context = ssl.create_default_context(cafile=str(cafile))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with opener.open(request, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextmanager
def ours_https(
    stores: Path | str, home: Path, slide_id: str, token: str, *extra: str, detect: bool = False
) -> Iterator[HttpsServer]:
    """``tileserver serve STORES --port P *extra`` on 127.0.0.1 until the block ends
    (``stores``: a directory or a store URL such as ``s3://bucket/prefix``). Without
    ``detect``, ``--no-detect``: a benchmark's random trace is a crawl, and would be suspended."""
    port = free_port()
    cmd = [*CLI, "serve", str(stores), "--host", "127.0.0.1", "--port", str(port), *extra]
    cmd += [] if detect else ["--no-detect"]
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    cafile = home / "tls" / "cert.pem"
    url = f"https://127.0.0.1:{port}/deepzoom/{slide_id}.dzi"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not answers(url, token, cafile):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"serve did not answer {url} (exit {proc.poll()}): {tail}")
                time.sleep(0.05)
            headers = (("Authorization", f"Bearer {token}"),)
            yield HttpsServer(url, ClientOptions(headers=headers, cafile=str(cafile)), proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
