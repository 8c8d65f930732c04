"""The sans-I/O TCP connection, socket-free: framing, states, refusals, acks."""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    FrameRefused,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.framing import wrap_tcp
from fleetgate.protocols.teltonika.model import CODEC_8, CODEC_8E, CODEC_16, AvlRecord
from tests.unit.teltonika.helpers import IMEI, IMEI_FRAME, frame, io16, select

AVL = (CODEC_8, CODEC_8E, CODEC_16)
GOOD_AVL = select(codecs=AVL, integrity_error=False)
BAD = select(codecs=(*AVL, 7, 12, 13, 14, 15), integrity_error=True)
DOC_C8 = frame("doc-c8-tcp-example1")


def feed(conn: TcpConnection, data: bytes, step: int | None = None) -> list[TcpEvent]:
    if step is None:
        return conn.receive_data(data)
    events: list[TcpEvent] = []
    for i in range(0, len(data), step):
        events.extend(conn.receive_data(data[i : i + step]))
    return events


@pytest.mark.parametrize("v", GOOD_AVL, ids=[v["id"] for v in GOOD_AVL])
def test_real_avl_frames_and_their_ack(v: dict[str, Any]) -> None:
    conn = TcpConnection(io16_group=io16(v))
    raw = bytes.fromhex(v["hex"])
    events = conn.receive_data(IMEI_FRAME + raw)
    assert events[0] == ImeiReceived(IMEI)
    (avl,) = events[1:]
    assert isinstance(avl, AvlFrame)
    assert avl.codec == v["codec"]
    assert avl.raw == raw
    assert len(avl.records) == v["derived_expectations"]["record_count"]
    assert conn.ack(len(avl.records)).hex() == v["expected_reply_hex"]
    assert conn.buffered == 0
    assert not conn.closed


@pytest.mark.parametrize("v", BAD, ids=[v["id"] for v in BAD])
def test_integrity_errors_are_refused(v: dict[str, Any]) -> None:
    """Bad CRC -> CrcMismatch (connection kept); bad length/structure -> violation or the
    frame never completes; never an AvlFrame, so never an ack."""
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    raw = bytes.fromhex(v["hex"])
    events = conn.receive_data(raw)
    assert not any(isinstance(e, AvlFrame | GprsFrame) for e in events)
    integrity = v["integrity"]
    if not integrity["length_consistent"]:
        if integrity["data_length_field"] < 3:
            assert isinstance(events[0], ProtocolViolation)
            assert conn.closed
        else:
            # Declares more bytes than ever arrive: waits (the session's idle timeout ends it).
            assert events == []
            assert conn.buffered == len(raw)
    elif not integrity.get("crc_valid", True):
        assert events == [CrcMismatch(raw[8], int.from_bytes(raw[-4:], "big"),
                                      events[0].computed, raw)]  # type: ignore[union-attr]
        assert not conn.closed
    else:
        (event,) = events
        assert isinstance(event, ProtocolViolation)
        assert event.codec == raw[8]
        assert conn.closed


def test_gh3000_codec7_is_an_avl_frame() -> None:
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    (event,) = conn.receive_data(frame("traccar-gh3000-L111"))
    assert isinstance(event, AvlFrame)
    assert event.codec == 7
    assert conn.ack(len(event.records)) == b"\x00\x00\x00\x04"


def test_one_byte_at_a_time_equals_one_read() -> None:
    stream = IMEI_FRAME + b"\xff" + DOC_C8 + frame("traccar-c8e-L39") + frame("doc-c12-getio-response")
    whole = feed(TcpConnection(), stream)
    split = feed(TcpConnection(), stream, step=1)
    assert split == whole
    assert [type(e) for e in whole] == [ImeiReceived, KeepAlive, AvlFrame, AvlFrame, GprsFrame]


def test_several_frames_in_one_read(established: TcpConnection) -> None:
    events = established.receive_data(DOC_C8 * 3)
    assert [type(e) for e in events] == [AvlFrame] * 3
    assert established.buffered == 0


def test_partial_frame_is_buffered(established: TcpConnection) -> None:
    assert established.receive_data(DOC_C8[:-5]) == []
    assert established.buffered == len(DOC_C8) - 5
    events = established.receive_data(DOC_C8[-5:] + DOC_C8[:3])
    assert [type(e) for e in events] == [AvlFrame]
    assert established.buffered == 3


