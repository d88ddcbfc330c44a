"""tileserver.bench.report helpers the single-file benchmarks share (replace_section is
covered in test_end_to_end.py)."""

from __future__ import annotations

import os
import re

from tileserver.bench.report import load_now


def test_load_now_names_the_load_average_and_cores() -> None:
    text = load_now()
    match = re.match(r"load (\d+\.\d) \((\d+) cores, shared\)", text)
    assert match, text
    assert int(match[2]) == os.cpu_count()
    if os.path.exists("/proc/pressure/cpu"):
        assert re.search(r", CPU pressure avg10 \d+\.\d+ %$", text), text
