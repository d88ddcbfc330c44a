"""``tileserver export SLIDE_ID --store LOCATION --dicom OUT_DIR``: a store as a DICOM VL
Whole Slide Microscopy series, one Part-10 file per level (protocols/dicom.py makes the
datasets; this is the I/O around them).

Frames are the store's chunks, row by row (TILED_FULL). A JPEG store's chunks are copied as
they are (the level declares the colour model of its first stored chunk; a chunk in another
one is re-encoded to match, so no frame shows false colour); background chunks, which the
store never wrote, are one white frame encoded once per level. A zstd store's chunks are
decoded into native RGB frames (Explicit VR Little Endian). Frames are streamed to the file
and the Extended Offset Table is filled in at the end, so a level never sits in memory.

De-identified by default; ``--identified`` adds the slide's case (collection) name. Every
export, done or failed, is an EXPORT record in the audit trail.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from tqdm import tqdm

from tileserver.errors import SlideNotFound, StoreError, TileserverError, UnsupportedFeature
from tileserver.sources.codestreams import jpeg_declared
from tileserver.store.layout import FILL_VALUE

# pydicom and the store library load when an export runs, not whenever the CLI starts (they
# are most of a second of every other command's start-up otherwise).
if TYPE_CHECKING:
    from tileserver.library import StorePyramid
    from tileserver.protocols import dicom

UID_ROOT = "2.25"  # dicom.UUID_ROOT: UUID-derived UIDs
ADMIN = "cli-admin"  # who the audit trail names for a command-line export (as admin.py)
# Copied frames keep their quality; the few re-encoded ones (another colour model) get this.
REENCODE_QUALITY = 90


def level_file(level: int) -> str:
    return f"level-{level}.dcm"


def slide_facts(pyramid: StorePyramid, photometric: str, case: str | None) -> dicom.SlideFacts:
    """What the store knows, as ``dicom.SlideFacts`` (``photometric``: of the frames)."""
    from tileserver.protocols import dicom

    meta = pyramid.metadata
    mpp = meta.get("mpp")
    power = meta.get("objective_power")
    vendor = meta.get("vendor")
    return dicom.SlideFacts(
        slide_id=pyramid.slide_id,
        levels=pyramid.levels,
        tile=pyramid.tile,
        mpp=float(sum(mpp) / len(mpp)) if mpp else None,
        objective_power=float(power) if power else None,
        vendor=str(vendor) if vendor else None,
        photometric=photometric,
        case=case,
        lossy=pyramid.codec == "jpeg",
        icc_profile=pyramid.icc_profile,  # the frames' pixels are the source's, unconverted
    )


def _chunks(pyramid: StorePyramid, level: int) -> Iterator[bytes | None]:
    grid = pyramid.reader.layout.grid(level)
    for t_row in range(grid.height):
        for t_col in range(grid.width):
            yield pyramid.chunk_bytes(level, t_col, t_row)


def level_photometric(pyramid: StorePyramid, level: int) -> str:
    """The colour model of a JPEG level's first stored chunk (YCbCr 4:2:0 when it has none:
    its frames are then all the white one we encode)."""
    from tileserver.protocols import dicom

    for data in _chunks(pyramid, level):
        if data is not None:
            try:
                return dicom.jpeg_photometric(data)
            except ValueError as exc:
                raise StoreError(f"{pyramid.slide_id}: level {level}: {exc}") from exc
    return "YBR_FULL_422"


def _white(tile: int) -> np.ndarray:
    return np.full((tile, tile, 3), FILL_VALUE, np.uint8)


def _jpeg_frames(
    pyramid: StorePyramid, level: int, photometric: str
) -> Iterator[tuple[bytes, bool]]:
    """(frame, copied) for every chunk of a JPEG level, row by row."""
    from tileserver.protocols import dicom
    from tileserver.render.encode import encode_jpeg_as

    tile = pyramid.tile
    white = encode_jpeg_as(_white(tile), photometric, REENCODE_QUALITY)
    grid = pyramid.reader.layout.grid(level)
    for i, data in enumerate(_chunks(pyramid, level)):
        if data is None:
            yield white, False
            continue
        t_row, t_col = divmod(i, grid.width)
        try:
            declared = jpeg_declared(data)
            same = dicom.jpeg_photometric(data) == photometric
        except ValueError as exc:
            raise StoreError(f"{pyramid.slide_id}: level {level} chunk {i}: {exc}") from exc
        if same and (declared.width, declared.height) == (tile, tile):
            yield data, True
        else:  # another colour model (or size): decoded, padded, re-encoded to match
            pixels = pyramid.reader.decode(level, t_col, t_row, data)
            yield encode_jpeg_as(pixels, photometric, REENCODE_QUALITY), False


def _native_frames(pyramid: StorePyramid, level: int) -> Iterator[tuple[bytes, bool]]:
    white = _white(pyramid.tile).tobytes()
    grid = pyramid.reader.layout.grid(level)
    for i, data in enumerate(_chunks(pyramid, level)):
        t_row, t_col = divmod(i, grid.width)
        if data is None:
            yield white, False
        else:
            yield pyramid.reader.decode(level, t_col, t_row, data).tobytes(), False


def _open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def write_level(
    pyramid: StorePyramid,
    facts: dict[int, dicom.SlideFacts],
    uids: dicom.Uids,
    level: int,
    out: BinaryIO,
    *,
    identified: bool,
    progress: Callable[[int], None],
) -> int:
    """Write one level's Part-10 file into ``out`` (a new, seekable file); returns how many
    frames were copied as stored."""
    from tileserver.protocols import dicom

    jpeg = pyramid.codec == "jpeg"
    syntax = dicom.JPEG_BASELINE if jpeg else dicom.EXPLICIT_VR_LITTLE_ENDIAN
    level_facts = facts[level]
    ds = dicom.instance_dataset(level_facts, uids, level, syntax, identified=identified)
    frames = dicom.frame_count(level_facts, level)
    copied = 0
    if jpeg:
        dicom.reserve_ratio(ds)
    header = dicom.part10_header(ds, syntax)
    out.write(header)
    if jpeg:
        tables, first_value = dicom.offset_tables_header(frames)
        tables_at = out.tell() + first_value
        out.write(tables)
        out.write(dicom.encapsulated_pixel_header())
        start = out.tell()
        offsets, lengths = [], []
        for frame, was_copied in _jpeg_frames(pyramid, level, level_facts.photometric):
            item = dicom.fragment(frame)
            offsets.append(out.tell() - start)
            lengths.append(len(item) - 8)
            out.write(item)
            copied += was_copied
            progress(1)
        out.write(dicom.SEQUENCE_DELIMITER)
        out.seek(tables_at)
        out.write(dicom.offset_values(offsets, lengths))
        out.seek(dicom.ratio_offset(header))
        out.write(dicom.ratio_value(frames * pyramid.tile**2 * 3, sum(lengths)))
    else:
        frame_bytes = pyramid.tile * pyramid.tile * 3
        try:
            out.write(dicom.native_pixel_header(frame_bytes, frames))
        except ValueError as exc:
            raise StoreError(f"{pyramid.slide_id}: level {level}: {exc}") from exc
        for frame, _ in _native_frames(pyramid, level):
            out.write(frame)
            progress(1)
        if frame_bytes * frames % 2:
            out.write(b"\x00")
    return copied


def export_dicom(
    pyramid: StorePyramid,
    out_dir: Path,
    *,
    identified: bool = False,
    uid_root: str = UID_ROOT,
    case: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, int]:
    """Write the series into ``out_dir`` (made 0700 when absent; refused when not empty).
    Returns counts: files, frames, copied (frames that are the stored chunk's bytes)."""
    from tileserver.protocols import dicom

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TileserverError(f"{out_dir}: exists and is not an empty directory; not overwritten")
    if pyramid.display.channels or pyramid.display.plane_count > 1:
        # Frames are copies of stored RGB chunks; channels (one optical path each) and focal
        # planes would need their own DICOM modelling, not a rendering of one display.
        kind = "a channel (fluorescence) slide" if pyramid.display.channels else "a z-stack"
        raise UnsupportedFeature(f"{pyramid.slide_id}: export --dicom of {kind} is not supported")
    try:
        uids = dicom.derive_uids(pyramid.slide_id, len(pyramid.levels), uid_root)
    except ValueError as exc:
        raise TileserverError(f"--uid-root: {exc}") from exc
    levels = range(len(pyramid.levels))
    facts = {
        level: slide_facts(
            pyramid,
            level_photometric(pyramid, level) if pyramid.codec == "jpeg" else "RGB",
            case,
        )
        for level in levels
    }
    created = not out_dir.exists()
    written: list[Path] = []
    counts = {"files": 0, "frames": 0, "copied": 0}
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for level in levels:
            path = out_dir / level_file(level)
            # O_EXCL: never a file someone else made meanwhile.
            with os.fdopen(_open_new(path), "wb") as out:
                written.append(path)
                counts["copied"] += write_level(
                    pyramid, facts, uids, level, out, identified=identified, progress=progress
                )
            counts["files"] += 1
            counts["frames"] += dicom.frame_count(facts[level], level)
    except BaseException as exc:
        for path in written:  # no half series left behind
            path.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if isinstance(exc, OSError):  # disk full, no permission: one line, like the rest
            raise TileserverError(f"{out_dir}: {exc.strerror or exc}") from exc
        raise
    return counts


# -- the command --------------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export", help="write a slide's store as a DICOM WSI series (one file per level)"
    )
    export.add_argument("slide_id")
    export.add_argument(
        "--store",
        required=True,
        metavar="LOCATION",
        help="where the slide's store is: a directory, file:// or s3:// URL",
    )
    export.add_argument(
        "--dicom", required=True, type=Path, metavar="OUT_DIR", help="a new or empty directory"
    )
    export.add_argument(
        "--identified",
        action="store_true",
        help="keep the case (collection) name as AccessionNumber; default: de-identified "
        "(PS3.15 Basic Profile)",
    )
    export.add_argument(
        "--uid-root",
        default=os.environ.get("TILESERVER_DICOM_UID_ROOT") or UID_ROOT,
        metavar="ROOT",
        help="the organisation's UID root, as `serve --dicom-uid-root` (env "
        "TILESERVER_DICOM_UID_ROOT; default 2.25: UUID-derived UIDs), so exported and served "
        "UIDs agree",
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)


