"""DICOM WSI datasets: UIDs, JPEG colour, the IOD's attributes, de-identification, and the
Part-10 byte helpers, read back with pydicom (an independent reader of what we write)."""

from __future__ import annotations

import io
import json
import struct

import imagecodecs
import numpy as np
import pydicom
import pytest
import simplejpeg
from PIL import Image
from pydicom.encaps import get_frame

from tileserver.geometry import Size
from tileserver.protocols.dicom import (
    DEIDENTIFIED_ABSENT,
    DEIDENTIFIED_DUMMY,
    DEIDENTIFIED_EMPTY,
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    SEQUENCE_DELIMITER,
    WSI_SOP_CLASS,
    SlideFacts,
    derive_uids,
    encapsulated_pixel_header,
    fragment,
    frame_count,
    frame_position,
    instance_dataset,
    instance_json,
    is_uid,
    jpeg_photometric,
    json_to_dataset,
    native_pixel_header,
    offset_tables_header,
    offset_values,
    part10_header,
    ratio_offset,
    ratio_value,
    reserve_ratio,
)
from tileserver.store.chunks import encode_chunk
from tileserver.store.layout import pyramid_sizes

SLIDE = "0123456789abcdef0123456789abcdef"
CASE = "S24-1234 Smith"
ORG_ROOT = "1.2.826.0.1.3680043.10.1234"


def facts(**changes: object) -> SlideFacts:
    values: dict[str, object] = {
        "slide_id": SLIDE,
        "levels": pyramid_sizes(Size(3000, 2000), 240),
        "tile": 240,
        "mpp": 0.25,
        "objective_power": 20.0,
        "vendor": "aperio",
        "photometric": "YBR_FULL_422",
        "case": CASE,
    }
    values.update(changes)
    return SlideFacts(**values)  # type: ignore[arg-type]


# -- UIDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["1", "0", "1.2", "1.2.840.10008.1.2.1", "2.25.0", "2.25." + "9" * 39, "1." * 31 + "1"],
)
def test_is_uid_accepts(text: str) -> None:
    assert is_uid(text)


@pytest.mark.parametrize(
    "text", ["", ".", "1.", ".1", "1..2", "01.2", "1.02", "1.2a", "1 .2", "1.2\n", "1." * 32 + "1"]
)
def test_is_uid_refuses(text: str) -> None:
    assert not is_uid(text)


@pytest.mark.parametrize("root", ["2.25", ORG_ROOT, "1.2.3", "1." * 18 + "9"])
def test_derived_uids_are_valid_stable_and_distinct(root: str) -> None:
    uids = derive_uids(SLIDE, 5, root)
    values = [
        uids.study,
        uids.series,
        *uids.instances,
        uids.frame_of_reference,
        uids.specimen,
        uids.dimensions,
    ]
    assert len(uids.instances) == 5
    assert all(is_uid(v) and v.startswith(root + ".") for v in values)
    assert len(set(values)) == len(values)
    assert derive_uids(SLIDE, 5, root) == uids  # stable: nothing random, nothing stored
    other = derive_uids("f" * 32, 5, root)
    assert not {other.study, other.series, *other.instances} & set(values)
    # More levels add instances; the study and series do not move.
    more = derive_uids(SLIDE, 7, root)
    assert (more.study, more.series, more.instances[:5]) == (
        uids.study,
        uids.series,
        uids.instances,
    )


def test_uuid_root_uids_are_uuid_derived() -> None:
    uids = derive_uids(SLIDE, 1)
    number = int(uids.study.removeprefix("2.25."))
    assert number < 1 << 128
    assert (number >> 76) & 0xF == 5  # a version-5 (name-based) UUID


@pytest.mark.parametrize("root", ["", "1.02", "abc", "1..2", "2.25.", "1." * 20 + "1"])
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="root"):
        derive_uids(SLIDE, 3, root)


def test_level_counts_are_checked() -> None:
    with pytest.raises(ValueError):
        derive_uids(SLIDE, 0)
    with pytest.raises(ValueError):
        derive_uids(SLIDE, 100)


# -- JPEG colour --------------------------------------------------------------------------


