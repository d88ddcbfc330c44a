"""What happens when a detector rule fires: the record, the messages, and the response.

An alert is (1) its own audit record, SECURITY_ALERT (110113) with outcome 8 and
``detail.rule``; (2) one line on stderr, and on syslog when the operator names a syslog
address; (3) a JSON POST to the operator's webhook (``serve --alert-url``, HTTPS only),
signed with HMAC-SHA256 in ``X-Tileserver-Signature: sha256=<hex>``, retried a few times from
a thread of its own, so a slow or dead receiver never holds up serving or the next alert;
and (4) the rule's response: ``suspend`` the principal (persisted in the auth database until
``tileserver alerts clear``; every request of a suspended token, user or session is 403),
``throttle`` the key (a slow token bucket for ``THROTTLE_SECONDS``, in this process), or
``alert`` only. Nothing secret is sent: names, addresses, slide IDs, counts, thresholds.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import logging.handlers
import queue
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from tileserver.errors import ConfigError
from tileserver.security.accounts import Accounts
from tileserver.security.audit import (
    INSTANCES_ACCESSED,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
    AuditLog,
    iso_utc,
)
from tileserver.security.detector import (
    AUTH_FAILED,
    DEFAULT_RESPONSES,
    REFUSED,
    RESPONSES,
    RULES,
    Alert,
    Detector,
    Event,
    Thresholds,
    events_from_record,
)
from tileserver.security.keys import check_private
from tileserver.security.refusals import (
    BAD_CERTIFICATE,
    BAD_SIGNED_URL,
    BAD_TOKEN,
    NOT_GRANTED,
    Refusal,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tileserver-Signature"
MIN_KEY_BYTES = 32
ATTEMPTS = 3  # webhook deliveries tried per alert
TIMEOUT = 5.0  # seconds per webhook attempt
BACKOFF = 1.0  # seconds before the second attempt, doubling after
QUEUE = 256  # alerts waiting for the webhook; more are dropped (and said so on stderr)
THROTTLE_SECONDS = 900.0
THROTTLE_RATE = 0.2  # requests per second a throttled key keeps (12 a minute)
THROTTLE_BURST = 3.0
MAX_THROTTLED = 4096
# Refused credentials that are guesses; not an expired session (a tab left open overnight)
# nor no credentials at all (a browser before its login).
GUESSES = frozenset({BAD_TOKEN, BAD_CERTIFICATE, BAD_SIGNED_URL})


def sign(key: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of the body, in hex."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def read_alert_key(path: Path) -> bytes:
    """The webhook signing key from a file the operator made (0600, at least 32 bytes)."""
    try:
        check_private(path)
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read alert key {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"alert key {path} must hold at least {MIN_KEY_BYTES} bytes")
    return key


def alert_body(alert: Alert) -> bytes:
    document = {k: v for k, v in asdict(alert).items() if v is not None}
    document["time"] = iso_utc(alert.time)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def check_alert_url(url: str) -> SplitResult:
    """The parts of an operator's webhook URL, or ConfigError: HTTPS, a host, no credentials."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise ConfigError(f"--alert-url has a bad port: {url[:60]!r}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"--alert-url must be an https:// URL, not {url[:60]!r}")
    if parts.username or parts.password:
        raise ConfigError("--alert-url must not carry a user name or password")
    return parts


