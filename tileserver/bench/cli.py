"""``tileserver bench load URL``: run viewer traces against any DeepZoom or IIIF server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tileserver.bench.traces import PASSES, TRACES
from tileserver.errors import TileserverError

EXIT_ERROR = 1


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return values

    return parse


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in level-0 pixels, got {text!r}") from None
    return x, y


def add_commands(subparsers: Any) -> None:
    """Add ``bench`` (with ``load``) to an argparse subparsers object."""
    bench = subparsers.add_parser("bench", help="benchmark a tile server (ours or any other)")
    sub = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    load = sub.add_parser(
        "load",
        help="run viewer traces against a .dzi or IIIF info.json URL",
        description="Run viewer traces (pan, random, zoom) at several concurrency levels, "
        "cold then warm, against a DeepZoom .dzi or IIIF Image API 3 info.json URL. "
        "Loopback targets only unless --allow-remote.",
    )
    load.add_argument("url", help="http(s)://HOST:PORT/.../NAME.dzi or .../info.json")
    load.add_argument(
        "--trace", type=_choices(TRACES), default=("pan",), help="pan|random|zoom, comma-separated"
    )
    load.add_argument("--concurrency", type=_int_list, default=(1, 8, 32), metavar="1,8,32")
    load.add_argument("--passes", type=_choices(PASSES), default=PASSES, metavar="cold,warm")
    load.add_argument("--max-requests", type=int, default=2000, help="per pass (default 2000)")
    load.add_argument("--max-seconds", type=float, default=60.0, help="per pass (default 60)")
    load.add_argument("--seed", type=int, default=0, help="random trace seed")
    load.add_argument(
        "--centre", type=_point, action="append", metavar="X,Y", help="pan/zoom centre, repeatable"
    )
    load.add_argument(
        "--json", type=Path, metavar="OUT", help="write the report here ('-': stdout)"
    )
    load.add_argument(
        "--header", action="append", default=[], metavar="'Name: value'", help="repeatable"
    )
    load.add_argument("--cookie", action="append", default=[], metavar="name=value")
    load.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    load.add_argument("--cafile", help="CA bundle to verify the server's certificate with")
    load.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    load.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not loopback"
    )
    load.set_defaults(func=cmd_load)


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{'trace':7} {'c':>3} {'pass':5} {'req':>6} {'err':>4} {'tiles/s':>9} "
        f"{'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'vp p50':>8} {'vp p95':>8}  stop"
    ]
    for r in report["runs"]:
        lat = r["latency_ms"] or {}
        vp = r["viewport_ms"] or {}

        def ms(d: dict[str, float], k: str) -> str:
            return f"{d[k]:8.1f}" if k in d else f"{'-':>8}"

        lines.append(
            f"{r['trace']:7} {r['concurrency']:>3} {r['pass']:5} {r['requests']:>6} "
            f"{r['errors']:>4} {r['tiles_per_s'] or 0:>9.1f} {ms(lat, 'p50')} {ms(lat, 'p95')} "
            f"{ms(lat, 'p99')} {ms(lat, 'max')} {ms(vp, 'p50')} {ms(vp, 'p95')}  "
            f"{r['stopped_by']}"
        )
    return "\n".join(lines) + "\n(latencies in ms; vp: time until the whole viewport arrived)"


def cmd_load(args: argparse.Namespace) -> int:
    # Imported here: aiohttp's client adds a quarter of a second to every other command.
    from tileserver.bench.client import ClientOptions, parse_cookie, parse_header
    from tileserver.bench.load import LoadSettings, run

    try:
        options = ClientOptions(
            headers=tuple(parse_header(h) for h in args.header),
            cookies=tuple(parse_cookie(c) for c in args.cookie),
            insecure=args.insecure,
            cafile=args.cafile,
            allow_remote=args.allow_remote,
            timeout=args.timeout,
        )
        settings = LoadSettings(
            traces=args.trace,
            concurrency=args.concurrency,
            passes=args.passes,
            max_requests=args.max_requests,
            max_seconds=args.max_seconds,
            seed=args.seed,
            centres=tuple(args.centre) if args.centre else None,
        )
        report = run(args.url, settings, options)
    except (TileserverError, OSError) as exc:
        print(f"tileserver: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    text = json.dumps(report, indent=1)
    if args.json is not None and str(args.json) == "-":
        print(text)
    else:
        print(_table(report))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
    errors = sum(r["errors"] for r in report["runs"])
    if errors:
        print(f"tileserver: {errors} request(s) failed", file=sys.stderr)
    return EXIT_ERROR if errors else 0