def _pixels() -> np.ndarray:
    rng = np.random.default_rng(1)
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0] = 200
    pixels[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels[..., 2] = rng.integers(0, 60, (64, 64), dtype=np.uint8)
    return pixels


def _without_segment(jpeg: bytes, marker: int) -> bytes:
    """``jpeg`` with its first segment of ``marker`` (an APPn) cut out."""
    i = 2
    while jpeg[i + 1] != marker:
        i += 2 + struct.unpack_from(">H", jpeg, i + 2)[0]
    return jpeg[:i] + jpeg[i + 2 + struct.unpack_from(">H", jpeg, i + 2)[0] :]


def test_jpeg_photometric_of_ycbcr() -> None:
    pixels = _pixels()
    assert jpeg_photometric(simplejpeg.encode_jpeg(pixels, colorsubsampling="420")) == (
        "YBR_FULL_422"
    )
    assert jpeg_photometric(simplejpeg.encode_jpeg(pixels, colorsubsampling="422")) == (
        "YBR_FULL_422"
    )
    # 4:4:4 too: the VL WSI IOD enumerates YBR_FULL_422 (not YBR_FULL) for lossy JPEG, and
    # OpenSlide reads no other YCbCr model. The store's own chunks are 4:4:4.
    assert jpeg_photometric(simplejpeg.encode_jpeg(pixels, colorsubsampling="444")) == (
        "YBR_FULL_422"
    )
    assert jpeg_photometric(bytes(imagecodecs.jpeg8_encode(pixels, level=90))) == "YBR_FULL_422"
    assert jpeg_photometric(encode_chunk(pixels, "jpeg", 90)) == "YBR_FULL_422"


def test_jpeg_photometric_of_rgb_matches_what_decoders_do() -> None:
    """RGB JPEGs (Adobe transform 0, as Aperio writes them; or component IDs R, G, B) decode
    to the right colours only when declared RGB: the decoder's colour space is the truth."""
    pixels = _pixels()
    adobe = bytes(imagecodecs.jpeg8_encode(pixels, level=95, outcolorspace="rgb"))
    ids_only = _without_segment(adobe, 0xEE)
    for jpeg in (adobe, ids_only):
        assert jpeg_photometric(jpeg) == "RGB"
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.mode == "RGB"
            decoded = np.asarray(image)
        assert np.abs(decoded.astype(int) - pixels).max() < 12
    # Component IDs 'R','G','B' lose to a JFIF marker, as in libjpeg.
    jfif = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    assert jpeg_photometric(ids_only[:2] + jfif + ids_only[2:]) == "YBR_FULL_422"


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a", b"\xff\xd8\xff\xd9", b"\xff\xd8\x00\x00\x00\x00", b"\xff\xd8\xff\xe0\x00"],
)
def test_jpeg_photometric_refuses_non_jpegs(data: bytes) -> None:
    with pytest.raises(ValueError):
        jpeg_photometric(data)


def test_jpeg_photometric_refuses_grey() -> None:
    grey = simplejpeg.encode_jpeg(np.zeros((16, 16, 1), np.uint8), colorspace="GRAY")
    with pytest.raises(ValueError, match="components"):
        jpeg_photometric(grey)


# -- the dataset --------------------------------------------------------------------------


def test_level_0_instance() -> None:
    f = facts()
    uids = derive_uids(SLIDE, len(f.levels))
    ds = instance_dataset(f, uids, 0, JPEG_BASELINE, identified=False)
    assert ds.SOPClassUID == WSI_SOP_CLASS
    assert ds.SOPInstanceUID == uids.instances[0]
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (uids.study, uids.series)
    assert ds.Modality == "SM"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    assert (ds.Rows, ds.Columns) == (240, 240)
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (3000, 2000)
    assert ds.NumberOfFrames == 13 * 9 == frame_count(f, 0)
    assert ds.DimensionOrganizationType == "TILED_FULL"
    assert ds.InstanceNumber == 1
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert (ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PixelRepresentation) == (3, 0, 0)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)
    assert ds.LossyImageCompression == "01"
    assert ds.TotalPixelMatrixFocalPlanes == 1 and ds.NumberOfOpticalPaths == 1
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.00025] * 2
    assert list(shared.WholeSlideMicroscopyImageFrameTypeSequence[0].FrameType) == list(
        ds.ImageType
    )
    assert ds.ImagedVolumeWidth == pytest.approx(0.75)
    assert ds.ImagedVolumeHeight == pytest.approx(0.5)
    assert ds.ImagedVolumeDepth > 0
    path = ds.OpticalPathSequence[0]
    assert path.IlluminationTypeCodeSequence[0].CodeValue == "111744"
    assert path.ICCProfile[36:40] == b"acsp"  # an ICC profile: required for colour images
    assert float(path.ObjectiveLensPower) == 20.0
    assert ds.SpecimenDescriptionSequence[0].SpecimenUID == uids.specimen
    assert ds.ContainerIdentifier == SLIDE
    for name, value in [
        ("BurnedInAnnotation", "NO"),
        ("SpecimenLabelInImage", "NO"),
        ("ExtendedDepthOfField", "NO"),
        ("VolumetricProperties", "VOLUME"),
        ("FocusMethod", "AUTO"),
        ("Manufacturer", "aperio"),
    ]:
        assert ds[name].value == value
    assert "PixelData" not in ds and "PerFrameFunctionalGroupsSequence" not in ds


