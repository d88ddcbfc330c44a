"""DICOMweb use cases on top of SlideService: UIDs to (slide, level), DICOM JSON records,
and frames (a frame is a stored chunk, TILED_FULL, row by row).

One study and one series per slide, one instance per stored level, UIDs derived from the
slide ID under the configured root (protocols/dicom.py). Resolving a study UID is a
dictionary lookup: the index holds every slide it has met, and a UID it does not know makes
it look again (at the caller's visible slides, or the library's listing at most every
``REFRESH_SECONDS``), so guessing UIDs costs at most a listing now and then.

Frames reuse the service's response cache and pass-through: a JPEG store's frame asked for
as JPEG is its stored bytes after decryption, exactly as a DeepZoom tile is; native frames
(Explicit VR Little Endian) are decoded chunks, always full Rows x Columns; a JPEG frame of
a lossless store is encoded in the render pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np

from tileserver.errors import SlideNotFound, TileserverError
from tileserver.geometry import Region, Size, ceil_div
from tileserver.library import Pyramid
from tileserver.protocols import dicom
from tileserver.protocols import dicomweb as dw
from tileserver.render.encode import encode, encode_jpeg_as
from tileserver.service import Encoded, NotModified, SlideService
from tileserver.store.layout import FILL_VALUE
from tileserver.view_plan import Plan, plan_at

ENCODED_PHOTOMETRIC = "YBR_FULL_422"  # frames we encode (4:2:0); stored 4:4:4 chunks declare it too
SLIDE_CACHE_ITEMS = 4096  # slides' facts and UIDs (a few KiB each); the study index is apart
JSON_CACHE_ITEMS = 4096  # instances' DICOM JSON (a few KiB each)
REFRESH_SECONDS = 2.0  # the library is listed again for an unknown UID at most this often
PHOTOMETRIC_SCAN = 4096  # chunks looked at for a level's first stored one


_JPEG = dw.Offer("image/jpeg", dicom.JPEG_BASELINE)
_NATIVE = dw.Offer("application/octet-stream", dicom.EXPLICIT_VR_LITTLE_ENDIAN)
_SINGLE_JPEG = dw.Offer("image/jpeg", dicom.JPEG_BASELINE, multipart=False)
# ``transfer-syntax=*`` on octet-stream (dicom-microscopy-viewer's ask) gets a JPEG store's
# stored bytes: that offer comes before the native one.
STORED_JPEG_OFFERS = (
    _JPEG,
    dw.Offer("application/octet-stream", dicom.JPEG_BASELINE),
    _NATIVE,
    _SINGLE_JPEG,
)
NATIVE_OFFERS = (_NATIVE, _JPEG, _SINGLE_JPEG)


@functools.lru_cache(maxsize=16)
def _white_frame(edge: int, photometric: str, quality: int) -> bytes:
    """A background frame (never stored), in the colour model of its level's frames."""
    return encode_jpeg_as(np.full((edge, edge, 3), FILL_VALUE, np.uint8), photometric, quality)


@dataclass(frozen=True)
class SlideDicom:
    """What DICOMweb needs of one slide at one generation."""

    slide_id: str
    generation: str
    uids: dicom.Uids
    facts: tuple[dicom.SlideFacts, ...]  # per level: the photometric is the level's own
    grids: tuple[Size, ...]  # frames across and down, per level
    syntax: str  # the transfer syntax frames are stored in (JPEG) or served natively in

    def level_of(self, series: str, instance: str) -> int:
        if series != self.uids.series or instance not in self.uids.instances:
            raise SlideNotFound("no such instance")
        return self.uids.instances.index(instance)

    def frames(self, level: int) -> int:
        return self.grids[level].width * self.grids[level].height


@dataclass(frozen=True)
class Frames:
    """Frames of one instance, in the order asked, as one negotiated representation."""

    parts: list[bytes]
    offer: dw.Offer
    etag: str


