"""The tracker simulator on loopback sockets, against a server side built from the
sans-I/O core: it answers commands like a device and resends unacked UDP datagrams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetgate.protocols.teltonika import (
    AvlFrame,
    GprsFrame,
    GprsMessage,
    ImeiReceived,
    TcpConnection,
    decode_udp_datagram,
    encode_command,
    encode_udp_ack,
)
from fleetgate.protocols.teltonika.model import CODEC_14
from fleetgate.sim.teltonika import SimulationSettings, run_simulation

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
FIRST_IMEI = 356307042441013


@dataclass
class CommandingServer:
    """Acks every AVL frame; after the first one sends the commands, collects answers."""

    commands: list[bytes]
    answers: asyncio.Queue[GprsMessage] = field(default_factory=asyncio.Queue)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = TcpConnection()
        sent = False
        while data := await reader.read(4096):
            for event in conn.receive_data(data):
                if isinstance(event, ImeiReceived):
                    writer.write(conn.accept_imei(True))
                elif isinstance(event, AvlFrame):
                    writer.write(conn.ack(len(event.records)))
                    if not sent:
                        for command in self.commands:
                            writer.write(command)
                        sent = True
                elif isinstance(event, GprsFrame):
                    for message in event.messages:
                        self.answers.put_nowait(message)
        writer.close()


@pytest.fixture
async def tcp_port() -> AsyncIterator[tuple[int, CommandingServer]]:
    handler = CommandingServer([
        encode_command("getinfo"),
        encode_command("getver", codec=CODEC_14, imei=str(FIRST_IMEI)),
        encode_command("getver", codec=CODEC_14, imei="111111111111111"),
    ])
    server = await asyncio.start_server(handler.handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], handler
    server.close()
    await server.wait_closed()


async def test_the_simulator_answers_commands_like_a_device(
    tcp_port: tuple[int, CommandingServer],
) -> None:
    port, handler = tcp_port
    settings = SimulationSettings(port=port, devices=1, rate=0, frames_per_device=3,
                                  duration_s=None, linger_s=0.5)
    result = await asyncio.wait_for(run_simulation(settings), TIMEOUT)
    assert result.ok, result.summary()
    assert result.commands_answered == 3
    answers = [handler.answers.get_nowait() for _ in range(3)]
    info, version, nack = answers
    assert (info.codec, info.type) == (12, 0x06)
    assert info.payload.startswith(b"INI:")
    assert (version.codec, version.type, version.imei) == (14, 0x06, str(FIRST_IMEI))
    assert version.payload.startswith(b"Ver:")
    assert (nack.codec, nack.type, nack.payload, nack.imei) == (14, 0x11, b"", str(FIRST_IMEI))


class LossyUdpServer(asyncio.DatagramProtocol):
    """Acks each datagram, but never the first copy of a datagram: an ack lost on the way."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: dict[bytes, int] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        datagram = decode_udp_datagram(data)
        copies = self.seen[data] = self.seen.get(data, 0) + 1
        if copies > 1 and self.transport is not None:
            ack = encode_udp_ack(datagram.packet_id, datagram.avl_packet_id,
                                 len(datagram.records))
            self.transport.sendto(ack, addr)


async def test_udp_trackers_resend_until_acked() -> None:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        LossyUdpServer, local_addr=("127.0.0.1", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        settings = SimulationSettings(
            port=port, devices=2, rate=0, frames_per_device=3, duration_s=None,
            transport="udp", codec="7", resend_after_s=0.1, records_per_frame=2,
        )
        result = await asyncio.wait_for(run_simulation(settings), TIMEOUT)
        assert result.ok, result.summary()
        assert result.records_acked == 2 * 3 * 2
        assert result.resends == 6  # every datagram once
        assert sorted(server.seen.values()) == [2] * 6
    finally:
        transport.close()


async def test_udp_tracker_gives_up_without_acks() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        settings = SimulationSettings(
            port=transport.get_extra_info("sockname")[1], devices=1, rate=0,
            frames_per_device=1, duration_s=None, transport="udp", resend_after_s=0.05,
            udp_resends=2,
        )
        result = await asyncio.wait_for(run_simulation(settings), TIMEOUT)
        assert not result.ok
        assert (result.resends, result.connection_errors, result.records_acked) == (2, 1, 0)
    finally:
        transport.close()
