"""Command line: ``tileserver info|...``. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tileserver.admin import add_audit_database_option, add_database_option
from tileserver.admin import add_commands as add_admin_commands
from tileserver.alert_commands import add_commands as add_alert_commands
from tileserver.alert_commands import add_detection_options, detection_options
from tileserver.bench.cli import add_commands as add_bench_commands
from tileserver.config import Settings
from tileserver.errors import TileserverError
from tileserver.export import add_command as add_export_command
from tileserver.geometry import Region
from tileserver.sources import BACKENDS, SlideSource, open_slide
from tileserver.sources.remote import local_copy, slide_name
from tileserver.store.location import is_remote

EXIT_ERROR = 1

# Reading a slide should not need more than this many pixels to prove its data decodes.
_CHECK_PIXELS = 1024 * 1024


def slide_summary(source: SlideSource) -> dict[str, Any]:
    info = source.info
    return {
        "file": source.name,
        "backend": info.backend,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
        "levels": [
            {
                "width": lv.size.width,
                "height": lv.size.height,
                "downsample": round(lv.downsample, 4),
                "tile": list(lv.tile) if lv.tile else None,
            }
            for lv in info.levels
        ],
        "mpp": list(info.mpp) if info.mpp else None,
        "objective_power": info.objective_power,
        "associated": list(info.associated),
        "icc_profile": info.icc_profile is not None,
        "icc": _icc_summary(info.icc_profile),
        "properties": dict(info.properties),
        "channels": [
            {"name": c.name, "color": c.color, "emission_nm": c.emission_nm} for c in info.channels
        ],
        "dtype": info.dtype,
        "planes": list(info.planes),
    }


def _icc_summary(profile: bytes | None) -> dict[str, Any] | None:
    """The profile described (render/colour.py), never its bytes."""
    from tileserver.render.colour import profile_info

    return profile_info(profile).as_dict() if profile is not None else None


def check_pixels(source: SlideSource) -> None:
    """Decode a bounded corner of the smallest level, so broken pixel data shows up now."""
    level = len(source.info.levels) - 1
    size = source.info.levels[level].size
    side = int(_CHECK_PIXELS**0.5)
    region = Region(0, 0, min(size.width, side), min(size.height, side))
    if source.info.channels:  # channel slides have samples, not RGB pixels
        source.read_channels(level, region)
    else:
        source.read_region(level, region)


def _icc_line(icc: dict[str, Any] | None) -> str:
    if icc is None:
        return "no"
    usable = "" if icc["usable"] else ", unusable"
    return f"{icc['description'] or '(no description)'} ({icc['colour_space']}{usable})"


def _format_info(summary: dict[str, Any]) -> str:
    mpp = summary["mpp"]
    lines = [
        f"file:            {summary['file']}",
        f"vendor:          {summary['vendor']} (backend {summary['backend']})",
        f"dimensions:      {summary['dimensions'][0]} x {summary['dimensions'][1]}",
        f"mpp:             {f'{mpp[0]:.4g} x {mpp[1]:.4g} um/px' if mpp else 'unknown'}",
        f"objective power: {summary['objective_power'] or 'unknown'}",
        f"associated:      {', '.join(summary['associated']) or 'none'}",
        f"ICC profile:     {_icc_line(summary.get('icc'))}",
        f"levels:          {len(summary['levels'])}",
    ]
    for i, lv in enumerate(summary["levels"]):
        tile = f"tile {lv['tile'][0]}x{lv['tile'][1]}" if lv["tile"] else "untiled"
        lines.append(
            f"  [{i}] {lv['width']:>7} x {lv['height']:<7} downsample {lv['downsample']:<9g} {tile}"
        )
    if summary.get("channels"):
        names = ", ".join(c["name"] for c in summary["channels"])
        lines.append(f"channels:        {len(summary['channels'])} x {summary['dtype']}: {names}")
    if summary.get("planes"):
        planes = ", ".join(f"{z:g}" for z in summary["planes"])
        lines.append(f"focal planes:    {len(summary['planes'])} at {planes} um")
    return "\n".join(lines)


def _describe(path: Path, backend: str, check: bool) -> dict[str, Any]:
    with open_slide(path, backend=backend) as source:
        if check:
            check_pixels(source)
        return slide_summary(source)


def cmd_info(args: argparse.Namespace) -> int:
    from tileserver.pyramid.isolation import Limits, run_limited

    # The file is untrusted: open and decode it in a child that a bomb cannot take far (real
    # slides peak near 0.2 GiB of address space here).
    limits = Limits(memory_bytes=2 << 30, seconds=120)
    describe = partial(_describe, args.slide, args.backend, not args.no_check)
    summary = run_limited(describe, limits, args.slide.name)
    print(json.dumps(summary, indent=2) if args.json else _format_info(summary))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    # Imported here: the builder pulls in Numba, which `info` does not need.
    from tileserver.pyramid.builder import ConvertResult
    from tileserver.pyramid.isolation import Limits, run_limited
    from tileserver.pyramid.jobs import convert_file
    from tileserver.pyramid.plan import ConvertOptions

    try:
        options = ConvertOptions(
            codec=args.codec,
            quality=args.quality,
            tile=args.tile,
            workers=args.workers,
            keep_associated=args.keep_associated,
            shard=args.shard,
        )
    except ValueError as exc:
        raise TileserverError(str(exc)) from exc
    keyring = None
    if args.no_encrypt:
        print(
            "tileserver: WARNING: --no-encrypt writes PLAINTEXT stores: patient image data will "
            "sit unencrypted on disk. Use only for de-identified research exports.",
            file=sys.stderr,
        )
    else:
        from tileserver.security.keys import KeyRing

        keyring = KeyRing(
            args.settings.home,
            **args.settings.keyring_options(),
            keys_in_store=args.keys == "store",
        )
        keyring.current_kek()  # fail now, with a clear message, when there is no key
    if args.keep_associated:
        print(
            "tileserver: warning: --keep-associated copies label and macro images, which "
            "carry patient identifiers, into the stores",
            file=sys.stderr,
        )
    # What the imports made (~70k objects, most of them Numba's) lives until exit: keep it
    # out of the collections that each slide's garbage triggers (perf: 3 % of CPU before).
    gc.freeze()
    if not args.timeout > 0:
        raise TileserverError("--timeout must be positive")
    if not args.max_memory >= 2:  # below this, threads cannot start and a slide would hang
        raise TileserverError("--max-memory must be at least 2 (GiB)")
    limits = Limits(memory_bytes=int(args.max_memory * (1 << 30)), seconds=args.timeout)
    if args.scheduler:
        return _convert_on_cluster(args)

    def convert_one(slide: str) -> ConvertResult | str:
        # Runs in the slide's child process, progress bar and any download included (the
        # parent stays free of threads, an S3 client's among them, so forking is safe).
        with (
            local_copy(slide) as path,
            tqdm(desc=path.name, unit="tile", disable=args.quiet, leave=False) as bar,
        ):

            def progress(n: int, total: int) -> None:
                bar.total = total
                bar.update(n)

            return convert_file(path, args.out, options, keyring, args.backend, progress)

    failed = 0
    for slide in args.slides:
        name = slide_name(slide)
        try:
            result = run_limited(partial(convert_one, slide), limits, name)
        except TileserverError as exc:
            failed += 1
            print(f"tileserver: error: {exc}", file=sys.stderr)
            continue
        slide_id = result if isinstance(result, str) else result.slide_id
        if args.collection:
            from tileserver.admin import assign_collection

            assign_collection(args.settings, slide_id, args.collection)
        if isinstance(result, str):
            print(f"{name}: already converted as {result}")
            continue
        chunks = result.chunks
        print(
            f"{name}: {result.slide_id}  {result.l0_pixels / 1e6:.0f} Mpx in "
            f"{result.seconds:.1f} s = {result.megapixels_per_second:.1f} Mpx/s  "
            f"(chunks: {chunks['copied']} copied, {chunks['written']} encoded, "
            f"{chunks['background']} background, {chunks['kept']} kept from an earlier run)"
        )
    if failed:
        print(f"tileserver: {failed} of {len(args.slides)} slides failed", file=sys.stderr)
    return min(failed, 100)


def _convert_on_cluster(args: argparse.Namespace) -> int:
    """``convert --scheduler``: one task per slide on a Dask cluster, a bar over slides."""
    from tileserver.pyramid.cluster import Outcome, convert_on_cluster

    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    flags = ["--out", out, "--codec", args.codec, "--quality", str(args.quality)]
    flags += ["--tile", str(args.tile), "--shard", str(args.shard)]
    flags += ["--workers", str(args.workers), "--backend", args.backend]
    flags += ["--timeout", str(args.timeout), "--max-memory", str(args.max_memory)]
    flags += ["--keep-associated"] * args.keep_associated + ["--no-encrypt"] * args.no_encrypt
    flags += ["--keys", args.keys]
    flags += ["--collection", args.collection] if args.collection else []
    slides = [s if is_remote(s) else str(Path(s).resolve()) for s in args.slides]
    with tqdm(total=len(slides), desc="slides", unit="slide", disable=args.quiet) as bar:

        def done(outcome: Outcome) -> None:
            if outcome.status == "failed":
                bar.write(f"tileserver: error: {outcome.message}", file=sys.stderr)
            else:
                bar.write(outcome.message)
            bar.update(1)

        def started(dashboard: str) -> None:
            if not args.quiet:
                bar.write(f"Dask dashboard: {dashboard}", file=sys.stderr)

        # Workers of a local cluster share this key ring; remote ones use their own
        # TILESERVER_HOME with the same key-encryption key (a copied KEK file, or the same
        # token); with --keys store the data keys travel in the stores (decision 0004).
        home = str(args.settings.home) if args.scheduler.startswith("local:") else None
        outcomes = convert_on_cluster(
            args.scheduler, slides, flags, home, done, started, args.scheduler_timeout
        )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("converted", "skipped", "failed")}
    print(
        f"tileserver: {counts['converted']} converted, {counts['skipped']} skipped "
        f"(already complete), {counts['failed']} failed",
        file=sys.stderr,
    )
    return min(counts["failed"], 100)


def cmd_keys(args: argparse.Namespace) -> int:
    from tileserver.security.keys import KeyRing
    from tileserver.store.location import open_location

    keyring = KeyRing(args.settings.home, **args.settings.keyring_options())
    if args.keys_command == "init":
        key_id, created = keyring.initialise()
        state = "created" if created else "already exists"
        print(f"key-encryption key {key_id} {state} in {keyring.root}")
    elif args.keys_command == "list":
        for kek in keyring.keks():
            mark = "current" if kek.current else "retired"
            print(f"{kek.key_id}  {mark:8} wraps {kek.slides} data key(s)")
    elif args.keys_command == "rotate":
        key_id, count = keyring.rotate([open_location(s) for s in args.store])
        print(f"rotated: {count} data key(s) re-wrapped under new key-encryption key {key_id}")
    elif args.keys_command == "shred":
        destroyed = keyring.shred(args.slide_id, [open_location(s) for s in args.store])
        print(
            f"{args.slide_id}: data key destroyed ({', '.join(destroyed)}); its store can "
            "no longer be read. Backups of the store or of TILESERVER_HOME still hold its "
            "wrapped key: run `tileserver keys rotate` to destroy the key-encryption key "
            "that wrapped them"
        )
    return 0


def _check_render_limits(args: argparse.Namespace) -> None:
    from tileserver.service import SMALL_RENDER_BYTES

    if not args.render_budget >= 0 or not args.render_burst > 0:
        raise TileserverError("--render-budget must be >= 0 and --render-burst positive")
    if not args.max_upscale >= 1:
        raise TileserverError("--max-upscale must be at least 1")
    # Small renders get one slot per render thread; large ones need room beside them.
    least = (args.threads + 1) * SMALL_RENDER_BYTES >> 20
    if not least <= args.render_memory <= 1 << 20:
        raise TileserverError(f"--render-memory must be {least}..{1 << 20} MiB")


def _dicom_uid_root(root: str) -> str:
    from tileserver.protocols.dicom import derive_uids

    try:
        derive_uids("0" * 32, 1, root)
    except ValueError as exc:
        raise TileserverError(f"--dicom-uid-root {root[:70]!r}: {exc}") from None
    return root


def cmd_serve(args: argparse.Namespace) -> int:
    from tileserver.server.run import ServeOptions, parse_rate, serve
    from tileserver.service import ServiceSettings

    if not args.login_rate > 0:
        raise TileserverError("--login-rate must be positive")
    _check_render_limits(args)
    if (args.sources or "://" not in args.location) and not Path(args.location).is_dir():
        raise TileserverError(f"{args.location}: not a directory")
    options = ServeOptions(
        location=args.location,
        sources=args.sources,
        host=args.host,
        port=args.port,
        workers=args.workers,
        home=args.settings.home,
        service=ServiceSettings(
            dzi_tile=args.dzi_tile,
            dzi_overlap=args.dzi_overlap,
            threads=args.threads,
            max_upscale=args.max_upscale,
            render_budget_mpx=args.render_budget,
            render_burst_mpx=args.render_burst,
            render_memory_mib=args.render_memory,
            response_cache_bytes=args.cache_mb << 20,
            chunk_cache_items=512 if args.cache_mb else 0,
            dicom_uid_root=_dicom_uid_root(args.dicom_uid_root),
        ),
        tls=not args.insecure_http,
        auth=not args.no_auth,
        cert=args.cert,
        key=args.key,
        login_link=args.login_link,
        client_ca=args.client_ca,
        public_url=args.public_url,
        login_rate=args.login_rate,
        rate_limit=parse_rate(args.rate_limit, "--rate-limit"),
        token_rate_limit=None
        if args.rate_limit_tokens is None
        else parse_rate(args.rate_limit_tokens, "--rate-limit-tokens"),
        kek=args.settings.kek,
        pkcs11_pin=args.settings.pkcs11_pin,
        database=args.settings.database,
        audit_database=args.settings.audit_database,
        detection=detection_options(args),
    )
    weakened = [
        name for name, on in [("TLS", args.insecure_http), ("authentication", args.no_auth)] if on
    ]
    if weakened:
        print(
            f"tileserver: WARNING: serving without {' and '.join(weakened)} "
            "(refused unless bound to loopback; for local tests and benchmarks)",
            file=sys.stderr,
        )
    return serve(options)


def cmd_migrate(args: argparse.Namespace) -> int:
    from tileserver.security.keys import KeyRing
    from tileserver.store.location import open_location
    from tileserver.store.migrate import migrate_all

    if not 1 <= args.shard <= 256:
        raise TileserverError("--shard must be 1..256")
    stores = open_location(args.location)
    with tqdm(desc="migrate", unit="slide", disable=args.quiet, leave=False) as bar:
        keyring = KeyRing(args.settings.home, **args.settings.keyring_options())
        report = migrate_all(stores, keyring, args.shard, bar.update)
    for slide_id, outcome in report.items():
        print(f"{slide_id}: {outcome}")
    failed = sum(outcome.startswith("failed") for outcome in report.values())
    return min(failed, 100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tileserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a slide file")
    info.add_argument("slide", type=Path, help="a slide file, or a folder holding a DICOM series")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--backend", choices=["auto", *BACKENDS], default="auto")
    info.add_argument(
        "--no-check", action="store_true", help="skip decoding a corner of the smallest level"
    )
    info.set_defaults(func=cmd_info)

    convert = sub.add_parser(
        "convert",
        help="build a store per slide (exit status: number of slides that failed)",
    )
    convert.add_argument(
        "slides",
        nargs="+",
        help="slide files, DICOM series (a folder or any of its files: one slide), or s3:// "
        "URLs of single-file slides",
    )
    convert.add_argument(
        "--out", required=True, help="where the stores go: a directory, file:// or s3:// URL"
    )
    convert.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    convert.add_argument(
        "--codec",
        choices=["jpeg", "zstd"],
        default="jpeg",
        help="chunk codec: jpeg (default) or zstd (lossless)",
    )
    convert.add_argument(
        "--quality",
        type=int,
        default=90,
        help="JPEG quality of chunks the converter encodes, 4:4:4 (default 90: see "
        "benchmarks/RESULTS.md); level-0 tiles copied from the source keep theirs",
    )
    convert.add_argument(
        "--tile",
        type=int,
        default=256,
        help="chunk edge when source tiles cannot be copied as they are",
    )
    convert.add_argument(
        "--shard", type=int, default=16, help="chunks per shard edge (default 16: 256 a shard)"
    )
    convert.add_argument(
        "--keep-associated",
        action="store_true",
        help="also copy label, macro and thumbnail images (identifying!)",
    )
    convert.add_argument(
        "--no-encrypt",
        action="store_true",
        help="write plaintext stores (research exports of de-identified data only)",
    )
    convert.add_argument(
        "--keys",
        choices=["store", "home"],
        default="store",
        help="where wrapped data keys go: store (default: TILESERVER_HOME and a copy in the "
        "slide's store, so any host with the key-encryption key can serve it) or home (only "
        "TILESERVER_HOME); docs/decisions/0004",
    )
    convert.add_argument("--backend", choices=["auto", *BACKENDS], default="auto")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--collection", help="put the slides into this collection (case)")
    convert.add_argument(
        "--scheduler",
        help="convert on a Dask cluster: a scheduler address (tcp://HOST:8786), or local:N "
        "for N worker processes here; one task per slide",
    )
    convert.add_argument(
        "--scheduler-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to keep trying to reach the Dask scheduler (default 30)",
    )
    convert.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds per slide before its converter process is killed (default 3600)",
    )
    convert.add_argument(
        "--max-memory",
        type=float,
        default=8.0,
        help="GiB of address space per slide's converter process (at least 2; default 8)",
    )
    convert.set_defaults(func=cmd_convert)

    serve = sub.add_parser(
        "serve", help="serve the complete stores at a location (directory, file:// or s3://)"
    )
    serve.add_argument("location", help="where the stores are (or the slide files: --sources)")
    serve.add_argument(
        "--sources",
        action="store_true",
        help="serve slide files in the directory directly (no conversion)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.add_argument("--threads", type=int, default=2, help="render threads per process")
    serve.add_argument(
        "--dzi-tile",
        type=int,
        default=None,
        help="DeepZoom tile edge (default: the store's chunk edge)",
    )
    serve.add_argument("--dzi-overlap", type=int, default=0)
    serve.add_argument(
        "--cache-mb",
        type=int,
        default=256,
        help="encoded-response cache; 0 turns caches off (for benchmarks)",
    )
    serve.add_argument(
        "--render-budget",
        type=float,
        default=8.0,
        metavar="MPX_PER_S",
        help="output megapixels per second each user, machine or shared link may render "
        "(default 8; 0: no budget); pass-through tiles are free",
    )
    serve.add_argument(
        "--render-burst",
        type=float,
        default=128.0,
        metavar="MPX",
        help="megapixels a caller may render at once before --render-budget applies (default 128)",
    )
    serve.add_argument(
        "--render-memory",
        type=int,
        default=1024,
        metavar="MIB",
        help="estimated memory of renders in flight, at most (default 1024); a larger render "
        "is refused, others wait up to 10 s, then 503",
    )
    serve.add_argument(
        "--max-upscale",
        type=float,
        default=2.0,
        metavar="FACTOR",
        help="IIIF ^ sizes and REST regions enlarge a region at most this much (default 2)",
    )
    serve.add_argument(
        "--cert", type=Path, help="TLS certificate (default: self-signed, made once)"
    )
    serve.add_argument("--key", type=Path, help="TLS private key (0600)")
    serve.add_argument(
        "--client-ca",
        type=Path,
        help="CA bundle for machine clients' certificates (mutual TLS): a certificate whose "
        "common name is a token's name acts as that token",
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="https://host[:port] clients reach the server at, for absolute URLs such as IIIF "
        "ids (default: the address and port a client connected to; never its Host header)",
    )
    serve.add_argument(
        "--dicom-uid-root",
        metavar="ROOT",
        default=os.environ.get("TILESERVER_DICOM_UID_ROOT") or "2.25",
        help="the organisation's UID root DICOMweb UIDs are derived under (env "
        "TILESERVER_DICOM_UID_ROOT; default 2.25: UUID-derived, no registration needed)",
    )
    serve.add_argument(
        "--login-rate",
        type=float,
        default=1.0,
        help="login attempts per second per client address, after a burst of 30 (default 1)",
    )
    serve.add_argument(
        "--rate-limit",
        metavar="N[/BURST]",
        default="2000/4000",
        help="requests per second per user or machine, and the burst (default 2000/4000; "
        "0 turns it off, only without authentication)",
    )
    serve.add_argument(
        "--rate-limit-tokens",
        metavar="N[/BURST]",
        help="the same for machines (bearer tokens, client certificates); default: --rate-limit",
    )
    serve.add_argument(
        "--login-link", metavar="USER", help="print a one-time login link for USER (loopback only)"
    )
    serve.add_argument(
        "--insecure-http", action="store_true", help="plain HTTP (refused unless bound to loopback)"
    )
    add_database_option(serve)
    add_audit_database_option(serve)
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="no authentication (refused unless bound to loopback)",
    )
    add_detection_options(serve, serve=True)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage encryption keys under TILESERVER_HOME")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("init", help="create the key-encryption key (no-op when it exists)")
    keys_sub.add_parser("list", help="key-encryption keys and how many data keys each wraps")
    rotate = keys_sub.add_parser(
        "rotate", help="re-wrap every data key under a new key-encryption key"
    )
    shred = keys_sub.add_parser("shred", help="destroy one slide's data key (crypto-erase)")
    shred.add_argument("slide_id")
    for command, what in [(rotate, "re-wrap"), (shred, "delete")]:
        command.add_argument(
            "--store",
            action="append",
            default=[],
            metavar="LOCATION",
            help=f"also {what} the data keys kept in the slide stores at LOCATION (a "
            "directory or URL; repeatable): those other hosts converted",
        )
    keys.set_defaults(func=cmd_keys)

    migrate = sub.add_parser(
        "migrate", help="rewrite format-1 stores at a location into format 2, verified"
    )
    migrate.add_argument("location", help="a directory, file:// or s3:// URL of stores")
    migrate.add_argument("--shard", type=int, default=16, help="chunks per shard edge")
    migrate.add_argument("--quiet", action="store_true", help="no progress bar")
    migrate.set_defaults(func=cmd_migrate)
    add_export_command(sub)
    add_admin_commands(sub)
    add_alert_commands(sub)
    add_bench_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # it logs every odd tag it skips
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        args.settings = (
            Settings.from_env()
            .with_database(getattr(args, "database", None))
            .with_audit_database(getattr(args, "audit_database", None))
        )
        return func(args)
    except TileserverError as exc:
        print(f"tileserver: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tileserver: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
