"""The Teltonika TCP listener over real loopback sockets: acks, refusals, closes, metrics."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.observability import metrics
from fleetgate.protocols.teltonika.crc import crc16_ibm
from fleetgate.protocols.teltonika.encoder import encode_imei
from tests.integration.stores import stored
from tests.integration.teltonika.helpers import GATED, GatedSink
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.integration

IMEI = "356307042441013"
TIMEOUT = 5.0


def reframe(body: bytes) -> bytes:
    """A TCP frame around ``body`` (codec .. N2) with a correct CRC."""
    return b"\x00\x00\x00\x00" + struct.pack(">I", len(body)) + body + struct.pack(">I", crc16_ibm(body))


def body_of(tcp_frame: bytes) -> bytes:
    return tcp_frame[8:-4]


def frames_counter(codec: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_teltonika_frames_total", {"codec": codec, "result": result}
    )
    return value or 0.0


async def start_server(tmp_path: Path, **overrides: Any) -> Server:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "api": {"enabled": False},
        "tesla_enabled": False,
        "teltonika": {"host": "127.0.0.1", "port": 0, "handshake_timeout_s": 0.5,
                      "idle_timeout_s": 2.0, "max_frame_bytes": 4096},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    server = Server(build_config(data, environ={}))
    await server.start()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start_server(tmp_path)
    yield server
    await server.stop()


def port_of(server: Server) -> int:
    listener = server.listener("teltonika")
    assert listener is not None
    return int(listener.health()["address"].rsplit(":", 1)[1])


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def handshake(server: Server, imei: str = IMEI) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect(server)
    writer.write(encode_imei(imei))
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
    return reader, writer


async def read_ack(reader: asyncio.StreamReader) -> int:
    return int.from_bytes(await asyncio.wait_for(reader.readexactly(4), TIMEOUT), "big")


async def assert_closed_without_reply(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""


async def assert_no_reply_yet(reader: asyncio.StreamReader, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


async def test_split_one_byte_at_a_time(server: Server) -> None:
    reader, writer = await connect(server)
    for byte in encode_imei(IMEI):
        writer.write(bytes([byte]))
        await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
    for byte in frame("doc-c8-tcp-example1"):
        writer.write(bytes([byte]))
        await writer.drain()
    assert await read_ack(reader) == 1
    writer.close()
    [record] = await stored(server.store, IMEI, 1)
    assert record["created_at"] == "2019-06-10T10:04:46.000Z"
    assert record["data"]["io"]["66"] == 24079


async def test_several_frames_in_one_read_are_acked_in_order(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        encode_imei(IMEI)
        + frame("doc-c8-tcp-example1")
        + frame("doc-c8-tcp-example2")
        + frame("doc-c8-tcp-example3-two-records")
    )
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
    assert [await read_ack(reader) for _ in range(3)] == [1, 1, 2]
    writer.close()
    assert server.store is not None
    assert len(await stored(server.store, IMEI, 4)) == 4


async def test_bad_crc_gets_no_ack_and_the_connection_stays_for_the_resend(server: Server) -> None:
    before = frames_counter("8", "crc_error")
    reader, writer = await handshake(server)
    good = frame("doc-c8-tcp-example1")
    writer.write(good[:-1] + bytes([good[-1] ^ 0xFF]))
    await assert_no_reply_yet(reader)
    writer.write(good)
    assert await read_ack(reader) == 1
    writer.close()
    assert frames_counter("8", "crc_error") == before + 1


async def test_n1_differs_from_n2_closes_without_ack(server: Server) -> None:
    reader, writer = await handshake(server)
    body = bytearray(body_of(frame("doc-c8-tcp-example1")))
    body[-1] = 2  # N2 says 2 records, N1 says 1
    writer.write(reframe(bytes(body)))
    await assert_closed_without_reply(reader)
    assert server.store is not None
    assert server.store.records(IMEI) == []


async def test_oversize_length_closes_at_once(server: Server) -> None:
    before = frames_counter("none", "protocol_error")
    reader, writer = await handshake(server)
    writer.write(b"\x00\x00\x00\x00" + struct.pack(">I", 1_000_000))  # over max_frame_bytes
    await assert_closed_without_reply(reader)
    assert frames_counter("none", "protocol_error") == before + 1


async def test_garbage_preamble_closes(server: Server) -> None:
    reader, writer = await handshake(server)
    writer.write(b"\x00\x00\xde\xad" + frame("doc-c8-tcp-example1")[4:])
    await assert_closed_without_reply(reader)


@pytest.mark.parametrize(
    ("vector", "records"),
    [("traccar-gh3000-L111", 4), ("traccar-gh3000-L129", 2),  # codec 7 (GH3000)
     ("traccar-c8-L158", 11), ("traccar-c8-L161", 11)],  # 16-byte IO groups, no model set
)
async def test_codec7_and_16_byte_group_frames_are_stored_and_acked(
    server: Server, vector: str, records: int
) -> None:
    reader, writer = await handshake(server)
    writer.write(frame(vector))
    assert await read_ack(reader) == records
    writer.close()
    rows = await stored(server.store, IMEI, records)
    assert len(rows) == records
    assert {item["topic"] for item in rows} == {"position"}


async def test_impossible_device_time_gets_no_ack_and_the_connection_stays(
    server: Server,
) -> None:
    impossible, broken = frames_counter("8", "impossible_value"), frames_counter("8", "protocol_error")
    reader, writer = await handshake(server)
    good = frame("doc-c8-tcp-example1")
    body = bytearray(body_of(good))
    body[2:10] = (2**63).to_bytes(8, "big")  # the record's timestamp
    writer.write(reframe(bytes(body)))
    await assert_no_reply_yet(reader)
    writer.write(good)
    assert await read_ack(reader) == 1
    writer.close()
    assert len(await stored(server.store, IMEI, 1)) == 1
    assert frames_counter("8", "impossible_value") == impossible + 1
    assert frames_counter("8", "protocol_error") == broken


async def test_io_names_follow_the_family_configured_for_the_imei(tmp_path: Path) -> None:
    # IO 1 is digital_input_1 in the common table, battery_level in the GH3000 one.
    server = await start_server(tmp_path, teltonika={"io_families": {IMEI: "GH3000"}})
    try:
        reader, writer = await handshake(server)
        writer.write(frame("doc-c8-tcp-example1"))
        assert await read_ack(reader) == 1
        writer.close()
        reader, writer = await handshake(server, "356307042441014")
        writer.write(frame("doc-c8-tcp-example1"))
        assert await read_ack(reader) == 1
        writer.close()
        [gh] = await stored(server.store, IMEI, 1)
        [fmb] = await stored(server.store, "356307042441014", 1)
    finally:
        await server.stop()
    assert gh["data"]["battery_level"] == 1 and "digital_input_1" not in gh["data"]
    assert fmb["data"]["digital_input_1"] is True and "battery_level" not in fmb["data"]
    assert gh["data"]["io"] == fmb["data"]["io"]


async def test_unknown_codec_closes_with_a_metric(server: Server) -> None:
    before = frames_counter("0x99", "protocol_error")
    reader, writer = await handshake(server)
    body = bytearray(body_of(frame("doc-c8-tcp-example1")))
    body[0] = 0x99
    writer.write(reframe(bytes(body)))
    await assert_closed_without_reply(reader)
    assert frames_counter("0x99", "protocol_error") == before + 1


async def test_silent_client_is_closed_after_the_handshake_timeout(server: Server) -> None:
    reader, _writer = await connect(server)
    await assert_closed_without_reply(reader)


@pytest.mark.parametrize("imei_frame", [b"\x00\x05abcde", b"\x00\x00", b"\x00\x40" + b"1" * 64])
async def test_malformed_imei_closes_with_no_reply(server: Server, imei_frame: bytes) -> None:
    reader, writer = await connect(server)
    writer.write(imei_frame + b"\x00" * 12)
    await assert_closed_without_reply(reader)


async def test_keepalive_gets_no_reply_and_the_session_continues(server: Server) -> None:
    reader, writer = await handshake(server)
    writer.write(b"\xff")
    await assert_no_reply_yet(reader)
    writer.write(frame("doc-c8e-tcp-example"))
    assert await read_ack(reader) == 1
    writer.close()


async def test_codec12_response_is_recorded_and_never_acked(server: Server) -> None:
    reader, writer = await handshake(server)
    writer.write(frame("doc-c12-getio-response"))
    await assert_no_reply_yet(reader)
    writer.write(frame("doc-c8-tcp-example1"))
    assert await read_ack(reader) == 1
    writer.close()
    rows = await stored(server.store, IMEI, 2)
    assert {item["topic"] for item in rows} == {"command_response", "position"}
    # doc-c8-tcp-example1 was triggered by IO 1: still a position, with the event in data.
    (position,) = [item for item in rows if item["topic"] == "position"]
    assert (position["data"]["event_io_id"], position["data"]["event_triggered"]) == (1, True)


async def test_allow_list_rejects_unknown_imei(tmp_path: Path) -> None:
    server = await start_server(tmp_path, teltonika={"allowed_imeis": ["111111111111111"]})
    try:
        reader, writer = await connect(server)
        writer.write(encode_imei(IMEI))
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x00"
        await assert_closed_without_reply(reader)
    finally:
        await server.stop()


async def test_ack_waits_until_the_required_sink_confirmed(tmp_path: Path) -> None:
    GatedSink.gate = asyncio.Event()
    server = await start_server(
        tmp_path,
        records={"position": [GATED]},
        reliable_ack_sources={"position": GATED},
    )
    try:
        reader, writer = await handshake(server)
        writer.write(frame("doc-c8-tcp-example1"))
        await assert_no_reply_yet(reader)
        GatedSink.gate.set()
        assert await read_ack(reader) == 1
        writer.close()
    finally:
        GatedSink.gate.set()
        await server.stop()


async def test_a_frame_not_confirmed_in_time_gets_no_ack_and_the_next_one_is_answered(
    tmp_path: Path,
) -> None:
    GatedSink.gate = asyncio.Event()
    server = await start_server(
        tmp_path,
        records={"position": [GATED]},
        reliable_ack_sources={"position": GATED},
        ack_timeout_s=0.3,
    )
    try:
        withheld = frames_counter("8", "not_acked")
        reader, writer = await handshake(server)
        writer.write(frame("doc-c8-tcp-example1"))
        async with asyncio.timeout(TIMEOUT):
            while frames_counter("8", "not_acked") == withheld:  # noqa: ASYNC110 - a metric
                await asyncio.sleep(0.01)
        writer.write(frame("doc-c8-tcp-example2"))  # the device resends, or sends the next
        await assert_no_reply_yet(reader, 0.1)  # nothing for the first frame, ever
        GatedSink.gate.set()
        assert await read_ack(reader) == 1
        writer.close()
    finally:
        GatedSink.gate.set()
        await server.stop()


async def test_open_connections_gauge_tracks_sessions(server: Server) -> None:
    def gauge() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "fleetgate_open_connections", {"protocol": "teltonika"}
        )
        return value or 0.0

    before = gauge()
    _reader, writer = await handshake(server)
    assert gauge() == before + 1
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if gauge() == before:
            break
        await asyncio.sleep(0.01)
    assert gauge() == before
