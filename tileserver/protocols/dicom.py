"""DICOM VL Whole Slide Microscopy Image instances of a store (PS3.3 A.32.8): one instance
per stored level, TILED_FULL (frame = chunk, row-major), pure and without I/O. The only
importer of pydicom. DICOMweb (metadata as DICOM JSON) and ``export --dicom`` (Part-10
files, whose pixel data the caller streams with the byte helpers at the end) share it.

UIDs are derived from the slide ID, so they are stable without being stored: under the root
"2.25" from a name-based UUID (PS3.5 B.2), under an organisation's root from a hash of the
slide ID. De-identified instances follow the PS3.15 Basic Application Level Confidentiality
Profile for every attribute written here (docs/dicom.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import DSfloat

from tileserver.geometry import Size, tile_count
from tileserver.render.colour import srgb_icc_profile
from tileserver.sources.codestreams import jpeg_is_frame_header, jpeg_segments

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
TRANSFER_SYNTAXES = (JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN)
PHOTOMETRICS = ("RGB", "YBR_FULL_422", "YBR_FULL")
UUID_ROOT = "2.25"
MAX_UID = 64

# Name-based UUIDs (version 5) of the UIDs under 2.25 live in this namespace, so no other
# software deriving UUIDs from the same slide ID can produce ours.
try:
    VERSION = importlib.metadata.version("tileserver")
except importlib.metadata.PackageNotFoundError:  # a source tree used without installing
    VERSION = "0"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tileserver:dicom")
IMPLEMENTATION_CLASS_UID = f"{UUID_ROOT}.{uuid.uuid5(_NAMESPACE, 'implementation').int}"
IMPLEMENTATION_VERSION = f"TILESERVER{VERSION}"[:16]

# What stands in for dates and times we do not know (stores keep none) or must not show.
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
# Slide coordinates: image rows go along the slide's X axis, columns along Y, with the origin
# at the top-left pixel (wsidicom's rotation 0).
IMAGE_ORIENTATION = (0, 1, 0, 1, 0, 0)
SLICE_THICKNESS_MM = 0.0005  # unknown; ImagedVolumeDepth must not be 0 (what wsidicom uses)
# Without a known resolution a pixel is called 1 um, as the store's OME-Zarr scale does.
DEFAULT_MPP = 1.0

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_ID_DIGITS_MIN = 20  # digits from the slide ID under an organisation root: ~66 bits at least
_PURPOSES = {"study": 1, "series": 2, "frame_of_reference": 3, "specimen": 4, "dimensions": 5}
_INSTANCE = 6
_MAX_LEVELS = 99  # 2**99 pixels across: more than any slide


@dataclass(frozen=True)
class Uids:
    study: str
    series: str
    instances: tuple[str, ...]  # one per stored level, level 0 first
    # Derived with the others by ``derive_uids``; one each per slide.
    frame_of_reference: str = ""
    specimen: str = ""
    dimensions: str = ""  # DimensionOrganizationUID


@dataclass(frozen=True)
class SlideFacts:
    """What a store knows of a slide; nothing identifying except ``case``."""

    slide_id: str
    levels: tuple[Size, ...]  # level k = level 0 / 2**k (rounded up)
    tile: int  # chunk edge = frame Rows = Columns
    mpp: float | None  # micrometres per level-0 pixel
    objective_power: float | None
    vendor: str | None
    photometric: str  # of frames as served: "RGB", "YBR_FULL_422" or "YBR_FULL"
    case: str | None = None  # the slide's case/collection name: identifying (AccessionNumber)
    lossy: bool = False  # the pixels went through lossy compression (JPEG chunks, sources)
    icc_profile: bytes | None = None  # the source's; sRGB when None
    # The level's raw size over its frames' size, when known (LossyImageCompressionRatio).
    compression_ratio: float | None = None


def is_uid(text: str) -> bool:
    """UID syntax (PS3.5 9.1): dot-separated decimal components without leading zeros,
    at most 64 characters."""
    return 0 < len(text) <= MAX_UID and _UID_RE.fullmatch(text) is not None


def derive_uids(slide_id: str, levels: int, root: str = UUID_ROOT) -> Uids:
    """Stable per slide: root "2.25" = UUID-derived (PS3.5 B.2, no registration needed);
    another root = an organisation root, followed by digits derived from the slide ID.
    <= 64 chars, valid UID syntax (no leading zeros in components). ValueError for a bad root."""
    if not 1 <= levels <= _MAX_LEVELS:
        raise ValueError(f"a slide has 1..{_MAX_LEVELS} levels, not {levels}")
    if not is_uid(root):
        raise ValueError(f"UID root {root[:80]!r} is not a valid UID (digits and dots)")

    # Under an organisation root: root.<slide digits>.<purpose>[.<level + 1>], the slide's
    # digits as many as the longest suffix leaves (at most 39, i.e. 128 bits). A decimal
    # number's first digit is never 0, so any prefix of it is a valid component.
    # The longest suffix allowing 99 levels, whatever this slide has: a study's UID must
    # not depend on the number of levels.
    digits = min(39, MAX_UID - len(root) - 1 - len(f".{_INSTANCE}.{_MAX_LEVELS}"))
    if root != UUID_ROOT and digits < _ID_DIGITS_MIN:
        raise ValueError(
            f"UID root {root!r} is too long: it leaves {digits} digits for the slide, "
            f"at least {_ID_DIGITS_MIN} are needed"
        )
    number = str(int.from_bytes(hashlib.sha256(slide_id.encode()).digest(), "big"))[:digits]

    def make(purpose: str, level: int | None = None) -> str:
        if root == UUID_ROOT:
            name = f"{slide_id}/{purpose}" if level is None else f"{slide_id}/{purpose}/{level}"
            return f"{UUID_ROOT}.{uuid.uuid5(_NAMESPACE, name).int}"
        if level is None:
            return f"{root}.{number}.{_PURPOSES[purpose]}"
        return f"{root}.{number}.{_INSTANCE}.{level + 1}"  # from 1: no leading zero

    return Uids(
        study=make("study"),
        series=make("series"),
        instances=tuple(make("instance", level) for level in range(levels)),
        frame_of_reference=make("frame_of_reference"),
        specimen=make("specimen"),
        dimensions=make("dimensions"),
    )


def frame_grid(facts: SlideFacts, level: int) -> Size:
    """Frames across and down at a level: the store's chunk grid."""
    return tile_count(facts.levels[level], Size(facts.tile, facts.tile))


