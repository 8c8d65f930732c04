"""The simulated tracker's device side, socket-free: the frames it builds and its answers."""

from __future__ import annotations

import random

import pytest

from fleetgate.protocols.teltonika import decode_frame, encode_command
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.gprs import TYPE_NACK, TYPE_RESPONSE
from fleetgate.protocols.teltonika.model import CODEC_7, CODEC_12, CODEC_14, Gh3000Record
from fleetgate.protocols.teltonika.udp import decode_udp_datagram
from fleetgate.sim.teltonika import SimulationSettings, TrackerModel, answer_command
from tests.unit.teltonika.helpers import IMEI, IMEI_FRAME, frame

CASES = [("7", False), ("8", False), ("8E", False), ("16", False), ("8", True), ("8E", True),
         ("16", True)]


def model(codec: str = "8E", io16: bool = False, imei: str = IMEI) -> TrackerModel:
    settings = SimulationSettings(codec=codec, io16_group=io16, io_elements=10)
    return TrackerModel(imei, random.Random(7), settings)


@pytest.mark.parametrize(("codec", "io16"), CASES)
def test_frames_decode_to_what_the_tracker_sent(codec: str, io16: bool) -> None:
    tracker = model(codec, io16)
    records = [tracker.next_record() for _ in range(3)]
    conn = TcpConnection()  # no io16 option: the server detects the group
    (_, event) = conn.receive_data(IMEI_FRAME + tracker.encode_frame(records))
    assert isinstance(event, AvlFrame)
    assert event.records == tuple(records)
    datagram = decode_udp_datagram(tracker.encode_datagram(records, 0xBEEF, 7))
    assert datagram.records == tuple(records)
    assert (datagram.packet_id, datagram.avl_packet_id) == (0xBEEF, 7)
    if io16:
        assert all(rec.io_groups is not None and rec.io_groups[5] == 1 for rec in event.records)
    if codec == "7":
        assert event.codec == CODEC_7
        assert all(isinstance(rec, Gh3000Record) for rec in event.records)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="no 16-byte IO group"):
        SimulationSettings(codec="7", io16_group=True)
    with pytest.raises(ValueError, match="codec must be"):
        SimulationSettings(codec="9")
    with pytest.raises(ValueError, match="transport"):
        SimulationSettings(transport="sctp")


def response_text(reply: bytes | None, codec: int = CODEC_12) -> str:
    assert reply is not None
    decoded = decode_frame(reply)
    assert decoded.crc_ok
    (message,) = decoded.messages
    assert (message.codec, message.type) == (codec, TYPE_RESPONSE)
    return message.payload.decode("ascii")


def test_getinfo_and_getver_over_codec_12() -> None:
    tracker = model()
    assert response_text(answer_command(encode_command("getinfo"), tracker)).startswith("INI:")
    version = response_text(answer_command(encode_command("getver"), tracker))
    assert version.startswith("Ver:03.27.07_00 ")
    assert f"IMEI:{IMEI}" in version
    assert response_text(answer_command(encode_command("getio"), tracker)).startswith("DI1:")
    assert "Sat:" in response_text(answer_command(encode_command("getgps"), tracker))
    assert "GPRS: 1" in response_text(answer_command(encode_command("getstatus"), tracker))
    assert response_text(answer_command(encode_command("frobnicate 1"), tracker)) == (
        "Unknown command: frobnicate 1"
    )


def test_codec_14_checks_the_imei() -> None:
    tracker = model(imei="352093081452251")
    ack = answer_command(encode_command("getver", codec=CODEC_14, imei="352093081452251"),
                         tracker)
    assert response_text(ack, CODEC_14).startswith("Ver:")
    assert decode_frame(ack or b"").messages[0].imei == "352093081452251"
    nack = answer_command(encode_command("getver", codec=CODEC_14, imei="352093081452252"),
                          tracker)
    assert nack == frame("doc-c14-nack-response")  # Teltonika's own nACK for this device
    assert decode_frame(nack).messages[0].type == TYPE_NACK


@pytest.mark.parametrize(
    "data",
    [
        frame("doc-c8-tcp-example1"),  # not a command
        frame("doc-c12-getio-response"),  # a response, not a command
        encode_command("getinfo")[:-1] + b"\x00",  # bad CRC
        b"\x00\x00\x00\x00\x00\x00\x00\x01",  # garbage
    ],
)
def test_anything_else_gets_no_answer(data: bytes) -> None:
    assert answer_command(data, model()) is None
