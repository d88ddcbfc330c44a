"""Settings: one frozen value read from the environment once, at the edge (the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path  # server state: keys (and later users, certificates, the audit log), mode 0700

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """TILESERVER_HOME, else the per-user data directory ($XDG_DATA_HOME/tileserver)."""
        if environ.get("TILESERVER_HOME"):
            return cls(home=Path(environ["TILESERVER_HOME"]).expanduser())
        data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(home=Path(data) / "tileserver")
