"""Hostile bytes: every decoder raises only its documented error, the connection never
raises, and whatever does decode becomes Records that hold the invariants."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika import (
    AvlFrame,
    GprsFrame,
    TcpConnection,
    TeltonikaDecodeError,
    decode_frame,
    decode_udp_datagram,
    frame_to_json,
    to_records,
)
from fleetgate.protocols.teltonika.avl import decode_avl_body
from fleetgate.protocols.teltonika.framing import wrap_tcp
from fleetgate.protocols.teltonika.gprs import decode_gprs_body
from fleetgate.protocols.teltonika.io_names import IO_TABLES
from tests.unit.teltonika.helpers import (
    IMEI_FRAME,
    all_vectors,
    check_record_invariants,
    check_traccar_invariants,
)

RECEIVED_AT = 1_800_000_000_000
REAL = [bytes.fromhex(v["hex"]) for v in all_vectors() if v["direction"] == "device-to-server"]


@st.composite
def mutated(draw: Any) -> bytes:
    """A real frame with a few bytes changed, inserted or cut: near-valid input."""
    data = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


hostile = st.one_of(mutated(), st.binary(max_size=300))


def _records_hold(frame: AvlFrame | GprsFrame) -> None:
    if isinstance(frame, AvlFrame):
        for rec in frame.records:
            if -90 <= rec.latitude <= 90 and -180 <= rec.longitude <= 180:
                check_record_invariants(rec)
    for table in IO_TABLES.values():
        records = to_records("1", frame, RECEIVED_AT, table)
        for record in records:
            # coordinates may be out of range in hostile input: then never a valid fix
            if record.topic == "position" and not (
                -90 <= record.data["latitude"] <= 90 and -180 <= record.data["longitude"] <= 180
            ):
                assert record.data["valid"] is False
                continue
            check_traccar_invariants([record], RECEIVED_AT)


@settings(max_examples=600, deadline=None)
@given(hostile)
def test_decode_frame_raises_only_its_error(data: bytes) -> None:
    try:
        decoded = decode_frame(data)
    except TeltonikaDecodeError:
        return
    frame_to_json(decoded)
    if decoded.kind == "avl":
        _records_hold(AvlFrame(decoded.codec or 0, decoded.records, data))
    elif decoded.kind == "gprs":
        _records_hold(GprsFrame(decoded.messages, data))


@settings(max_examples=600, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=4), st.booleans())
def test_the_connection_never_raises(chunks: list[bytes], logged_in: bool) -> None:
    conn = TcpConnection()
    if logged_in:
        conn.receive_data(IMEI_FRAME)
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            if isinstance(event, AvlFrame | GprsFrame):
                _records_hold(event)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=3, max_size=300), st.sampled_from([7, 8, 0x8E, 16, 12, 13, 14, 15]))
def test_bodies_raise_only_the_decode_error(body: bytes, codec: int) -> None:
    body = bytes((codec,)) + body[1:]
    decode = decode_avl_body if codec in (7, 8, 0x8E, 16) else decode_gprs_body
    with contextlib.suppress(TeltonikaDecodeError):
        decode(body, codec)
    # the same body inside a valid envelope, through the server's path
    conn = TcpConnection()
    conn.receive_data(IMEI_FRAME)
    conn.receive_data(wrap_tcp(body))


@settings(max_examples=400, deadline=None)
@given(hostile)
def test_udp_raises_only_its_error(data: bytes) -> None:
    try:
        datagram = decode_udp_datagram(data)
    except TeltonikaDecodeError:
        return
    _records_hold(AvlFrame(datagram.codec, datagram.records, data))
