"""Codecs 12-15: real responses and commands, strictness, round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.gprs import (
    decode_gprs_body,
    encode_command,
    encode_gprs_body,
    encode_gprs_frame,
    encode_response,
    pack_imei,
    unpack_imei,
)
from fleetgate.protocols.teltonika.model import CODEC_12, CODEC_13, CODEC_14, CODEC_15, GprsMessage
from fleetgate.records import format_rfc3339_ms
from tests.unit.teltonika.helpers import frame, select, vector
from tests.unit.teltonika.strategies import gprs_messages, imeis

GPRS = (CODEC_12, CODEC_13, CODEC_14, CODEC_15)
GOOD = select(codecs=GPRS, integrity_error=False)
COMMANDS = select(direction="server-to-device", codecs=GPRS)


def body(raw: bytes) -> bytes:
    return raw[8:-4]


# The codec 13 frame whose size covers an 8-byte millisecond time (spec 7.2): the derived
# expectations read it as 4-byte seconds (364 s, 1970) like Traccar; we read the layout
# whose time is plausible.
MS_LAYOUT = "traccar-c13-L63"


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_real_device_messages(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    (message,) = decode_gprs_body(body(raw), v["codec"])
    assert message.codec == v["codec"]
    expected = v["derived_expectations"]["first_record"]
    assert message.type == expected["type"]
    if v["id"] == MS_LAYOUT:
        assert message.payload == b"getinfo"
        assert message.timestamp_ms == 0x0000016C0A81C320
        assert message.timestamp_width == 8
    else:
        assert message.payload.hex() == expected["payload_hex"]
        if "timestamp_s" in expected:
            assert message.timestamp_ms == expected["timestamp_s"] * 1000
            assert message.timestamp_width == 4
        else:
            assert message.timestamp_ms is None
    stated = v["stated_expectations"]
    if "imei_digits" in expected:
        assert message.imei == expected["imei_digits"]
    elif "imei_field_hex" in stated:
        assert message.imei == stated["imei_field_hex"][1:]
    else:
        assert message.imei is None
    for key in ("response_text", "payload_text"):
        if key in stated:
            assert message.payload.decode() == stated[key]
    # every real message re-encodes to its own body
    assert encode_gprs_body([message]) == body(raw)


def test_codec13_millisecond_layout_is_2019_not_1970() -> None:
    (message,) = decode_gprs_body(body(frame(MS_LAYOUT)), CODEC_13)
    assert format_rfc3339_ms(message.timestamp_ms or 0) == "2019-07-19T13:52:52.000Z"


@pytest.mark.parametrize(
    ("prefix", "payload", "expected_ms", "width"),
    [
        # current layout: plausible seconds win even if the 8 bytes would also be a time
        (b"\x64\xe8\x32\x81", b"hello", 1_692_938_881_000, 4),
        # seconds before 2000, 8 bytes a 2019 time in ms: the older layout
        (b"\x00\x00\x01\x6c", b"\x0a\x81\xc3\x20ok", 1_563_544_372_000, 8),
        # seconds before 2000 and the 8 bytes no plausible time either: stays 4-byte
        (b"\x00\x00\x00\x05", b"\x00\x00\x00\x00ok", 5_000, 4),
        (b"\x00\x00\x10\x00", b"\x00\x00\x00\x00ok", 4096_000, 4),  # 8 bytes: year 2527
        # too short to hold 8 bytes: 4-byte
        (b"\x00\x00\x01\x6c", b"\x0a", 364_000, 4),
    ],
)
def test_codec13_layout_by_plausibility(
    prefix: bytes, payload: bytes, expected_ms: int, width: int
) -> None:
    data = prefix + payload
    raw = b"\x0d\x01\x06" + len(data).to_bytes(4, "big") + data + b"\x01"
    (message,) = decode_gprs_body(raw, CODEC_13)
    assert (message.timestamp_ms, message.timestamp_width) == (expected_ms, width)
    assert message.payload == data[width:]
    assert encode_gprs_body([message]) == raw


def test_codec15_is_never_read_with_the_millisecond_layout() -> None:
    msg = GprsMessage(CODEC_15, 0x0B, b"\x0a\x81\xc3\x20", 364_000, "123456789012345")
    raw = encode_gprs_body([msg])
    assert decode_gprs_body(raw, CODEC_15) == (msg,)


def test_codec13_driver_registration_text() -> None:
    (message,) = decode_gprs_body(body(frame("traccar-c13-L32")), CODEC_13)
    assert message.payload.decode().split("|")[4] == "12749884"


def test_codec14_nack_has_no_payload() -> None:
    (message,) = decode_gprs_body(body(frame("doc-c14-nack-response")), CODEC_14)
    assert (message.type, message.payload, message.imei) == (0x11, b"", "352093081452251")


@pytest.mark.parametrize("v", COMMANDS, ids=[v["id"] for v in COMMANDS])
def test_commands_are_encoded_byte_for_byte(v: dict[str, Any]) -> None:
    stated = v["stated_expectations"]
    if "traccar" in stated:
        data = stated["traccar"]["command"]["data"]
        crlf = "crlf" in v["id"]
        command: str | bytes = bytes.fromhex(data) if "hex" in v["id"] else data
        if crlf:
            command = command + (b"\r\n" if isinstance(command, bytes) else "\r\n")
        assert encode_command(command).hex() == v["hex"]
    elif v["codec"] == CODEC_14:
        assert encode_command(stated["command_text"], codec=CODEC_14,
                              imei=stated["imei"]).hex() == v["hex"]
    else:
        assert encode_command(stated["command_text"]).hex() == v["hex"]
    # and they decode back
    (message,) = decode_gprs_body(body(bytes.fromhex(v["hex"])), v["codec"])
    assert message.type == 0x05


def test_quantity_two_with_one_message_is_refused() -> None:
    v = vector("traccar-hist-c12-n1-2-but-one-response")
    with pytest.raises(TeltonikaDecodeError, match="message 2 of 2 does not fit"):
        decode_gprs_body(body(bytes.fromhex(v["hex"])), CODEC_12)


def test_codec13_size_smaller_than_the_bytes_present_is_refused() -> None:
    with pytest.raises(TeltonikaDecodeError, match="quantity 2 is at byte"):
        decode_gprs_body(body(frame("traccar-c13-L60")), CODEC_13)


@pytest.mark.parametrize(
    ("data", "codec", "message"),
    [
        (b"\x0c\x01\x01", CODEC_12, "does not fit"),
        (b"\x0c\x01\x06\x00\x00\x00\x01a\x02", CODEC_12, r"quantity 1 \(1\) != quantity 2"),
        (b"\x0d\x01\x06\x00\x00\x00\x02ab\x01", CODEC_13, "shorter than"),
        (b"\x0e\x01\x06\x00\x00\x00\x04abcd\x01", CODEC_14, "shorter than"),
        (b"\x0c\x01\x06\x00\x00\x00\x09a\x01", CODEC_12, "declares 9 bytes"),
        (b"\x08\x01\x01", 0x08, "not a GPRS codec"),
        (b"\x0c\x01\x01", CODEC_13, "expected 0x0d"),
        (b"\x0c\x01", CODEC_12, "at least 3"),
    ],
)
def test_malformed_bodies(data: bytes, codec: int, message: str) -> None:
    with pytest.raises(TeltonikaDecodeError, match=message):
        decode_gprs_body(data, codec)


def test_imei_nibbles() -> None:
    assert pack_imei("352093081452251").hex() == "0352093081452251"
    assert unpack_imei(bytes.fromhex("0352093081452251")) == "352093081452251"
    assert unpack_imei(bytes.fromhex("1352093081452251")) == "1352093081452251"
    with pytest.raises(ValueError, match="IMEI"):
        pack_imei("35209308145225x")


def test_encode_command_argument_checks() -> None:
    with pytest.raises(ValueError, match="need the target IMEI"):
        encode_command("getver", codec=CODEC_14)
    with pytest.raises(ValueError, match="no IMEI"):
        encode_command("getver", imei="352093081452251")
    with pytest.raises(ValueError, match="codec 12 or 14"):
        encode_command("getver", codec=CODEC_13)
    with pytest.raises(UnicodeEncodeError):
        encode_command("température")


def test_device_responses() -> None:
    assert encode_response("DI1:1 DI2:0 DI3:0 AIN1:0 AIN2:16924 DO1:0 DO2:1") == frame(
        "doc-c12-getio-response"
    )
    assert encode_response(b"", codec=CODEC_14, imei="352093081452251", nack=True) == frame(
        "doc-c14-nack-response"
    )
    v = vector("doc-c14-ack-response")
    (ack,) = decode_gprs_body(body(frame(v["id"])), CODEC_14)
    assert encode_response(ack.payload, codec=CODEC_14, imei=ack.imei) == frame(v["id"])
    with pytest.raises(ValueError, match="no IMEI"):
        encode_response("x", imei="1")
    with pytest.raises(ValueError, match="device IMEI"):
        encode_response("x", codec=CODEC_14)
    with pytest.raises(ValueError, match="no payload"):
        encode_response("x", codec=CODEC_14, imei="1", nack=True)
    with pytest.raises(ValueError, match="codec 12 or 14"):
        encode_response("x", codec=CODEC_13)


def test_encode_gprs_body_checks() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_gprs_body([])
    with pytest.raises(ValueError, match="timestamp"):
        encode_gprs_body([GprsMessage(CODEC_13, 6, b"x")])
    with pytest.raises(ValueError, match="whole u32 seconds"):
        encode_gprs_body([GprsMessage(CODEC_13, 6, b"x", 1_500)])
    with pytest.raises(ValueError, match="only codec 13"):
        encode_gprs_body([GprsMessage(CODEC_15, 6, b"x", 1_000, "1", 8)])
    with pytest.raises(ValueError, match="carry no timestamp"):
        encode_gprs_body([GprsMessage(CODEC_12, 6, b"x", 1_000)])
    with pytest.raises(ValueError, match="u64"):
        encode_gprs_body([GprsMessage(CODEC_13, 6, b"x", 2**64, None, 8)])
    with pytest.raises(ValueError, match="IMEI"):
        encode_gprs_body([GprsMessage(CODEC_15, 0x0B, b"x", 1000)])
    with pytest.raises(ValueError, match="same codec"):
        encode_gprs_body([GprsMessage(CODEC_12, 6, b""), GprsMessage(CODEC_14, 6, b"", imei="1")])
    with pytest.raises(ValueError, match="not a GPRS codec"):
        encode_gprs_body([GprsMessage(0x08, 6, b"")])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(GPRS).flatmap(lambda c: st.lists(gprs_messages(c), min_size=1, max_size=4))
)
def test_round_trip(messages: list[GprsMessage]) -> None:
    """Codecs 12, 13 (both timestamp layouts), 14 and 15: encode, decode, same messages."""
    raw = encode_gprs_frame(messages)
    assert decode_gprs_body(raw[8:-4], messages[0].codec) == tuple(messages)
    assert encode_gprs_frame(decode_gprs_body(raw[8:-4], messages[0].codec)) == raw


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([CODEC_12, CODEC_14]), imeis)
def test_command_and_response_round_trip(text: bytes, codec: int, imei: str) -> None:
    target = imei if codec == CODEC_14 else None
    (command,) = decode_gprs_body(encode_command(text, codec=codec, imei=target)[8:-4], codec)
    assert (command.type, command.payload, command.imei) == (0x05, text, target)
    (response,) = decode_gprs_body(encode_response(text, codec=codec, imei=target)[8:-4], codec)
    assert (response.type, response.payload, response.imei) == (0x06, text, target)
