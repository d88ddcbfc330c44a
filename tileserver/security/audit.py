"""Tamper-evident audit trail: JSON lines chained by HMAC-SHA256 (AUD-01..04).

Each line is one record in canonical JSON (sorted keys, no spaces, ASCII only), so CR, LF and
control characters in any value are always escaped and one ``append`` is always one line: a
user name cannot forge a record (AUD-03). Fields:

    seq         0, 1, 2, ... with no gaps
    ts          UTC, ISO-8601 with milliseconds, ending in "Z"
    event_id    DICOM audit event ID (DCM code, PS3.15 A.5 / PS3.16 CID 400)
    event_type  DICOM event type code (CID 401) or null
    action      C, R, U, D or E (create, read, update, delete, execute)
    outcome     0 success, 4 minor failure, 8 serious failure, 12 major failure
    user, role, source_ip, object (the pseudonymous slide ID): strings or null
    detail      an object of small JSON scalars or lists of them
    prev        the previous record's mac (64 zeros for seq 0)
    mac         hex HMAC-SHA256(key, bytes(prev) || canonical JSON of the record without mac)

``verify`` recomputes the chain and names the first modified, deleted, reordered, forged or
malformed record. What a chain alone cannot show is *truncation*: cutting records off the end
leaves a shorter chain that is still valid. Detecting that needs the last (seq, mac) to be
known elsewhere: signed checkpoints kept off this host (checkpoints.py, AUD-04).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from tileserver.errors import TileserverError

# DICOM audit event IDs (DCM, PS3.16 CID 400 "Audit Event ID").
APPLICATION_ACTIVITY = 110100  # application started or stopped (types below)
AUDIT_LOG_USED = 110101  # someone read or exported this audit log
INSTANCES_ACCESSED = 110103  # slide views, thumbnails, regions, label/macro images
EXPORT = 110106  # data leaving the system (downloads, exports)
QUERY = 110112  # searches
SECURITY_ALERT = 110113  # tamper, lockout, rate-limit trip, TLS failure
USER_AUTHENTICATION = 110114  # login and logout (types below)
# DICOM audit event type codes (DCM, PS3.16 CID 401 "Audit Event Type Code").
APPLICATION_START = 110120
APPLICATION_STOP = 110121
LOGIN = 110122
LOGOUT = 110123
SECURITY_CONFIGURATION = 110129  # security configuration has been changed
SECURITY_ROLES_CHANGED = 110136
USER_SECURITY_ATTRIBUTES_CHANGED = 110137  # e.g. MFA enrolment or reset, password change

ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({0, 4, 8, 12})
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
MAX_STRING = 256  # per value: enough for a name or an ID, not for a novel
MAX_LIST = 64
MAX_DETAIL_KEYS = 32
MIN_KEY_BYTES = 32
GENESIS = "0" * 64
FIELDS = frozenset(
    {"seq", "ts", "event_id", "event_type", "action", "outcome", "user", "role", "source_ip"}
    | {"object", "detail", "prev", "mac"}
)
_TAIL_CHUNK = 4096


class AuditError(TileserverError):
    """The audit log cannot be written or read as it should."""


class AuditRecordRejected(AuditError, ValueError):
    """A value that must not go into the log: wrong type, too long, or not JSON-safe."""


class AuditChainBroken(AuditError):
    """The chain does not verify, so the log is not exported or trusted."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records that verified, in order, before the first bad one
    first_bad: int | None  # 0-based line (= expected seq) of the first bad record
    reason: str
    head: str | None = field(default=None, compare=False)  # mac of the last good record


