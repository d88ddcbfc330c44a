"""Detection on the command line: ``serve``'s detection flags, ``tileserver alerts
list|clear``, and ``tileserver audit watch`` (the same rules over an audit file, for a host
other than the server's).

``audit watch`` reads TILESERVER_HOME/audit/audit.jsonl, or with an audit database
(``--audit-database`` / TILESERVER_AUDIT_DATABASE) every server process's stream in
PostgreSQL, from the start (``--follow``: and then as records arrive), checks every record's
MAC and its link to the one before in its stream (a broken chain, a log cut shorter or
replaced is an ``integrity`` alert), and runs the detector over the records, clocked by their
timestamps. It only reads: its alerts go to stderr, syslog and the
webhook, not into the trail it watches, and it suspends nobody (no access to the auth
database is assumed). It sees what the records show: tiles only as the server's per-view
summaries, refusals as their per-minute records (docs/detection.md says what that costs).
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tileserver.admin import ADMIN, _open, add_audit_database_option
from tileserver.errors import TileserverError
from tileserver.security import audit_streams as streams
from tileserver.security.alerts import (
    AlertOptions,
    Responder,
    SyslogLine,
    Throttles,
    Webhook,
    check_alert_url,
    parse_hours,
    parse_responses,
    read_alert_key,
    stderr_line,
)
from tileserver.security.audit import (
    GENESIS,
    SECURITY_ALERT,
    SECURITY_CONFIGURATION,
    iso_utc,
    record_mac,
)
from tileserver.security.audit_sink import genesis
from tileserver.security.database import connect
from tileserver.security.detector import (
    INTEGRITY,
    Detector,
    Event,
    Thresholds,
    events_from_record,
    record_time,
)
from tileserver.security.keys import KeyRing

POLL_SECONDS = 1.0  # --follow: how often the file is looked at for new records


# -- serve's flags ----------------------------------------------------------------------------
def add_detection_options(parser: argparse.ArgumentParser, *, serve: bool) -> None:
    parser.add_argument(
        "--alert-url", metavar="URL", help="POST alerts as signed JSON to this https:// webhook"
    )
    parser.add_argument(
        "--alert-ca", type=Path, metavar="FILE", help="CA bundle for the webhook's certificate"
    )
    parser.add_argument(
        "--alert-key",
        type=Path,
        metavar="FILE",
        help="HMAC key for the webhook signature (0600, >= 32 bytes; default: the key ring's "
        "keys/service/alerts.key)",
    )
    parser.add_argument(
        "--alert-syslog", metavar="ADDRESS", help="also send alerts to syslog (socket or host:port)"
    )
    if serve:  # a watcher has no slide -> collection map for the hours rule
        parser.add_argument(
            "--usual-hours",
            action="append",
            default=[],
            metavar="COLLECTION=START-END",
            help="local hours a collection is used ('*' for all); default: learned",
        )
        parser.add_argument(
            "--detect-response",
            action="append",
            default=[],
            metavar="RULE=RESPONSE",
            help="alert, throttle or suspend per rule (defaults: bulk_crawl=suspend, "
            "credential_stuffing=throttle, others alert)",
        )
        parser.add_argument(
            "--no-detect",
            action="store_true",
            help="no detector (benchmarks that crawl on purpose)",
        )


def detection_options(args: argparse.Namespace) -> AlertOptions | None:
    """The detection settings of ``serve`` or ``audit watch``; None with ``--no-detect``."""
    if getattr(args, "no_detect", False):
        if args.alert_url or args.alert_syslog or args.usual_hours or args.detect_response:
            raise TileserverError("--no-detect turns alerts off: drop the other alert options")
        return None
    if args.alert_url is None and (args.alert_ca or args.alert_key):
        raise TileserverError("--alert-ca and --alert-key need --alert-url")
    if args.alert_url is not None:  # checked now, not in each worker process
        check_alert_url(args.alert_url)
        if args.alert_ca is not None and not args.alert_ca.is_file():
            raise TileserverError(f"--alert-ca {args.alert_ca}: no such file")
        if args.alert_key is not None:
            read_alert_key(args.alert_key)
    thresholds = Thresholds(
        usual_hours=parse_hours(getattr(args, "usual_hours", [])),
        utc_offset=float(time.localtime().tm_gmtoff),
        responses=parse_responses(getattr(args, "detect_response", [])),
    )
    return AlertOptions(
        thresholds, args.alert_url, args.alert_ca, args.alert_key, args.alert_syslog
    )


# -- tileserver alerts ------------------------------------------------------------------------
def alert_records(records: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """The detector's alerts in an audit trail (SECURITY_ALERT records with a rule)."""
    found = []
    for record in records:
        detail = record.get("detail") or {}
        if record.get("event_id") == SECURITY_ALERT and "rule" in detail:
            found.append({"time": record["ts"], "seq": record["seq"], **detail})
    return found


