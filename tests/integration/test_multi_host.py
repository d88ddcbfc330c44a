"""Scale-out for real (issue 13): slides converted on a Dask LocalCluster onto S3 (SeaweedFS),
three ``tileserver serve`` processes, each on its own loopback address with its own
TILESERVER_HOME (a copy of the key directory only), sharing the S3 location, the KEK, the
state database (PostgreSQL, ``serve --database``) and the central audit (one hash-chained
stream per process in PostgreSQL), with HAProxy in front of them.

Through the balancer a user enrols and logs in, and tiles are panned across every server; a
token revoked with the admin CLI is refused by every server on its next request; a server
killed with SIGKILL under load costs no request beyond the ones in flight at the kill; and the
audit streams of all servers verify together.

Every request opens its own TLS connection: the balancer passes TLS through and so balances
connections, and a fresh connection per request is what spreads a pan over the servers.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sample_data import write_svs
from tests.haproxy import Backend, HaProxy, haproxy
from tests.pgserver import SUPERUSER, PgServer
from tests.s3server import S3Server
from tests.server.conftest import Server
from tests.server.test_security import Person, enrol, last_line_token, login
from tileserver.security.audit import (
    APPLICATION_START,
    APPLICATION_STOP,
    INSTANCES_ACCESSED,
)
from tileserver.security.keys import KeyRing
from tileserver.security.tls import ensure_certificate

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # one loopback address per server
COLLECTION = "case-mh"
PASSWORD = "correct horse battery staple M"  # test-only
START_TIMEOUT = 60.0
ANNOUNCE = re.compile(r" at (https://[0-9.]+:[0-9]+)/")


@dataclass
class Node:
    """One ``tileserver serve`` process."""

    name: str
    process: subprocess.Popen[bytes]
    server: Server  # requests straight to it, bypassing the balancer
    log: Path


@dataclass
class Site:
    home: Path
    env: dict[str, str]
    nodes: list[Node]
    balancer: HaProxy
    front: Server  # requests through the balancer
    alice: Person
    slides: list[str]


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tileserver.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def start_node(
    name: str, host: str, location: str, admin: Path, env: dict[str, str], root: Path
) -> Node:
    """A server with its own home holding only a copy of the key directory (the KEK and the
    service keys: TOTP sealing, audit MACs), as a host provisioned with the same secrets;
    slide data keys come from their stores, state and audit from PostgreSQL."""
    home = root / name
    home.mkdir(mode=0o700)
    shutil.copytree(admin / "keys", home / "keys", ignore=shutil.ignore_patterns("slides"))
    tls = admin / "tls"
    log = root / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tileserver.cli",
                "serve",
                location,
                "--host",
                host,
                "--port",
                "0",
                "--database",
                env["TILESERVER_DATABASE"],
                "--cert",
                str(tls / "cert.pem"),
                "--key",
                str(tls / "key.pem"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, "TILESERVER_HOME": str(home), "TILESERVER_DATABASE": ""},
        )
    # Requests verify the one certificate every server presents (the admin home's).
    return Node(name, process, Server("", admin, location), log)


def wait_announced(node: Node) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not (found := ANNOUNCE.search(node.log.read_text(errors="replace"))):
        if node.process.poll() is not None or time.monotonic() > deadline:
            tail = node.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{node.name} did not start ({node.process.poll()}): {tail}")
        time.sleep(0.05)
    node.server = Server(found.group(1), node.server.home, node.server.directory)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def admin_env(root: Path, s3: S3Server, pg: PgServer) -> dict[str, str]:
    """The operator's environment: S3, a fresh state database and the audit database's
    append-only role (made by ``audit init-db``); passwords only in variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    }
    database = f"postgresql://{SUPERUSER}@{pg.host}:{pg.port}/{pg.create_database()}"
    env.update(
        s3.env(),
        TILESERVER_HOME=str(root / "admin"),
        TILESERVER_DATABASE=database,
        PGPASSWORD=pg.password,
    )
    role = f"audit_{secrets.token_hex(4)}"
    made = run_cli(env, "audit", "init-db", "--admin-database", database, "--role", role)
    assert made.returncode == 0, made.stderr
    env["TILESERVER_AUDIT_DATABASE"] = made.stdout.strip().splitlines()[-1]
    return env


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, pg_server: PgServer
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("multi-host")
    env = admin_env(root, s3_server, pg_server)
    admin = Path(env["TILESERVER_HOME"])
    assert run_cli(env, "keys", "init").returncode == 0
    keyring = KeyRing(admin)
    for purpose in ("totp", "audit"):  # made now, so every host gets the same copy
        keyring.service_key(purpose)
    # One certificate naming every server's address (and "localhost", which the balancer's
    # health check verifies): the public name's certificate, on every host.
    ensure_certificate(admin, ["localhost", "127.0.0.1", *HOSTS])
    slides = [write_svs(root / f"s{seed}.svs", 2400, 1800, seed=seed) for seed in (41, 42)]
    location = f"s3://{s3_server.bucket}/multi-host-{secrets.token_hex(4)}"
    converted = run_cli(
        env,
        "convert",
        "--quiet",
        *map(str, slides),
        "--out",
        location,
        "--scheduler",
        "local:2",
        "--collection",
        COLLECTION,
        timeout=180,
    )
    assert converted.returncode == 0, converted.stderr
    assert "2 converted, 0 skipped (already complete), 0 failed" in converted.stderr
    nodes = [start_node(f"s{i}", h, location, admin, env, root) for i, h in enumerate(HOSTS, 1)]
    try:
        for node in nodes:
            wait_announced(node)
        backends = [Backend(n.name, *_address(n.server)) for n in nodes]
        with haproxy(root / "haproxy", backends, ca_file=admin / "tls" / "cert.pem") as balancer:
            front = Server(balancer.base, admin, location)
            boot = run_cli(env, "users", "bootstrap", "--url", front.base)
            assert boot.returncode == 0, boot.stderr
            alice = enrol(front, last_line_token(boot.stdout, "setup"), "alice", PASSWORD)
            assert run_cli(env, "users", "grant", "alice", COLLECTION).returncode == 0
            # A fresh login through the balancer (the enrolment used this step's code).
            logged_in = login(front, alice, step_offset=1)
            assert logged_in.status == 200, logged_in.body  # type: ignore[attr-defined]
            alice.cookie = logged_in.headers["set-cookie"].split(";")[0]  # type: ignore[attr-defined]
            listed = front.get("/api/slides", alice.headers())
            assert listed.status == 200, listed.body
            ids = sorted(item["id"] for item in listed.json()["items"])
            assert len(ids) == 2
            yield Site(admin, env, nodes, balancer, front, alice, ids)
    finally:
        for node in nodes:
            stop(node.process)


