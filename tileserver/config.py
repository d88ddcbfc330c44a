"""Settings: one frozen value read from the environment once, at the edge (the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    # Server state, mode 0700: keys/ (key-encryption, slide and service keys), tls/ (the
    # certificate), auth.db (users, sessions, tokens, grants), audit/ (the audit trail).
    home: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """TILESERVER_HOME, else the per-user data directory ($XDG_DATA_HOME/tileserver)."""
        if environ.get("TILESERVER_HOME"):
            return cls(home=Path(environ["TILESERVER_HOME"]).expanduser())
        data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(home=Path(data) / "tileserver")
