"""Store-level serving figures: LIS thumbnails from a cold server, and what encryption at
rest costs when tiles are read.

    .venv/bin/python benchmarks/bench_store.py [--size 20000x15000] [--repeats 15]

1. Thumbnails: ``GET /api/slides/{id}/thumbnail?max=512`` as the first request of a freshly
   started server (over HTTPS with a scoped bearer token, as a LIS would), so nothing of the
   store is in the server's caches; repeated with a restart each time. Target: p95 < 50 ms.
2. Encryption: the same slide converted twice, encrypted and ``--no-encrypt``; each served
   with caches off (``--cache-mb 0``) so every tile is read (and decrypted) from the store;
   the random trace at concurrency 8, alternating encrypted / plain in ABBA order. Target: the
   encrypted store's throughput is within 5 % of the plain one's.
Results replace the ``store`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_server import convert_once, ensure_slide  # a sibling script (same folder)

from tileserver.bench import comparators, report
from tileserver.bench.client import ClientOptions
from tileserver.bench.load import LoadSettings, measure_cell

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CLI = [sys.executable, "-m", "tileserver.cli"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cold_thumbnails(stores: Path | str, home: Path, slide_id: str, repeats: int) -> list[float]:
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    subprocess.run(
        [*CLI, "slides", "assign", "lis-bench", slide_id], check=True, env=env, capture_output=True
    )
    subprocess.run([*CLI, "tokens", "revoke", "bench-lis"], env=env, capture_output=True)
    made = subprocess.run(
        [
            *CLI,
            "tokens",
            "create",
            "bench-lis",
            "--scope",
            "thumbnails",
            "--collection",
            "lis-bench",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    latencies = []
    for i in range(repeats):
        with tempfile.TemporaryFile() as log_file:
            proc = subprocess.Popen(
                [*CLI, "serve", str(stores), "--port", "0"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
            try:
                assert proc.stdout is not None
                base = proc.stdout.readline().split(" at ")[-1].strip().rstrip("/")
                # The server made its certificate on first start; trust exactly that one.
                context = ssl.create_default_context(cafile=home / "tls" / "cert.pem")
                request = urllib.request.Request(
                    f"{base}/api/slides/{slide_id}/thumbnail?max=512",
                    headers={"Authorization": f"Bearer {token}"},
                )
                started = time.perf_counter()
                with urllib.request.urlopen(request, context=context, timeout=30) as reply:
                    reply.read()
                    assert reply.status == 200
                latencies.append((time.perf_counter() - started) * 1000)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        log(f"thumbnail {i + 1}/{repeats}: {latencies[-1]:.1f} ms")
    return latencies


def encryption_cost(slide: Path, home: Path, rounds: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"encrypted": [], "plain": []}
    stores, ids = {}, {}
    stores["encrypted"], _, ids["encrypted"] = convert_once(slide)
    stores["plain"], _, ids["plain"] = convert_once(slide, "plain", "--no-encrypt")
    settings = LoadSettings(
        traces=("random",), concurrency=(8,), max_requests=3000, max_seconds=30, passes=("cold",)
    )
    for r in range(rounds):
        # ABBA order: neither kind always runs first (warmer disk cache, noisier neighbour).
        for kind in ("encrypted", "plain") if r % 2 == 0 else ("plain", "encrypted"):
            with comparators.ours_server(stores[kind], home, ids[kind], "--cache-mb", "0") as s:
                _, cells = measure_cell(s.url, "random", 8, settings, ClientOptions(), set())
            rate = cells[0]["tiles_per_s"]
            figures[kind].append(rate)
            log(f"round {r + 1}: {kind} {rate} tiles/s ({cells[0]['errors']} errors)")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="20000x15000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    width, _, height = args.size.partition("x")
    slide = ensure_slide((int(width), int(height)))
    stores, home, slide_id = convert_once(slide)
    thumbs = cold_thumbnails(stores, home, slide_id, args.repeats)
    enc = encryption_cost(slide, home, args.rounds)
    p95 = sorted(thumbs)[max(0, round(0.95 * len(thumbs)) - 1)]
    ratio = statistics.median(enc["encrypted"]) / statistics.median(enc["plain"])
    facts = report.machine_facts()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_store.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    enc_median, plain_median = statistics.median(enc["encrypted"]), statistics.median(enc["plain"])
    thumb_verdict = "pass" if p95 < 50 else "FAIL"
    enc_verdict = "pass" if ratio >= 0.95 else "FAIL"
    lines = [
        "## Store reads: cold thumbnails, cost of encryption (`benchmarks/bench_store.py`)",
        "",
        f"Command: `{command}`; slide: synthetic {args.size} SVS; "
        f"machine: {facts['CPU']}, {facts['cores']} cores; {when}.",
        "",
        "| figure | value | target | verdict |",
        "|---|---:|---|---|",
        "| LIS `thumbnail?max=512`, first request of a fresh server, HTTPS + token, "
        f"p50 / p95 / max | {statistics.median(thumbs):.1f} / {p95:.1f} / {max(thumbs):.1f} ms "
        f"| p95 < 50 ms | **{thumb_verdict}** |",
        f"| tiles/s, random trace, c=8, caches off, encrypted store | {enc_median:.0f} | | |",
        f"| tiles/s, same, `--no-encrypt` store | {plain_median:.0f} | | |",
        f"| encrypted / plain (medians of {args.rounds}) | {ratio:.3f} | >= 0.95 "
        f"| **{enc_verdict}** |",
        "",
        f"Rounds (tiles/s): encrypted {enc['encrypted']}, plain {enc['plain']}; "
        f"thumbnail latencies (ms): {[round(t, 1) for t in thumbs]}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(report.replace_section(old, "store", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