def test_other_levels() -> None:
    f = facts()
    uids = derive_uids(SLIDE, len(f.levels))
    first = instance_dataset(f, uids, 0, JPEG_BASELINE, identified=False)
    for level in range(1, len(f.levels)):
        ds = instance_dataset(f, uids, level, JPEG_BASELINE, identified=False)
        width, height = f.levels[level]
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        assert ds.InstanceNumber == level + 1
        assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (width, height)
        assert ds.NumberOfFrames == -(-width // 240) * -(-height // 240)
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert float(spacing[0]) == pytest.approx(0.00025 * 2**level)
        # One imaged area, origin and orientation for every level: readers group by them.
        for name in ("ImagedVolumeWidth", "ImagedVolumeHeight", "ImageOrientationSlide"):
            assert ds[name].value == first[name].value
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID


def test_native_frames_are_rgb_and_lossless() -> None:
    f = facts(photometric="YBR_FULL")
    ds = instance_dataset(f, derive_uids(SLIDE, 5), 0, EXPLICIT_VR_LITTLE_ENDIAN, identified=False)
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.LossyImageCompression == "00"
    lossy = instance_dataset(
        facts(lossy=True), derive_uids(SLIDE, 5), 0, EXPLICIT_VR_LITTLE_ENDIAN, identified=False
    )
    assert lossy.LossyImageCompression == "01"  # once lossy, always declared so


def test_unknown_resolution_and_vendor() -> None:
    f = facts(mpp=None, objective_power=None, vendor=None)
    ds = instance_dataset(f, derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=False)
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [0.001, 0.001]
    assert ds.Manufacturer == "tileserver"
    assert "ObjectiveLensPower" not in ds.OpticalPathSequence[0]


def test_identified_instances_carry_the_case() -> None:
    f = facts()
    ds = instance_dataset(f, derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=True)
    assert ds.AccessionNumber == CASE
    assert ds.StudyDescription == CASE
    assert "PatientIdentityRemoved" not in ds
    long_case = facts(case="a\\b" + "x" * 40)
    ds = instance_dataset(long_case, derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=True)
    assert ds.AccessionNumber == "a b" + "x" * 13  # SH: 16 characters, no separator


@pytest.mark.parametrize("transfer_syntax", [JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN])
def test_deidentified_instances_follow_the_basic_profile(transfer_syntax: str) -> None:
    f = facts()
    uids = derive_uids(SLIDE, len(f.levels))
    for level in range(len(f.levels)):
        ds = instance_dataset(f, uids, level, transfer_syntax, identified=False)
        for name in DEIDENTIFIED_EMPTY:
            assert name in ds and ds[name].value in ("", None), name  # Z: present, empty
        for name in DEIDENTIFIED_ABSENT:
            assert name not in ds
        for name, value in DEIDENTIFIED_DUMMY.items():
            assert ds[name].value == value
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.DeidentificationMethod
        # Nothing of the case anywhere, in any element or sequence.
        text = json.dumps(instance_json(f, uids, level, transfer_syntax, identified=False))
        assert "S24" not in text and "Smith" not in text


def test_json_is_the_dataset() -> None:
    f = facts()
    uids = derive_uids(SLIDE, 5)
    doc = instance_json(f, uids, 2, JPEG_BASELINE, identified=True)
    assert doc["00080016"] == {"vr": "UI", "Value": [WSI_SOP_CLASS]}
    assert doc["00280010"] == {"vr": "US", "Value": [240]}
    assert "InlineBinary" in doc["00480105"]["Value"][0]["00282000"]  # the ICC profile
    assert json_to_dataset(doc) == instance_dataset(f, uids, 2, JPEG_BASELINE, identified=True)
    json.dumps(doc)  # plain JSON types only


def test_bad_arguments() -> None:
    f = facts()
    uids = derive_uids(SLIDE, len(f.levels))
    with pytest.raises(ValueError, match="level"):
        instance_dataset(f, uids, len(f.levels), JPEG_BASELINE, identified=False)
    with pytest.raises(ValueError, match="level"):
        instance_dataset(f, uids, -1, JPEG_BASELINE, identified=False)
    with pytest.raises(ValueError, match="transfer syntax"):
        instance_dataset(f, uids, 0, "1.2.840.10008.1.2.4.90", identified=False)
    with pytest.raises(ValueError, match="photometric"):
        instance_dataset(facts(photometric="CMYK"), uids, 0, JPEG_BASELINE, identified=False)
    with pytest.raises(ValueError, match="derive_uids"):
        instance_dataset(f, derive_uids(SLIDE, 2), 0, JPEG_BASELINE, identified=False)


def test_frame_positions_are_row_major() -> None:
    f = facts()
    assert frame_position(f, 0, 1) == (0, 0)
    assert frame_position(f, 0, 13) == (12, 0)
    assert frame_position(f, 0, 14) == (0, 1)
    assert frame_position(f, 0, 117) == (12, 8)
    for frame in (0, 118):
        with pytest.raises(ValueError):
            frame_position(f, 0, frame)


# -- Part 10 ------------------------------------------------------------------------------


def test_encapsulated_part10_file_reads_back(tmp_path: object) -> None:
    f = facts(levels=pyramid_sizes(Size(20, 10), 8), tile=8)
    uids = derive_uids(SLIDE, len(f.levels))
    ds = instance_dataset(f, uids, 0, JPEG_BASELINE, identified=False)
    frames = [simplejpeg.encode_jpeg(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(6)]
    assert ds.NumberOfFrames == len(frames)
    out = bytearray(part10_header(ds, JPEG_BASELINE))
    tables, first_value = offset_tables_header(len(frames))
    patch_at = len(out) + first_value
    out += tables + encapsulated_pixel_header()
    start = len(out)
    offsets, lengths = [], []
    for frame in frames:
        offsets.append(len(out) - start)
        item = fragment(frame)
        lengths.append(len(item) - 8)
        out += item
    out += SEQUENCE_DELIMITER
    values = offset_values(offsets, lengths)
    out[patch_at : patch_at + len(values)] = values
    back = pydicom.dcmread(io.BytesIO(bytes(out)))
    assert back.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert back.file_meta.MediaStorageSOPInstanceUID == uids.instances[0]
    assert back.SOPInstanceUID == uids.instances[0]
    eot = (back.ExtendedOffsetTable, back.ExtendedOffsetTableLengths)
    assert struct.unpack("<6Q", eot[0]) == tuple(offsets)
    for i, frame in enumerate(frames):
        got = get_frame(back.PixelData, i, number_of_frames=6, extended_offsets=eot)
        assert got.rstrip(b"\x00") == frame.rstrip(b"\x00")


def test_native_part10_file_reads_back() -> None:
    f = facts(levels=pyramid_sizes(Size(20, 10), 8), tile=8)
    ds = instance_dataset(
        f, derive_uids(SLIDE, len(f.levels)), 0, EXPLICIT_VR_LITTLE_ENDIAN, identified=False
    )
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    out = part10_header(ds, EXPLICIT_VR_LITTLE_ENDIAN) + native_pixel_header(8 * 8 * 3, 6)
    back = pydicom.dcmread(io.BytesIO(out + frames.tobytes()))
    assert np.array_equal(back.pixel_array, frames)


def test_native_pixel_data_over_4_gib_is_refused() -> None:
    with pytest.raises(ValueError, match="4 GiB"):
        native_pixel_header(256 * 256 * 3, 22000)


def test_part10_header_refuses_pixel_data() -> None:
    f = facts()
    ds = instance_dataset(f, derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=False)
    ds.PixelData = b"\x00\x00"
    with pytest.raises(ValueError, match="pixel data"):
        part10_header(ds, JPEG_BASELINE)


def test_compression_ratio() -> None:
    f = facts(compression_ratio=12.5)
    ds = instance_dataset(f, derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=False)
    assert float(ds.LossyImageCompressionRatio) == 12.5
    unknown = instance_dataset(facts(), derive_uids(SLIDE, 5), 0, JPEG_BASELINE, identified=False)
    assert "LossyImageCompressionRatio" not in unknown


def test_reserved_compression_ratio_is_patched_in_place() -> None:
    """Export knows a file's ratio only after its frames: a reserved value is overwritten."""
    f = facts(levels=pyramid_sizes(Size(20, 10), 8), tile=8)
    ds = instance_dataset(f, derive_uids(SLIDE, len(f.levels)), 0, JPEG_BASELINE, identified=False)
    reserve_ratio(ds)
    header = bytearray(part10_header(ds, JPEG_BASELINE))
    at = ratio_offset(bytes(header))
    value = ratio_value(6 * 8 * 8 * 3, 100)
    header[at : at + len(value)] = value
    back = pydicom.dcmread(io.BytesIO(bytes(header)))
    assert float(back.LossyImageCompressionRatio) == pytest.approx(11.52)
    assert back.SOPInstanceUID == ds.SOPInstanceUID  # nothing else moved
    with pytest.raises(ValueError):
        ratio_offset(
            part10_header(
                instance_dataset(
                    f, derive_uids(SLIDE, len(f.levels)), 0, JPEG_BASELINE, identified=False
                ),
                JPEG_BASELINE,
            )
        )
