"""DICOMweb (PS3.18) without I/O: QIDO-RS queries and matching over DICOM JSON, frame
lists and TILED_FULL frame positions, ``Accept`` negotiation (PS3.18 8.7) and
multipart/related framing.

Records are DICOM JSON objects (``{"0020000D": {"vr": "UI", "Value": [...]}}``), so a query
matches exactly what a client would read back. Attributes are named by keyword or by tag
(eight hex digits); only those in ``ATTRIBUTES`` may be searched on, so a typo is a 400 that
names it rather than a search that silently matches everything.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tileserver.errors import TileserverError
from tileserver.protocols.dicom import EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT_VR_LITTLE_ENDIAN
from tileserver.protocols.dicom import JPEG_BASELINE as JPEG_BASELINE
from tileserver.protocols.dicom import is_uid as is_uid

DICOM_JSON = "application/dicom+json"
MAX_FRAMES = 256  # frames in one request; a viewer asks for a handful
MAX_FRAME_PIXELS = 1 << 24  # and their pixels: 48 MiB of native frames at most
MAX_LIMIT = 1000  # QIDO results per page
DEFAULT_LIMIT = 100


class QueryError(TileserverError, ValueError):
    """A malformed DICOMweb request: UID, query key or value, frame list (400)."""


class NotAcceptable(TileserverError):
    """None of the media types the client accepts is offered here (406)."""


class FrameNotFound(TileserverError, LookupError):
    """A frame number beyond the instance's frames (404)."""