def frame_count(facts: SlideFacts, level: int) -> int:
    return frame_grid(facts, level).pixels


def frame_position(facts: SlideFacts, level: int, frame: int) -> tuple[int, int]:
    """``(t_col, t_row)`` of a 1-based frame number (TILED_FULL: row by row).
    ValueError outside 1..frame_count."""
    grid = frame_grid(facts, level)
    if not 1 <= frame <= grid.pixels:
        raise ValueError(f"frame {frame} outside 1..{grid.pixels}")
    t_row, t_col = divmod(frame - 1, grid.width)
    return t_col, t_row


# -- JPEG colour --------------------------------------------------------------------------

_APP0, _APP14 = 0xE0, 0xEE


def jpeg_photometric(jpeg: bytes) -> str:
    """The PhotometricInterpretation of a 3-component JPEG, decided as libjpeg decides its
    colour space: a JFIF marker means YCbCr; else an Adobe APP14 marker's transform (0: RGB);
    else component IDs 'R','G','B' mean RGB. YCbCr is "YBR_FULL_422" whatever its chroma
    sampling (the store's own chunks are 4:4:4): it is the value the VL WSI IOD enumerates
    for lossy JPEG (PS3.3 C.8.12.4.1.5; wsidicom declares the same, OpenSlide 4 reads no
    other), and decoders take the sampling from the frame header. ValueError for data that
    is not such a JPEG."""
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    jfif = False
    adobe_transform: int | None = None
    for marker, body in jpeg_segments(jpeg):
        if marker == _APP0 and body.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        elif jpeg_is_frame_header(marker):
            if len(body) < 6:
                raise ValueError("JPEG frame header is truncated")
            count = body[5]
            if count != 3 or len(body) < 6 + 3 * count:
                raise ValueError(f"JPEG with {count} components, not 3")
            ids = bytes(body[6 + 3 * k] for k in range(3))
            if jfif:
                rgb = False
            elif adobe_transform is not None:
                rgb = adobe_transform == 0
            else:
                rgb = ids == b"RGB"
            if rgb:
                return "RGB"
            return "YBR_FULL_422"
    raise ValueError("JPEG has no frame header before its scan")


