"""Settings: one frozen value read from the environment once, at the edge (the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    # Server state, mode 0700: keys/ (key-encryption, slide and service keys), tls/ (the
    # certificate), auth.db (users, sessions, tokens, grants), audit/ (the audit trail).
    home: Path
    # Key-encryption keys in a PKCS#11 token (a pkcs11: URI) instead of files under home.
    kek: str | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """TILESERVER_HOME, else the per-user data directory ($XDG_DATA_HOME/tileserver);
        TILESERVER_KEK and TILESERVER_PKCS11_PIN for a PKCS#11 token."""
        if environ.get("TILESERVER_HOME"):
            home = Path(environ["TILESERVER_HOME"]).expanduser()
        else:
            data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            home = Path(data) / "tileserver"
        kek = environ.get("TILESERVER_KEK") or None
        return cls(home=home, kek=kek, pkcs11_pin=environ.get("TILESERVER_PKCS11_PIN"))

    def keyring_options(self) -> dict[str, str | None]:
        """What KeyRing needs besides the home: where the key-encryption keys are."""
        return {"kek": self.kek, "pin": self.pkcs11_pin}
