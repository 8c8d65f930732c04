"""The documented library surface: decode_frame and frame_to_json."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import fleetgate.protocols.teltonika as teltonika
from fleetgate.protocols.teltonika import (
    DecodedFrame,
    TeltonikaDecodeError,
    decode_frame,
    frame_to_json,
)
from tests.unit.teltonika.helpers import all_vectors, frame, io16

TCP_DEVICE = [
    v for v in all_vectors() if v["transport"] == "tcp" and v["direction"] == "device-to-server"
]


@pytest.mark.parametrize("v", TCP_DEVICE, ids=[v["id"] for v in TCP_DEVICE])
def test_every_tcp_vector(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    integrity = v.get("integrity") or {}
    if v["id"] == "traccar-framer-ping-then-imei":
        with pytest.raises(TeltonikaDecodeError, match="keep-alive"):
            decode_frame(raw)
        return
    structural = integrity and (
        not integrity.get("length_consistent", True)
        or not integrity.get("records_fill_body", True)
        or not integrity.get("records_fit_declared_count", True)
    )
    if structural:
        with pytest.raises(TeltonikaDecodeError):
            decode_frame(raw, io16_group=io16(v))
        return
    decoded = decode_frame(raw, io16_group=io16(v))
    reply = v["expected_reply_hex"]
    assert (decoded.reply.hex() if decoded.reply is not None else None) == reply
    if v["codec"] is not None:
        assert decoded.codec == v["codec"]
        assert decoded.crc_ok is integrity["crc_valid"]
    js = frame_to_json(decoded)
    orjson.dumps(js)
    assert js["reply"] == reply


def test_avl_json() -> None:
    js = frame_to_json(decode_frame(frame("doc-c8-tcp-example1")))
    assert js["kind"] == "avl"
    assert js["codec"] == "8"
    assert js["codec_id"] == 8
    assert js["crc"] == {"ok": True, "stored": "c7cf", "computed": "c7cf"}
    assert js["record_count"] == 1
    rec = js["records"][0]
    assert rec["time"] == "2019-06-10T10:04:46.000Z"
    assert rec["io"] == {"21": 3, "1": 1, "66": 24079, "241": 24602, "78": 0}
    assert rec["external_voltage"] == 24.079
    assert js["reply"] == "00000001"


def test_bad_crc_is_reported_not_raised() -> None:
    decoded = decode_frame(frame("traccar-c16-L78"))
    assert decoded.crc_ok is False
    assert decoded.reply is None
    assert len(decoded.records) == 2
    assert frame_to_json(decoded)["crc"] == {"ok": False, "stored": "09a5", "computed": "a6de"}


def test_gprs_json() -> None:
    js = frame_to_json(decode_frame(frame("doc-c13-example")))
    assert js["kind"] == "gprs"
    assert js["messages"] == [{
        "codec": "13", "type": 6, "kind": "message", "text": "hello lets test\r\n",
        "imei": None, "time": "2023-08-25T04:48:01.000Z",
    }]
    assert js["reply"] is None


def test_imei_and_keepalive() -> None:
    assert frame_to_json(decode_frame(frame("doc-imei-handshake"))) == {
        "kind": "imei", "length": 17, "imei": "356307042441013", "reply": "01",
    }
    decoded = decode_frame(b"\xff")
    assert (decoded.kind, decoded.codec_name, decoded.crc_ok, decoded.reply) == (
        "keepalive", None, None, None,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (bytes(5), "header alone is 8"),
        (b"\x00", "at least 2"),
        (bytes(10), "data length 0"),
        (b"\x00\x0f123", "length field says 15"),
        (b"\xff\xff", "keep-alive"),
        (b"\x07\x00", "cannot start a frame"),
        (b"\x00\x00\x00\x01" + bytes(12), "preamble"),
        (bytes(16), "data length 0"),
        (frame("traccar-c8-L138"), "implies 178"),
        (frame("doc-c8-tcp-example1") + b"\x00", "implies"),
        (teltonika.framing.wrap_tcp(b"\x55\x01\x01"), "unknown codec 0x55"),
        (b"\x00\x03ab1", "not ASCII digits"),
    ],
)
def test_refusals(data: bytes, message: str) -> None:
    with pytest.raises(TeltonikaDecodeError, match=message):
        decode_frame(data)


def test_impossible_time_raises_its_own_error() -> None:
    from fleetgate.protocols.teltonika import AvlRecord, ImpossibleValueError, encode_avl_frame

    raw = encode_avl_frame(0x08, [AvlRecord(2**63, 0, 0.0, 0.0, 0, 0, 0, 0, 0)])
    with pytest.raises(ImpossibleValueError, match="past 9999"):
        decode_frame(raw)


@pytest.mark.parametrize("v", TCP_DEVICE, ids=[v["id"] for v in TCP_DEVICE])
def test_library_and_connection_agree(v: dict[str, Any]) -> None:
    """decode_frame and TcpConnection share one framing and decoding path."""
    raw = bytes.fromhex(v["hex"])
    conn = teltonika.TcpConnection()
    if v["codec"] is not None:
        conn.receive_data(b"\x00\x0f" + b"1" * 15)
    events = conn.receive_data(raw)
    try:
        decoded = decode_frame(raw)
    except TeltonikaDecodeError:
        assert not any(isinstance(e, teltonika.AvlFrame | teltonika.GprsFrame) for e in events)
        return
    if decoded.kind == "avl" and decoded.crc_ok:
        (event,) = events
        assert isinstance(event, teltonika.AvlFrame)
        assert event.records == decoded.records
    elif decoded.kind == "gprs" and decoded.crc_ok:
        (event,) = events
        assert isinstance(event, teltonika.GprsFrame)
        assert event.messages == decoded.messages
    elif decoded.crc_ok is False:
        assert isinstance(events[0], teltonika.CrcMismatch)


def test_surface_is_exported() -> None:
    for name in teltonika.__all__:
        assert hasattr(teltonika, name), name
    assert isinstance(decode_frame(b"\xff"), DecodedFrame)
    assert teltonika.TeltonikaDecodeError.__mro__[1] is ValueError
