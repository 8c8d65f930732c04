"""Codec 7 (GH3000): Traccar's real frames, Record data, refusals, round trips."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.avl import decode_avl_body, encode_avl_body
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.encoder import encode_avl_frame
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame, FrameRefused
from fleetgate.protocols.teltonika.framing import wrap_tcp
from fleetgate.protocols.teltonika.gh3000 import shortest_float32
from fleetgate.protocols.teltonika.model import CODEC_7, AvlRecord, Gh3000Record
from fleetgate.protocols.teltonika.records import avl_record_data, to_records
from fleetgate.protocols.teltonika.udp import decode_udp_datagram, encode_udp_datagram
from tests.unit.teltonika.helpers import (
    IMEI,
    IMEI_FRAME,
    check_record_invariants,
    check_traccar_invariants,
    frame,
    io_json,
    vector,
)
from tests.unit.teltonika.strategies import gh3000_records

GH_VECTORS = ["traccar-gh3000-L111", "traccar-gh3000-L126", "traccar-gh3000-L129"]


def body_of(vector_id: str) -> bytes:
    raw = frame(vector_id)
    if vector_id.endswith("L126"):  # CRC field cut short: the body ends at the last N2
        return raw[8 : 8 + 199]
    return raw[8:-4]


def same_float32(a: float, b: float) -> bool:
    """Expectations print 7 decimals; the wire carries a float32: compare as float32."""
    return abs(a - b) <= 1e-5 and struct.pack(">f", a) == struct.pack(">f", b)


def assert_record(rec: AvlRecord, expected: dict[str, Any]) -> None:
    assert rec.timestamp_ms == expected["timestamp_ms"]
    if "latitude" in expected:
        assert same_float32(rec.latitude, expected["latitude"])
        assert same_float32(rec.longitude, expected["longitude"])
    for ours, theirs in (("speed", "speed_kmh"), ("satellites", "satellites"),
                         ("altitude", "altitude")):
        if theirs in expected:
            assert getattr(rec, ours) == expected[theirs]
    if "angle" in expected:
        assert rec.angle == pytest.approx(expected["angle"], abs=0.001)
    if "io_count" in expected:
        assert len(rec.io) == expected["io_count"]
    if "io" in expected:
        assert io_json(rec.io) == expected["io"]


@pytest.mark.parametrize("vector_id", GH_VECTORS)
def test_real_frames(vector_id: str) -> None:
    v = vector(vector_id)
    records = decode_avl_body(body_of(vector_id), CODEC_7)
    derived = v["derived_expectations"]
    assert len(records) == derived["record_count"]
    first = derived["first_record"]
    assert_record(records[0], first)
    for rec, summary in zip(records, derived["records"], strict=True):
        assert_record(rec, summary)
        assert isinstance(rec, Gh3000Record)
        check_record_invariants(rec)
    rec = records[0]
    assert isinstance(rec, Gh3000Record)
    assert rec.priority == first["priority_bits"]
    assert rec.global_mask == first["global_mask"]
    assert rec.location_present is first["lat_lon_present"]
    assert rec.gps_mask == first.get("gps_mask", 0)
    for ours, theirs in (("lac", "lac"), ("cell_id", "cell_id"),
                         ("signal_quality", "gsm_signal_quality"), ("operator", "operator_code")):
        assert getattr(rec, ours) == first.get(theirs)


@pytest.mark.parametrize("vector_id", GH_VECTORS)
def test_real_bodies_reencode_byte_for_byte(vector_id: str) -> None:
    body = body_of(vector_id)
    assert encode_avl_body(CODEC_7, decode_avl_body(body, CODEC_7)) == body


@pytest.mark.parametrize("vector_id", ["traccar-gh3000-L111", "traccar-gh3000-L129"])
def test_tcp_frames_are_acked_like_codec_8(vector_id: str) -> None:
    v = vector(vector_id)
    conn = TcpConnection()
    events = conn.receive_data(IMEI_FRAME + frame(vector_id))
    avl = events[1]
    assert isinstance(avl, AvlFrame)
    assert avl.codec == CODEC_7
    assert conn.ack(len(avl.records)).hex() == v["expected_reply_hex"]
    records = to_records(IMEI, avl, received_at=1_700_000_000_000)
    assert {r.topic for r in records} == {"position"}
    check_traccar_invariants(records, 1_700_000_000_000)


def test_truncated_crc_frame_never_completes() -> None:
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    assert conn.receive_data(frame("traccar-gh3000-L126")) == []


def test_record_data_uses_the_gh_names() -> None:
    first = decode_avl_body(body_of("traccar-gh3000-L126"), CODEC_7)[0]
    data = avl_record_data(first)
    assert data["battery_level"] == 94
    assert data["usb_connected"] is False
    assert (data["hdop"], data["vdop"], data["pdop"]) == (10.2, 1.0, 10.3)
    assert data["uptime"] == 3300
    assert "gsm_signal" not in data  # id 21 is VDOP on GH devices, not the FMB GSM signal
    assert (data["lac"], data["cell_id"], data["signal_quality"], data["operator"]) == (
        1, 779, 22, 24602,
    )
    assert data["location_present"] is True
    assert data["valid"] is True
    assert data["angle"] == 25.3125
    records = decode_avl_body(body_of("traccar-gh3000-L111"), CODEC_7)
    no_gps = avl_record_data(records[0])
    assert no_gps["location_present"] is False
    assert no_gps["valid"] is False
    assert no_gps["movement"] is True
    assert "lac" not in no_gps
    tail = avl_record_data(records[3])
    assert tail["battery_voltage"] == 4.108
    assert tail["signal_quality"] == 26
    assert tail["location_present"] is False


def test_time_is_seconds_since_2007_with_priority_bits() -> None:
    rec = Gh3000Record(1_167_609_600_000 + 5_000, 3, 0.0, 0.0, 0, 0.0, 0, 0, 0,
                       global_mask=0, gps_mask=0)
    body = encode_avl_body(CODEC_7, [rec])
    assert body[2:6] == ((3 << 30) | 5).to_bytes(4, "big")
    assert decode_avl_body(body, CODEC_7) == (rec,)


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000])
def test_non_finite_coordinates_are_refused(bits: int) -> None:
    good = Gh3000Record(1_600_000_000_000, 0, 25.0, 54.0, 0, 0.0, 5, 0, 0,
                        global_mask=1, gps_mask=1)
    body = bytearray(encode_avl_body(CODEC_7, [good]))
    body[2 + 4 + 1 + 1 : 2 + 4 + 1 + 1 + 4] = bits.to_bytes(4, "big")
    with pytest.raises(ImpossibleValueError, match="not numbers"):
        decode_avl_body(bytes(body), CODEC_7)
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    (event,) = conn.receive_data(wrap_tcp(bytes(body)))
    assert isinstance(event, FrameRefused)
    assert event.codec == CODEC_7
    assert "not numbers" in event.reason
    assert not conn.closed


def test_shortest_float32() -> None:
    assert shortest_float32(struct.unpack(">f", struct.pack(">f", 44.7913055))[0]) == 44.791306
    assert shortest_float32(0.1) == 0.1
    assert shortest_float32(-0.0) == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp_ms": 1_167_609_600_001}, "whole seconds"),
        ({"timestamp_ms": 1_000}, "whole seconds"),
        ({"priority": 4}, "priority"),
        ({"event_io_id": 1}, "no event IO id"),
        ({"angle": 1.0}, "360/256"),
        ({"speed": 256}, "speed"),
        ({"altitude": -1}, "altitude"),
        ({"gps_mask": 0x20}, "needs lac"),
        ({"lac": 1, "cell_id": 2}, "need GPS mask bit 5"),
        ({"signal_quality": 3}, "needs GPS mask bit 6"),
        ({"gps_mask": 0x40}, "needs signal_quality"),
        ({"operator": 3}, "needs GPS mask bit 7"),
        ({"gps_mask": 0x80}, "needs an operator"),
        ({"global_mask": 0x0E, "gps_mask": 1}, "need the GPS element"),
        ({"global_mask": 1, "io": {1: 1}}, "global mask bit 1"),
        ({"io": {300: 1}}, "does not fit"),
        ({"io": {1: 2**32}}, "up to 4 bytes"),
        ({"io": {1: b"x"}}, "up to 4 bytes"),
        ({"latitude": float("nan")}, "finite"),
    ],
)
def test_encoder_refuses_what_codec_7_cannot_carry(change: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "timestamp_ms": 1_600_000_000_000, "priority": 0, "longitude": 25.0, "latitude": 54.0,
        "altitude": 100, "angle": 0.0, "satellites": 5, "speed": 10, "event_io_id": 0,
    } | change
    with pytest.raises(ValueError, match=message):
        encode_avl_body(CODEC_7, [Gh3000Record(**fields)])


def test_plain_avl_records_are_sent_with_default_masks() -> None:
    rec = AvlRecord(1_600_000_000_000, 1, 25.5, 54.25, 100, 0, 7, 50, 0, {1: 1, 67: 4000})
    (back,) = decode_avl_body(encode_avl_body(CODEC_7, [rec]), CODEC_7)
    assert isinstance(back, Gh3000Record)
    assert (back.latitude, back.longitude, back.io, back.global_mask, back.gps_mask) == (
        54.25, 25.5, {1: 1, 67: 4000}, 0x0F, 0x1F,
    )
    with pytest.raises(ValueError, match="16-byte"):
        encode_avl_body(CODEC_7, [rec], io16_group=True)


def test_structure_errors() -> None:
    body = encode_avl_body(CODEC_7, [Gh3000Record(1_600_000_000_000, 0, 1.0, 2.0, 3, 0.0, 4, 5, 0)])
    with pytest.raises(TeltonikaDecodeError, match="N1"):
        decode_avl_body(body[:-1] + b"\x02", CODEC_7)
    with pytest.raises(TeltonikaDecodeError, match="runs past N2"):
        decode_avl_body(body[:10] + body[-1:], CODEC_7)
    with pytest.raises(TeltonikaDecodeError, match="end at body byte"):
        decode_avl_body(body[:-1] + b"\x00" + body[-1:], CODEC_7)


@settings(max_examples=200, deadline=None)
@given(st.lists(gh3000_records(), max_size=5))
def test_body_round_trip(records: list[Gh3000Record]) -> None:
    body = encode_avl_body(CODEC_7, records)
    decoded = decode_avl_body(body, CODEC_7)
    assert decoded == tuple(records)
    assert [r.io_groups for r in decoded] == [r.io_groups for r in records]
    assert encode_avl_body(CODEC_7, decoded) == body
    for rec in decoded:
        check_record_invariants(rec)


@settings(max_examples=100, deadline=None)
@given(st.lists(gh3000_records(), min_size=1, max_size=4), st.integers(0, 255))
def test_round_trip_over_tcp_and_udp(records: list[Gh3000Record], avl_id: int) -> None:
    conn = TcpConnection()
    raw = encode_avl_frame(CODEC_7, records)
    (_, event) = conn.receive_data(IMEI_FRAME + raw)
    assert isinstance(event, AvlFrame)
    assert event.records == tuple(records)
    datagram = decode_udp_datagram(encode_udp_datagram(IMEI, CODEC_7, records,
                                                       avl_packet_id=avl_id))
    assert datagram.records == tuple(records)
    assert datagram.codec == CODEC_7
    check_traccar_invariants(to_records(IMEI, event, 1_700_000_000_000), 1_700_000_000_000)