# -- the dataset --------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds(value: float) -> DSfloat:
    return DSfloat(value, auto_format=True)


def _sequence(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _text(value: str, limit: int) -> str:
    """A value for a short string VR: no backslash (the multi-value separator) nor control
    characters, at most ``limit`` characters."""
    return re.sub(r"[\\\x00-\x1f\x7f]", " ", value).strip()[:limit]


def instance_dataset(
    facts: SlideFacts, uids: Uids, level: int, transfer_syntax: str, *, identified: bool
) -> Dataset:
    """A VL Whole Slide Microscopy Image instance for one level, TILED_FULL, no PixelData.

    ``identified=False`` (the default everywhere it is a choice) writes what the PS3.15
    Basic Profile leaves of each attribute: empty, a dummy, or a derived UID. ValueError for
    a level outside the slide, an unsupported transfer syntax or photometric, or Uids not
    made by ``derive_uids``."""
    if not 0 <= level < len(facts.levels):
        raise ValueError(f"level {level} outside 0..{len(facts.levels) - 1}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax[:80]!r}")
    if facts.photometric not in PHOTOMETRICS:
        raise ValueError(f"unsupported photometric interpretation {facts.photometric!r}")
    if len(uids.instances) != len(facts.levels) or not (
        uids.frame_of_reference and uids.specimen and uids.dimensions
    ):
        raise ValueError("UIDs do not match the slide: make them with derive_uids")
    size = facts.levels[level]
    level0 = facts.levels[0]
    grid = frame_grid(facts, level)
    jpeg = transfer_syntax == JPEG_BASELINE
    mm = (facts.mpp or DEFAULT_MPP) / 1000  # level-0 pixel spacing, mm
    spacing = mm * (1 << level)
    image_type = (
        ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        if level == 0
        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    )

    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: case names may be any text
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = uids.instances[level]
    ds.InstanceCreationDate = DUMMY_DATE
    ds.InstanceCreationTime = DUMMY_TIME
    # Patient (type 2: present, empty; the store holds no patient data)
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = _text(facts.case, 16) if identified and facts.case else ""
    if identified and facts.case:
        ds.StudyDescription = _text(facts.case, 64)
    # General Series, Whole Slide Microscopy Series
    ds.Modality = "SM"
    ds.SeriesInstanceUID = uids.series
    ds.SeriesNumber = 1
    # Frame of Reference
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    # General Equipment, Enhanced General Equipment (type 1: a dummy serial number)
    ds.Manufacturer = _text(facts.vendor, 64) if facts.vendor else "tileserver"
    ds.ManufacturerModelName = "tileserver"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = f"tileserver {VERSION}"
    # General Image, Multi-frame Functional Groups, Whole Slide Microscopy Image
    ds.ImageType = image_type
    ds.InstanceNumber = level + 1
    ds.ContentDate = DUMMY_DATE
    ds.ContentTime = DUMMY_TIME
    ds.AcquisitionDateTime = DUMMY_DATE + DUMMY_TIME
    ds.AcquisitionDuration = 0.0
    ds.NumberOfFrames = grid.pixels
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns = size.width
    ds.TotalPixelMatrixRows = size.height
    ds.TotalPixelMatrixFocalPlanes = 1
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = _ds(0.0)
    origin.YOffsetInSlideCoordinateSystem = _ds(0.0)
    ds.TotalPixelMatrixOriginSequence = _sequence(origin)
    ds.ImageOrientationSlide = [_ds(v) for v in IMAGE_ORIENTATION]
    # Every level covers level 0's area (readers group the levels by it).
    ds.ImagedVolumeWidth = level0.width * mm
    ds.ImagedVolumeHeight = level0.height * mm
    ds.ImagedVolumeDepth = SLICE_THICKNESS_MM * 1000  # um, unlike the others
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.AcquisitionContextSequence = _sequence()
    if jpeg or facts.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        if facts.compression_ratio is not None:
            ds.LossyImageCompressionRatio = _ds(facts.compression_ratio)
    else:
        ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 3
    # Native frames are the decoded RGB pixels, whatever the stored chunks were.
    ds.PhotometricInterpretation = facts.photometric if jpeg else "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = facts.tile
    ds.Columns = facts.tile
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # Multi-frame Dimension: TILED_FULL frames are indexed by their position in the matrix.
    ds.DimensionOrganizationSequence = _sequence(Dataset())
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = uids.dimensions
    ds.DimensionIndexSequence = _sequence(
        *(_dimension(uids.dimensions, name) for name in ("Column", "Row"))
    )
    # Shared Functional Groups
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing), _ds(spacing)]  # rows, columns: square pixels
    measures.SliceThickness = _ds(SLICE_THICKNESS_MM)
    frame_type = Dataset()
    frame_type.FrameType = image_type
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = _sequence(measures)
    shared.WholeSlideMicroscopyImageFrameTypeSequence = _sequence(frame_type)
    shared.OpticalPathIdentificationSequence = _sequence(optical)
    ds.SharedFunctionalGroupsSequence = _sequence(shared)
    # Optical Path
    ds.NumberOfOpticalPaths = 1
    ds.OpticalPathSequence = _sequence(_optical_path(facts))
    # Specimen: the container is the slide, named by its (random, non-identifying) ID
    ds.ContainerIdentifier = facts.slide_id
    ds.IssuerOfTheContainerIdentifierSequence = _sequence()
    ds.ContainerTypeCodeSequence = _sequence(_code("433466003", "SCT", "Microscope slide"))
    specimen = Dataset()
    specimen.SpecimenIdentifier = facts.slide_id
    specimen.SpecimenUID = uids.specimen
    specimen.IssuerOfTheSpecimenIdentifierSequence = _sequence()
    specimen.SpecimenPreparationSequence = _sequence()
    ds.SpecimenDescriptionSequence = _sequence(specimen)
    if not identified:
        _mark_deidentified(ds)
    return ds