class DicomService:
    def __init__(self, service: SlideService, uid_root: str = "2.25") -> None:
        dicom.derive_uids("0" * 32, 1, uid_root)  # ValueError for a bad root, before serving
        self.service = service
        self.uid_root = uid_root
        self._studies: dict[str, str] = {}  # study UID -> slide ID
        self._indexed: set[str] = set()
        self._slides: OrderedDict[str, SlideDicom] = OrderedDict()  # bounded, LRU
        self._listed = 0.0
        self._listing: asyncio.Lock | None = None
        self._lock = threading.Lock()
        self._json: dict[tuple[Any, ...], dict[str, Any]] = {}

    # -- UIDs --------------------------------------------------------------------------------
    def study_uid(self, slide_id: str) -> str:
        return dicom.derive_uids(slide_id, 1, self.uid_root).study

    def _index(self, slide_ids: Iterable[str]) -> None:
        for slide_id in slide_ids:
            if slide_id not in self._indexed:
                self._studies[self.study_uid(slide_id)] = slide_id
                self._indexed.add(slide_id)

    def known(self, study: str) -> str | None:
        """The slide of a study UID already indexed (no I/O), else None."""
        return self._studies.get(study)

    async def resolve(self, study: str, visible: Collection[str] | None) -> str:
        """The slide whose study this is. ``visible`` are the slides the caller may see
        (None: look in the library). SlideNotFound when none is; the caller authorizes."""
        found = self._studies.get(study)
        if found is not None:
            return found
        if visible is not None:
            self._index(visible)
        else:
            await self._refresh()
        found = self._studies.get(study)
        if found is None:
            raise SlideNotFound("no such study")
        return found

    async def _refresh(self) -> None:
        if self._listing is None:
            self._listing = asyncio.Lock()
        async with self._listing:
            if time.monotonic() - self._listed < REFRESH_SECONDS:
                return
            ids = await self.service._run(self.service.library.slide_ids)
            self._index(ids)
            self._listed = time.monotonic()

    async def slide_ids(self, visible: Collection[str] | None) -> list[str]:
        """The slides a search looks at: the caller's visible ones that exist, sorted."""
        ids = await self.service._run(self.service.library.slide_ids)
        self._index(ids)
        if visible is not None:
            ids = [slide_id for slide_id in ids if slide_id in visible]
        return ids

    # -- slides ------------------------------------------------------------------------------
    async def slide(self, slide_id: str) -> SlideDicom:
        p = await self.service.pyramid(slide_id)
        known = self._slides.get(slide_id)
        if known is not None and known.generation == p.generation:
            self._slides.move_to_end(slide_id)  # on the event loop only: no lock needed
            return known
        made = await self.service._run(self._describe, p)
        self._slides[slide_id] = made
        self._slides.move_to_end(slide_id)
        while len(self._slides) > SLIDE_CACHE_ITEMS:
            self._slides.popitem(last=False)
        return made

    def _describe(self, p: Pyramid) -> SlideDicom:
        meta = p.metadata
        mpp = meta.get("mpp")
        base = dicom.SlideFacts(
            slide_id=p.slide_id,
            levels=tuple(p.levels),
            tile=p.tile,
            mpp=float(mpp[0]) if mpp else None,
            objective_power=meta.get("objective_power"),
            vendor=meta.get("vendor"),
            photometric="RGB",
            lossy=p.codec != "zstd",  # JPEG chunks, or a slide file read directly
            icc_profile=p.icc_profile,  # frames are the stored pixels, unconverted
        )
        grids = tuple(Size(ceil_div(s.width, p.tile), ceil_div(s.height, p.tile)) for s in p.levels)
        facts = []
        for level, grid in enumerate(grids):
            photometric = self._photometric(p, level, grid) if p.codec == "jpeg" else None
            if photometric is None:  # frames we encode (or none stored)
                photometric = ENCODED_PHOTOMETRIC
            facts.append(dataclasses.replace(base, photometric=photometric))
        syntax = dicom.JPEG_BASELINE if p.codec == "jpeg" else dicom.EXPLICIT_VR_LITTLE_ENDIAN
        uids = dicom.derive_uids(p.slide_id, len(p.levels), self.uid_root)
        return SlideDicom(p.slide_id, p.generation, uids, tuple(facts), grids, syntax)

    @staticmethod
    def _photometric(p: Pyramid, level: int, grid: Size) -> str | None:
        """The photometric of a level's stored JPEGs, from the first stored chunk: copied
        source tiles (Aperio's are often RGB JPEGs) and ours (YCbCr) differ by level."""
        for i in range(min(grid.width * grid.height, PHOTOMETRIC_SCAN)):
            data = p.chunk_bytes(level, i % grid.width, i // grid.width)
            if data is not None:
                return dicom.jpeg_photometric(data)
        return None

    # -- DICOM JSON --------------------------------------------------------------------------
    async def instance_json(
        self, slide: SlideDicom, levels: Iterable[int], *, identified: bool, case: str | None
    ) -> list[dict[str, Any]]:
        """The instances' DICOM JSON, cached per slide generation and caller kind; made in
        the render pool (a dataset is milliseconds of pydicom: never on the event loop)."""
        case = case if identified else None
        keys = [(slide.slide_id, slide.generation, k, identified, case) for k in levels]
        found = [self._json.get(key) for key in keys]
        missing = [key for key, doc in zip(keys, found, strict=True) if doc is None]
        if missing:
            made = await self.service._run(self._make_json, slide, missing)
            with self._lock:
                if len(self._json) + len(made) > JSON_CACHE_ITEMS:
                    self._json.clear()
                self._json.update(made)
            found = [self._json.get(key) or made[key] for key in keys]
        return cast(list[dict[str, Any]], found)

    @staticmethod
    def _make_json(
        slide: SlideDicom, keys: list[tuple[str, str, int, bool, str | None]]
    ) -> dict[tuple[str, str, int, bool, str | None], dict[str, Any]]:
        made = {}
        for key in keys:
            _, _, level, identified, case = key
            facts = dataclasses.replace(slide.facts[level], case=case)
            made[key] = dicom.instance_json(
                facts, slide.uids, level, slide.syntax, identified=identified
            )
        return made

    @staticmethod
    def offers(slide: SlideDicom) -> tuple[dw.Offer, ...]:
        """Frame representations, ours first: the stored syntax (no work), then the other."""
        return STORED_JPEG_OFFERS if slide.syntax == dicom.JPEG_BASELINE else NATIVE_OFFERS

    def available_syntaxes(self, slide: SlideDicom) -> list[str]:
        return [slide.syntax] + [
            s for s in (dicom.JPEG_BASELINE, dicom.EXPLICIT_VR_LITTLE_ENDIAN) if s != slide.syntax
        ]

    # -- frames ------------------------------------------------------------------------------
    async def frames(
        self,
        slide: SlideDicom,
        level: int,
        numbers: tuple[int, ...],
        offer: dw.Offer,
        if_none_match: Collection[str],
        who: str | None = None,
    ) -> Frames | NotModified:
        p = await self.service.pyramid(slide.slide_id)
        grid = slide.grids[level]
        positions = [dw.frame_position(n, grid.width, grid.height) for n in numbers]
        if len(positions) == 1:  # the frame's own ETag: one digest on the hot path
            found = await self._frame(p, slide, level, *positions[0], offer, if_none_match)
            if isinstance(found, NotModified):
                return found
            return Frames([found.data], offer, found.etag)
        etag = self.service._etag(p, ("frames", level, numbers, *offer))
        if etag in if_none_match:
            return NotModified(etag)
        found_all = await asyncio.gather(
            *(self._frame(p, slide, level, c, r, offer, (), who) for c, r in positions)
        )
        return Frames([cast(Encoded, f).data for f in found_all], offer, etag)

    async def _frame(
        self,
        p: Pyramid,
        slide: SlideDicom,
        level: int,
        col: int,
        row: int,
        offer: dw.Offer,
        if_none_match: Collection[str],
        who: str | None = None,
    ) -> Encoded | NotModified:
        """One frame, cached per representation (its ETag names that too)."""
        syntax = offer.transfer_syntax
        key = ("frame", level, col, row, *offer)
        # A z-stack's stored chunks are of every plane; its frames are of the default one.
        if syntax == dicom.JPEG_BASELINE and p.codec == "jpeg" and p.display.plane_count == 1:
            photometric = slide.facts[level].photometric
            fetch = partial(self._stored, p, level, col, row, photometric)
            return await self.service._respond(p, key, "jpeg", if_none_match, fetch=fetch)
        work = partial(self._pixels, p, slide, level, col, row, syntax)
        plan = self._frame_plan(p, level, col, row)
        return await self.service._respond(p, key, "jpeg", if_none_match, work, plan=plan, who=who)

    async def _stored(self, p: Pyramid, level: int, col: int, row: int, photometric: str) -> bytes:
        """A JPEG store's frame: the stored chunk after decryption, as DeepZoom passes it
        through. One in another colour model than its level declares (a source mixing
        them) is re-encoded to the declared one; background is a white frame in it."""
        self.service.stats["passthrough"] += 1
        data = await p.chunk_bytes_async(level, col, row)
        if data is None:
            return _white_frame(p.tile, photometric, self.service.settings.quality)
        if dicom.jpeg_photometric(data) == photometric:
            return data
        quality = self.service.settings.quality

        def recode() -> bytes:
            self.service.stats["dicom_frames_made"] += 1
            return encode_jpeg_as(
                self.service.display_chunk(p, level, col, row), photometric, quality
            )

        return await self.service._run(recode)

    @staticmethod
    def _frame_plan(p: Pyramid, level: int, col: int, row: int) -> Plan:
        tile = p.tile
        return plan_at(level, Region(col * tile, row * tile, tile, tile), Size(tile, tile))

    def _pixels(
        self, p: Pyramid, slide: SlideDicom, level: int, col: int, row: int, syntax: str | None
    ) -> bytes:
        """A frame we make (render pool): the decoded chunk, full size, as native bytes or
        encoded as JPEG in the colour model its level declares."""
        pixels = self.service.display_chunk(p, level, col, row)
        if pixels.shape[:2] != (p.tile, p.tile):  # chunks are stored padded; be sure
            raise TileserverError(f"{p.slide_id}: chunk {col},{row} is {pixels.shape}")
        self.service.stats["dicom_frames_made"] += 1
        if syntax == dicom.EXPLICIT_VR_LITTLE_ENDIAN:
            return pixels.tobytes()
        photometric = slide.facts[level].photometric
        return encode_jpeg_as(pixels, photometric, self.service.settings.quality)

    async def rendered_frame(
        self,
        slide: SlideDicom,
        level: int,
        col: int,
        row: int,
        fmt: str,
        if_none_match: Collection[str],
    ) -> Encoded | NotModified:
        """A frame as a picture (full size, as the frame is): the stored JPEG when it is
        one, else encoded in the render pool."""
        p = await self.service.pyramid(slide.slide_id)
        key = ("frame-rendered", level, col, row, fmt)
        if fmt == "jpeg" and p.codec == "jpeg" and p.display.plane_count == 1:
            fetch = partial(self.service._passthrough, p, level, col, row, "jpeg")
            return await self.service._respond(p, key, fmt, if_none_match, fetch=fetch)
        plan = self._frame_plan(p, level, col, row)
        quality = self.service.settings.quality

        def work() -> bytes:
            return encode(self.service.display_chunk(p, level, col, row), fmt, quality)

        return await self.service._respond(p, key, fmt, if_none_match, work, plan=plan)
