"""The vehicle connection's writes: a batch of replies leaves in one transport write."""

from __future__ import annotations

import asyncio

from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fleetgate.listeners.tesla.oversize import VehicleConnection


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def connection() -> tuple[VehicleConnection, FakeTransport]:
    protocol = ServerProtocol(state=OPEN)  # the handshake is done
    conn = VehicleConnection(protocol, server=None)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    return conn, transport


def server_frame(data: bytes) -> bytes:
    return Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])


async def test_a_batch_of_frames_is_one_write_with_the_same_bytes() -> None:
    conn, transport = connection()
    for reply in (b"ack-1", b"ack-2", b"ack-3"):
        conn.protocol.send_binary(reply)
    conn.send_data()
    assert transport.writes == [
        server_frame(b"ack-1") + server_frame(b"ack-2") + server_frame(b"ack-3")
    ]
    conn.protocol.send_binary(b"alone")
    conn.send_data()
    conn.send_data()  # nothing to send: no write
    assert transport.writes[1:] == [server_frame(b"alone")]
    assert not transport.closed


async def test_closing_still_ends_the_tls_connection() -> None:
    conn, transport = connection()
    conn.protocol.send_binary(b"last")
    conn.protocol.fail(1011)  # the server gives up: close frame, then end of stream
    conn.send_data()
    assert transport.writes[0] == server_frame(b"last")
    assert transport.closed  # TLS cannot half-close: the transport is closed
    await asyncio.sleep(0)