class Webhook:
    """POSTs alerts to one HTTPS URL from a background thread, with bounded retries."""

    def __init__(
        self,
        url: str,
        key: bytes,
        cafile: Path | None = None,
        *,
        attempts: int = ATTEMPTS,
        timeout: float = TIMEOUT,
        backoff: float = BACKOFF,
    ) -> None:
        parts = check_alert_url(url)
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the alert signing key must be at least {MIN_KEY_BYTES} bytes")
        try:
            self._context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --alert-ca {cafile}: {exc}") from exc
        self._host, self._port = str(parts.hostname), parts.port or 443
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._key = key
        self._attempts, self._timeout, self._backoff = attempts, timeout, backoff
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Webhook(https://{self._host}:{self._port}{self._path}, <key hidden>)"

    def submit(self, body: bytes) -> None:
        """Queue one delivery; never blocks (a full queue drops it, loudly)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            logger.error("alert webhook queue full: an alert was not sent to the webhook")

    def close(self, wait: float = TIMEOUT) -> None:
        """Stop the thread after what is queued (waiting at most ``wait`` seconds)."""
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=wait)
            except queue.Full:
                return
            self._thread.join(wait)

    def send(self, body: bytes) -> bool:
        """Deliver one body: True on a 2xx answer; retries failures ``attempts`` times."""
        delay = self._backoff
        for attempt in range(self._attempts):
            if attempt:
                time.sleep(delay)
                delay *= 2
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._context
            )
            try:
                connection.request(
                    "POST",
                    self._path,
                    body,
                    {
                        "Content-Type": "application/json",
                        SIGNATURE_HEADER: sign(self._key, body),
                    },
                )
                status = connection.getresponse().status
            except (OSError, http.client.HTTPException) as exc:
                logger.warning("alert webhook attempt %d failed: %s", attempt + 1, exc)
                continue
            finally:
                connection.close()
            if 200 <= status < 300:
                return True
            logger.warning("alert webhook attempt %d answered %d", attempt + 1, status)
        logger.error("alert webhook: gave up after %d attempts", self._attempts)
        return False

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            self.send(body)


class SyslogLine:
    """Writes one line to syslog at ``address`` (a socket path, or host:port for UDP),
    facility auth, priority critical."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        target: str | tuple[str, int] = (host, int(port)) if host and port.isdigit() else address
        try:
            self._handler = logging.handlers.SysLogHandler(
                target, facility=logging.handlers.SysLogHandler.LOG_AUTH
            )
        except OSError as exc:
            raise ConfigError(f"--alert-syslog {address[:60]}: {exc.strerror}") from exc
        self._handler.setFormatter(logging.Formatter("tileserver: %(message)s"))

    def __call__(self, line: str) -> None:
        record = logging.LogRecord("tileserver.alerts", logging.CRITICAL, "", 0, line, (), None)
        self._handler.emit(record)

    def close(self) -> None:
        self._handler.close()


def stderr_line(line: str) -> None:
    print(f"tileserver: {line}", file=sys.stderr, flush=True)


@dataclass
class _Bucket:
    until: float
    tokens: float
    stamp: float


class Throttles:
    """Keys slowed down by a ``throttle`` response: a small token bucket each, for a while."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()

    def add(self, key: str, seconds: float = THROTTLE_SECONDS) -> None:
        now = self._now()
        with self._lock:
            self._keys[key] = _Bucket(now + seconds, THROTTLE_BURST, now)
            self._keys.move_to_end(key)
            if len(self._keys) > MAX_THROTTLED:
                self._keys.popitem(last=False)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def wait(self, key: str) -> float | None:
        """None when ``key`` may go ahead (not throttled, or a token left), else seconds."""
        with self._lock:
            bucket = self._keys.get(key)
            if bucket is None:
                return None
            now = self._now()
            if now >= bucket.until:
                del self._keys[key]
                return None
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(THROTTLE_BURST, bucket.tokens + elapsed * THROTTLE_RATE)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return (1 - bucket.tokens) / THROTTLE_RATE


class Responder:
    """Records, announces and acts on alerts, in a thread of its own (it writes files)."""

    def __init__(
        self,
        audit: AuditLog | None,
        accounts: Accounts | None,
        throttles: Throttles,
        lines: tuple[Callable[[str], None], ...] = (stderr_line,),
        webhook: Webhook | None = None,
    ) -> None:
        self.audit = audit
        self.accounts = accounts
        self.throttles = throttles
        self.lines = lines
        self.webhook = webhook
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, alert: Alert) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()
        self._queue.put(alert)  # unbounded is safe: the detector's cooldown bounds alerts

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None
        if self.webhook is not None:
            self.webhook.close()
        for emit in self.lines:
            if isinstance(emit, SyslogLine):
                emit.close()

    def handle(self, alert: Alert) -> None:
        """Everything one alert does; each part is tried even if another fails."""
        response = alert.response
        if response == "suspend" and (self.accounts is None or alert.principal is None):
            response = "alert"  # nothing to suspend: a watcher without the database
        steps: list[tuple[str, Callable[[], None]]] = [
            ("respond", lambda: self._respond(alert, response)),
            ("record", lambda: self._record(alert, response)),
        ]
        line = f"ALERT {alert.rule} {alert.alert_id}: {alert.summary} (response: {response})"
        steps += [("announce", lambda emit=emit: emit(line)) for emit in self.lines]  # type: ignore[misc]
        if self.webhook is not None:
            webhook = self.webhook
            steps.append(("webhook", lambda: webhook.submit(alert_body(alert))))
        for name, step in steps:
            try:
                step()
            except Exception:  # one failed channel must not silence the others
                logger.exception("alert %s: %s failed", alert.alert_id, name)

    def _respond(self, alert: Alert, response: str) -> None:
        if response == "suspend" and self.accounts is not None and alert.principal is not None:
            self.accounts.suspend(alert.principal, alert.rule, alert.alert_id)
        elif response == "throttle":
            self.throttles.add(alert.key)

    def _record(self, alert: Alert, response: str) -> None:
        if self.audit is None:
            return
        kind, _, name = (alert.principal or "").partition(":")
        self.audit.append(
            SECURITY_ALERT,
            outcome=8,
            user=name[:64] or None,
            role="service" if kind == "token" else None,
            obj=alert.slide,
            # The record's source is this server; the address the alert is about is detail.
            detail={
                "rule": alert.rule,
                "alert_id": alert.alert_id,
                "summary": alert.summary,
                "response": response,
                "key": alert.key[:128],
                "address": alert.source_ip,
            },
        )

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            self.handle(alert)


class Monitor:
    """The detector in the server: fed from the event loop and from audit appends (any
    thread), alerts handed to the responder. Also answers "suspended?" and "throttled?"."""

    def __init__(
        self, detector: Detector, responder: Responder, now: Callable[[], float] = time.time
    ) -> None:
        self.detector = detector
        self.responder = responder
        self._now = now
        self._lock = threading.Lock()
        self._suspended: frozenset[str] = frozenset()
        self._generation: int | None = None

    def observe(self, event: Event) -> None:
        with self._lock:
            alerts = self.detector.observe(event)
        for alert in alerts:
            self.responder.submit(alert)

    def observe_tiles(self, events: Sequence[Event]) -> None:
        """Tiles served, a batch at a time (the server queues them: server/auth.py)."""
        with self._lock:
            alerts = self.detector.observe_tiles(events)
        for alert in alerts:
            self.responder.submit(alert)

    def observe_record(self, record: dict[str, Any]) -> None:
        """An audit record just written (AuditLog observer): never fails the write."""
        try:
            for event in events_from_record(record, live=True):
                self.observe(event)
        except Exception:
            logger.exception("detector: audit record seq %s not observed", record.get("seq"))

    def refused(self, refusal: Refusal) -> None:
        """A refused request, as the server decides it (before any record is written)."""
        if refusal.event_id == USER_AUTHENTICATION and refusal.reason in GUESSES:
            self.observe(Event(self._now(), AUTH_FAILED, source_ip=refusal.source_ip))
        elif refusal.event_id == INSTANCES_ACCESSED and refusal.reason == NOT_GRANTED:
            self.observe(
                Event(self._now(), REFUSED, refusal.principal, refusal.source_ip, refusal.obj)
            )

    def login_refused(self, source_ip: str) -> None:
        self.observe(Event(self._now(), AUTH_FAILED, source_ip=source_ip))

    def throttling(self) -> bool:
        """Whether any key is throttled (else no key needs computing per request)."""
        return bool(self.responder.throttles)

    def suspended(self, key: str, generation: int) -> bool | None:
        """Whether ``key`` is suspended, from what was read at ``generation``; None when that
        is stale (call ``refresh`` off the event loop, then ask again)."""
        if self._generation != generation:
            return None
        return key in self._suspended

    def refresh(self, generation: int) -> None:
        accounts = self.responder.accounts
        found = frozenset(p for p, *_ in accounts.suspensions()) if accounts else frozenset()
        self._suspended, self._generation = found, generation

    def throttled(self, key: str) -> float | None:
        return self.responder.throttles.wait(key)

    def close(self) -> None:
        self.responder.close()


@dataclass(frozen=True)
class AlertOptions:
    """Detection settings from ``serve`` (or ``audit watch``) flags, read once."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    url: str | None = None  # the operator's webhook (https://)
    ca: Path | None = None  # CA bundle to verify the webhook's certificate (default: system)
    key_file: Path | None = None  # signing key; default: the key ring's "alerts" service key
    syslog: str | None = None  # a syslog socket path or host:port; None: stderr only


def parse_hours(values: list[str]) -> dict[str, tuple[int, int]]:
    """``COLLECTION=START-END`` (hours 0-24, local time; ``*`` for every collection)."""
    hours = {}
    for value in values:
        collection, _, span = value.partition("=")
        start, _, end = span.partition("-")
        if not (collection and start.isdigit() and end.isdigit()):
            raise ConfigError(f"--usual-hours takes COLLECTION=START-END, not {value[:40]!r}")
        if not (0 <= int(start) <= 24 and 0 <= int(end) <= 24 and start != end):
            raise ConfigError(f"--usual-hours {value[:40]!r}: hours are 0-24, start != end")
        hours[collection] = (int(start), int(end))
    return hours


def parse_responses(values: list[str]) -> dict[str, str]:
    """``RULE=alert|throttle|suspend``, over the defaults."""
    responses = dict(DEFAULT_RESPONSES)
    for value in values:
        rule, _, response = value.partition("=")
        if rule not in RULES or response not in RESPONSES:
            raise ConfigError(
                f"--detect-response takes RULE=RESPONSE with RULE in {', '.join(RULES)} and "
                f"RESPONSE in {', '.join(RESPONSES)}; not {value[:40]!r}"
            )
        responses[rule] = response
    return responses


def build_monitor(
    options: AlertOptions, audit: AuditLog, accounts: Accounts | None, signing_key: bytes
) -> Monitor:
    """The server's detector, wired to the audit log it watches and the responses it makes.
    ``signing_key`` signs webhook posts unless ``options.key_file`` names another."""
    webhook = None
    if options.url is not None:
        key = read_alert_key(options.key_file) if options.key_file else signing_key
        webhook = Webhook(options.url, key, options.ca)
    lines = (stderr_line, *((SyslogLine(options.syslog),) if options.syslog else ()))
    # Slide -> collection for the hours rule: a local read is cheap; over a network it would
    # hold up the event loop, so with PostgreSQL that rule sees only configured collections.
    collection_of = None if accounts is None or accounts.remote else accounts.collection_of
    monitor = Monitor(
        Detector(options.thresholds, collection_of),
        Responder(audit, accounts, Throttles(), lines, webhook),
    )
    audit.observers.append(monitor.observe_record)
    return monitor
