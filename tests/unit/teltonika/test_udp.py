"""UDP datagrams: documented examples, acks, strict refusals, round trips, resends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.encoder import encode_avl_frame
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.model import CODEC_8, CODEC_8E, CODEC_16, AvlRecord
from fleetgate.protocols.teltonika.udp import (
    UdpDatagram,
    UdpDuplicateFilter,
    Verdict,
    decode_udp_datagram,
    encode_udp_ack,
    encode_udp_datagram,
)
from tests.unit.teltonika.helpers import check_record_invariants, io_json, select, vector
from tests.unit.teltonika.strategies import AVL_CASES, avl_records

AVL = (CODEC_8, CODEC_8E, CODEC_16)
GOOD = select(transport="udp", codecs=AVL, integrity_error=False)


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_documented_datagrams(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    datagram = decode_udp_datagram(raw)
    assert datagram.codec == v["codec"]
    assert datagram.raw == raw
    derived = v["derived_expectations"]
    assert len(datagram.records) == derived["record_count"]
    assert datagram.records[0].timestamp_ms == derived["first_record"]["timestamp_ms"]
    assert io_json(datagram.records[0].io) == derived["first_record"]["io"]
    stated = v["stated_expectations"]
    if "imei" in stated:
        assert datagram.imei == stated["imei"]
        assert datagram.avl_packet_id == stated["avl_packet_id"]
        assert datagram.packet_id == stated["packet_id"]
    for rec in datagram.records:
        check_record_invariants(rec)
    ack = encode_udp_ack(datagram.packet_id, datagram.avl_packet_id, len(datagram.records))
    assert ack.hex() == v["expected_reply_hex"]


def test_ack_examples() -> None:
    v = vector("doc-udp-ack-generic-two-records")
    assert encode_udp_ack(0xABCD, 0xDD, 2).hex() == v["hex"]


def test_codec_byte_erratum_is_refused() -> None:
    (v,) = select(transport="udp", codecs=AVL, integrity_error=True)
    with pytest.raises(TeltonikaDecodeError):
        decode_udp_datagram(bytes.fromhex(v["hex"]))


def test_refusals() -> None:
    good = bytes.fromhex(GOOD[0]["hex"])
    with pytest.raises(TeltonikaDecodeError, match="length field"):
        decode_udp_datagram(good + b"\x00")
    with pytest.raises(TeltonikaDecodeError, match="too short"):
        decode_udp_datagram(good[:5])
    bad_imei = good[:8] + b"x" + good[9:]
    with pytest.raises(TeltonikaDecodeError, match="ASCII digits"):
        decode_udp_datagram(bad_imei)
    gprs = encode_udp_datagram("1", CODEC_8, [])
    with pytest.raises(TeltonikaDecodeError, match="not an AVL codec"):
        decode_udp_datagram(gprs[:9] + b"\x0c" + gprs[10:])


def test_round_trip() -> None:
    rec = AvlRecord(1_560_407_006_000, 1, 25.5, 54.25, 100, 180, 9, 60, 1, {21: 3, 1: 1, 66: 23996})
    raw = encode_udp_datagram("352093086403655", CODEC_8E, [rec], avl_packet_id=7)
    datagram = decode_udp_datagram(raw)
    assert (datagram.imei, datagram.avl_packet_id, datagram.packet_id) == (
        "352093086403655", 7, 0xCAFE,
    )
    assert datagram.records == (rec,)
    # same records body as the TCP encoder
    assert encode_avl_frame(CODEC_8E, [rec])[8:-4] == raw[2 + 6 + 15 :]


def test_io16_group_is_detected_over_udp() -> None:
    rec = AvlRecord(1_600_000_000_000, 0, 1.0, 2.0, 3, 4, 5, 6, 0, {7: bytes(16)}, None,
                    (0, 0, 0, 0, 0, 1))
    raw = encode_udp_datagram("352093086403655", CODEC_8, [rec, rec], io16_group=True)
    assert decode_udp_datagram(raw).records == (rec, rec)


def test_impossible_time_is_refused() -> None:
    rec = AvlRecord(2**63, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    with pytest.raises(ImpossibleValueError):
        decode_udp_datagram(encode_udp_datagram("1", CODEC_8E, [rec]))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(AVL_CASES).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(avl_records(c[0], c[1]), max_size=3))
    ),
    st.from_regex(r"[0-9]{1,32}", fullmatch=True),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
)
def test_header_round_trip(
    case: tuple[tuple[int, bool], list[AvlRecord]], imei: str, packet_id: int, avl_id: int,
    unused: int,
) -> None:
    (codec, with_io16), records = case
    raw = encode_udp_datagram(imei, codec, records, packet_id=packet_id, avl_packet_id=avl_id,
                              io16_group=with_io16, unused_byte=unused)
    datagram = decode_udp_datagram(raw, io16_group=with_io16)
    assert (datagram.imei, datagram.packet_id, datagram.avl_packet_id, datagram.codec) == (
        imei, packet_id, avl_id, codec,
    )
    assert datagram.records == tuple(records)
    assert datagram.raw == raw
    assert int.from_bytes(raw[:2], "big") == len(raw) - 2
    assert datagram.body == raw[8 + len(imei) :]
    ack = encode_udp_ack(packet_id, avl_id, len(records))
    assert ack == bytes((0, 5)) + packet_id.to_bytes(2, "big") + bytes((1, avl_id, len(records)))


def test_encoder_refusals() -> None:
    with pytest.raises(ValueError, match="IMEI"):
        encode_udp_datagram("35x", CODEC_8, [])
    big = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {256: bytes(0xFFF0)})
    with pytest.raises(ValueError, match="u16"):
        encode_udp_datagram("1", CODEC_8E, [big])


# -- duplicate filter -------------------------------------------------------------------------

IMEI_A = "352093086403655"


def datagram(avl_id: int = 5, imei: str = IMEI_A, speed: int = 60) -> UdpDatagram:
    rec = AvlRecord(1_560_407_006_000, 1, 25.5, 54.25, 100, 180, 9, speed, 1, {21: 3})
    return decode_udp_datagram(encode_udp_datagram(imei, CODEC_8, [rec], avl_packet_id=avl_id))


def test_a_resend_is_a_duplicate_once_stored() -> None:
    dedup = UdpDuplicateFilter(window_s=60)
    first = datagram()
    assert dedup.check(first, now=0.0) is Verdict.NEW
    # the resend arrives while the first copy is still being stored: no ack yet
    assert dedup.check(datagram(), now=1.0) is Verdict.IN_FLIGHT
    dedup.confirm(first, now=2.0)
    assert dedup.check(datagram(), now=30.0) is Verdict.DUPLICATE
    # another channel packet id does not matter: same device, AVL id and records
    resend = decode_udp_datagram(encode_udp_datagram(
        IMEI_A, CODEC_8, first.records, packet_id=0x1234, avl_packet_id=5))
    assert dedup.check(resend, now=31.0) is Verdict.DUPLICATE


def test_not_accepted_datagrams_are_forgotten() -> None:
    dedup = UdpDuplicateFilter()
    first = datagram()
    assert dedup.check(first, now=0.0) is Verdict.NEW
    dedup.release(first)  # the pipeline refused: no ack, the resend must be stored
    assert dedup.check(datagram(), now=1.0) is Verdict.NEW
    assert len(dedup) == 1


def test_different_records_device_or_id_are_new() -> None:
    dedup = UdpDuplicateFilter()
    for item in (datagram(), datagram(avl_id=6), datagram(imei="1"), datagram(speed=61)):
        assert dedup.check(item, now=0.0) is Verdict.NEW
        dedup.confirm(item, now=0.0)
    # the id wrapped around to a new packet with other records: new, and it replaces
    assert dedup.check(datagram(speed=62), now=1.0) is Verdict.NEW


def test_the_window_expires() -> None:
    dedup = UdpDuplicateFilter(window_s=10)
    first = datagram()
    dedup.check(first, now=0.0)
    dedup.confirm(first, now=0.0)
    assert dedup.check(datagram(), now=9.0) is Verdict.DUPLICATE  # seen again: window slides
    assert dedup.check(datagram(), now=18.0) is Verdict.DUPLICATE
    assert dedup.check(datagram(), now=28.5) is Verdict.NEW
    assert len(dedup) == 1


def test_memory_is_bounded() -> None:
    dedup = UdpDuplicateFilter(window_s=1e9, max_entries=3)
    items = [datagram(avl_id=i) for i in range(5)]
    for item in items:
        dedup.check(item, now=0.0)
        dedup.confirm(item, now=0.0)
    assert len(dedup) == 3
    assert dedup.check(items[0], now=1.0) is Verdict.NEW  # the oldest was evicted
    assert dedup.check(items[4], now=1.0) is Verdict.DUPLICATE
    assert len(dedup) == 3


def test_filter_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        UdpDuplicateFilter(window_s=0)
    with pytest.raises(ValueError, match="max_entries"):
        UdpDuplicateFilter(max_entries=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0, 5)), max_size=40))
def test_filter_never_calls_a_first_sighting_a_duplicate(
    steps: list[tuple[int, int, float]],
) -> None:
    dedup = UdpDuplicateFilter(window_s=4, max_entries=5)
    now = 0.0
    confirmed: dict[tuple[int, int], float] = {}
    for avl_id, speed, advance in steps:
        now += advance
        item = datagram(avl_id=avl_id, speed=speed)
        verdict = dedup.check(item, now)
        if verdict is Verdict.DUPLICATE:
            assert (avl_id, speed) in confirmed
        if verdict is Verdict.NEW:
            dedup.confirm(item, now)
            confirmed[(avl_id, speed)] = now
        assert len(dedup) <= 5