def test_bad_crc_then_good_frame(established: TcpConnection) -> None:
    bad = DOC_C8[:-1] + bytes([DOC_C8[-1] ^ 0xFF])
    events = established.receive_data(bad + DOC_C8)
    assert isinstance(events[0], CrcMismatch)
    assert events[0].expected == int.from_bytes(bad[-4:], "big")
    assert events[0].computed == 0xC7CF
    assert events[0].codec == CODEC_8
    assert isinstance(events[1], AvlFrame)
    assert not established.closed


def test_n1_not_n2_closes(established: TcpConnection) -> None:
    body = DOC_C8[8:-5] + b"\x02"
    events = established.receive_data(wrap_tcp(body) + DOC_C8)
    (event,) = events
    assert isinstance(event, ProtocolViolation)
    assert "N1 (1) != N2 (2)" in event.reason
    assert event.codec == CODEC_8
    assert event.evidence.startswith("00000000")
    assert established.closed
    assert established.receive_data(DOC_C8) == []


def test_record_structure_error_closes(established: TcpConnection) -> None:
    body = DOC_C8[8:-5] + b"\x03\x01"  # an extra byte before N2
    (event,) = established.receive_data(wrap_tcp(body))
    assert isinstance(event, ProtocolViolation)
    assert "N2 is at byte" in event.reason


def test_oversize_length_is_refused_before_the_bytes_arrive() -> None:
    conn = TcpConnection(max_frame_bytes=1024)
    conn.receive_data(IMEI_FRAME)
    (event,) = conn.receive_data(b"\x00\x00\x00\x00\x00\x00\x04\x01")
    assert isinstance(event, ProtocolViolation)
    assert "data length 1025" in event.reason
    assert conn.closed
    assert conn.buffered == 0


def test_camera_chunk_fits_default_limit_only() -> None:
    camera = frame("traccar-c12-L180")  # 2079 bytes, bad CRC
    small = TcpConnection(max_frame_bytes=1280)
    small.receive_data(IMEI_FRAME)
    assert isinstance(small.receive_data(camera)[0], ProtocolViolation)
    default = TcpConnection()
    default.receive_data(IMEI_FRAME)
    assert isinstance(default.receive_data(camera)[0], CrcMismatch)


def test_too_short_length_is_refused(established: TcpConnection) -> None:
    (event,) = established.receive_data(bytes(8))
    assert isinstance(event, ProtocolViolation)
    assert "data length 0" in event.reason


def test_garbage_preamble_is_refused_at_its_first_bad_byte(established: TcpConnection) -> None:
    assert established.receive_data(b"\x00\x00") == []
    (event,) = established.receive_data(b"\x00\x01")
    assert isinstance(event, ProtocolViolation)
    assert "preamble" in event.reason
    assert established.closed


def test_unknown_codec(established: TcpConnection) -> None:
    raw = wrap_tcp(b"\x55\x01abc\x01")
    (event,) = established.receive_data(raw)
    assert isinstance(event, ProtocolViolation)
    assert event.codec == 0x55
    assert event.reason == "unknown codec 0x55"


def test_keepalive_then_imei() -> None:
    conn = TcpConnection()
    events = conn.receive_data(frame("traccar-framer-ping-then-imei"))
    assert events == [KeepAlive(), ImeiReceived(IMEI)]
    assert conn.imei == IMEI


def test_keepalive_mid_session(established: TcpConnection) -> None:
    events = established.receive_data(b"\xff" + DOC_C8 + b"\xff\xff")
    assert [type(e) for e in events] == [KeepAlive, AvlFrame, KeepAlive, KeepAlive]


def test_repeated_imei_frame_reidentifies(established: TcpConnection) -> None:
    other = "356307042441013"
    events = established.receive_data(DOC_C8 + encode_imei(other) + DOC_C8)
    assert [type(e) for e in events] == [AvlFrame, ImeiReceived, AvlFrame]
    assert events[1] == ImeiReceived(other)
    assert established.imei == other


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00" + b"1" * 15, "zero length"),
        (b"\x00\x0f" + b"12345678901234x", "not ASCII digits"),
        (b"\x00\x21" + b"1" * 33, "IMEI length 33"),
        (b"\x01\x00", "cannot start a frame"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x36", "before the IMEI handshake"),
    ],
)
def test_malformed_imei_frames(data: bytes, reason: str) -> None:
    conn = TcpConnection()
    (event,) = conn.receive_data(data)
    assert isinstance(event, ProtocolViolation)
    assert reason in event.reason
    assert conn.closed
    assert conn.imei is None
    assert conn.receive_data(IMEI_FRAME) == []