def _dimension(organization: str, name: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization
    item.DimensionIndexPointer = Tag(f"{name}PositionInTotalImagePixelMatrix")
    item.FunctionalGroupPointer = Tag("PlanePositionSlideSequence")
    item.DimensionDescriptionLabel = f"{name} Position"
    return item


def _optical_path(facts: SlideFacts) -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = _sequence(
        _code("111744", "DCM", "Brightfield illumination")
    )
    path.IlluminationColorCodeSequence = _sequence(_code("414298005", "SCT", "Full Spectrum"))
    path.ICCProfile = facts.icc_profile or srgb_icc_profile()
    if facts.icc_profile is None:
        path.ColorSpace = "SRGB"
    if facts.objective_power:
        path.ObjectiveLensPower = _ds(facts.objective_power)
    return path


# PS3.15 Table E.1-1 rows for the attributes this module writes, by the action applied:
# Z (empty), D (dummy), U (UIDs: derived, never the source's). Kept (K / not listed):
# Manufacturer, ManufacturerModelName, SoftwareVersions, the pixel description.
DEIDENTIFIED_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
DEIDENTIFIED_ABSENT = ("StudyDescription", "InstitutionName", "SeriesDate", "SeriesTime")
DEIDENTIFIED_DUMMY = {
    "ContentDate": DUMMY_DATE,
    "ContentTime": DUMMY_TIME,
    "InstanceCreationDate": DUMMY_DATE,
    "InstanceCreationTime": DUMMY_TIME,
    "AcquisitionDateTime": DUMMY_DATE + DUMMY_TIME,
    "DeviceSerialNumber": "0",
}
BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")


def _mark_deidentified(ds: Dataset) -> None:
    for name in DEIDENTIFIED_EMPTY:
        setattr(ds, name, "")
    for name in DEIDENTIFIED_ABSENT:
        if name in ds:
            delattr(ds, name)
    for name, value in DEIDENTIFIED_DUMMY.items():
        setattr(ds, name, value)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "tileserver: " + BASIC_PROFILE[2]
    ds.DeidentificationMethodCodeSequence = _sequence(_code(*BASIC_PROFILE))
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def instance_json(
    facts: SlideFacts, uids: Uids, level: int, transfer_syntax: str, *, identified: bool
) -> dict[str, Any]:
    """``instance_dataset`` as DICOM JSON (PS3.18 F.2); binary values inline (BulkData none)."""
    ds = instance_dataset(facts, uids, level, transfer_syntax, identified=identified)
    doc: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 30)
    return doc


def json_to_dataset(doc: dict[str, Any]) -> Dataset:
    """DICOM JSON back to a dataset (tests and clients compare the two forms)."""
    return Dataset.from_json(doc)


