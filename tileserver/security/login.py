"""Authentication use cases: password + TOTP login with throttling, enrolment through
one-time links, loopback login links, and resolving a request's credentials to a Principal.

Throttling (SP 800-63B 5.2.2, AUTH-04) is kept per user-name string, known or not: an unknown
name is throttled exactly like an account, so status, body, headers and timing do not say
which names exist (AUTH-05). Each attempt is counted before anything is checked, in one write
transaction, so concurrent guesses cannot slip past the count. After 5 consecutive checked
failures a name answers "retry later" with a delay doubling up to 15 minutes, before any
password is checked; at 100 checked failures an account is locked until an administrator
resets it. Attempts refused while backing off are counted too, but they do not advance the
back-off or the lock: reaching 100 still takes about a day, so an attacker cannot lock a
clinician out in a hurry. TOTP failures count in the same budget.

Per client address (an IPv6 client: its /64) a token bucket limits attempts before any hashing
or database write, so a flood of random user names costs a dictionary lookup each, not an
Argon2 hash. A successful login gives its token back, so a ward behind one NAT address is not
slowed by its own logins. Refused logins reach the audit trail aggregated per address and
minute (refusals.py: the first at once, the rest as one summary), and a name that is not an
account is written only as a keyed hash: it may be a password typed into the wrong box.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tileserver.errors import TileserverError
from tileserver.security import passwords, totp
from tileserver.security.accounts import USER_SCOPES, Accounts, Principal
from tileserver.security.audit import (
    LOGIN,
    LOGOUT,
    SECURITY_ALERT,
    USER_AUTHENTICATION,
    USER_SECURITY_ATTRIBUTES_CHANGED,
    AuditLog,
)
from tileserver.security.authz_cache import (
    REFRESH_AFTER,
    AuthzCache,
    Caller,
    Lookup,
    credential_key,
)
from tileserver.security.budgets import REFILL, Refill, SharedBudgets
from tileserver.security.refusals import Refusal, RefusalAudit, address_key

BACKOFF_AFTER = 5
LOCK_AFTER = 100
MAX_DELAY = 15 * 60.0
IDLE_TIMEOUT = 15 * 60.0
ABSOLUTE_TIMEOUT = 12 * 3600.0
ENROL_TTL = 24 * 3600.0
LINK_TTL = 10 * 60.0
# Login attempts per client address: sustained per second, and the burst allowed at once.
ADDRESS_RATE = 1.0
ADDRESS_BURST = 30.0
MAX_ADDRESSES = 65_536  # addresses tracked at once per process (memory bound under a flood)


class LoginFailed(TileserverError):
    """Wrong credentials, or an account that cannot log in; the message never says which."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("invalid credentials" if retry_after is None else "too many attempts")
        self.retry_after = retry_after


class EnrolmentFailed(TileserverError, ValueError):
    """A one-time link that is unknown, used, expired, or a form that does not validate."""


@dataclass(frozen=True)
class Enrolment:
    otpauth_uri: str
    qr_svg: str


