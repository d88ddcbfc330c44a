"""A real load balancer for tests: Debian's HAProxy in front of ``tileserver serve`` processes,
with its configuration written at run time, listening on a free loopback port.

TLS passes through (``mode tcp``): HAProxy never holds a key or sees a request, the client
verifies the tile server's own certificate end to end, and the servers keep doing what they
already do for TLS, sessions and client certificates (mutual TLS would not survive a
terminating proxy). The price: balancing is per connection, not per request, and a server sees
the balancer's address as the client's (per-address login limits and detection rules then
count the balancer, not a person; PROXY protocol support in the server would lift that).

Health checks speak HTTPS to ``/health`` and verify the server's certificate against a CA;
``retries`` with ``option redispatch 1`` send a connection that a dead server refuses to
another server, and ``observe layer4`` marks a server down on the first refused connection
instead of waiting for the next check. Statistics come from the admin socket (``show stat``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port, log_tail, spawn, stop

START_TIMEOUT = 30.0
BACKEND = "tileservers"


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class ServerStat:
    status: str  # "UP", "DOWN", "MAINT", ... ("UP 1/2" while a change is being confirmed)
    connections: int  # total connections HAProxy sent to it (stot)
    check: str  # the last health check's result: "L7OK" once /health answered 200


@dataclass
class HaProxy:
    host: str
    port: int
    admin_socket: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    def command(self, line: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, ServerStat]:
        """Per backend server: its state and how many connections it was given."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: ServerStat(row["status"], int(row["stot"] or 0), row["check_status"])
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, name: str, status: str, timeout: float = START_TIMEOUT) -> None:
        """Until ``name`` is in ``status``; "UP" also needs a passed check (HAProxy assumes a
        server is up before its first check)."""
        deadline = time.monotonic() + timeout
        while (
            (now := self.stats().get(name)) is None
            or now.status != status
            or (status == "UP" and now.check != "L7OK")
        ):
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"haproxy exited with {code}: {log_tail(self.log, 20)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is {now} after {timeout:.0f} s, not {status}")
            time.sleep(0.05)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError("haproxy not found: run scripts/setup-services.sh")
    return found


def config(
    host: str,
    port: int,
    admin_socket: Path,
    backends: Sequence[Backend],
    ca_file: Path,
    balance: str,
) -> str:
    checks = [
        "check check-ssl",
        f"verify required ca-file {ca_file} verifyhost localhost",
        "inter 500ms fall 2 rise 1",
        "observe layer4 error-limit 1 on-error mark-down",
    ]
    servers = "\n".join(f"    server {b.name} {b.host}:{b.port}" for b in backends)
    return f"""\
global
    maxconn 2048
    stats socket {admin_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    retries 3
    option redispatch 1

frontend tiles
    bind {host}:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance {balance}
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
    default-server {" ".join(checks)}
{servers}
"""


@contextlib.contextmanager
def haproxy(
    workdir: Path,
    backends: Sequence[Backend],
    *,
    ca_file: Path,
    balance: str = "roundrobin",
    host: str = "127.0.0.1",
) -> Iterator[HaProxy]:
    """Run HAProxy in front of ``backends`` until the block ends; ready once every backend
    passed its health check. ``ca_file`` verifies the backends' certificates (for the name
    "localhost") in those checks."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin_socket = workdir / "haproxy.sock"
    path = workdir / "haproxy.cfg"
    path.write_text(config(host, port, admin_socket, backends, ca_file, balance))
    binary = haproxy_binary()
    check = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
    log = workdir / "haproxy.log"
    process = spawn([binary, "-db", "-f", str(path)], log, workdir)  # -db: in the foreground
    balancer = HaProxy(host, port, admin_socket, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not admin_socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start ({process.poll()}): {log_tail(log, 20)}")
            time.sleep(0.02)
        for backend in backends:
            balancer.wait_status(backend.name, "UP", deadline - time.monotonic())
        yield balancer
    finally:
        stop(process)  # hard stop: a test balancer has nothing to drain
