"""CLI: ``python -m sample_data {svs,tiff,ome-tiff,scn,bif,philips} OUT --size WxH ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    parser.add_argument("format", choices=["svs", "tiff", "ome-tiff", *VENDORS])
    parser.add_argument("out", help="output file")
    parser.add_argument("--size", type=_size, required=True, metavar="WxH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=None, help="tile size (svs 240, tiff 256)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality")
    parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel")
    parser.add_argument(
        "--compression", default="jpeg", help="tiff/ome-tiff codec: jpeg, zlib, none"
    )
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
        elif args.format == "svs":
            path = write_svs(args.out, width, height, progress=args.progress, **common)
        else:
            path = write_tiff(
                args.out,
                width,
                height,
                ome=args.format == "ome-tiff",
                compression=args.compression,
                progress=args.progress,
                **common,
            )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
