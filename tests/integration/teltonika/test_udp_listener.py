"""Teltonika over UDP on loopback: acks echo the packet ids, refusals get nothing, a resend
is acked again but stored once, the device authority and IO families apply."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.app import Server
from fleetgate.observability import metrics
from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.teltonika.model import CODEC_7, CODEC_8, CODEC_8E, AvlRecord
from fleetgate.protocols.teltonika.udp import decode_udp_datagram, encode_udp_datagram
from tests.integration.stores import stored
from tests.integration.teltonika.helpers import GATED, GatedSink, start
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
DOC_IMEI = "352093086403655"  # the IMEI of doc-c8-udp-example


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start(tmp_path)
    yield server
    await server.stop()


class Tracker:
    """One device's UDP socket: send datagrams, read the server's replies."""

    def __init__(self, transport: asyncio.DatagramTransport, client: Client) -> None:
        self.transport = transport
        self.client = client

    def send(self, datagram: bytes) -> None:
        self.transport.sendto(datagram)

    async def reply(self, wait: float = TIMEOUT) -> bytes | None:
        try:
            return await asyncio.wait_for(self.client.replies.get(), wait)
        except TimeoutError:
            return None


async def tracker(server: Server) -> Tracker:
    listener = server.listener("teltonika-udp")
    assert listener is not None
    port = listener.port  # type: ignore[attr-defined]
    transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", port)
    )
    return Tracker(transport, client)


async def exchange(server: Server, datagram: bytes, wait: float = TIMEOUT) -> bytes | None:
    device = await tracker(server)
    try:
        device.send(datagram)
        return await device.reply(wait)
    finally:
        device.transport.close()


def counted(result: str, codec: str = "udp") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_teltonika_frames_total", {"codec": codec, "result": result}
    )
    return value or 0.0


def refused() -> float:
    return counted("protocol_error")


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
    """The core's refusal is counted as what it is, not as a broken protocol."""
    before, impossible = refused(), counted("impossible_value")
    record = AvlRecord(2**63, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    datagram = encode_udp_datagram("352093086403602", CODEC_8E, [record])
    assert await exchange(server, datagram, wait=0.5) is None
    assert counted("impossible_value") == impossible + 1
    assert refused() == before


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


# -- resends ---------------------------------------------------------------------------------
async def test_a_resend_after_a_lost_ack_is_acked_again_and_stored_once(server: Server) -> None:
    duplicates = counted("duplicate", "udp:8")
    device = await tracker(server)
    try:
        device.send(frame("doc-c8-udp-example"))
        assert (await device.reply()) == bytes.fromhex("0005cafe010501")
        # The ack was lost on its way: the tracker sends the very same datagram again.
        device.send(frame("doc-c8-udp-example"))
        assert (await device.reply()) == bytes.fromhex("0005cafe010501")
        # A new datagram (the next AVL packet id) is stored; the store keeps the pipeline's
        # order, so once it is there the resend would be there too, had it been stored.
        [record] = decode_udp_datagram(frame("doc-c8-udp-example")).records
        nxt = encode_udp_datagram(
            DOC_IMEI, CODEC_8, [dataclasses.replace(record, speed=42)], avl_packet_id=6
        )
        device.send(nxt)
        assert (await device.reply()) == bytes.fromhex("0005cafe010601")
    finally:
        device.transport.close()
    async with asyncio.timeout(TIMEOUT):
        while not any(  # noqa: ASYNC110 - the store has no event
            row["data"]["speed"] == 42 for row in await stored(server.store, DOC_IMEI, 1)
        ):
            await asyncio.sleep(0.01)
    rows = await stored(server.store, DOC_IMEI, 1)
    assert sorted(row["data"]["speed"] for row in rows) == [0, 42]
    assert counted("duplicate", "udp:8") == duplicates + 1


async def test_same_packet_id_with_other_records_is_not_a_duplicate(server: Server) -> None:
    """The AVL packet id wraps at 256: only the same records make a resend."""
    records = decode_udp_datagram(frame("doc-c8-udp-example")).records
    first = encode_udp_datagram(DOC_IMEI, CODEC_8, records, avl_packet_id=9)
    moved = [dataclasses.replace(records[0], speed=42)]
    other = encode_udp_datagram(DOC_IMEI, CODEC_8, moved, avl_packet_id=9)
    assert await exchange(server, first) is not None
    assert await exchange(server, other) is not None
    rows = await stored(server.store, DOC_IMEI, 2)
    assert sorted(row["data"]["speed"] for row in rows) == [0, 42]


async def test_a_resend_while_the_first_copy_is_not_safe_yet_is_dropped(tmp_path: Path) -> None:
    GatedSink.gate = asyncio.Event()
    server = await start(
        tmp_path,
        top={"records": {"position": [GATED]},
             "ack_policy": {"teltonika": [GATED]}},
    )
    in_flight = counted("duplicate_in_flight", "udp:8")
    device = await tracker(server)
    try:
        device.send(frame("doc-c8-udp-example"))
        assert await device.reply(0.3) is None  # the sink has not confirmed
        device.send(frame("doc-c8-udp-example"))  # the tracker gave up waiting and resends
        assert await device.reply(0.3) is None
        GatedSink.gate.set()
        # One ack: the first copy's. The resend was dropped, never queued for a second one.
        assert (await device.reply()) == bytes.fromhex("0005cafe010501")
        assert await device.reply(0.3) is None
        assert counted("duplicate_in_flight", "udp:8") == in_flight + 1
    finally:
        GatedSink.gate.set()
        device.transport.close()
        await server.stop()


async def test_a_first_copy_that_was_never_acked_lets_its_resend_through(tmp_path: Path) -> None:
    GatedSink.gate = asyncio.Event()
    server = await start(
        tmp_path,
        top={"records": {"position": [GATED]},
             "ack_policy": {"teltonika": [GATED]}, "ack_timeout_s": 0.3},
    )
    not_acked = counted("not_acked", "udp:8")
    device = await tracker(server)
    try:
        device.send(frame("doc-c8-udp-example"))
        assert await device.reply(1.0) is None
        async with asyncio.timeout(TIMEOUT):
            while counted("not_acked", "udp:8") == not_acked:  # noqa: ASYNC110 - a metric
                await asyncio.sleep(0.01)
        GatedSink.gate.set()
        device.send(frame("doc-c8-udp-example"))
        assert (await device.reply()) == bytes.fromhex("0005cafe010501")
    finally:
        GatedSink.gate.set()
        device.transport.close()
        await server.stop()


# -- device authority and IO names ----------------------------------------------------------
async def test_lax_authority_acks_a_device_that_is_not_on_the_list(tmp_path: Path) -> None:
    server = await start(
        tmp_path, allowed_imeis=["111111111111111"], strict_device_auth=False
    )
    try:
        assert await exchange(server, frame("doc-c8-udp-example")) is not None
        assert len(await stored(server.store, DOC_IMEI, 1)) == 1
    finally:
        await server.stop()


async def test_device_on_the_list_is_acked_and_others_are_counted(tmp_path: Path) -> None:
    server = await start(tmp_path, allowed_imeis=[DOC_IMEI])
    rejected = counted("rejected")
    try:
        assert await exchange(server, frame("doc-c8-udp-example")) is not None
        other = encode_udp_datagram(
            "352093086403699", CODEC_8, decode_udp_datagram(frame("doc-c8-udp-example")).records
        )
        assert await exchange(server, other, wait=0.5) is None
        assert counted("rejected") == rejected + 1
    finally:
        await server.stop()


async def test_io_names_follow_the_family_configured_for_the_imei_prefix(
    tmp_path: Path,
) -> None:
    # IO 1 is digital_input_1 in the FMB table and battery_level in the GH table.
    server = await start(tmp_path, io_families={"35209308640": "gh", "352093086403656": "fmb"})
    try:
        records = decode_udp_datagram(frame("doc-c8-udp-example")).records
        assert await exchange(server, frame("doc-c8-udp-example")) is not None
        other = encode_udp_datagram("352093086403656", CODEC_8, records)
        assert await exchange(server, other) is not None
        [gh] = await stored(server.store, DOC_IMEI, 1)
        [fmb] = await stored(server.store, "352093086403656", 1)
    finally:
        await server.stop()
    assert gh["data"]["battery_level"] == 1 and "digital_input_1" not in gh["data"]
    assert fmb["data"]["digital_input_1"] is True and "battery_level" not in fmb["data"]
    assert gh["data"]["io"] == fmb["data"]["io"] == {"21": 3, "1": 1, "66": 23996}