class AuditSink(Protocol):
    """Where an ``AuditLog`` writes instead of its file (audit_sink.PostgresSink): numbers,
    chains (``seal``) and stores one record per ``write``, and reads its own stream back."""

    def write(self, ts: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    def records(self) -> Iterator[dict[str, Any]]: ...

    def verify(self) -> VerifyResult: ...

    def close(self) -> None: ...


def canonical(record: dict[str, Any]) -> str:
    """The one serialisation the MAC covers: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def record_mac(key: bytes, record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "mac"}
    message = bytes.fromhex(record["prev"]) + canonical(body).encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def seal(key: bytes, seq: int, ts: str, fields: dict[str, Any], prev: str) -> dict[str, Any]:
    """The record with number ``seq`` following the record whose mac is ``prev``."""
    record = {"seq": seq, "ts": ts, **fields, "prev": prev}
    record["mac"] = record_mac(key, record)
    return record


def iso_utc(t: float) -> str:
    """``2026-01-02T03:04:05.678Z``: UTC with milliseconds, as SIEMs and ATNA expect."""
    text = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise AuditError(f"audit key must be at least {MIN_KEY_BYTES} bytes")


def _check_string(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise AuditRecordRejected(f"audit field {name!r} must be text or None")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise AuditRecordRejected(f"audit field {name!r} is longer than {MAX_STRING} characters")


def _check_scalar(name: str, value: object) -> None:
    if isinstance(value, str):
        _check_string(name, value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise AuditRecordRejected(f"audit detail {name!r} is not a finite number")
    elif value is not None and not isinstance(value, int | float | bool):
        raise AuditRecordRejected(f"audit detail {name!r} has type {type(value).__name__}")


def _check_detail(detail: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(detail, dict) or len(detail) > MAX_DETAIL_KEYS:
        raise AuditRecordRejected(f"audit detail must be a dict of at most {MAX_DETAIL_KEYS} keys")
    for name, value in detail.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise AuditRecordRejected("audit detail keys must be short strings")
        if isinstance(value, list | tuple):
            if len(value) > MAX_LIST:
                raise AuditRecordRejected(f"audit detail {name!r} has more than {MAX_LIST} items")
            for item in value:
                _check_scalar(name, item)
        else:
            _check_scalar(name, value)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in detail.items()}


class AuditLog:
    """Appends chained records to one file; safe across threads and processes.

    Every ``append`` takes an exclusive ``flock`` on ``<file>.lock``, reads the last line for
    its seq and mac, writes one line, and fsyncs before releasing, so concurrent writers (worker
    processes sharing the port) still produce one unbroken chain. With a ``sink`` the records
    go there instead (one stream per process in PostgreSQL: audit_sink.py).
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        now: Callable[[], float] = time.time,
        sink: AuditSink | None = None,
    ) -> None:
        _check_key(key)
        self.path = Path(path)
        self._key = key
        self._now = now
        self.sink = sink
        # Called with every record written by this process (the detector: security/alerts.py).
        self.observers: list[Callable[[dict[str, Any]], None]] = []

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, <key hidden>)"

    def append(
        self,
        event_id: int,
        *,
        event_type: int | None = None,
        action: str = "E",
        outcome: int = SUCCESS,
        user: str | None = None,
        role: str | None = None,
        source_ip: str | None = None,
        obj: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one record and return it (with seq, prev and mac filled in)."""
        if not _is_int(event_id) or not (event_type is None or _is_int(event_type)):
            raise AuditRecordRejected("event_id and event_type must be DICOM codes (int)")
        if action not in ACTIONS or not _is_int(outcome) or outcome not in OUTCOMES:
            raise AuditRecordRejected("action must be one of C R U D E; outcome 0, 4, 8 or 12")
        for name, value in (("user", user), ("role", role), ("source_ip", source_ip)):
            _check_string(name, value)
        _check_string("object", obj)
        fields = {
            "event_id": event_id,
            "event_type": event_type,
            "action": action,
            "outcome": outcome,
            "user": user,
            "role": role,
            "source_ip": source_ip,
            "object": obj,
            "detail": _check_detail(detail or {}),
        }
        if self.sink is not None:
            return self._observed(self.sink.write(iso_utc(self._now()), fields))
        self._prepare_directory()
        lock_fd = os.open(_lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also tightens a log someone created with a wider mode
                seq, prev = self._tail(fd)
                record = seal(self._key, seq, iso_utc(self._now()), fields, prev)
                _write_all(fd, (canonical(record) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)  # closing releases the flock
        return self._observed(record)

    def _observed(self, record: dict[str, Any]) -> dict[str, Any]:
        for observe in self.observers:
            observe(record)
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in file order (not verified; use ``verify`` for that)."""
        return records(self.path) if self.sink is None else self.sink.records()

    def verify(self) -> VerifyResult:
        return verify(self.path, self._key) if self.sink is None else self.sink.verify()

    def close(self) -> None:
        """Let go of the sink (it stores what it spooled, if it can); a file needs nothing."""
        if self.sink is not None:
            self.sink.close()

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask

    def _tail(self, fd: int) -> tuple[int, str]:
        """(next seq, last mac) read from the end of the file, without reading all of it."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        last = _last_line(fd, size)
        if last is None:
            raise AuditError(
                f"{self.path}: last audit record is incomplete (crash during a write?); "
                "verify the log and repair it before appending"
            )
        try:
            record = json.loads(last)
            seq, mac = record["seq"], record["mac"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{self.path}: last audit record is unreadable") from exc
        if not isinstance(seq, int) or not isinstance(mac, str) or len(mac) != 64:
            raise AuditError(f"{self.path}: last audit record is malformed")
        return seq + 1, mac


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _last_line(fd: int, size: int) -> bytes | None:
    """The last complete line (without its newline), or None if the file does not end in one."""
    if os.pread(fd, 1, size - 1) != b"\n":
        return None
    tail = b""  # bytes [position, size - 1): everything before the final newline read so far
    position = size - 1
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        tail = os.pread(fd, position - start, start) + tail
        position = start
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return tail[newline + 1 :]
    return tail


def _snapshot_size(path: Path) -> int:
    """The file size with no append in progress, so a reader never sees half a line.

    A brief shared lock is enough: writers hold the exclusive lock for the whole append.
    """
    lock = _lock_path(path)
    if not lock.exists():  # an exported copy, or a log nobody writes to
        return path.stat().st_size
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return path.stat().st_size
    finally:
        os.close(fd)


def _lines(path: Path, size: int) -> Iterator[bytes]:
    """Lines of the first ``size`` bytes, each with its newline if it has one."""
    with path.open("rb") as handle:
        remaining = size
        while remaining > 0:
            line = handle.readline(remaining)
            if not line:
                return
            remaining -= len(line)
            yield line


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the log at ``path`` in file order (not verified)."""
    for number, line in enumerate(_lines(path, _snapshot_size(path))):
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise AuditError(f"{path}: line {number} is not JSON") from exc


def _malformed(record: object) -> str | None:
    """What is structurally wrong with a parsed record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if set(record) != FIELDS:
        missing, extra = sorted(FIELDS - set(record)), sorted(set(record) - FIELDS)
        return f"wrong fields (missing {missing}, unexpected {extra})"
    if not (_is_int(record["seq"]) and _is_int(record["event_id"])):
        return "seq and event_id must be integers"
    for name in ("prev", "mac"):
        value = record[name]
        if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
            return f"{name} is not 64 lowercase hex digits"
    if not isinstance(record["ts"], str) or not record["ts"].endswith("Z"):
        return "ts is not a UTC timestamp"
    if record["action"] not in ACTIONS or record["outcome"] not in OUTCOMES:
        return "action or outcome is not a valid code"
    if not isinstance(record["detail"], dict):
        return "detail is not an object"
    return None


def verify(path: Path, key: bytes) -> VerifyResult:
    """Recompute the chain and report the first record that is not as it was written.

    Truncation (records cut off the end) is NOT detected: the shorter chain is still valid.
    ``checkpoints.verify_with_checkpoints`` adds that.
    """
    _check_key(key)
    path = Path(path)
    if not path.exists():
        return VerifyResult(False, 0, None, f"{path}: audit log does not exist")
    size = _snapshot_size(path)
    return verify_lines(lambda: _lines(path, size), key)


def verify_lines(
    lines: Callable[[], Iterable[bytes]], key: bytes, genesis: str = GENESIS
) -> VerifyResult:
    """``verify`` over one chain's lines in order (each ending in a newline), whatever holds
    them; ``lines`` is called again only to explain a failure. ``genesis`` is the first
    record's ``prev``."""
    _check_key(key)
    prev = genesis
    count = 0
    for line in lines():
        where = f"record at line {count} (expected seq {count})"
        record: Any = None
        try:
            problem = _malformed(record := json.loads(line))
        except ValueError:
            problem = "not valid JSON"
        if not line.endswith(b"\n"):
            problem = "incomplete last line"
        if problem is not None:
            return VerifyResult(False, count, count, f"{where}: malformed: {problem}")
        seq = record["seq"]
        if not hmac.compare_digest(record_mac(key, record), record["mac"]):
            problem = f"{where}: seq {seq} modified or forged (MAC mismatch)"
        elif seq != count:
            problem = _seq_problem(lines, count, seq)
        elif record["prev"] != prev:
            problem = f"{where}: seq {seq} does not follow its predecessor (prev mismatch)"
        if problem is not None:
            return VerifyResult(False, count, count, problem)
        prev = record["mac"]
        count += 1
    return VerifyResult(True, count, None, f"{count} records verified", prev if count else None)


def _seq_problem(lines: Callable[[], Iterable[bytes]], line_number: int, found: int) -> str:
    """Deleted or reordered? Look for the expected seq further on (only on failure)."""
    for number, line in enumerate(lines()):
        if number <= line_number:
            continue
        try:
            if json.loads(line).get("seq") == line_number:
                return (
                    f"seq {line_number} is out of order: found seq {found} at line "
                    f"{line_number} and seq {line_number} at line {number} (records reordered)"
                )
        except (ValueError, AttributeError):
            continue
    if found < line_number:
        return f"found seq {found} again at line {line_number} (record duplicated or replayed)"
    return f"seq {line_number} is missing: next record is seq {found} (records deleted)"


def export(path: Path, key: bytes, out: TextIO, *, since_seq: int = 0) -> int:
    """Write the verified records with seq >= ``since_seq`` to ``out`` as JSON lines.

    The lines are copied as they are, so a SIEM holding the key can verify them again. A broken
    chain is refused (AuditChainBroken) rather than exported. Only the records verified here are
    exported, even if more are appended meanwhile. The caller logs AUDIT_LOG_USED.
    """
    result = verify(path, key)
    if not result.ok:
        raise AuditChainBroken(f"{path}: not exported: {result.reason}")
    exported = 0
    for number, line in enumerate(_lines(Path(path), Path(path).stat().st_size)):
        if number >= result.records:
            break
        if number >= since_seq:
            out.write(line.decode("ascii"))
            exported += 1
    return exported


@dataclass
class _View:
    user: str | None
    role: str | None
    source_ip: str | None
    first: float
    last: float
    tiles: int = 0
    levels: set[int] = field(default_factory=set)


class SlideViewAggregator:
    """Turns thousands of tile requests into one INSTANCES_ACCESSED record per session x slide.

    A viewer fetches hundreds of tiles per minute; one record each would drown the log. The
    record carries the levels seen, the tile count, and the first and last tile time. The
    session is written only as a keyed hash, so views can be correlated without the log
    holding a usable session secret (AUD-02).
    """

    def __init__(self, key: bytes, now: Callable[[], float] = time.time) -> None:
        _check_key(key)
        self._key = key
        self._now = now
        self._lock = threading.Lock()
        self._views: dict[tuple[str, str], _View] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

    def session_tag(self, session: str) -> str:
        """A 16-hex-digit keyed hash of the session id (not reversible without the key)."""
        message = b"audit-session\x00" + session.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:16]

    def record_tile(
        self,
        session: str,
        user: str | None,
        role: str | None,
        source_ip: str | None,
        slide_id: str,
        level: int,
        now: float,
    ) -> None:
        with self._lock:
            view = self._views.get((session, slide_id))
            if view is None:
                view = _View(user, role, source_ip, first=now, last=now)
                self._views[(session, slide_id)] = view
            view.tiles += 1
            view.levels.add(level)
            view.first = min(view.first, now)
            view.last = max(view.last, now)

    def flush(self, audit_log: AuditLog, *, older_than: float | None = None) -> int:
        """Write and forget the views (all, or those idle for ``older_than`` s); return count."""
        cutoff = None if older_than is None else self._now() - older_than
        with self._lock:
            ready = {k: v for k, v in self._views.items() if cutoff is None or v.last <= cutoff}
            for k in ready:
                del self._views[k]
        written = 0
        try:
            for (session, slide_id), view in ready.items():
                audit_log.append(
                    INSTANCES_ACCESSED,
                    action="R",
                    user=view.user,
                    role=view.role,
                    source_ip=view.source_ip,
                    obj=slide_id,
                    detail={
                        "session": self.session_tag(session),
                        "levels": sorted(view.levels),
                        "tiles": view.tiles,
                        "first": iso_utc(view.first),
                        "last": iso_utc(view.last),
                    },
                )
                written += 1
        finally:
            # Keep what was not written (the log failed) so the next flush tries again.
            unwritten = list(ready.items())[written:]
            with self._lock:
                for k, v in unwritten:
                    current = self._views.get(k)
                    if current is None:
                        self._views[k] = v
                    else:  # tiles arrived meanwhile: merge rather than lose either
                        current.tiles += v.tiles
                        current.levels |= v.levels
                        current.first = min(current.first, v.first)
                        current.last = max(current.last, v.last)
        return written
