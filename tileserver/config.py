"""Settings: one frozen value read from the environment once, at the edge (the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tileserver.errors import ConfigError

DATABASE_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Settings:
    # Server state, mode 0700: keys/ (key-encryption, slide and service keys), tls/ (the
    # certificate), auth.db (users, sessions, tokens, grants), audit/ (the audit trail).
    home: Path
    # Key-encryption keys in a PKCS#11 token (a pkcs11: URI) instead of files under home.
    kek: str | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)
    # Server state (users, sessions, tokens, grants, collections, throttles) in PostgreSQL:
    # a libpq postgresql:// URL (sslmode and friends pass through); None: SQLite at
    # home/auth.db. Not in repr: the environment's URL may carry the password.
    database: str | None = field(default=None, repr=False)
    # The audit trail in PostgreSQL, one chained stream per process (security/audit_sink.py),
    # through the append-only role `tileserver audit init-db` makes, so not the state
    # database's URL; None: the file under home/audit.
    audit_database: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """TILESERVER_HOME, else the per-user data directory ($XDG_DATA_HOME/tileserver);
        TILESERVER_KEK and TILESERVER_PKCS11_PIN for a PKCS#11 token; TILESERVER_DATABASE and
        TILESERVER_AUDIT_DATABASE for PostgreSQL."""
        if environ.get("TILESERVER_HOME"):
            home = Path(environ["TILESERVER_HOME"]).expanduser()
        else:
            data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            home = Path(data) / "tileserver"
        kek = environ.get("TILESERVER_KEK") or None
        database = environ.get("TILESERVER_DATABASE") or None
        if database is not None:
            _check_database(database, "TILESERVER_DATABASE")
        audit_database = environ.get("TILESERVER_AUDIT_DATABASE") or None
        if audit_database is not None:
            _check_database(audit_database, "TILESERVER_AUDIT_DATABASE")
        return cls(
            home=home,
            kek=kek,
            pkcs11_pin=environ.get("TILESERVER_PKCS11_PIN"),
            database=database,
            audit_database=audit_database,
        )

    def with_database(self, url: str | None) -> Settings:
        """``--database URL`` from a command line, which every user of the host can read
        (ps, /proc): a password in it is refused; libpq reads it from PGPASSWORD or
        PGPASSFILE (~/.pgpass), or give the whole URL in TILESERVER_DATABASE."""
        if url is None:
            return self
        check_command_line_url(url, "--database", "TILESERVER_DATABASE")
        return replace(self, database=url)

    def with_audit_database(self, url: str | None) -> Settings:
        """``--audit-database URL``, under the same rule as ``--database``."""
        if url is None:
            return self
        check_command_line_url(url, "--audit-database", "TILESERVER_AUDIT_DATABASE")
        return replace(self, audit_database=url)

    def state_database(self) -> str | Path:
        """Where server state lives: the PostgreSQL URL, else the SQLite file under home."""
        return state_database(self.home, self.database)

    def keyring_options(self) -> dict[str, str | None]:
        """What KeyRing needs besides the home: where the key-encryption keys are."""
        return {"kek": self.kek, "pin": self.pkcs11_pin}


def state_database(home: Path, database: str | None) -> str | Path:
    return database if database is not None else home / "auth.db"


def check_command_line_url(url: str, option: str, variable: str | None = None) -> None:
    _check_database(url, option)
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ConfigError(
            f"{option}: a password on the command line is visible to every user of this"
            " host; put it in PGPASSFILE or PGPASSWORD"
            + (f" (or the URL in {variable})" if variable else "")
        )


def _check_database(url: str, where: str) -> None:
    if urlsplit(url).scheme not in DATABASE_SCHEMES:
        raise ConfigError(f"{where} must be a postgresql:// URL")
