"""Authentication use cases: password + TOTP login with throttling, enrolment through
one-time links, loopback login links, and resolving a request's credentials to a Principal.

Throttling (SP 800-63B 5.2.2): after 5 consecutive failures an account answers "retry later"
with a delay doubling up to 15 minutes, before any password is checked; at 100 it is locked
until an administrator resets it. Reaching 100 takes about a day of back-off, so an attacker
cannot lock a clinician out in a hurry. TOTP failures count in the same budget.
"""

from __future__ import annotations

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

BACKOFF_AFTER = 5
LOCK_AFTER = 100
MAX_DELAY = 15 * 60.0
IDLE_TIMEOUT = 15 * 60.0
ABSOLUTE_TIMEOUT = 12 * 3600.0
ENROL_TTL = 24 * 3600.0
LINK_TTL = 10 * 60.0


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


class Authenticator:
    def __init__(
        self, accounts: Accounts, audit: AuditLog, now: Callable[[], float] = time.time
    ) -> None:
        self.accounts = accounts
        self.audit = audit
        self.now = now

    # -- login -------------------------------------------------------------------------------
    def login(self, username: str, password: str, code: str, source_ip: str) -> str:
        """A new session ID, or LoginFailed (with retry_after while throttled)."""
        user = self.accounts.user(username)
        now = self.now()
        if user is not None and user.next_attempt > now:
            raise LoginFailed(retry_after=user.next_attempt - now)
        ok = False
        step = None
        if user is None or user.pw_hash is None or user.totp_sealed is None or user.disabled:
            passwords.dummy_verify(password)  # same time as a real check: no enumeration
        elif passwords.verify_password(user.pw_hash, password):
            secret = self.accounts.open_totp(user.name, user.totp_sealed)
            step = totp.verify(secret, code, now=now, last_step=user.totp_last_step)
            ok = step is not None and self.accounts.claim_totp_step(user.name, step)
        if not ok or user is None or step is None:
            self._failed(username, user.failures if user else 0, source_ip)
            raise LoginFailed()
        self.accounts.record_success(user.name, step)
        session = self.accounts.create_session(user.name)
        self.audit.append(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            user=user.name,
            role=user.role,
            source_ip=source_ip,
        )
        return session

    def _failed(self, username: str, failures: int, source_ip: str) -> None:
        failures += 1
        delay = (
            0.0 if failures < BACKOFF_AFTER else min(2.0 ** (failures - BACKOFF_AFTER), MAX_DELAY)
        )
        known = self.accounts.user(username) is not None
        if known:
            self.accounts.record_failure(username, failures, self.now() + delay)
        self.audit.append(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            outcome=4,
            user=username[:64],
            source_ip=source_ip,
            detail={"consecutive_failures": failures if known else None},
        )
        if known and failures == LOCK_AFTER:  # alert once, when the lock happens
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
    def principal(
        self, session: str | None, bearer: str | None, certificate: str | None = None
    ) -> Principal | None:
        """The caller, from a bearer token, a session cookie or (machines only) the name in
        a client certificate the TLS layer has verified against the client CA."""
        if bearer:
            return self.accounts.token_principal(bearer)
        if certificate and not session:
            return self.accounts.certificate_principal(certificate)
        if session:
            found = self.accounts.session_user(session, IDLE_TIMEOUT, ABSOLUTE_TIMEOUT)
            if found:
                name, role, session_hash = found
                return Principal("user", name, role, USER_SCOPES | {"labels"}, None, session_hash)
        return None
