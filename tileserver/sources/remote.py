"""Slide files on object storage (``convert s3://bucket/slides/x.svs``): copied to a local
temporary file first, since OpenSlide and tifffile read local files, in bounded ranged reads
so a multi-gigabyte slide never sits in memory. Only single-file formats: a slide whose
pixels live in several files (MIRAX, Hamamatsu VMS, a DICOM series) is refused with the
reason, as a whole folder cannot be named by one URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from tempfile import TemporaryDirectory

from tileserver.errors import SlideNotFound, UnsupportedFormat
from tileserver.store.location import describe_location, is_remote, open_location

PIECE = 64 << 20  # bytes per ranged read
MULTI_FILE = (".mrxs", ".vms", ".vmu", ".dcm")


def slide_name(slide: str) -> str:
    """The file name of a slide path or URL, for messages."""
    return PurePosixPath(slide.split("?", 1)[0]).name if is_remote(slide) else Path(slide).name


@contextmanager
def local_copy(slide: str, directory: Path | None = None) -> Iterator[Path]:
    """A local path to read ``slide`` from: the path itself, or for a URL a private
    temporary copy (under ``directory``, else $TMPDIR) deleted when the block ends."""
    if not is_remote(slide):
        yield Path(slide)
        return
    name = slide_name(slide)
    if not name or name.lower().endswith(MULTI_FILE):
        raise UnsupportedFormat(
            f"{name or slide}: only single-file slides can be read from a URL "
            "(MIRAX, VMS and DICOM series span several files: copy them to a shared path)"
        )
    parent = slide.split("?", 1)[0].rsplit("/", 1)[0]
    store = open_location(parent)
    with TemporaryDirectory(prefix="tileserver-slide-", dir=directory) as temporary:
        path = Path(temporary) / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            offset = 0
            while True:
                piece = store.get_range(name, offset, PIECE)
                if piece is None:
                    raise SlideNotFound(f"{name}: no such object at {describe_location(parent)}")
                out.write(piece)
                offset += len(piece)
                if len(piece) < PIECE:
                    break
        yield path