def test_imei_length_violation_needs_no_more_bytes() -> None:
    conn = TcpConnection()
    (event,) = conn.receive_data(b"\x00\x40")
    assert isinstance(event, ProtocolViolation)


def test_rejecting_the_imei_closes() -> None:
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    assert conn.accept_imei(False) == b"\x00"
    assert conn.closed
    assert conn.receive_data(DOC_C8) == []


def test_frames_pipelined_behind_the_imei_follow_it() -> None:
    conn = TcpConnection()
    events = conn.receive_data(IMEI_FRAME + DOC_C8 + DOC_C8[:10])
    assert [type(e) for e in events] == [ImeiReceived, AvlFrame]
    assert conn.buffered == 10
    assert conn.accept_imei(True) == b"\x01"
    assert [type(e) for e in conn.receive_data(DOC_C8[10:])] == [AvlFrame]


def test_gprs_frames_are_reported(established: TcpConnection) -> None:
    (event,) = established.receive_data(frame("doc-c12-getio-response"))
    assert isinstance(event, GprsFrame)
    assert event.messages[0].payload == b"DI1:1 DI2:0 DI3:0 AIN1:0 AIN2:16924 DO1:0 DO2:1"
    assert event.raw == frame("doc-c12-getio-response")


def test_gprs_quantity_mismatch_closes(established: TcpConnection) -> None:
    (event,) = established.receive_data(frame("traccar-hist-c12-n1-2-but-one-response"))
    assert isinstance(event, ProtocolViolation)
    assert event.codec == 12


def test_ack_bytes() -> None:
    conn = TcpConnection()
    assert conn.ack(1) == b"\x00\x00\x00\x01"
    assert conn.ack(255) == b"\x00\x00\x00\xff"
    assert conn.ack(0) == b"\x00\x00\x00\x00"
    with pytest.raises(ValueError, match="ack count"):
        conn.ack(-1)


def test_io16_group_is_detected_on_the_first_frame() -> None:
    raw = frame("traccar-c8-L158")
    for conn in (TcpConnection(), TcpConnection(io16_group=True)):
        conn.receive_data(IMEI_FRAME)
        (event,) = conn.receive_data(raw + DOC_C8)[:1]
        assert isinstance(event, AvlFrame)
        assert len(event.records) == 11
    # and a standard frame after it still decodes the standard way
    conn = TcpConnection()
    events = conn.receive_data(IMEI_FRAME + raw + DOC_C8 + frame("traccar-c8-L161"))
    assert [len(e.records) for e in events[1:]] == [11, 1, 11]  # type: ignore[union-attr]


@pytest.mark.parametrize("timestamp", [253_402_300_800_000, 2**63, 2**64 - 1])
def test_impossible_time_is_refused_and_the_connection_kept(
    established: TcpConnection, timestamp: int
) -> None:
    bad = encode_avl_frame(CODEC_8E, [AvlRecord(timestamp, 0, 0.0, 0.0, 0, 0, 0, 0, 0)])
    events = established.receive_data(bad + DOC_C8)
    assert isinstance(events[0], FrameRefused)
    assert events[0].codec == CODEC_8E
    assert events[0].raw == bad
    assert "9999-12-31" in events[0].reason
    assert isinstance(events[1], AvlFrame)
    assert not established.closed


def test_big_frame_byte_by_byte_keeps_buffer_bounded(established: TcpConnection) -> None:
    rec = AvlRecord(1, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {256: bytes(30_000)})
    raw = encode_avl_frame(CODEC_8E, [rec])
    for i in range(len(raw) - 1):
        assert established.receive_data(raw[i : i + 1]) == []
    assert established.buffered == len(raw) - 1
    (event,) = established.receive_data(raw[-1:])
    assert isinstance(event, AvlFrame)
    assert event.records == (rec,)
    assert established.buffered == 0
