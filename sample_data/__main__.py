"""CLI: ``python -m sample_data {svs,tiff,ome-tiff,scn,bif,philips,fluorescence,z-stack} OUT
--size WxH ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sample_data.fluorescence import write_fluorescence, write_rgb_z_stack
from sample_data.icc import wide_gamut_profile
from sample_data.synthetic import write_svs, write_tiff
from sample_data.vendors import VENDORS, write_vendor


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 4000x3000, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sample_data", description="Write a deterministic synthetic slide."
    )
    parser.add_argument(
        "format", choices=["svs", "tiff", "ome-tiff", *VENDORS, "fluorescence", "z-stack"]
    )
    parser.add_argument("out", help="output file")
    parser.add_argument("--size", type=_size, required=True, metavar="WxH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=None, help="tile size (svs 240, tiff 256)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality")
    parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel")
    parser.add_argument(
        "--compression",
        default=None,
        help="tiff/ome-tiff codec: jpeg (default), zlib, none; fluorescence: zstd (default), "
        "zlib, none; z-stack: zlib (default), jpeg, none",
    )
    parser.add_argument("--channels", type=int, default=8, help="fluorescence: channel count")
    parser.add_argument("--bits", type=int, choices=[8, 16], default=16, help="fluorescence")
    parser.add_argument(
        "--planes", type=int, default=None, help="focal planes (fluorescence 1, z-stack 3)"
    )
    parser.add_argument("--z-step", type=float, default=1.0, help="um between focal planes")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--icc", action="store_true", help="tag with a synthetic wide-gamut ICC profile"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    width, height = args.size
    common: dict[str, object] = {"quality": args.quality, "seed": args.seed, "mpp": args.mpp}
    if args.tile is not None:
        common["tile"] = args.tile
    if args.icc:
        common["iccprofile"] = wide_gamut_profile()
    try:
        if args.format in VENDORS:  # vendor-like files: no ICC profile, no progress bars
            if args.icc:
                raise ValueError(f"--icc is not available for {args.format}")
            path = write_vendor(args.format, args.out, width, height, **common)
        elif args.format in ("fluorescence", "z-stack"):
            if args.icc:
                raise ValueError(f"--icc is not available for {args.format}")
            path = _write_stack(args, width, height)
        elif args.format == "svs":
            path = write_svs(args.out, width, height, progress=args.progress, **common)
        else:
            path = write_tiff(
                args.out,
                width,
                height,
                ome=args.format == "ome-tiff",
                compression=args.compression or "jpeg",
                progress=args.progress,
                **common,
            )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _write_stack(args: argparse.Namespace, width: int, height: int) -> Path:
    common: dict[str, Any] = {"seed": args.seed, "mpp": args.mpp, "z_step": args.z_step}
    if args.tile is not None:
        common["tile"] = args.tile
    if args.format == "z-stack":
        return write_rgb_z_stack(
            args.out,
            width,
            height,
            planes=3 if args.planes is None else args.planes,
            compression=args.compression or "zlib",
            **common,
        )
    return write_fluorescence(
        args.out,
        width,
        height,
        channels=args.channels,
        dtype=f"uint{args.bits}",
        planes=1 if args.planes is None else args.planes,
        compression=args.compression or "zstd",
        progress=args.progress,
        **common,
    )


if __name__ == "__main__":
    raise SystemExit(main())
