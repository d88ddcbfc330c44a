"""Conversion A/B: ``tileserver convert`` of this tree against an earlier revision's, same run.

    .venv/bin/python benchmarks/ab_convert.py --baseline REV [--size 40000x30000] [--repeats 5]

The baseline's ``tileserver/`` package is exported with ``git archive REV`` into a temporary
directory (the working tree and the repository are left alone) and run with the same venv
through ``PYTHONPATH``; both run as ``python -m tileserver.cli convert SLIDE --out DIR
--workers 2 --quiet`` from a neutral working directory, in alternating order, each into a
fresh directory, with the key ring of ``bench_convert.py``. Outputs are deleted only at the
end (see ``bench_convert.py`` on ext4 and freshly freed inodes). One JIT warm-up run each is
not timed (the baseline's Numba cache starts empty). Reports median wall time, the
in-process rate each run prints, and files written; rewrites the ``convert-ab`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_convert import DATA, HOME, RESULTS, ROOT, ensure_slide, load_now, parse_size
from store_objects import files_under

from tileserver.bench import report

WORKERS = 2
_RATE = re.compile(r"([\d.]+) Mpx/s")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def export(rev: str, into: Path) -> None:
    """``tileserver/`` as of ``rev`` under ``into`` (no checkout, no change to the repo)."""
    archive = subprocess.run(
        ["git", "archive", rev, "tileserver"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def convert(slide: Path, out: Path, pythonpath: str | None, cwd: Path) -> tuple[float, str]:
    """Wall seconds and output of one conversion; ``pythonpath`` selects the baseline."""
    env = {**os.environ, "TILESERVER_HOME": str(HOME)}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "tileserver.cli", "convert", str(slide), "--out", str(out)]
    cmd += ["--workers", str(WORKERS), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"convert failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    return seconds, done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="git revision to compare against")
    p.add_argument("--size", type=parse_size, default=(40_000, 30_000), metavar="WxH")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/ab_convert.py", *sys.argv[1:]])
    slide = ensure_slide(args.size)
    base_rev = git("rev-parse", "--short", args.baseline)
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "tileserver")
    sides = {"baseline": base_rev, "this tree": head + (" + uncommitted" if dirty else "")}
    seconds: dict[str, list[float]] = {s: [] for s in sides}
    rates: dict[str, list[float]] = {s: [] for s in sides}
    files: dict[str, int] = {}
    loads = [load_now()]
    with tempfile.TemporaryDirectory(dir=DATA, prefix="bench-ab-") as tmp:
        work = Path(tmp)
        (work / "old").mkdir()
        export(args.baseline, work / "old")
        paths = {"baseline": str(work / "old"), "this tree": None}
        for side, path in paths.items():  # JIT warm-up, not timed
            convert(slide, work / f"warm-{side.replace(' ', '-')}", path, work)
        for r in range(args.repeats):
            for side in list(paths) if r % 2 == 0 else list(paths)[::-1]:
                out = work / f"{side.replace(' ', '-')}-{r}"
                secs, text = convert(slide, out, paths[side], work)
                seconds[side].append(secs)
                if m := _RATE.search(text):
                    rates[side].append(float(m[1]))
                files[side] = files_under(out)
                loads.append(load_now())
                log(f"repeat {r + 1} {side}: {secs:.1f} s ({loads[-1]})")
    med = {s: statistics.median(seconds[s]) for s in sides}
    pairs = [b / a for a, b in zip(seconds["this tree"], seconds["baseline"], strict=True)]
    facts = report.machine_facts()
    w, h = args.size
    lines = [
        "## Conversion A/B against an earlier revision (`benchmarks/ab_convert.py`)",
        "",
        f"Command: `{command}`; {facts['date']}; machine: {facts['CPU']}, {facts['cores']} "
        f"cores. Slide: synthetic {w} x {h} SVS. Both sides: `python -m tileserver.cli "
        f"convert --workers {WORKERS} --quiet` in the same venv, alternating, each into a "
        f"fresh directory, encrypted stores; {args.repeats} timed runs each after one "
        "untimed warm-up; the baseline's `tileserver/` exported with `git archive`.",
        "",
        "| side | revision | median wall s | min / max s | in-process Mpx/s (median) "
        "| files written |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for side, rev in sides.items():
        rate = statistics.median(rates[side]) if rates[side] else float("nan")
        lines.append(
            f"| {side} | {rev} | {med[side]:.1f} | {min(seconds[side]):.1f} / "
            f"{max(seconds[side]):.1f} | {rate:.1f} | {files[side]:,} |"
        )
    lines += [
        "",
        f"Speed this tree / baseline: **{med['baseline'] / med['this tree']:.2f}x** (medians); "
        f"per back-to-back pair {statistics.median(pairs):.2f}x "
        f"[{min(pairs):.2f}-{max(pairs):.2f}].",
        "",
        "Machine load before the first and after each run: " + "; ".join(loads) + ".",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "convert-ab", text))
        log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
