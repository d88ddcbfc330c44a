"""Scale-out behind a load balancer: tiles/s through HAProxy with two servers against one server
reached directly, in the same run.

    .venv/bin/python benchmarks/bench_balancer.py [--size 20000x15000] [--rounds 3]
        [--traces random,pan] [--concurrency 8] [--max-requests 1500] [--max-seconds 20]

Three set-ups, each started afresh for every cell (so each cold pass is cold), in rotating
order within a round:

- ``direct``: one ``tileserver serve`` process (``--workers 1``), the load client connects to
  it directly;
- ``haproxy-2``: two ``serve`` processes (``--workers 1`` each, own ports, same store, same
  ``TILESERVER_HOME``) behind HAProxy (``tests/haproxy.py``: TLS passthrough, round robin per
  connection, health checks on ``/health``);
- ``workers-2``: one ``serve --workers 2`` (two processes sharing one port through the
  kernel), reached directly: two processes without a balancer, to tell the balancer's cost
  from the gain of a second process.

Every server runs HTTPS with authentication on (a bearer token scoped to tiles, made for the
run and revoked after it, checked and audited per request) and detection off (``--no-detect``:
the random trace is a crawl, and the detector would suspend the token after ~200 tiles).
Load: ``tileserver.bench.load`` (cold then warm pass of each trace at each concurrency;
keep-alive connections, so HAProxy splits the client's connections, not its requests). CPU ms
per tile: user + system time of the serve processes and of HAProxy over the cell / tiles served.
Everything runs on this machine on 127.0.0.1, load client included. Rewrites the ``balancer``
section of benchmarks/RESULTS.md, writes benchmarks/results/balancer.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_convert import load_now  # sibling scripts (same folder)
from bench_server import DATA, OUT, RESULTS, ROOT, convert_once, ensure_slide, git_state, parse_size
from https_ours import CLI, bench_token, cpu_seconds, ours_https

from tileserver.bench import report
from tileserver.bench.client import ClientOptions
from tileserver.bench.load import LoadSettings, measure_cell

sys.path.insert(0, str(ROOT))  # tests/ is not installed: the HAProxy fixture lives there
from tests.haproxy import Backend, haproxy

SETUPS = ("direct", "haproxy-2", "workers-2")
# The random trace is a crawl to the detector, which suspends the token after ~200 tiles.
SERVE_FLAGS = ("--no-detect",)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _port(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rpartition(":")[2])


@contextlib.contextmanager
def setup(
    name: str, stores: Path, home: Path, slide_id: str, token: str, workdir: Path
) -> Iterator[tuple[str, ClientOptions, list[int], Callable[[], dict[str, int]]]]:
    """(the .dzi URL to load, client options, the pids of the serve processes then of the
    balancer (the last, or none), connections each backend was given so far) for one set-up."""
    one = ("--workers", "1", *SERVE_FLAGS)
    if name == "direct":
        with ours_https(stores, home, slide_id, token, *one) as single:
            yield single.url, single.options, [single.pid], dict
    elif name == "workers-2":
        with ours_https(stores, home, slide_id, token, "--workers", "2", *SERVE_FLAGS) as two:
            yield two.url, two.options, [two.pid], dict
    else:
        with (
            ours_https(stores, home, slide_id, token, *one) as a,
            ours_https(stores, home, slide_id, token, *one) as b,
            haproxy(
                workdir,
                [Backend("a", "127.0.0.1", _port(a.url)), Backend("b", "127.0.0.1", _port(b.url))],
                ca_file=home / "tls" / "cert.pem",
            ) as balancer,
        ):
            url = f"{balancer.base}/deepzoom/{slide_id}.dzi"
            pids = [a.pid, b.pid, balancer.process.pid]  # the balancer last

            def spread() -> dict[str, int]:
                return {k: v.connections for k, v in balancer.stats().items()}

            yield url, a.options, pids, spread


def measure(
    args: argparse.Namespace, stores: Path, home: Path, slide_id: str, token: str, tmp: Path
) -> list[dict[str, Any]]:
    settings = LoadSettings(
        traces=tuple(args.traces),
        concurrency=tuple(args.concurrency),
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
    )
    cells: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]
        for trace in settings.traces:
            for c in settings.concurrency:
                for name in order:
                    workdir = tmp / f"haproxy-{r}-{trace}-{c}"
                    started = setup(name, stores, home, slide_id, token, workdir)
                    with started as (url, opts, pids, spread):
                        cpu = [cpu_seconds(p) for p in pids]
                        _, runs = measure_cell(url, trace, c, settings, opts)
                        used = [cpu_seconds(p) - t for p, t in zip(pids, cpu, strict=True)]
                        connections = spread()
                    ok = max(1, sum(run["ok"] for run in runs))
                    servers = used[:-1] if name == "haproxy-2" else used
                    balancer = sum(used[len(servers) :])
                    for run in runs:
                        cells.append(
                            {
                                "setup": name,
                                "round": r,
                                "trace": trace,
                                "c": c,
                                **run,
                                "server_cpu_ms_per_tile": 1000 * sum(servers) / ok,
                                "balancer_cpu_ms_per_tile": 1000 * balancer / ok,
                                "backend_connections": connections,
                            }
                        )
                        log(
                            f"round {r + 1} {trace} c={c} {name} {run['pass']}: "
                            f"{run['tiles_per_s']} tiles/s, p99 "
                            f"{(run['latency_ms'] or {}).get('p99')} ms, {run['errors']} err"
                            + (f", connections per server {connections}" if connections else "")
                        )
    return cells


def _median(cells: list[dict[str, Any]], key: str, **where: Any) -> float:
    values = [c[key] for c in cells if all(c[k] == v for k, v in where.items())]
    return statistics.median(values) if values else float("nan")


def _pairs(cells: list[dict[str, Any]], a: str, b: str, **where: Any) -> list[float]:
    """Per round, tiles/s of set-up ``a`` over ``b`` (same trace, concurrency and pass)."""

    def rate(name: str, r: int) -> float:
        return _median(cells, "tiles_per_s", setup=name, round=r, **where)

    rounds = sorted({c["round"] for c in cells})
    return [rate(a, r) / rate(b, r) for r in rounds]


def markdown(
    args: argparse.Namespace, cells: list[dict[str, Any]], loads: list[str], command: str
) -> str:
    facts = report.machine_facts()
    rows = []
    for trace in args.traces:
        for c in args.concurrency:
            for pass_ in ("cold", "warm"):
                where = {"trace": trace, "c": c, "pass": pass_}
                rate = {s: _median(cells, "tiles_per_s", setup=s, **where) for s in SETUPS}
                p99 = {
                    s: statistics.median(
                        x["latency_ms"]["p99"]
                        for x in cells
                        if x["setup"] == s and all(x[k] == v for k, v in where.items())
                    )
                    for s in SETUPS
                }
                vs_direct = _pairs(cells, "haproxy-2", "direct", **where)
                vs_workers = _pairs(cells, "haproxy-2", "workers-2", **where)
                rows.append(
                    f"| {trace} c={c} {pass_} | {rate['direct']:,.0f} | {rate['haproxy-2']:,.0f}"
                    f" | {rate['workers-2']:,.0f} | **{statistics.median(vs_direct):.2f}** "
                    f"[{min(vs_direct):.2f}-{max(vs_direct):.2f}] | "
                    f"{statistics.median(vs_workers):.2f} [{min(vs_workers):.2f}-"
                    f"{max(vs_workers):.2f}] | {p99['direct']:.0f} / {p99['haproxy-2']:.0f} / "
                    f"{p99['workers-2']:.0f} |"
                )
    cpu = {s: _median(cells, "server_cpu_ms_per_tile", setup=s) for s in SETUPS}
    balancer_cpu = _median(cells, "balancer_cpu_ms_per_tile", setup="haproxy-2")
    errors = sum(c["errors"] for c in cells)
    spread: dict[str, int] = {}
    for cell in cells:
        if cell["setup"] == "haproxy-2" and cell["pass"] == "cold":  # one count per cell
            for backend, n in cell["backend_connections"].items():
                spread[backend] = spread.get(backend, 0) + n
    w, h = args.size
    return "\n".join(
        [
            "## Behind a load balancer: HAProxy + 2 servers vs 1 server "
            "(`benchmarks/bench_balancer.py`)",
            "",
            f"Command: `{command}`; {facts['date']}; tileserver {git_state()}; machine: "
            f"{facts['CPU']}, {facts['cores']} cores; slide {w} x {h}. Every process (servers, "
            "HAProxy, the load client) shares these cores.",
            "",
            "| trace, pass | direct tiles/s | haproxy-2 tiles/s | workers-2 tiles/s | "
            "haproxy-2 / direct | haproxy-2 / workers-2 | p99 ms direct / haproxy-2 / workers-2 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"CPU ms per tile of the serve processes (median over cells, both passes together): "
            f"direct {cpu['direct']:.2f}, haproxy-2 {cpu['haproxy-2']:.2f} (plus HAProxy "
            f"{balancer_cpu:.2f}), workers-2 {cpu['workers-2']:.2f}. {errors} errors in all "
            f"passes. Connections HAProxy gave each backend, all cells: {spread}.",
            "",
            "direct = one `serve --workers 1` reached directly; haproxy-2 = two "
            "`serve --workers 1` behind HAProxy 2.6 (TLS passthrough, round robin per connection, "
            "health checks); workers-2 = one `serve --workers 2` reached directly. HTTPS and a "
            "bearer token on every request; detection off (`--no-detect`: the random trace is a "
            f"crawl to it). Tiles/s: median of {args.rounds} rounds; ratios: median of the "
            "rounds' pairs [lowest-highest]. Fresh servers per cell, so cold passes start with "
            "empty caches. Each serve process has its own caches: in a warm pass through two "
            "processes a tile is a cache hit only when its connection reaches the process that "
            "served it in the cold pass.",
            "",
            "Machine load before and after: " + "; ".join(loads) + ".",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=(20_000, 15_000), metavar="WxH")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--traces", type=lambda t: t.split(","), default=["random", "pan"])
    p.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[8])
    p.add_argument("--max-requests", type=int, default=1500)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = p.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_balancer.py", *sys.argv[1:]])
    stores, home, slide_id = convert_once(ensure_slide(args.size))
    # A token of its own per run: a suspension from an earlier run stays with its name.
    name = f"bench-balancer-{secrets.token_hex(4)}"
    token = bench_token(home, [slide_id], name=name)
    loads = [load_now()]
    try:
        with tempfile.TemporaryDirectory(dir=DATA, prefix="bench-balancer-") as tmp:
            cells = measure(args, stores, home, slide_id, token, Path(tmp))
    finally:
        env = {**os.environ, "TILESERVER_HOME": str(home)}
        subprocess.run([*CLI, "tokens", "revoke", name], env=env, capture_output=True)
    loads.append(load_now())
    text = markdown(args, cells, loads, command)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "balancer.json").write_text(json.dumps({"command": command, "cells": cells}) + "\n")
    if not args.no_write:
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "balancer", text))
        log(f"wrote {RESULTS}")
    return 1 if any(c["errors"] for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
