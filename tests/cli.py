"""The real CLI in a child process, with its own TILESERVER_HOME: what an operator runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "tileserver.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
