"""Every device frame in shared/testdata, through the server's own path, against its
expected reply and the Traccar-style record invariants (time window, coordinates in
range, JSON-safe values)."""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame, GprsFrame, ImeiReceived
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.teltonika.udp import decode_udp_datagram, encode_udp_ack
from fleetgate.records import Record
from tests.unit.teltonika.helpers import (
    IMEI_FRAME,
    all_vectors,
    check_record_invariants,
    check_traccar_invariants,
)

RECEIVED_AT = 1_800_000_000_000  # 2027: after every vector's device time
DEVICE = [v for v in all_vectors() if v["direction"] == "device-to-server"]
LOGIN = {"imei-handshake", "keepalive-0xff", "stream-framing"}


def _through_tcp(v: dict[str, Any]) -> tuple[str | None, list[Record]]:
    conn = TcpConnection()
    if not LOGIN & set(v["tags"]):
        conn.receive_data(IMEI_FRAME)
    reply: str | None = None
    records: list[Record] = []
    for event in conn.receive_data(bytes.fromhex(v["hex"])):
        if isinstance(event, ImeiReceived):
            reply = conn.accept_imei(True).hex()
        elif isinstance(event, AvlFrame):
            reply = conn.ack(len(event.records)).hex()
            for rec in event.records:
                check_record_invariants(rec)
            records += to_records("356307042441013", event, RECEIVED_AT)
        elif isinstance(event, GprsFrame):
            records += to_records("356307042441013", event, RECEIVED_AT)
    return reply, records


def _through_udp(v: dict[str, Any]) -> tuple[str | None, list[Record]]:
    try:
        datagram = decode_udp_datagram(bytes.fromhex(v["hex"]))
    except TeltonikaDecodeError:
        return None, []
    for rec in datagram.records:
        check_record_invariants(rec)
    frame = AvlFrame(datagram.codec, datagram.records, datagram.raw)
    ack = encode_udp_ack(datagram.packet_id, datagram.avl_packet_id, len(datagram.records))
    return ack.hex(), to_records(datagram.imei, frame, RECEIVED_AT)


@pytest.mark.parametrize("v", DEVICE, ids=[v["id"] for v in DEVICE])
def test_every_device_frame(v: dict[str, Any]) -> None:
    reply, records = _through_tcp(v) if v["transport"] == "tcp" else _through_udp(v)
    assert reply == v["expected_reply_hex"]
    check_traccar_invariants(records, RECEIVED_AT)
    if "integrity-error" in v["tags"]:
        assert records == []
    derived = v.get("derived_expectations") or {}
    if derived and "integrity-error" not in v["tags"]:
        assert len(records) == derived["record_count"]
        topic = "position" if v["codec"] in (7, 8, 0x8E, 16) else "command_response"
        assert {r.topic for r in records} == {topic}


def test_the_vectors_cover_every_codec() -> None:
    decoded = {v["codec"] for v in DEVICE if "integrity-error" not in v["tags"]}
    assert decoded >= {7, 8, 0x8E, 16, 12, 13, 14, 15}