# -- Part 10 files, streamed --------------------------------------------------------------
# The caller writes ``part10_header``, then for encapsulated frames the offset tables and
# pixel data header, one ``fragment`` per frame, and ``SEQUENCE_DELIMITER``; or for native
# frames ``native_pixel_header`` and the raw frames. Offsets are patched in afterwards.

_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0)[:4]
SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
MAX_ELEMENT = 0xFFFFFFFE  # an explicit length's largest even value


def part10_header(ds: Dataset, transfer_syntax: str) -> bytes:
    """Preamble, file meta information and every element of ``ds`` (which must not hold
    pixel data): what comes before the offset tables and pixel data."""
    if "PixelData" in ds:
        raise ValueError("the dataset already holds pixel data")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    copy = Dataset(ds)
    copy.file_meta = meta
    out = io.BytesIO()
    dcmwrite(out, copy, enforce_file_format=True)
    return out.getvalue()


# A file's compression ratio is known once its frames are written: a fixed-width value is
# reserved in the header and overwritten then (DS allows leading zeros and trailing spaces).
_RATIO_WIDTH = 16
_RATIO_RESERVED = "0" * (_RATIO_WIDTH - 1) + "1"
_RATIO_ELEMENT = struct.pack("<HH2sH", 0x0028, 0x2112, b"DS", _RATIO_WIDTH)


def reserve_ratio(ds: Dataset) -> None:
    """Give a lossy ``ds`` a LossyImageCompressionRatio to overwrite with ``ratio_value``."""
    ds.LossyImageCompressionRatio = _RATIO_RESERVED


def ratio_offset(header: bytes) -> int:
    """Where the reserved ratio's value is in ``part10_header``'s bytes."""
    at = header.find(_RATIO_ELEMENT + _RATIO_RESERVED.encode())
    if at < 0:
        raise ValueError("no reserved compression ratio in the header")
    return at + len(_RATIO_ELEMENT)


def ratio_value(raw_bytes: int, compressed_bytes: int) -> bytes:
    """The reserved ratio's 16 bytes: raw size over compressed size, e.g. ``b"12.5        "``."""
    text = f"{raw_bytes / max(compressed_bytes, 1):.2f}"
    return text.ljust(_RATIO_WIDTH).encode()


def _element_header(group: int, element: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2s2xI", group, element, vr, length)


def offset_tables_header(frames: int) -> tuple[bytes, int]:
    """Extended Offset Table and its Lengths (7FE0,0001-0002), zero-filled, and the position
    of the table's first value inside the returned bytes: ``offset_values`` goes there."""
    size = 8 * frames
    table = _element_header(0x7FE0, 0x0001, b"OV", size)
    lengths = _element_header(0x7FE0, 0x0002, b"OV", size)
    return table + bytes(size) + lengths + bytes(size), len(table)


def offset_values(offsets: Sequence[int], lengths: Sequence[int]) -> bytes:
    """The values of both tables, to overwrite the zeros ``offset_tables_header`` wrote (the
    lengths follow the offsets after one 12-byte element header)."""
    n = len(offsets)
    header = _element_header(0x7FE0, 0x0002, b"OV", 8 * n)
    return struct.pack(f"<{n}Q", *offsets) + header + struct.pack(f"<{n}Q", *lengths)


def encapsulated_pixel_header() -> bytes:
    """Pixel Data of undefined length and an empty Basic Offset Table (the Extended one,
    which allows more than 4 GiB of frames, holds the offsets)."""
    return _element_header(0x7FE0, 0x0010, b"OB", 0xFFFFFFFF) + _ITEM + struct.pack("<I", 0)


def fragment(frame: bytes) -> bytes:
    """One frame as one item, padded to even length (a JPEG ends at its EOI marker)."""
    pad = b"\x00" if len(frame) % 2 else b""
    return _ITEM + struct.pack("<I", len(frame) + len(pad)) + frame + pad


def native_pixel_header(frame_bytes: int, frames: int) -> bytes:
    """Pixel Data of ``frames`` raw frames (padded to even length by the caller's last
    byte). ValueError past the 4 GiB an element can hold."""
    total = frame_bytes * frames + (frame_bytes * frames) % 2
    if total > MAX_ELEMENT:
        raise ValueError(
            f"{total} bytes of native pixel data exceed a DICOM element's 4 GiB: "
            "export this slide from a JPEG store"
        )
    return _element_header(0x7FE0, 0x0010, b"OB", total)