def backoff_delay(guesses: int) -> float:
    """Seconds to wait after ``guesses`` consecutive failures whose credentials were checked."""
    if guesses < BACKOFF_AFTER:
        return 0.0
    # The exponent is capped: 2.0 ** 1100 would overflow long after the delay stopped growing.
    return min(2.0 ** min(guesses - BACKOFF_AFTER, 32), MAX_DELAY)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class AddressLimiter:
    """A token bucket per client address, in memory (per process), or shared by every
    process on every host through the state database (``shared``: budgets.py).

    Cheap enough to ask before any hashing or database write; the table is bounded (full
    buckets are forgotten first, then the least recently used) so a flood from many addresses
    cannot grow it without limit.
    """

    def __init__(
        self,
        rate: float = ADDRESS_RATE,
        burst: float = ADDRESS_BURST,
        now: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
        shared: SharedBudgets | None = None,
    ) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("the login rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = burst
        self.shared = shared
        self._now = now
        self._max = max_addresses
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float | None:
        """None when an attempt from ``key`` may go ahead (a token is spent), else seconds
        until one may (with ``shared``, maybe after a database statement)."""
        found = self.spend(key)
        return self.refill(key) if found is REFILL else found

    def spend(self, key: str) -> float | Refill | None:
        """``take`` without I/O; REFILL: only ``refill`` (a database statement) can say."""
        if self.shared is not None:
            return self.shared.spend("login:" + key)
        with self._lock:
            now = self._now()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max:
                    self._prune(now)
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            else:
                elapsed = max(0.0, now - bucket.stamp)  # a wall clock may step back
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return (1 - bucket.tokens) / self.rate

    def refill(self, key: str) -> float | None:
        """``take`` with a new lease from the shared budget (blocking: off the event loop)."""
        if self.shared is None:
            return self.take(key)
        return self.shared.refill("login:" + key, self.rate, self.burst)

    def give_back(self, key: str) -> None:
        """Return the token of an attempt that succeeded."""
        if self.shared is not None:
            self.shared.give_back("login:" + key)
            return
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(self.burst, bucket.tokens + 1)

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + max(0.0, now - b.stamp) * self.rate >= self.burst
        ]
        for key in full:  # a full bucket is the same as no bucket
            del self._buckets[key]
        if len(self._buckets) >= self._max:
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].stamp)
            for key in by_age[: len(by_age) - self._max // 2]:
                del self._buckets[key]


class Authenticator:
    def __init__(
        self,
        accounts: Accounts,
        audit: AuditLog,
        now: Callable[[], float] = time.time,
        *,
        address_rate: float = ADDRESS_RATE,
        address_burst: float = ADDRESS_BURST,
        budgets: SharedBudgets | None = None,
    ) -> None:
        self.accounts = accounts
        self.audit = audit
        self.now = now
        self.limiter = AddressLimiter(address_rate, address_burst, now=now, shared=budgets)
        self.refusals = RefusalAudit(audit, now=now)
        self.authz = AuthzCache(accounts)

    # -- login -------------------------------------------------------------------------------
    def admit(self, source_ip: str) -> float | Refill | None:
        """Per-address admission, before anything costly: None, or seconds to wait.

        Does no I/O (a refusal is only counted for the audit summary), so the server asks on
        its event loop and a flood never reaches the worker threads. With limits shared by
        every host it may say REFILL: then ``admit_refill``, in a worker thread.
        """
        return self._admitted(source_ip, self.limiter.spend(address_key(source_ip)))

    def admit_refill(self, source_ip: str) -> float | None:
        """``admit`` after a new lease of the shared budget (one database statement)."""
        wait = self._admitted(source_ip, self.limiter.refill(address_key(source_ip)))
        return None if wait is REFILL else wait

    def _admitted(self, source_ip: str, wait: float | Refill | None) -> float | Refill | None:
        if wait is not None and wait is not REFILL:
            self._refused(source_ip, None, "address_limited", None, immediate=False)
        return wait

    def login(
        self, username: str, password: str, code: str, source_ip: str, *, admitted: bool = False
    ) -> str:
        """A new session ID, or LoginFailed (with retry_after while throttled).

        ``admitted``: the caller has already had ``admit`` say yes for this attempt.
        """
        if not admitted:
            wait = self.admit(source_ip)
            if wait is REFILL:
                wait = self.admit_refill(source_ip)
            if wait is not None:
                raise LoginFailed(retry_after=wait)
        self.refusals.flush()  # summaries of minutes that are over
        now = self.now()
        # Known or not, every name takes the same steps: one lookup, one counted attempt,
        # one Argon2 verification, one refusal to audit (AUTH-05).
        user = self.accounts.user(username)
        known = user is not None
        attempt = self.accounts.begin_attempt(username, known, now, backoff_delay)
        if not attempt.allowed:
            self._refused(source_ip, self._label(username, known), "throttled", attempt.failures)
            raise LoginFailed(retry_after=attempt.next_attempt - now)
        ok = False
        step = None
        if user is None or user.pw_hash is None or user.totp_sealed is None or user.disabled:
            passwords.dummy_verify(password)  # same time as a real check: no enumeration
        elif passwords.verify_password(user.pw_hash, password):
            secret = self.accounts.open_totp(user.name, user.totp_sealed)
            step = totp.verify(secret, code, now=now, last_step=user.totp_last_step)
            # The claim is the single-use check: of concurrent logins with one code, one wins.
            ok = step is not None and self.accounts.claim_totp_step(user.name, step)
        if not ok or user is None or step is None:
            self._refused(
                source_ip, self._label(username, known), "invalid_credentials", attempt.failures
            )
            if known and attempt.guesses == LOCK_AFTER:  # exactly one attempt is the 100th
                self._lock(username, source_ip)
            raise LoginFailed()
        self.accounts.clear_attempts(user.name)
        self.limiter.give_back(address_key(source_ip))
        session = self.accounts.create_session(user.name)
        self.audit.append(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            user=user.name,
            role=user.role,
            source_ip=source_ip,
        )
        return session

    def _refused(
        self,
        source_ip: str,
        user: str | None,
        reason: str,
        failures: int | None,
        *,
        immediate: bool = True,
    ) -> None:
        refusal = Refusal(
            USER_AUTHENTICATION,
            reason,
            source_ip,
            user=user,
            event_type=LOGIN,
            consecutive_failures=failures,
        )
        self.refusals.refused(refusal, immediate=immediate)

    def _label(self, username: str, known: bool) -> str:
        """How the audit trail names the user of a refused login: an account by its name,
        anything else by a keyed hash (it may be a password typed in the wrong box)."""
        return username[:64] if known else "unknown:" + self.accounts.name_tag(username)[:16]

    def _lock(self, username: str, source_ip: str) -> None:
        self.accounts.set_disabled(username, True)
        self.audit.append(
            SECURITY_ALERT,
            outcome=8,
            user=username,
            source_ip=source_ip,
            detail={"reason": "account locked after repeated failures"},
        )

    def logout(self, session: str, principal: Principal, source_ip: str) -> None:
        self.accounts.end_session(session)
        self.audit.append(
            USER_AUTHENTICATION,
            event_type=LOGOUT,
            user=principal.name,
            role=principal.role,
            source_ip=source_ip,
        )

    # -- enrolment: one-time link -> password + TOTP -> active account -------------------------
    def enrol_start(self, token: str, username: str | None, password: str) -> Enrolment:
        found = self.accounts.peek_one_time(token, ("bootstrap", "enrol"))
        if found is None:
            raise EnrolmentFailed("this link is unknown, used or expired")
        purpose, user, _role, _ = found
        name = user if purpose == "enrol" else (username or "").strip()
        if (
            not name
            or len(name) > 64
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise EnrolmentFailed("user name: 1-64 letters, digits, '.', '-' or '_'")
        if purpose == "bootstrap" and self.accounts.has_users():
            raise EnrolmentFailed("this server already has an administrator")
        try:
            passwords.check_password(password, username=name)
        except passwords.PasswordRejected as exc:
            raise EnrolmentFailed(str(exc)) from exc
        secret = totp.new_secret()
        staged = self.accounts.seal_totp(name, secret + passwords.hash_password(password).encode())
        self.accounts.stage_totp(token, name, staged)
        uri = totp.provisioning_uri(secret, name)
        return Enrolment(uri, totp.qr_svg(uri))

    def enrol_confirm(self, token: str, code: str, source_ip: str) -> str:
        """Check the first TOTP code, activate the account, consume the link; a session ID."""
        found = self.accounts.peek_one_time(token, ("bootstrap", "enrol"))
        purpose, name, role, staged = found or ("", None, None, None)
        if name is None or staged is None:
            raise EnrolmentFailed("this link is unknown, used or expired, or not started")
        opened = self.accounts.open_totp(name, staged)
        secret, pw_hash = opened[: totp.SECRET_BYTES], opened[totp.SECRET_BYTES :].decode()
        step = totp.verify(secret, code, now=self.now(), last_step=None)
        if step is None:
            raise EnrolmentFailed("that code does not match; check the authenticator app's clock")
        if not self.accounts.consume_one_time(token):
            raise EnrolmentFailed("this link is unknown, used or expired")
        role = "admin" if purpose == "bootstrap" else role or "viewer"
        self.accounts.create_user(name, role, pw_hash, self.accounts.seal_totp(name, secret), step)
        self.audit.append(
            USER_SECURITY_ATTRIBUTES_CHANGED,
            action="C",
            user=name,
            role=role,
            source_ip=source_ip,
            detail={"change": "enrolled password and TOTP"},
        )
        return self.accounts.create_session(name)

    def use_login_link(self, token: str, source_ip: str) -> str:
        found = self.accounts.peek_one_time(token, ("link",))
        if found is None or found[1] is None or not self.accounts.consume_one_time(token):
            raise LoginFailed()
        user = self.accounts.user(found[1])
        if user is None or user.disabled:
            raise LoginFailed()
        self.audit.append(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            user=user.name,
            role=user.role,
            source_ip=source_ip,
            detail={"method": "one-time loopback link"},
        )
        return self.accounts.create_session(user.name)

    # -- every request -------------------------------------------------------------------------
    def cached_principal(
        self, session: str | None, bearer: str | None, certificate: str | None, generation: int
    ) -> Principal | Lookup | None:
        """``principal`` from the cache, without the database (for the event loop): the
        caller, None (an expired token), or MISS when only ``principal`` can say.

        A session older than ``REFRESH_AFTER`` since it was last seen here is a miss, so its
        idle and absolute timeouts and its last_seen refresh are the database's to decide."""
        key = _credential(session, bearer, certificate)
        if key is None:
            return None
        caller = self.authz.caller(key, generation)
        if caller is None:
            return Lookup.MISS
        principal, now = caller.principal, self.accounts.now()
        if principal.kind == "token":
            live = principal.expires is None or principal.expires > now
            return principal if live else None
        if caller.created is None or caller.last_seen is None:
            return Lookup.MISS
        if now - caller.last_seen > REFRESH_AFTER or now - caller.created > ABSOLUTE_TIMEOUT:
            return Lookup.MISS
        return principal

    def principal(
        self,
        session: str | None,
        bearer: str | None,
        certificate: str | None = None,
        generation: int | None = None,
    ) -> Principal | None:
        """The caller, from a bearer token, a session cookie or (machines only) the name in
        a client certificate the TLS layer has verified against the client CA. With the
        ``generation`` read at the start of the request, the answer is cached under it."""
        key = _credential(session, bearer, certificate)
        caller = None
        if bearer:
            found = self.accounts.token_principal(bearer)
            caller = None if found is None else Caller(found)
        elif certificate and not session:
            found = self.accounts.certificate_principal(certificate)
            caller = None if found is None else Caller(found)
        elif session:
            live = self.accounts.session_user(session, IDLE_TIMEOUT, ABSOLUTE_TIMEOUT)
            if live:
                scopes = USER_SCOPES | {"labels"}
                user = Principal("user", live.user, live.role, scopes, None, live.hash)
                caller = Caller(user, live.created, live.last_seen)
        if caller is None:
            return None
        if key is not None and generation is not None:
            self.authz.remember_caller(key, caller, generation)
        return caller.principal


def _credential(session: str | None, bearer: str | None, certificate: str | None) -> str | None:
    """The cache key of the credential ``Authenticator.principal`` would use."""
    if bearer:
        return credential_key("token", bearer)
    if certificate and not session:
        return credential_key("certificate", certificate)
    if session:
        return credential_key("session", session)
    return None