# keyword -> (tag, VR): what QIDO may search on or include. Study, series and instance
# attributes of PS3.18 Table 10.6.1-5, and the WSI ones a viewer filters by.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"),
    "ImageType": ("00080008", "CS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "StudyDate": ("00080020", "DA"),
    "SeriesDate": ("00080021", "DA"),
    "ContentDate": ("00080023", "DA"),
    "StudyTime": ("00080030", "TM"),
    "SeriesTime": ("00080031", "TM"),
    "ContentTime": ("00080033", "TM"),
    "AccessionNumber": ("00080050", "SH"),
    "Modality": ("00080060", "CS"),
    "ModalitiesInStudy": ("00080061", "CS"),
    "Manufacturer": ("00080070", "LO"),
    "ReferringPhysicianName": ("00080090", "PN"),
    "StudyDescription": ("00081030", "LO"),
    "SeriesDescription": ("0008103E", "LO"),
    "ManufacturerModelName": ("00081090", "LO"),
    "AvailableTransferSyntaxUID": ("00083002", "UI"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "PatientIdentityRemoved": ("00120062", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "StudyID": ("00200010", "SH"),
    "SeriesNumber": ("00200011", "IS"),
    "InstanceNumber": ("00200013", "IS"),
    "FrameOfReferenceUID": ("00200052", "UI"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "NumberOfFrames": ("00280008", "IS"),
    "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"),
    "PhotometricInterpretation": ("00280004", "CS"),
    "TotalPixelMatrixColumns": ("00480006", "UL"),
    "TotalPixelMatrixRows": ("00480007", "UL"),
    "ContainerIdentifier": ("00400512", "LO"),
}
TAGS = {tag: keyword for keyword, (tag, _) in ATTRIBUTES.items()}
VR = dict(ATTRIBUTES.values())

# What each QIDO level returns without includefield (PS3.18 Tables 10.6.3-3 to -5).
STUDY_FIELDS = tuple(
    ATTRIBUTES[k][0]
    for k in (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )
)
SERIES_FIELDS = tuple(
    ATTRIBUTES[k][0]
    for k in (
        "SpecificCharacterSet",
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    )
)
INSTANCE_FIELDS = tuple(
    ATTRIBUTES[k][0]
    for k in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "ImageType",
        "TotalPixelMatrixColumns",
        "TotalPixelMatrixRows",
        "AvailableTransferSyntaxUID",
    )
)
STUDY_UID, SERIES_UID = ATTRIBUTES["StudyInstanceUID"][0], ATTRIBUTES["SeriesInstanceUID"][0]
SOP_UID = ATTRIBUTES["SOPInstanceUID"][0]

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_IGNORED = frozenset({"fuzzymatching"})  # accepted; our matching is exact either way


def check_uid(text: str, what: str) -> str:
    if not is_uid(text):
        raise QueryError(f"{what} is not a valid UID: {text[:70]!r}")
    return text


def attribute_tag(name: str) -> str:
    """The tag (eight upper-case hex digits) of a keyword or tag; QueryError if unknown."""
    if name in ATTRIBUTES:
        return ATTRIBUTES[name][0]
    if _TAG.fullmatch(name) and name.upper() in TAGS:
        return name.upper()
    raise QueryError(f"unknown or unsupported attribute {name[:40]!r}")


# -- QIDO queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS query: match keys (tag -> value), includes, paging."""

    matches: tuple[tuple[str, str], ...]
    include: frozenset[str]
    include_all: bool
    limit: int
    offset: int

    def value(self, tag: str) -> str | None:
        return next((v for t, v in self.matches if t == tag), None)


def parse_query(pairs: Iterable[tuple[str, str]], *, max_limit: int = MAX_LIMIT) -> Query:
    """The query of a QIDO-RS URL, as (key, value) pairs in order (a key may repeat)."""
    matches: dict[str, str] = {}
    include: set[str] = set()
    include_all = False
    limit, offset = DEFAULT_LIMIT, 0
    unknown = []
    for key, value in pairs:
        if key == "includefield":
            for name in value.split(","):
                name = name.strip()
                if name == "all":
                    include_all = True
                elif name:
                    try:
                        include.add(attribute_tag(name))
                    except QueryError:
                        unknown.append(name)
        elif key == "limit":
            limit = _int_value(key, value, 1, max_limit)
        elif key == "offset":
            offset = _int_value(key, value, 0, 1 << 31)
        elif key in _IGNORED:
            if value.lower() not in ("true", "false"):
                raise QueryError(f"{key} must be true or false")
        else:
            try:
                tag = attribute_tag(key)
            except QueryError:
                unknown.append(key)
                continue
            if tag in matches:  # repeated: the values of a list of UIDs
                matches[tag] = f"{matches[tag]},{value}"
            else:
                matches[tag] = value
            _check_value(tag, matches[tag])
    if unknown:
        names = ", ".join(repr(n[:40]) for n in unknown[:10])
        raise QueryError(f"unknown or unsupported query keys: {names}")
    return Query(tuple(matches.items()), frozenset(include), include_all, limit, offset)


def _int_value(key: str, value: str, lo: int, hi: int) -> int:
    if not value.isdecimal() or len(value) > 12 or not lo <= int(value) <= hi:
        raise QueryError(f"{key} must be an integer in {lo}..{hi}, not {value[:20]!r}")
    return int(value)


def _check_value(tag: str, value: str) -> None:
    vr = VR[tag]
    if len(value) > 4096:
        raise QueryError(f"the value of {TAGS[tag]} is too long")
    if vr == "UI":
        for uid in value.split(","):
            check_uid(uid.strip(), TAGS[tag])
    elif vr in ("DA", "TM") and value:
        low, _, high = value.partition("-")
        pattern = _DATE if vr == "DA" else _TIME
        ends = [end for end in (low, high) if end]
        if not ends or any(pattern.fullmatch(end) is None for end in ends):
            raise QueryError(
                f"{TAGS[tag]} must be a {'date YYYYMMDD' if vr == 'DA' else 'time HHMMSS'}"
                f" or a range of them, not {value[:40]!r}"
            )
    elif vr in ("IS", "US", "UL") and value and not value.isdecimal():
        raise QueryError(f"{TAGS[tag]} must be an integer, not {value[:20]!r}")


def _texts(element: Mapping[str, Any] | None) -> list[str]:
    """The values of a DICOM JSON element as strings (a PN by its alphabetic form)."""
    if not element:
        return []
    out = []
    for value in element.get("Value", ()):
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        out.append(str(value))
    return out


def _wildcard(pattern: str, text: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE | re.DOTALL if fold else re.DOTALL
    return re.fullmatch(regex, text, flags) is not None


def _matches_one(tag: str, key: str, values: list[str]) -> bool:
    vr = VR[tag]
    if key == "" or key == "*":
        return True  # universal matching
    if vr == "UI":
        wanted = {uid.strip() for uid in key.split(",")}
        return any(v in wanted for v in values)
    if vr in ("DA", "TM"):
        low, dash, high = key.partition("-")
        for v in values:
            if not dash:
                hit = v.startswith(low) if vr == "TM" else v == low
            else:  # a range; an open end is unbounded (times compare at the key's precision)
                hit = (not low or v >= low) and (not high or v[: len(high)] <= high)
            if hit:
                return True
        return False
    if vr in ("IS", "US", "UL"):
        return any(v.strip().isdecimal() and int(v) == int(key) for v in values)
    if "*" in key or "?" in key:
        return any(_wildcard(key, v, vr == "PN") for v in values)
    if vr == "PN":
        return any(v.casefold() == key.casefold() for v in values)
    return key in values


def matches(query: Query, record: Mapping[str, Any]) -> bool:
    """Whether a DICOM JSON record meets every match key of the query."""
    return all(_matches_one(tag, key, _texts(record.get(tag))) for tag, key in query.matches)


def select(query: Query, record: Mapping[str, Any], defaults: Sequence[str]) -> dict[str, Any]:
    """The attributes of a record a QIDO response returns: the level's defaults, the match
    keys, the includes (or every attribute with ``includefield=all``)."""
    if query.include_all:
        return dict(record)
    wanted = set(defaults) | query.include | {tag for tag, _ in query.matches}
    return {tag: record[tag] for tag in sorted(wanted) if tag in record}


def page(query: Query, records: Sequence[Any]) -> list[Any]:
    return list(records[query.offset : query.offset + query.limit])


# -- frames ---------------------------------------------------------------------------------


def parse_frames(text: str, max_frames: int = MAX_FRAMES) -> tuple[int, ...]:
    """A frame list ``1,3,5`` (1-based, in the order asked, repeats kept)."""
    if text.isdecimal() and len(text) <= 9 and text[0] != "0":  # one frame: the usual ask
        return (int(text),)
    items = text.split(",")
    if len(items) > max_frames:
        raise QueryError(f"at most {max_frames} frames per request")
    frames = []
    for item in items:
        item = item.strip()
        if not item.isdecimal() or len(item) > 9 or int(item) < 1:
            raise QueryError(f"frame numbers are integers from 1, not {item[:20]!r}")
        frames.append(int(item))
    return tuple(frames)


def frame_position(frame: int, columns: int, rows: int) -> tuple[int, int]:
    """(column, row) of a 1-based TILED_FULL frame in a ``columns`` x ``rows`` grid, row
    by row; FrameNotFound beyond the last frame."""
    if not 1 <= frame <= columns * rows:
        raise FrameNotFound(f"frame {frame} is outside 1..{columns * rows}")
    return (frame - 1) % columns, (frame - 1) // columns


# -- Accept negotiation (PS3.18 8.7) ------------------------------------------------------


class Offer(NamedTuple):
    """A representation we can produce: a part's media type and its transfer syntax (None
    for rendered images); ``multipart`` False for a bare single-part body. A tuple: cheap
    to hash for the negotiation cache."""

    media_type: str
    transfer_syntax: str | None = None
    multipart: bool = True

    def describe(self) -> str:
        inner = self.media_type + (
            f"; transfer-syntax={self.transfer_syntax}" if self.transfer_syntax else ""
        )
        return f'multipart/related; type="{inner}"' if self.multipart else inner


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str]
    q: float


_DEFAULT_SYNTAX = {
    "image/jpeg": JPEG_BASELINE,
    "application/octet-stream": EXPLICIT_VR_LITTLE_ENDIAN,
}


def parse_accept(header: str) -> list[MediaRange]:
    """Media ranges of an Accept header, best first (by q, then by order)."""
    ranges = []
    for item in _split_outside_quotes(header, ","):
        if not item.strip():
            continue
        head, *rest = _split_outside_quotes(item, ";")
        media_type = head.strip().lower()
        if "/" not in media_type:
            raise NotAcceptable(f"malformed media range {item.strip()[:60]!r}")
        params = {}
        for param in rest:
            name, _, value = param.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            raise NotAcceptable(f"malformed q value in {item.strip()[:60]!r}") from None
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return [r for _, r in sorted(enumerate(ranges), key=lambda pair: (-pair[1].q, pair[0]))]


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(c)
    out.append("".join(current))
    return out


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return pattern == media_type


@functools.lru_cache(maxsize=256)  # a viewer sends the same few Accept headers all day
def negotiate(accept: str | None, offers: tuple[Offer, ...], default: Offer | None = None) -> Offer:
    """The offer the client prefers among ``offers`` (ours in order of preference);
    ``default`` (else the first offer) for no Accept header or ``*/*``. NotAcceptable
    listing what is offered when nothing fits."""
    default = default or offers[0]
    if accept is None or not accept.strip():
        return default
    for media_range in parse_accept(accept):
        found = _match_range(media_range, offers, default)
        if found is not None:
            return found
    listed = ", ".join(offer.describe() for offer in offers)
    raise NotAcceptable(f"none of the accepted media types is offered; offered: {listed}")


def _match_range(r: MediaRange, offers: Sequence[Offer], default: Offer) -> Offer | None:
    if r.media_type in ("*/*", "multipart/*") and "type" not in r.params:
        return default
    if r.media_type == "multipart/related":
        part = r.params.get("type", "application/octet-stream").lower()
        inner, *inner_params = part.split(";")  # type="image/jpeg; transfer-syntax=..."
        syntax = r.params.get("transfer-syntax")
        for p in inner_params:
            name, _, value = p.partition("=")
            if name.strip() == "transfer-syntax":
                syntax = value.strip()
        inner = inner.strip()
        for offer in offers:
            if not offer.multipart or not _type_matches(inner, offer.media_type):
                continue
            wanted = syntax or _DEFAULT_SYNTAX.get(offer.media_type)
            if offer.transfer_syntax is None or wanted in ("*", offer.transfer_syntax):
                return offer
        return None
    syntax = r.params.get("transfer-syntax")
    for offer in offers:
        if offer.multipart or not _type_matches(r.media_type, offer.media_type):
            continue
        wanted = syntax or _DEFAULT_SYNTAX.get(offer.media_type)
        if offer.transfer_syntax is None or wanted in ("*", offer.transfer_syntax):
            return offer
    return None


# -- multipart/related ----------------------------------------------------------------------


def multipart_type(offer: Offer, boundary: str) -> str:
    """The response's Content-Type for parts of ``offer``."""
    return f'multipart/related; type="{offer.media_type}"; boundary={boundary}'


def part_type(offer: Offer) -> str:
    syntax = f"; transfer-syntax={offer.transfer_syntax}" if offer.transfer_syntax else ""
    return offer.media_type + syntax


def multipart_body(parts: Sequence[bytes], offer: Offer, boundary: str) -> bytes:
    """RFC 2046 framing: each part with its Content-Type, then the closing delimiter. The
    parts are joined once (a frame is copied once into the body, never more)."""
    head = f"--{boundary}\r\nContent-Type: {part_type(offer)}\r\n\r\n".encode()
    between = b"\r\n" + head
    pieces = [head]
    for i, part in enumerate(parts):
        if i:
            pieces.append(between)
        pieces.append(part)
    pieces.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(pieces)