def cmd_alerts(args: argparse.Namespace) -> int:
    accounts, audit = _open(args.settings)
    if args.alerts_command == "clear":
        if (args.alert_id is None) == (args.principal is None):
            raise TileserverError("give an ALERT_ID or --principal KIND:NAME (one of them)")
        cleared = accounts.clear_suspensions(alert_id=args.alert_id, principal=args.principal)
        if not cleared:
            what = args.alert_id or args.principal
            raise TileserverError(f"no suspension for {what[:80]!r}")
        for principal in cleared:
            audit.append(
                SECURITY_CONFIGURATION,
                action="U",
                user=ADMIN,
                role="admin",
                detail={
                    "change": "suspension cleared",
                    "target": principal,
                    "alert_id": args.alert_id,
                },
            )
            print(f"{principal}: suspension cleared")
        return 0
    suspended = {alert_id: principal for principal, _, alert_id, _ in accounts.suspensions()}
    alerts = alert_records(audit.records())
    for alert in alerts:
        alert["suspended"] = suspended.get(alert["alert_id"])
    if args.json:
        print(
            json.dumps(
                {
                    "alerts": alerts,
                    "suspensions": [
                        {"principal": p, "rule": r, "alert_id": a, "since": iso_utc(c)}
                        for p, r, a, c in accounts.suspensions()
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"{'time':24} {'alert':16} {'rule':20} {'response':9} summary")
    for a in alerts:
        state = f" [SUSPENDED: {a['suspended']}]" if a["suspended"] else ""
        print(
            f"{a['time']:24} {a['alert_id']:16} {a['rule']:20} {a['response']:9} "
            f"{a['summary']}{state}"
        )
    return 0


# -- tileserver audit watch ---------------------------------------------------------------------
class ChainWatch:
    """Checks records one by one as they arrive: MAC, seq and link to the one before."""

    def __init__(self, key: bytes, genesis: str = GENESIS) -> None:
        self._key = key
        self.seq = 0
        self.prev = genesis

    def check(self, record: dict[str, Any]) -> str | None:
        """What is wrong with ``record`` as the next one (None: nothing); the watch goes on
        from it either way, so one break is one alert."""
        try:
            ok_mac = hmac.compare_digest(record_mac(self._key, record), str(record["mac"]))
            seq, prev = record["seq"], record["prev"]
        except (KeyError, TypeError, ValueError):
            return f"record after seq {self.seq - 1} is malformed"
        problem = None
        if not ok_mac:
            problem = f"seq {seq} modified or forged (MAC mismatch)"
        elif seq != self.seq:
            problem = f"expected seq {self.seq}, found seq {seq} (records deleted or reordered)"
        elif prev != self.prev:
            problem = f"seq {seq} does not follow its predecessor"
        self.seq = seq + 1 if isinstance(seq, int) else self.seq + 1
        self.prev = str(record.get("mac"))
        return problem


def follow_lines(path: Path, follow: bool, poll: float = POLL_SECONDS) -> Iterator[bytes | str]:
    """Complete lines of ``path`` as bytes; with ``follow``, forever, waiting for more. A
    file that shrinks or is replaced yields a string saying so, then is read from its start."""
    handle = None
    inode = None
    partial = b""
    while True:
        if handle is None:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                if not follow:
                    raise TileserverError(f"{path}: no audit log") from None
                time.sleep(poll)
                continue
            inode, partial = path.stat().st_ino, b""
        line = handle.readline()
        if line.endswith(b"\n"):
            yield partial + line
            partial = b""
            continue
        partial += line
        if not follow:
            return
        time.sleep(poll)
        try:
            now = path.stat()
        except FileNotFoundError:
            now = None
        if now is None or now.st_ino != inode or now.st_size < handle.tell():
            handle.close()
            handle = None
            yield "the audit log was truncated or replaced"


def follow_streams(
    url: str, key: bytes, follow: bool, poll: float = POLL_SECONDS
) -> Iterator[tuple[str, bytes]]:
    """(stream, line) of every stream in the audit database, each poll's records in time
    order across streams; with ``follow``, forever, polling for more."""
    db = connect(url, max_size=1)
    seen: dict[str, int] = {}
    try:
        while True:
            batch = streams.records_after(db, seen)
            batch.sort(key=lambda item: _line_time(item[1]))
            for stream, line in batch:
                yield stream, (line + "\n").encode("utf-8")
            if not batch and not follow:
                return
            if not batch:
                time.sleep(poll)
    finally:
        db.close()


def _line_time(line: str) -> str:
    try:
        return str(json.loads(line).get("ts", ""))
    except (ValueError, AttributeError):
        return ""


def _watched_lines(args: argparse.Namespace, key: bytes) -> Iterator[tuple[str, bytes | str]]:
    """(stream, line or a cut/replaced notice) of the trail being watched."""
    url = args.settings.audit_database
    if url is not None:
        yield from follow_streams(url, key, args.follow)
        return
    path = args.file or args.settings.home / "audit" / "audit.jsonl"
    for line in follow_lines(path, args.follow):
        yield "", line


def cmd_watch(args: argparse.Namespace) -> int:
    options = detection_options(args)
    assert options is not None
    home = args.settings.home
    key = KeyRing(home).service_key("audit")
    webhook = None
    if options.url is not None:
        signing = (
            read_alert_key(options.key_file)
            if options.key_file
            else (KeyRing(home).service_key("alerts"))
        )
        webhook = Webhook(options.url, signing, options.ca)
    lines = (stderr_line, *((SyslogLine(options.syslog),) if options.syslog else ()))
    responder = Responder(None, None, Throttles(), lines, webhook)
    detector = Detector(options.thresholds)
    chains: dict[str, ChainWatch] = {}  # per stream ("" for the file)
    records = alerts = 0
    broken = False
    try:
        for stream, line in _watched_lines(args, key):
            events: list[Event]
            if isinstance(line, str):  # cut or replaced: say so, and check the new one afresh
                events = [Event(time.time(), INTEGRITY, reason=line)]
                chains.pop(stream, None)
                broken = True
            else:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {}
                if stream not in chains:
                    chains[stream] = ChainWatch(key, genesis(key, stream) if stream else GENESIS)
                chain = chains[stream]
                problem = chain.check(record) if isinstance(record, dict) else "not an object"
                if problem is not None and stream:
                    problem = f"stream {stream}: {problem}"
                events = [] if problem else events_from_record(record, live=False)
                if problem is not None:
                    broken = True
                    when = time.time() if "ts" not in record else _time(record)
                    events = [Event(when, INTEGRITY, reason=f"audit chain broken: {problem}")]
                records += 1
            for event in events:
                for alert in detector.observe(event):
                    responder.handle(alert)
                    alerts += 1
    except KeyboardInterrupt:
        pass
    finally:
        responder.close()
    print(f"audit watch: {records} records, {alerts} alert(s)", file=sys.stderr)
    return 2 if broken else 0


def _time(record: dict[str, Any]) -> float:
    try:
        return record_time(record)
    except (ValueError, TypeError):
        return time.time()


def add_watch_command(audit_commands: Any) -> None:
    """``tileserver audit watch``, under the ``audit`` command's subcommands (admin.py)."""
    watch = audit_commands.add_parser(
        "watch", help="run the detector over the audit file (chain checked as it goes)"
    )
    watch.add_argument("--follow", action="store_true", help="keep reading as records arrive")
    watch.add_argument("--file", type=Path, help="an audit file other than TILESERVER_HOME's")
    add_audit_database_option(watch)
    add_detection_options(watch, serve=False)
    watch.set_defaults(func=cmd_watch)


def add_commands(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="the detector's alerts and suspensions")
    al = alerts.add_subparsers(dest="alerts_command", required=True)
    listing = al.add_parser("list", help="alerts in the audit trail, and who is suspended")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    clear = al.add_parser("clear", help="lift a suspension (audited)")
    clear.add_argument("alert_id", nargs="?", help="the alert whose suspension to lift")
    clear.add_argument("--principal", metavar="KIND:NAME", help="e.g. token:lis or user:alice")
    alerts.set_defaults(func=cmd_alerts)
