"""AVL bodies of codecs 8, 8E and 16 (codec 7 in test_gh3000): real frames, strictness,
16-byte group detection, impossible times, round trips."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika import avl
from fleetgate.protocols.teltonika.avl import decode_avl_body, encode_avl_body
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.model import (
    CODEC_8,
    CODEC_8E,
    CODEC_16,
    MAX_TIMESTAMP_MS,
    AvlRecord,
)
from tests.unit.teltonika.helpers import check_record_invariants, io16, io_json, select
from tests.unit.teltonika.strategies import AVL_CASES, avl_records

AVL = (CODEC_8, CODEC_8E, CODEC_16)
GOOD = select(codecs=AVL, integrity_error=False)


def body_of(v: dict[str, Any]) -> bytes:
    frame = bytes.fromhex(v["hex"])
    if v["transport"] == "udp":
        imei_length = int.from_bytes(frame[6:8], "big")
        return frame[8 + imei_length :]
    return frame[8 : 8 + int.from_bytes(frame[4:8], "big")]


def assert_matches(rec: AvlRecord, expected: dict[str, Any]) -> None:
    """Compare a decoded record with an expectation dict from vectors.json."""
    simple = {
        "timestamp_ms": rec.timestamp_ms,
        "priority": rec.priority,
        "latitude": rec.latitude,
        "longitude": rec.longitude,
        "altitude": rec.altitude,
        "angle": rec.angle,
        "satellites": rec.satellites,
        "speed_kmh": rec.speed,
        "event_io_id": rec.event_io_id,
        "generation_type": rec.generation_type,
    }
    for key, value in simple.items():
        if key in expected:
            assert value == expected[key], key
    if "io" in expected:
        assert io_json(rec.io) == expected["io"]
    for key in ("io_count", "io_total"):
        if key in expected:
            assert len(rec.io) == expected[key]
    if "nx_count" in expected:
        assert rec.io_groups is not None
        assert rec.io_groups[4] == expected["nx_count"]


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_real_frames_decode_as_expected(v: dict[str, Any]) -> None:
    records = decode_avl_body(body_of(v), v["codec"], io16_group=io16(v))
    derived = v["derived_expectations"]
    assert len(records) == derived["record_count"]
    assert_matches(records[0], derived["first_record"])
    for rec, summary in zip(records, derived.get("records", []), strict=False):
        assert_matches(rec, summary)
    stated = v["stated_expectations"]
    if "records" in stated:
        assert len(records) == stated["record_count"]
        for rec, expected in zip(records, stated["records"], strict=True):
            assert_matches(rec, expected)
    for rec in records:
        check_record_invariants(rec)
        if v["codec"] == CODEC_16:
            assert rec.generation_type is not None
        else:
            assert rec.generation_type is None


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_real_frames_reencode_byte_for_byte(v: dict[str, Any]) -> None:
    body = body_of(v)
    records = decode_avl_body(body, v["codec"], io16_group=io16(v))
    assert encode_avl_body(v["codec"], records, io16_group=io16(v)) == body


IO16 = [v for v in GOOD if io16(v)]


@pytest.mark.parametrize("v", IO16, ids=[v["id"] for v in IO16])
def test_io16_group_is_detected_without_the_option(v: dict[str, Any]) -> None:
    body = body_of(v)
    detected = decode_avl_body(body, v["codec"])
    assert detected == decode_avl_body(body, v["codec"], io16_group=True)
    assert len(detected) == v["derived_expectations"]["record_count"]
    # and it re-encodes only with the group
    assert encode_avl_body(v["codec"], detected, io16_group=True) == body
    if not any(rec.io_groups and rec.io_groups[5] for rec in detected):
        assert encode_avl_body(v["codec"], detected) != body


def test_standard_reading_wins_when_both_fit() -> None:
    # A standard body that also reads as a 16-byte-group body is the standard one.
    plain = decode_avl_body(DOC_C8, CODEC_8)
    assert plain[0].io_groups == (2, 1, 1, 1, 0, 0)


def test_io16_group_with_values() -> None:
    for codec, generation in ((CODEC_8, None), (CODEC_16, 7)):
        rec = AvlRecord(1_600_000_000_000, 0, 1.0, 2.0, 3, 4, 5, 6, 0,
                        {1: 1, 2: bytes(range(16))}, generation, (1, 0, 0, 0, 0, 1))
        body = encode_avl_body(codec, [rec, rec], io16_group=True)
        assert decode_avl_body(body, codec) == (rec, rec)
        assert decode_avl_body(body, codec)[0].io_groups == (1, 0, 0, 0, 0, 1)


def test_8e_io16_group_precedes_nx() -> None:
    # Traccar reads the 16-byte group after the 8-byte group and before NX.
    io: dict[int, int | bytes] = {300: b"nx", 301: b"S" * 16}
    rec = AvlRecord(1_600_000_000_000, 0, 0.0, 0.0, 0, 0, 0, 0, 0, io, None, (0, 0, 0, 0, 1, 1))
    body = encode_avl_body(CODEC_8E, [rec], io16_group=True)
    after_groups = 2 + 24 + 2 + 2 + 4 * 2  # N1.., header, event, total, 4 empty counts
    assert body[after_groups : after_groups + 2 + 2 + 16] == b"\x00\x01\x01\x2d" + b"S" * 16
    assert body[after_groups + 20 :] == b"\x00\x01\x01\x2c\x00\x02nx\x01"
    (back,) = decode_avl_body(body, CODEC_8E)
    assert back == rec
    assert list(back.io) == [300, 301]


def test_neither_reading_fits_reports_the_standard_error() -> None:
    with pytest.raises(TeltonikaDecodeError, match="end at body byte"):
        decode_avl_body(DOC_C8[:-1] + b"\x05\x01", CODEC_8)


def test_codec16_reads_two_byte_ids_with_one_byte_counts() -> None:
    v = next(v for v in GOOD if v["id"] == "traccar-hist-c16-3rec-ids-over-255")
    records = decode_avl_body(body_of(v), CODEC_16)
    assert any(key > 255 for key in records[0].io)


def test_layout_is_recorded() -> None:
    v = next(v for v in GOOD if v["id"] == "doc-c8-tcp-example1")
    (rec,) = decode_avl_body(body_of(v), CODEC_8)
    assert rec.io_groups == (2, 1, 1, 1, 0, 0)  # 21,1 | 66 | 241 | 78


# -- strictness -------------------------------------------------------------------------------

DOC_C8 = bytes.fromhex(
    "08010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f01f10000601a01"
    "4e000000000000000001"
)


def test_n1_differs_from_n2() -> None:
    with pytest.raises(TeltonikaDecodeError, match=r"N1 \(1\) != N2 \(2\)"):
        decode_avl_body(DOC_C8[:-1] + b"\x02", CODEC_8)


def test_leftover_bytes_before_n2() -> None:
    with pytest.raises(TeltonikaDecodeError, match="end at body byte"):
        decode_avl_body(DOC_C8[:-1] + b"\x07\x08\x01", CODEC_8)


def test_one_zero_byte_more_per_record_is_an_empty_16_byte_group() -> None:
    # The only way a standard frame and a 16-byte-group frame differ: the group's count.
    (rec,) = decode_avl_body(DOC_C8[:-1] + b"\x00\x01", CODEC_8)
    assert rec == decode_avl_body(DOC_C8, CODEC_8)[0]


@pytest.mark.parametrize("cut", [3, 10, 26, 30, 40, len(DOC_C8) - 2])
def test_truncated_records(cut: int) -> None:
    with pytest.raises(TeltonikaDecodeError):
        decode_avl_body(DOC_C8[:cut] + b"\x01", CODEC_8)


def test_unknown_or_mismatched_codec() -> None:
    with pytest.raises(TeltonikaDecodeError, match="expected 0x8e"):
        decode_avl_body(DOC_C8, CODEC_8E)
    with pytest.raises(TeltonikaDecodeError, match="not an AVL codec"):
        decode_avl_body(b"\x0c" + DOC_C8[1:], 0x0C)
    with pytest.raises(TeltonikaDecodeError, match="at least 3"):
        decode_avl_body(b"\x08\x00", CODEC_8)


def test_zero_records() -> None:
    assert decode_avl_body(b"\x08\x00\x00", CODEC_8) == ()


def test_codec_byte_mismatch_erratum_fails_cleanly() -> None:
    v = select(transport="udp", codecs=(CODEC_8E,), integrity_error=True)[0]
    with pytest.raises(TeltonikaDecodeError):
        decode_avl_body(body_of(v), CODEC_8E)


def test_memoryview_input() -> None:
    assert decode_avl_body(memoryview(DOC_C8), CODEC_8) == decode_avl_body(DOC_C8, CODEC_8)


def test_large_group_beyond_struct_cache() -> None:
    io: dict[int, int | bytes] = {k: k for k in range(200)}
    rec = AvlRecord(1, 0, 1.5, -2.5, -10, 359, 7, 88, 0, io, None, (200, 0, 0, 0, 0, 0))
    (back,) = decode_avl_body(encode_avl_body(CODEC_8, [rec]), CODEC_8)
    assert back == rec
    assert back.io_groups == (200, 0, 0, 0, 0, 0)


# -- encoder ----------------------------------------------------------------------------------


def test_encoder_infers_widths_without_layout() -> None:
    io: dict[int, int | bytes] = {1: 1, 66: 12_000, 16: 70_000, 11: 2**40, 256: b"VIN"}
    rec = AvlRecord(1_700_000_000_000, 1, 25.0, 54.0, 100, 90, 9, 50, 0, io)
    (back,) = decode_avl_body(encode_avl_body(CODEC_8E, [rec]), CODEC_8E)
    assert back == rec
    assert back.io_groups == (1, 1, 1, 1, 1, 0)


@pytest.mark.parametrize(
    ("codec", "io", "message"),
    [
        (CODEC_8, {300: 1}, "does not fit"),
        (CODEC_8, {1: b"x"}, "needs codec 8E"),
        (CODEC_8E, {1: -1}, "u64"),
        (CODEC_8E, {1: 2**64}, "u64"),
        (CODEC_8, dict.fromkeys(range(256), 0), "counts up to 255"),
    ],
)
def test_encoder_refuses_what_the_codec_cannot_carry(
    codec: int, io: dict[int, int | bytes], message: str
) -> None:
    rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, io)
    with pytest.raises(ValueError, match=message):
        encode_avl_body(codec, [rec])


def test_encoder_refuses_bad_codec_and_too_many_records() -> None:
    rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="not an AVL codec"):
        encode_avl_body(0x0C, [rec])
    with pytest.raises(ValueError, match="255"):
        encode_avl_body(CODEC_8, [rec] * 256)
    with pytest.raises(ValueError, match="event IO id"):
        encode_avl_body(CODEC_8, [AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 300)])


def test_header_field_widths() -> None:
    rec = AvlRecord(MAX_TIMESTAMP_MS, 2, -180.0, -90.0, -32768, 65535, 255, 65535, 0)
    body = encode_avl_body(CODEC_8, [rec])
    assert struct.unpack_from(">QBiihHBH", body, 2) == (
        MAX_TIMESTAMP_MS, 2, -1_800_000_000, -900_000_000, -32768, 65535, 255, 65535,
    )
    assert decode_avl_body(body, CODEC_8) == (rec,)


@pytest.mark.parametrize("codec", [CODEC_8, CODEC_8E, CODEC_16])
@pytest.mark.parametrize("timestamp", [MAX_TIMESTAMP_MS + 1, 2**63, 2**64 - 1])
def test_impossible_device_time_is_refused(codec: int, timestamp: int) -> None:
    good = AvlRecord(1_600_000_000_000, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    bad = AvlRecord(timestamp, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    body = encode_avl_body(codec, [good, bad])
    with pytest.raises(ImpossibleValueError, match="record 2 of 2: device time") as info:
        decode_avl_body(body, codec)
    assert isinstance(info.value, TeltonikaDecodeError)
    assert str(timestamp) in info.value.reason


def test_encoder_refuses_fractional_angle_and_overflowing_header() -> None:
    with pytest.raises(ValueError, match="whole degrees"):
        encode_avl_body(CODEC_8, [AvlRecord(0, 0, 0.0, 0.0, 0, 1.5, 0, 0, 0)])
    with pytest.raises(ValueError, match="header does not fit"):
        encode_avl_body(CODEC_8, [AvlRecord(0, 256, 0.0, 0.0, 0, 0, 0, 0, 0)])


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(AVL_CASES).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(avl_records(c[0], c[1]), max_size=5))
    )
)
def test_body_round_trip(case: tuple[tuple[int, bool], list[AvlRecord]]) -> None:
    (codec, with_io16), records = case
    body = encode_avl_body(codec, records, io16_group=with_io16)
    decoded = decode_avl_body(body, codec, io16_group=with_io16)
    assert decoded == tuple(records)
    for got, sent in zip(decoded, records, strict=True):
        assert got.io_groups == sent.io_groups
        assert list(got.io.items()) == list(sent.io.items())
        check_record_invariants(got)
    assert encode_avl_body(codec, decoded, io16_group=with_io16) == body


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([CODEC_8, CODEC_8E, CODEC_16]).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(avl_records(c, True), min_size=1, max_size=4))
    )
)
def test_detection_finds_the_16_byte_group(case: tuple[int, list[AvlRecord]]) -> None:
    """Without the option a 16-byte-group body decodes to what was sent, except when the
    standard reading also fits (then, by the rule, that reading is the frame)."""
    codec, records = case
    body = encode_avl_body(codec, records, io16_group=True)
    try:
        standard = avl._decode_records(body, 0, len(body), avl._HEADERS[codec], False)
    except TeltonikaDecodeError:
        standard = None
    detected = decode_avl_body(body, codec)
    if standard is None:
        assert detected == tuple(records)
    else:
        assert detected == standard
