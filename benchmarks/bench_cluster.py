"""Batch conversion on a Dask LocalCluster, 1 against 2 workers, and the plain CLI loop.

    .venv/bin/python benchmarks/bench_cluster.py [--size 24000x18000] [--slides 8]
        [--repeats 3] [--threads 1] [--no-write]

1. Generates (or reuses, from ``benchmarks/.data/cluster/``) ``--slides`` synthetic Aperio
   SVS files of ``--size``, each with its own seed (the same content would be one slide ID,
   converted once and then skipped).
2. Per repeat, in rotating order, four configurations convert all the slides into a fresh
   directory (one TILESERVER_HOME, encrypted stores, ``--workers THREADS`` per slide):

   * ``plain:1``: one ``tileserver convert SLIDES...`` (its per-slide children, one at a time);
   * ``plain:2``: two such processes at once, each given half the slides;
   * ``dask:1`` / ``dask:2``: one ``tileserver convert SLIDES... --scheduler local:N``.

   Wall time from start until every process has exited; CPU = user + system time of the
   processes and every descendant they reaped (``os.wait4``). Then the same command again
   over the finished stores, where every slide is skipped: what the configuration costs
   besides converting (start-up, the cluster, one task per slide).
3. Speed-up = ``:1`` wall / ``:2`` wall; Dask's overhead per slide = (dask wall - plain wall)
   / slides, with the same worker count, and the same from the skip runs.

Outputs are deleted after each run. Rewrites the ``cluster`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_convert import load_now  # sibling scripts (same folder)
from bench_server import DATA, RESULTS, ROOT, git_state, parse_size

from tileserver.bench import report

CLI = [sys.executable, "-m", "tileserver.cli"]
HOME = DATA / "tileserver-home"
SLIDES = DATA / "cluster"
OUT = DATA / "cluster-out"
CONFIGS = ("plain:1", "dask:1", "plain:2", "dask:2")
FIRST_SEED = 101


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_slides(size: tuple[int, int], count: int) -> list[Path]:
    """``count`` synthetic slides of ``size``, distinct seeds; generated two at a time."""
    SLIDES.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = [SLIDES / f"synthetic-{w}x{h}-seed{FIRST_SEED + i}.svs" for i in range(count)]
    missing = [p for p in paths if not p.is_file()]
    for pair in (missing[i : i + 2] for i in range(0, len(missing), 2)):
        log(f"generating {', '.join(p.name for p in pair)}")
        generate = [sys.executable, "-m", "sample_data", "svs", "--size", f"{w}x{h}"]
        procs = [
            subprocess.Popen(
                [*generate, f"{p}.part", "--seed", p.stem.rsplit("seed", 1)[1]], cwd=ROOT
            )
            for p in pair
        ]
        for proc, path in zip(procs, pair, strict=True):
            if proc.wait() != 0:
                raise RuntimeError(f"sample_data failed for {path.name}")
            Path(f"{path}.part").replace(path)
    return paths


def commands(config: str, slides: list[Path], out: Path, threads: int) -> list[list[str]]:
    kind, n = config.split(":")
    base = [*CLI, "convert", "--quiet", "--workers", str(threads), "--timeout", "900"]
    base += ["--out", str(out)]
    if kind == "dask":
        return [[*base, "--scheduler", f"local:{n}", *map(str, slides)]]
    groups = [slides[i :: int(n)] for i in range(int(n))]
    return [[*base, *map(str, group)] for group in groups]


def run(cmds: list[list[str]]) -> tuple[float, float, str]:
    """Start every command at once: (wall s until the last exits, CPU s, their output)."""
    env = {**os.environ, "TILESERVER_HOME": str(HOME)}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for cmd in cmds
    ]
    cpu, output = 0.0, ""
    for proc, cmd in zip(procs, cmds, strict=True):
        assert proc.stdout is not None
        output += proc.stdout.read().decode(errors="replace")
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{output[-2000:]}")
    return time.perf_counter() - started, cpu, output


def complete(out: Path) -> int:
    return sum(1 for p in out.glob("*/tileserver-complete.json"))


def measure(slides: list[Path], repeats: int, threads: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
    loads = [load_now()]
    for r in range(repeats):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        for config in order:
            out = OUT / f"{config.replace(':', '-')}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            cmds = commands(config, slides, out, threads)
            wall, cpu, _ = run(cmds)
            if complete(out) != len(slides):
                raise RuntimeError(f"{config}: {complete(out)} of {len(slides)} stores complete")
            skip_wall, skip_cpu, said = run(cmds)  # every slide is complete: all skipped
            if said.count("already converted") < len(slides):
                raise RuntimeError(f"{config}: the second run converted again:\n{said[-2000:]}")
            shutil.rmtree(out)
            runs[config].append(
                {"wall": wall, "cpu": cpu, "skip_wall": skip_wall, "skip_cpu": skip_cpu}
            )
            loads.append(load_now())
            log(
                f"repeat {r + 1}/{repeats} {config}: {wall:.1f} s wall, {cpu:.1f} s CPU; "
                f"all skipped: {skip_wall:.1f} s ({loads[-1]})"
            )
    return {"runs": runs, "loads": loads}


def markdown(args: argparse.Namespace, result: dict[str, Any], command: str) -> str:
    runs, n = result["runs"], args.slides
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in CONFIGS}
    facts = report.machine_facts()
    w, h = parse_size(args.size)
    rows = [
        "| configuration | wall s (median) | min-max | CPU s (median) | s per slide | "
        "all skipped: wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "plain:1": "`convert` loop, 1 process",
        "plain:2": "`convert` loop, 2 processes (half the slides each)",
        "dask:1": "`convert --scheduler local:1`",
        "dask:2": "`convert --scheduler local:2`",
    }
    for c in CONFIGS:
        walls = [r["wall"] for r in runs[c]]
        rows.append(
            f"| {names[c]} | {med[c]['wall']:.1f} | {min(walls):.1f}-{max(walls):.1f} | "
            f"{med[c]['cpu']:.1f} | {med[c]['wall'] / n:.2f} | {med[c]['skip_wall']:.1f} |"
        )

    def pairs(a: str, b: str, key: str = "wall") -> str:
        ratios = [x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True)]
        return f"{min(ratios):.2f}-{max(ratios):.2f}"

    overhead = {k: (med[f"dask:{k}"]["wall"] - med[f"plain:{k}"]["wall"]) / n for k in "12"}
    skip_overhead = {
        k: (med[f"dask:{k}"]["skip_wall"] - med[f"plain:{k}"]["skip_wall"]) / n for k in "12"
    }
    cpu_overhead = (med["dask:1"]["cpu"] - med["plain:1"]["cpu"]) / n
    lines = [
        "## Conversion on a Dask cluster (`benchmarks/bench_cluster.py`)",
        "",
        f"Command: `{command}`; {facts['date']}; tileserver {git_state()}; machine: "
        f"{facts['CPU']}, {facts['cores']} cores, {facts['RAM']}.",
        "",
        f"{n} synthetic SVS slides of {w} x {h} ({w * h / 1e6:.0f} Mpx each, distinct seeds "
        f"{FIRST_SEED}-{FIRST_SEED + n - 1}), encrypted stores on local disk, "
        f"`--workers {args.threads}` (threads per slide) everywhere, {args.repeats} repeats in "
        "rotating order; each run converts every slide into a fresh directory, then runs again "
        "over the finished stores (every slide skipped). Wall = until the last process exits; "
        "CPU = user + system of the processes and every descendant they reaped.",
        "",
        *rows,
        "",
        "| figure | median | per repeat |",
        "|---|---:|---:|",
        f"| speed-up, Dask 1 -> 2 workers (wall `local:1` / `local:2`) | "
        f"{med['dask:1']['wall'] / med['dask:2']['wall']:.2f}x | {pairs('dask:1', 'dask:2')} |",
        f"| speed-up, plain loop 1 -> 2 processes | "
        f"{med['plain:1']['wall'] / med['plain:2']['wall']:.2f}x | "
        f"{pairs('plain:1', 'plain:2')} |",
        f"| Dask / plain wall, 1 worker | {med['dask:1']['wall'] / med['plain:1']['wall']:.2f}x "
        f"| {pairs('dask:1', 'plain:1')} |",
        f"| Dask / plain wall, 2 workers | {med['dask:2']['wall'] / med['plain:2']['wall']:.2f}x "
        f"| {pairs('dask:2', 'plain:2')} |",
        f"| Dask overhead per slide, wall s (1 worker / 2 workers) | "
        f"{overhead['1']:.2f} / {overhead['2']:.2f} | |",
        f"| Dask overhead per slide, all-skipped runs, wall s (1 / 2 workers) | "
        f"{skip_overhead['1']:.2f} / {skip_overhead['2']:.2f} | |",
        f"| Dask overhead per slide, CPU s (1 worker) | {cpu_overhead:.2f} | |",
        "",
        "Runs (wall s): "
        + "; ".join(f"{c} {[round(r['wall'], 1) for r in runs[c]]}" for c in CONFIGS)
        + ".",
        "",
        "Machine load before the first run and after each: " + "; ".join(result["loads"]) + ".",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--size", default="24000x18000", help="slide size WxH")
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="convert --workers (per slide)")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_cluster.py", *sys.argv[1:]])
    slides = ensure_slides(parse_size(args.size), args.slides)
    env = {**os.environ, "TILESERVER_HOME": str(HOME)}
    subprocess.run([*CLI, "keys", "init"], env=env, check=True, capture_output=True)
    result = measure(slides, args.repeats, args.threads)
    text = markdown(args, result, command)
    print(text)
    if not args.no_write:
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "cluster", text))
        log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
