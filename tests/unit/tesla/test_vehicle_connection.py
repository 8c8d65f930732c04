"""The vehicle connection's writes: a batch of replies leaves in one transport write; what it
keeps per connection (frame queue, logger) behaves as websockets' own."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fleetgate.listeners.tesla.oversize import OversizeMessage, VehicleConnection, _FrameList


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

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


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


def test_the_frame_list_does_what_the_queue_asks_of_a_deque() -> None:
    """websockets' frame queue calls append, popleft, extendleft (put_back: the frames of a
    cancelled get, reversed) and len; the list answers each as the deque does."""
    frames = [Frame(Opcode.BINARY, bytes([n])) for n in range(5)]
    queue, reference = _FrameList(), collections.deque[Frame]()
    for kept in (queue, reference):
        kept.append(frames[0])
        kept.append(frames[1])
        assert kept.popleft() is frames[0]
        kept.extendleft(reversed(frames[2:4]))
        kept.append(frames[4])
    assert list(queue) == list(reference) == [frames[2], frames[3], frames[1], frames[4]]
    assert len(queue) == 4 and queue


async def test_a_connection_keeps_no_logger_of_its_own_and_logs_with_its_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Server:  # what connection_made uses of websockets' server
        def __init__(self) -> None:
            self.handler_tasks: set[asyncio.Task[None]] = set()

        async def handler(self, connection: VehicleConnection) -> None:
            pass

    base = logging.getLogger("fleetgate.tesla.websockets.test")
    server = Server()
    conn = VehicleConnection(ServerProtocol(state=OPEN, logger=base), server=server)  # type: ignore[arg-type]
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    await asyncio.gather(*server.handler_tasks)
    assert conn.protocol.logger is base  # no adapter kept per connection
    assert isinstance(conn.recv_messages.frames.queue, _FrameList)
    with caplog.at_level(logging.ERROR, logger=base.name):
        conn.logger.error("handler failed")
    (record,) = caplog.records
    assert record.websocket is conn  # type: ignore[attr-defined]  # as websockets' adapter


class NoHandlerServer:
    """What connection_made uses of websockets' server (a handler that does nothing)."""

    def __init__(self) -> None:
        self.handler_tasks: set[asyncio.Task[None]] = set()

    async def handler(self, connection: VehicleConnection) -> None:
        pass


class OpenTransport(FakeTransport):
    """What a connection's connection_made asks of a transport."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def client_frame(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame, as a vehicle sends it."""
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


async def test_ready_messages_are_what_recv_returns_in_the_same_order() -> None:
    # ready_message() takes a whole binary message without awaiting; anything else (text,
    # a fragmented message, nothing queued) is left to recv(). Either way the messages,
    # oversize ones included, come out in arrival order.
    def make() -> VehicleConnection:
        protocol = ServerProtocol(state=OPEN, max_size=100)
        conn = VehicleConnection(protocol, server=NoHandlerServer())  # type: ignore[arg-type]
        conn.connection_made(OpenTransport())  # type: ignore[arg-type]
        assert isinstance(conn.recv_messages.frames.queue, _FrameList)
        conn.request = Request("/", Headers())  # the handshake is done
        conn.data_received(
            client_frame(Opcode.BINARY, b"one")
            + client_frame(Opcode.BINARY, b"x" * 500)  # over the limit: skipped
            + client_frame(Opcode.BINARY, b"two")
            + client_frame(Opcode.TEXT, b"text")
            + client_frame(Opcode.BINARY, b"fr", fin=False)
            + client_frame(Opcode.CONT, b"ag")
            + client_frame(Opcode.BINARY, bytes(range(200, 250)))
        )
        return conn

    by_recv = make()
    expected = [by_recv.delivered(await by_recv.recv()) for _ in range(6)]
    assert expected == [b"one", OversizeMessage(500), b"two", "text", b"frag",
                        bytes(range(200, 250))]

    conn = make()
    got: list[object] = []
    missed = 0
    while len(got) < len(expected):
        message = conn.ready_message()
        if message is None:
            missed += 1
            message = conn.delivered(await conn.recv())
        got.append(message)
    assert got == expected
    assert missed == 2  # the text message and the fragmented one
    assert conn.ready_message() is None  # nothing queued
