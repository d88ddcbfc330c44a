"""DICOMweb without a server: QIDO queries and matching, frame lists and positions, Accept
negotiation and multipart framing."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import pytest

from tileserver.protocols import dicomweb as dw

STUDY = "2.25.123456789012345678901234567890"
OTHER = "2.25.98765432109876543210"


def record(**values: Any) -> dict[str, Any]:
    """A DICOM JSON record from keyword=value pairs (a PN as its alphabetic form)."""
    out: dict[str, Any] = {}
    for keyword, value in values.items():
        tag, vr = dw.ATTRIBUTES[keyword]
        items = value if isinstance(value, list) else [value]
        if vr == "PN":
            items = [{"Alphabetic": v} for v in items]
        out[tag] = {"vr": vr, "Value": items} if value is not None else {"vr": vr}
    return out


SLIDE = record(
    StudyInstanceUID=STUDY,
    SeriesInstanceUID=OTHER,
    StudyDate="20240315",
    StudyTime="101502",
    PatientName="Doe^Jane",
    PatientID="ANON",
    Modality="SM",
    InstanceNumber=1,
    AccessionNumber=None,
)


def query(**pairs: str) -> dw.Query:
    return dw.parse_query(pairs.items())


# -- queries --------------------------------------------------------------------------------


def test_keys_by_keyword_or_tag_match_the_same() -> None:
    assert dw.matches(query(StudyInstanceUID=STUDY), SLIDE)
    assert dw.matches(query(**{"0020000D": STUDY}), SLIDE)
    assert dw.matches(query(**{"0020000d": STUDY}), SLIDE)
    assert not dw.matches(query(StudyInstanceUID=OTHER), SLIDE)


def test_uid_lists_match_any_of_them() -> None:
    assert dw.matches(query(StudyInstanceUID=f"{OTHER},{STUDY}"), SLIDE)
    repeated = dw.parse_query([("StudyInstanceUID", OTHER), ("StudyInstanceUID", STUDY)])
    assert dw.matches(repeated, SLIDE)
    assert not dw.matches(query(StudyInstanceUID=f"{OTHER},1.2.3"), SLIDE)


@pytest.mark.parametrize(
    "pattern, hit",
    [("Doe*", True), ("doe^j*", True), ("D?e^Jane", True), ("*Smith*", False), ("Doe", False)],
)
def test_wildcards_on_names(pattern: str, hit: bool) -> None:
    assert dw.matches(query(PatientName=pattern), SLIDE) is hit


def test_wildcards_on_other_strings_are_case_sensitive() -> None:
    assert dw.matches(query(PatientID="AN*"), SLIDE)
    assert not dw.matches(query(PatientID="an*"), SLIDE)
    assert dw.matches(query(Modality="SM"), SLIDE) and not dw.matches(query(Modality="CT"), SLIDE)


@pytest.mark.parametrize(
    "value, hit",
    [
        ("20240315", True),
        ("20240101-20241231", True),
        ("-20240315", True),
        ("20240316-", False),
        ("20240101-20240314", False),
        ("20240315-20240315", True),
    ],
)
def test_date_ranges(value: str, hit: bool) -> None:
    assert dw.matches(query(StudyDate=value), SLIDE) is hit


def test_time_ranges_and_numbers() -> None:
    assert dw.matches(query(StudyTime="10-11"), SLIDE)
    assert not dw.matches(query(StudyTime="1100-"), SLIDE)
    assert dw.matches(query(InstanceNumber="1"), SLIDE)
    assert not dw.matches(query(InstanceNumber="2"), SLIDE)


def test_universal_and_empty_attributes() -> None:
    assert dw.matches(query(PatientName=""), SLIDE)
    assert dw.matches(query(PatientName="*"), SLIDE)
    assert not dw.matches(query(AccessionNumber="X1"), SLIDE)  # empty in the record


@pytest.mark.parametrize(
    "pairs, needle",
    [
        ([("PatientNmae", "x")], "'PatientNmae'"),
        ([("00101010", "x")], "'00101010'"),
        ([("includefield", "NoSuchThing")], "'NoSuchThing'"),
        ([("StudyInstanceUID", "1.02.3")], "not a valid UID"),
        ([("StudyInstanceUID", "abc")], "not a valid UID"),
        ([("StudyDate", "2024-03-15")], "StudyDate"),
        ([("StudyDate", "yesterday")], "StudyDate"),
        ([("InstanceNumber", "one")], "InstanceNumber"),
        ([("limit", "0")], "limit"),
        ([("limit", "-1")], "limit"),
        ([("offset", "x")], "offset"),
        ([("fuzzymatching", "maybe")], "fuzzymatching"),
    ],
)
def test_bad_queries_name_the_key(pairs: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(dw.QueryError) as caught:
        dw.parse_query(pairs)
    assert needle in str(caught.value)


def test_unknown_keys_are_all_named() -> None:
    with pytest.raises(dw.QueryError, match="'Foo', 'Bar'"):
        dw.parse_query([("Foo", "1"), ("Bar", "2")])


def test_includefield_limit_offset_and_fuzzymatching() -> None:
    q = dw.parse_query(
        [
            ("includefield", "PatientID,00080060"),
            ("includefield", "StudyDate"),
            ("limit", "5"),
            ("offset", "2"),
            ("fuzzymatching", "true"),
        ]
    )
    assert q.include == {"00100020", "00080060", "00080020"}
    assert (q.limit, q.offset, q.include_all) == (5, 2, False)
    selected = dw.select(q, SLIDE, ("0020000D",))
    assert set(selected) == {"0020000D", "00100020", "00080060", "00080020"}
    assert list(selected) == sorted(selected)  # DICOM JSON orders attributes by tag
    everything = dw.select(query(includefield="all"), SLIDE, ())
    assert everything == SLIDE
    assert dw.page(q, list(range(10))) == [2, 3, 4, 5, 6]


def test_match_keys_are_returned() -> None:
    selected = dw.select(query(PatientName="Doe*"), SLIDE, ("0020000D",))
    assert set(selected) == {"0020000D", "00100010"}


# -- frames ---------------------------------------------------------------------------------


def test_frame_lists() -> None:
    assert dw.parse_frames("1") == (1,)
    assert dw.parse_frames("3,1,3") == (3, 1, 3)
    for bad in ("0", "", "1,,2", "-1", "1.5", "x", "1;2", "9999999999"):
        with pytest.raises(dw.QueryError):
            dw.parse_frames(bad)
    with pytest.raises(dw.QueryError, match="at most 4"):
        dw.parse_frames("1,2,3,4,5", max_frames=4)


def test_frame_positions_are_row_major() -> None:
    assert dw.frame_position(1, 3, 2) == (0, 0)
    assert dw.frame_position(3, 3, 2) == (2, 0)
    assert dw.frame_position(4, 3, 2) == (0, 1)
    assert dw.frame_position(6, 3, 2) == (2, 1)
    for bad in (0, 7):
        with pytest.raises(dw.FrameNotFound):
            dw.frame_position(bad, 3, 2)


# -- Accept -----------------------------------------------------------------------------------

JPEG = dw.Offer("image/jpeg", dw.JPEG_BASELINE)
STORED = dw.Offer("application/octet-stream", dw.JPEG_BASELINE)
NATIVE = dw.Offer("application/octet-stream", dw.EXPLICIT_VR_LITTLE_ENDIAN)
SINGLE = dw.Offer("image/jpeg", dw.JPEG_BASELINE, multipart=False)
OFFERS = (JPEG, STORED, NATIVE, SINGLE)


@pytest.mark.parametrize(
    "accept, chosen",
    [
        (None, NATIVE),
        ("*/*", NATIVE),
        ('multipart/related; type="image/jpeg"', JPEG),
        (f'multipart/related; type="image/jpeg"; transfer-syntax={dw.JPEG_BASELINE}', JPEG),
        ('multipart/related; type="application/octet-stream"', NATIVE),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', STORED),
        (
            'multipart/related; type="application/octet-stream"; '
            f"transfer-syntax={dw.EXPLICIT_VR_LITTLE_ENDIAN}",
            NATIVE,
        ),
        ('multipart/related; type="image/*"', JPEG),
        ("image/jpeg", SINGLE),
        (
            'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
            'multipart/related; type="image/jpeg"',
            JPEG,
        ),
        (
            'multipart/related; type="image/jpeg"; q=0.5, '
            'multipart/related; type="application/octet-stream"; q=0.9',
            NATIVE,
        ),
        ('multipart/related; type="image/jpeg"; q=0, */*', NATIVE),
        ('multipart/related; type="image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"', JPEG),
    ],
)
def test_negotiation(accept: str | None, chosen: dw.Offer) -> None:
    assert dw.negotiate(accept, OFFERS, NATIVE) == chosen


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jp2"',
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2',
        "text/html",
        'multipart/related; type="image/jpeg"; q=0',
    ],
)
def test_unsupported_media_types_list_what_is_offered(accept: str) -> None:
    with pytest.raises(dw.NotAcceptable) as caught:
        dw.negotiate(accept, OFFERS, NATIVE)
    message = str(caught.value)
    assert 'multipart/related; type="image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"' in message
    assert dw.EXPLICIT_VR_LITTLE_ENDIAN in message


def test_rendered_negotiation() -> None:
    offers = (dw.Offer("image/jpeg", multipart=False), dw.Offer("image/png", multipart=False))
    assert dw.negotiate("image/png", offers).media_type == "image/png"
    assert dw.negotiate("image/*", offers).media_type == "image/jpeg"
    assert dw.negotiate("image/png;q=0.4, image/jpeg;q=0.8", offers).media_type == "image/jpeg"
    assert dw.negotiate(None, offers).media_type == "image/jpeg"
    with pytest.raises(dw.NotAcceptable, match="image/png"):
        dw.negotiate("image/gif", offers)


# -- multipart --------------------------------------------------------------------------------


def test_multipart_body_parses_as_mime() -> None:
    parts = [b"\xff\xd8first\xff\xd9", b"--not-the-boundary\r\n", b""]
    body = dw.multipart_body(parts, JPEG, "b0undary")
    content_type = dw.multipart_type(JPEG, "b0undary")
    assert content_type == 'multipart/related; type="image/jpeg"; boundary=b0undary'
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    got = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in got] == parts
    for part in got:
        assert part.get_content_type() == "image/jpeg"
        assert part.get_param("transfer-syntax") == dw.JPEG_BASELINE
    assert body.startswith(b"--b0undary\r\n") and body.endswith(b"--b0undary--\r\n")


def test_uids() -> None:
    assert dw.is_uid("1.2.840.10008.1.2.4.50") and dw.is_uid("2.25.0")
    for bad in ("", "1..2", "1.02", ".1", "1.", "1.2a", "1" * 65):
        assert not dw.is_uid(bad), bad