def _audit(
    args: argparse.Namespace, slide_id: str, outcome: int, detail: dict[str, object]
) -> None:
    from tileserver.security.audit import EXPORT
    from tileserver.security.audit_sink import open_audit_log
    from tileserver.security.keys import KeyRing, make_private_dir

    home = make_private_dir(args.settings.home)
    audit = open_audit_log(home, KeyRing(home).service_key("audit"), args.settings.audit_database)
    try:
        audit.append(
            EXPORT,
            action="R",
            outcome=outcome,
            user=ADMIN,
            role="admin",
            obj=slide_id,
            detail=detail,
        )
    finally:
        audit.close()


def _case(args: argparse.Namespace, slide_id: str) -> str | None:
    from tileserver.security.accounts import Accounts
    from tileserver.security.keys import KeyRing

    accounts = Accounts(
        args.settings.state_database(), KeyRing(args.settings.home).service_key("totp")
    )
    return accounts.collection_of(slide_id)


def cmd_export(args: argparse.Namespace) -> int:
    from tileserver.library import SlideLibrary, StorePyramid
    from tileserver.security.audit import MINOR_FAILURE, SUCCESS
    from tileserver.security.keys import KeyRing

    slide_id: str = args.slide_id
    keyring = KeyRing(args.settings.home, **args.settings.keyring_options())
    library = SlideLibrary(args.store, sources=False, keyring=keyring)
    try:
        pyramid = library.get(slide_id)
    except SlideNotFound:
        raise SlideNotFound(f"{slide_id[:40]!r}: no such slide at {args.store}") from None
    assert isinstance(pyramid, StorePyramid)  # a library of stores opens stores
    detail: dict[str, object] = {
        "format": "dicom",
        "identified": args.identified,
        "to": str(args.dicom.resolve())[:200],
    }
    case = _case(args, slide_id) if args.identified else None
    total = sum(pyramid.reader.layout.grid(level).pixels for level in range(len(pyramid.levels)))
    try:
        with tqdm(
            total=total, desc=slide_id[:8], unit="frame", disable=args.quiet or None, leave=False
        ) as bar:
            counts = export_dicom(
                pyramid,
                args.dicom,
                identified=args.identified,
                uid_root=args.uid_root,
                case=case,
                progress=bar.update,
            )
    except TileserverError as exc:
        _audit(args, slide_id, MINOR_FAILURE, {**detail, "error": str(exc)[:200]})
        raise
    _audit(args, slide_id, SUCCESS, {**detail, **counts})
    kind = "identified" if args.identified else "de-identified"
    print(
        f"{slide_id}: {counts['files']} files, {counts['frames']} frames "
        f"({counts['copied']} copied as stored), {kind}, in {args.dicom}"
    )
    return 0