def _address(server: Server) -> tuple[str, int]:
    host, _, port = server.base.removeprefix("https://").rpartition(":")
    return host, int(port)


def level_tiles(front: Server, slide: str, headers: dict[str, str]) -> list[str]:
    """Every tile path of the slide's full-resolution DeepZoom level."""
    reply = front.get(f"/deepzoom/{slide}.dzi", headers)
    assert reply.status == 200, reply.body
    image = ET.fromstring(reply.body)
    size = image.find("{*}Size")
    assert size is not None
    width, height = int(size.get("Width", 0)), int(size.get("Height", 0))
    edge = int(image.get("TileSize", 0))
    level = math.ceil(math.log2(max(width, height)))
    return [
        f"/deepzoom/{slide}_files/{level}/{col}_{row}.jpeg"
        for row in range(math.ceil(height / edge))
        for col in range(math.ceil(width / edge))
    ]


def test_a_pan_through_the_balancer_is_spread_over_every_server(site: Site) -> None:
    before = site.balancer.stats()
    tiles = level_tiles(site.front, site.slides[0], site.alice.headers())
    for path in tiles:
        reply = site.front.get(path, site.alice.headers())
        assert reply.status == 200, (path, reply.body[:200])
        assert reply.headers["content-type"] == "image/jpeg"
    after = site.balancer.stats()
    served = {n.name: after[n.name].connections - before[n.name].connections for n in site.nodes}
    assert sum(served.values()) >= len(tiles)
    # Round robin over fresh connections: each server takes about a third of the pan.
    assert min(served.values()) >= len(tiles) // 6, served
    # The session made on one server is good on every server: they share the account store.
    for node in site.nodes:
        assert node.server.get(tiles[0], site.alice.headers()).status == 200, node.name


