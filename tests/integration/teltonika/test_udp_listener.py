"""Teltonika over UDP on loopback: acks echo the packet ids, refusals get nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.observability import metrics
from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.teltonika.model import CODEC_7, CODEC_8, CODEC_8E, AvlRecord
from fleetgate.protocols.teltonika.udp import encode_udp_datagram
from tests.integration.stores import stored
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.integration

TIMEOUT = 5.0


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


async def start(tmp_path: Path, **teltonika: Any) -> Server:
    server = Server(
        build_config(
            {
                "data_dir": str(tmp_path),
                "api": {"enabled": False},
                "tesla_enabled": False,
                "teltonika": {"host": "127.0.0.1", "port": 0, **teltonika},
            },
            environ={},
        )
    )
    await server.start()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start(tmp_path)
    yield server
    await server.stop()


async def exchange(server: Server, datagram: bytes, wait: float = TIMEOUT) -> bytes | None:
    listener = server.listener("teltonika-udp")
    assert listener is not None
    port = listener.port  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", port)
    )
    try:
        transport.sendto(datagram)
        try:
            return await asyncio.wait_for(client.replies.get(), wait)
        except TimeoutError:
            return None
    finally:
        transport.close()


def refused() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_teltonika_frames_total", {"codec": "udp", "result": "protocol_error"}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("vector", "ack", "imei"),
    [
        ("doc-c8-udp-example", "0005cafe010501", "352093086403655"),
        ("doc-c8e-udp-example", "0005cafe010701", "352093086403655"),
        ("doc-c16-udp-example", "0005cafe010101", "352094085231592"),
    ],
)
async def test_datagram_is_stored_then_acked_with_its_packet_ids(
    server: Server, vector: str, ack: str, imei: str
) -> None:
    reply = await exchange(server, frame(vector))
    assert reply is not None
    assert reply.hex() == ack
    assert len(await stored(server.store, imei, 1)) == 1


async def test_codec7_and_16_byte_group_datagrams_are_stored_and_acked(server: Server) -> None:
    gh = encode_udp_datagram(
        "352093086403600", CODEC_7,
        decode_frame(frame("traccar-gh3000-L129")).records, packet_id=0xBEEF, avl_packet_id=9,
    )
    reply = await exchange(server, gh)
    assert reply is not None
    assert reply.hex() == "0005beef010902"
    io16 = encode_udp_datagram(
        "352093086403601", CODEC_8, decode_frame(frame("traccar-c8-L161")).records,
        avl_packet_id=3, io16_group=True,
    )
    reply = await exchange(server, io16)
    assert reply is not None
    assert reply.hex() == "0005cafe01030b"
    assert len(await stored(server.store, "352093086403600", 2)) == 2
    assert len(await stored(server.store, "352093086403601", 11)) == 11


async def test_impossible_device_time_is_dropped_without_ack(server: Server) -> None:
    before = refused()
    record = AvlRecord(2**63, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    datagram = encode_udp_datagram("352093086403602", CODEC_8E, [record])
    assert await exchange(server, datagram, wait=0.5) is None
    assert refused() == before + 1


async def test_length_mismatch_is_dropped_without_ack(server: Server) -> None:
    before = refused()
    datagram = frame("doc-c8-udp-example")
    assert await exchange(server, datagram + b"\x00", wait=0.5) is None
    assert refused() == before + 1


async def test_codec_byte_erratum_is_dropped_without_ack(server: Server) -> None:
    assert await exchange(server, frame("doc-udp-old-example-codec-byte-mismatch"), wait=0.5) is None


async def test_device_outside_the_allow_list_gets_no_ack(tmp_path: Path) -> None:
    server = await start(tmp_path, allowed_imeis=["111111111111111"])
    try:
        assert await exchange(server, frame("doc-c8-udp-example"), wait=0.5) is None
        assert server.store is not None
        assert server.store.records("352093086403655") == []
    finally:
        await server.stop()


async def test_udp_can_be_switched_off(tmp_path: Path) -> None:
    server = await start(tmp_path, udp_enabled=False)
    try:
        assert server.listener("teltonika-udp") is None
        assert server.listener("teltonika") is not None
    finally:
        await server.stop()
