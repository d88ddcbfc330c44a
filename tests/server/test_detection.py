"""Detection through the real server (DET-01): a token crawling a slide with the load client's
random trace is alerted and suspended within the minute; the alert is in the audit trail and
reaches the operator's HTTPS webhook, signed; ``tileserver alerts clear`` lifts it. A token
panning like a viewer at the same time is left alone."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sample_data.synthetic import write_svs
from tests.cli import cli
from tests.server.conftest import Server, run_server
from tests.server.test_auth_hardening import connect, send
from tests.server.test_security import PASSWORD_A, enrol, last_line_token
from tests.webhook import Receiver, webhook_receiver
from tileserver.bench.client import ClientOptions
from tileserver.bench.load import LoadSettings, measure_cell
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.accounts import Accounts
from tileserver.security.audit import SECURITY_ALERT, SECURITY_CONFIGURATION, records
from tileserver.security.detector import record_time
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with webhook_receiver(tmp_path_factory.mktemp("webhook")) as found:
        yield found


@dataclass(frozen=True)
class Site:
    server: Server
    home: Path
    slide: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("detection")
    home = root / "home"
    KeyRing(home).initialise()
    # Big enough that a random trace is random access: 2,625 tiles on its two finest levels.
    slide_file = write_svs(root / "big.svs", 12000, 10000, seed=11)
    slide = new_slide_id()
    with open_slide(slide_file) as source:
        convert(
            source, LocalObjects(root / "stores" / slide), slide, ConvertOptions(), KeyRing(home)
        )
    assert cli(home, "slides", "assign", "case-a", slide).returncode == 0
    flags = ("--alert-url", receiver.url, "--alert-ca", str(receiver.ca))
    with run_server(root / "stores", home, *flags, secure=True) as server:
        yield Site(server, home, slide)


def token(site: Site, name: str) -> str:
    made = cli(site.home, "tokens", "create", name, "--scope", "tiles", "--collection", "case-a")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def load(site: Site, trace: str, bearer: str, concurrency: int) -> dict[str, Any]:
    settings = LoadSettings(
        traces=(trace,),
        concurrency=(concurrency,),
        passes=("cold",),
        max_requests=2000,
        max_seconds=90,
        random_count=2000,
    )
    options = ClientOptions(
        headers=(("Authorization", f"Bearer {bearer}"),),
        cafile=str(site.home / "tls" / "cert.pem"),
    )
    _, runs = measure_cell(
        f"{site.server.base}/deepzoom/{site.slide}.dzi", trace, concurrency, settings, options
    )
    return runs[0]


def audit_records(site: Site) -> list[dict[str, Any]]:
    return list(records(site.home / "audit" / "audit.jsonl"))


def test_a_crawling_token_is_suspended_alerted_and_cleared(site: Site, receiver: Receiver) -> None:
    hook = receiver
    crawler, viewer = token(site, "crawler"), token(site, "viewer")
    tile = f"/deepzoom/{site.slide}_files/14/3_3.jpeg"
    assert site.server.get(tile, {"Authorization": f"Bearer {crawler}"}).status == 200

    panned = load(site, "pan", viewer, 1)  # a viewer's pan, at full speed
    assert panned["statuses"] == {"200": panned["requests"]}
    started = time.time()
    crawled = load(site, "random", crawler, 8)
    # Suspended part way: the rest of the crawl was refused.
    assert crawled["statuses"].get("200", 0) < 2000
    assert crawled["statuses"].get("403", 0) > 0, crawled["statuses"]
    reply = site.server.get(tile, {"Authorization": f"Bearer {crawler}"})
    assert reply.status == 403 and reply.json()["error"] == "suspended pending review"
    assert site.server.get(tile, {"Authorization": f"Bearer {viewer}"}).status == 200

    alerts = [r for r in audit_records(site) if r["event_id"] == SECURITY_ALERT]
    assert [a["detail"]["rule"] for a in alerts] == ["bulk_crawl"], alerts
    (alert,) = alerts
    assert alert["outcome"] == 8 and alert["user"] == "crawler" and alert["role"] == "service"
    assert alert["detail"]["response"] == "suspend"
    print(f"crawl: {crawled['statuses']}; alert after {record_time(alert) - started:.1f} s")
    assert record_time(alert) - started <= 60

    assert hook.arrived.wait(30), "no webhook POST"
    headers, body = hook.posts[0]
    key = KeyRing(site.home).service_key("alerts")
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Tileserver-Signature"], expected)
    posted = json.loads(body)
    assert posted["alert_id"] == alert["detail"]["alert_id"]
    assert posted["rule"] == "bulk_crawl" and posted["principal"] == "token:crawler"
    assert crawler not in body.decode()  # never a secret

    listed = cli(site.home, "alerts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["alerts"]
    assert entry["suspended"] == "token:crawler"

    cleared = cli(site.home, "alerts", "clear", alert["detail"]["alert_id"])
    assert cleared.returncode == 0, cleared.stderr
    assert site.server.get(tile, {"Authorization": f"Bearer {crawler}"}).status == 200
    changes = [r for r in audit_records(site) if r["event_id"] == SECURITY_CONFIGURATION]
    assert changes[-1]["detail"]["target"] == "token:crawler"
    again = cli(site.home, "alerts", "clear", alert["detail"]["alert_id"])
    assert again.returncode == 1 and again.stderr.startswith("tileserver: error: no suspension")


def test_credential_stuffing_from_one_address_is_throttled(site: Site) -> None:
    """Leaked name/password pairs tried from one address: alerted, and that address (only)
    slowed to a trickle with 429s; the alert names the address, never a tried password."""
    attacker, bystander = "127.0.3.1", "127.0.3.2"
    tried = [f"pw-{n:04d}-{'x' * 12}" for n in range(60)]
    conn = connect(site.server, attacker)
    try:
        statuses = [
            send(conn, "/auth/login", {"username": f"user{n}", "password": pw, "code": "000000"})
            for n, pw in enumerate(tried)
        ]
    finally:
        conn.close()
    assert {r.status for r in statuses} <= {401, 429}
    deadline = time.time() + 30
    while time.time() < deadline:
        rules = [r["detail"] for r in audit_records(site) if r["event_id"] == SECURITY_ALERT]
        stuffing = [d for d in rules if d["rule"] == "credential_stuffing"]
        if stuffing:
            break
        time.sleep(0.5)
    assert stuffing and stuffing[0]["key"] == f"addr:{attacker}"
    assert stuffing[0]["response"] == "throttle" and stuffing[0]["address"] == attacker
    text = (site.home / "audit" / "audit.jsonl").read_text()
    assert not [pw for pw in tried if pw in text]
    conn = connect(site.server, attacker)
    try:
        health = [send(conn, "/health", method="GET") for _ in range(10)]
    finally:
        conn.close()
    throttled = [r for r in health if r.status == 429]
    assert throttled and throttled[0].json()["error"] == "throttled after a security alert"
    assert int(throttled[0].headers["retry-after"]) >= 1
    conn = connect(site.server, bystander)
    try:
        assert all(send(conn, "/health", method="GET").status == 200 for _ in range(10))
    finally:
        conn.close()


def test_a_suspended_user_is_refused_in_every_session(site: Site) -> None:
    """A suspension names the person, so each of their sessions is refused, at once, until
    it is cleared."""
    boot = cli(site.home, "users", "bootstrap", "--url", site.server.base)
    assert boot.returncode == 0, boot.stderr
    alice = enrol(site.server, last_line_token(boot.stdout, "setup"), "alice", PASSWORD_A)
    assert cli(site.home, "users", "grant", "alice", "case-a").returncode == 0
    tile = f"/deepzoom/{site.slide}_files/14/3_3.jpeg"
    assert site.server.get(tile, alice.headers()).status == 200
    accounts = Accounts(site.home / "auth.db", KeyRing(site.home).service_key("totp"))
    accounts.suspend("user:alice", "label_bulk", "b2")
    reply = site.server.get(tile, alice.headers())
    assert reply.status == 403 and reply.json()["error"] == "suspended pending review"
    assert site.server.get("/api/slides", alice.headers()).status == 403
    cleared = cli(site.home, "alerts", "clear", "--principal", "user:alice")
    assert cleared.returncode == 0, cleared.stderr
    assert site.server.get(tile, alice.headers()).status == 200