def test_a_revoked_token_is_refused_by_every_server_at_once(site: Site) -> None:
    made = run_cli(
        site.env,
        "tokens",
        "create",
        "lis-mh",
        "--scope",
        "tiles,metadata",
        "--collection",
        COLLECTION,
    )
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    tile = level_tiles(site.front, site.slides[1], bearer)[0]
    # Every server has answered for this token (and may have cached that answer) ...
    for node in site.nodes:
        assert node.server.get(tile, bearer).status == 200, node.name
    for _ in range(len(site.nodes)):
        assert site.front.get(tile, bearer).status == 200
    revoked = run_cli(site.env, "tokens", "revoke", "lis-mh")
    assert revoked.returncode == 0, revoked.stderr
    # ... and the very next request to each of them is refused.
    for node in site.nodes:
        assert node.server.get(tile, bearer).status == 401, node.name
    for _ in range(2 * len(site.nodes)):
        assert site.front.get(tile, bearer).status == 401


@dataclass(eq=False)  # compared by identity: each is one request
class Outcome:
    started: float
    ended: float
    status: int  # 0: the connection failed
    error: str = ""


def test_a_killed_server_costs_only_its_in_flight_requests(site: Site) -> None:
    """SIGKILL under concurrent load: a request may fail only if it was under way between the
    signal and the moment the process was reaped (its sockets closed); every request started
    after that succeeds, the balancer retrying refused connections on the survivors."""
    victim = site.nodes[0]
    headers = site.alice.headers()
    tiles = [t for s in site.slides for t in level_tiles(site.front, s, headers)]
    total, kill_after, threads = 240, 60, 6
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    enough = threading.Event()

    def fetch(i: int) -> None:
        started = time.monotonic()
        try:
            status, error = site.front.get(tiles[i % len(tiles)], headers).status, ""
        except OSError as exc:  # reset, refused, TLS cut short
            status, error = 0, f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(Outcome(started, time.monotonic(), status, error))
            if len(outcomes) >= kill_after:
                enough.set()

    before = site.balancer.stats()[victim.name].connections
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(fetch, i) for i in range(total)]
        assert enough.wait(120), "the load did not get going"
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        gone_at = time.monotonic()  # its sockets are closed once it is reaped
        for future in futures:
            future.result(timeout=120)
    assert site.balancer.stats()[victim.name].connections > before, "the victim took no load"
    assert len(outcomes) == total
    failed = [o for o in outcomes if o.status != 200]
    in_flight = [o for o in outcomes if o.started <= gone_at and o.ended >= killed_at]
    assert all(o in in_flight for o in failed), [o for o in failed if o not in in_flight]
    after_kill = [o for o in outcomes if o.started > gone_at]
    assert after_kill and all(o.status == 200 for o in after_kill)
    site.balancer.wait_status(victim.name, "DOWN", timeout=10)
    # The survivors go on serving through the balancer.
    for path in tiles[:6]:
        assert site.front.get(path, headers).status == 200


def test_the_audit_streams_of_every_server_verify_together(site: Site) -> None:
    killed = sum(node.process.poll() == -signal.SIGKILL for node in site.nodes)
    for node in site.nodes:
        stop(node.process)  # graceful: open slide views are written to the trail
    verified = run_cli(site.env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    intact = set(re.findall(r"^stream (\S+): intact", verified.stdout, re.M))
    assert f"audit trail intact: {len(intact)} stream(s)" in verified.stdout
    exported = run_cli(site.env, "audit", "export", "--out", "-")
    assert exported.returncode == 0, exported.stderr
    trail = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {r["stream"] for r in trail} <= intact
    started = [r for r in trail if r["event_type"] == APPLICATION_START]
    stopped = [r for r in trail if r["event_type"] == APPLICATION_STOP]
    # Each server wrote its own stream, a killed one too, though it never wrote its stop.
    assert len({r["stream"] for r in started}) == len(started) == len(site.nodes)
    assert len(stopped) == len(site.nodes) - killed
    assert {r["stream"] for r in stopped} <= {r["stream"] for r in started}
    views = [r for r in trail if r["event_id"] == INSTANCES_ACCESSED and r["user"] == "alice"]
    assert {r["object"] for r in views} == set(site.slides)
    assert len({r["stream"] for r in views}) >= 2  # the pan reached several servers' streams
