"""Teltonika TCP under hostile peers, over real loopback sockets: deadlines and caps.

Slowloris: bytes trickling in must not keep a connection open past its deadline, while
honest trackers keep being acked. Caps: past ``max_connections`` or
``max_connections_per_ip`` a connection is closed at once and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.listeners.limits import ConnectionLimiter, default_max_connections
from fleetgate.observability import metrics
from fleetgate.protocols.teltonika.encoder import encode_imei
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.integration

GOOD_IMEI = 356307042441013
TIMEOUT = 5.0
SLOW_CLIENTS = 500


def refused(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_connections_refused_total", {"protocol": "teltonika", "reason": reason}
    )
    return value or 0.0


async def start_server(tmp_path: Path, **teltonika: Any) -> Server:
    settings = {"host": "127.0.0.1", "port": 0, "udp_enabled": False, **teltonika}
    config = build_config(
        {
            "data_dir": str(tmp_path),
            "api": {"enabled": False},
            "tesla_enabled": False,
            "ack_level": "receipt",
            "teltonika": settings,
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    return server


@pytest.fixture
async def slow_server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start_server(tmp_path, handshake_timeout_s=2.0, idle_timeout_s=2.0)
    yield server
    await server.stop()


def port_of(server: Server) -> int:
    listener = server.listener("teltonika")
    assert listener is not None
    return int(listener.health()["address"].rsplit(":", 1)[1])


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server ends the connection (FIN or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def trickle(port: int, payload: bytes, interval_s: float, give_up_s: float) -> float | None:
    """Send ``payload`` one byte per ``interval_s`` (forever, cycling); the seconds until
    the server closed the connection, or None if it never did within ``give_up_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    eof = asyncio.ensure_future(reader.read())
    try:
        index = 0
        while time.monotonic() - started < give_up_s:
            try:
                writer.write(payload[index % len(payload) : index % len(payload) + 1])
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started
            index += 1
            done, _ = await asyncio.wait({eof}, timeout=interval_s)
            if done:
                return time.monotonic() - started
        return None
    finally:
        eof.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def honest_tracker(port: int, imei: int, stop: asyncio.Event) -> int:
    """Handshake, then frames until ``stop``; every frame must be acked. Acks received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_imei(str(imei)))
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
        acks = 0
        while not stop.is_set():
            writer.write(frame("doc-c8-tcp-example1"))
            ack = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
            assert int.from_bytes(ack, "big") == 1
            acks += 1
            await asyncio.sleep(0.2)  # well inside idle_timeout_s
        return acks
    finally:
        writer.close()


async def test_500_slow_connections_are_closed_by_the_handshake_deadline(
    slow_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    port = port_of(slow_server)
    before = refused("handshake_timeout")
    stop = asyncio.Event()
    trackers = [asyncio.create_task(honest_tracker(port, GOOD_IMEI + i, stop)) for i in range(5)]
    # One byte per second of an IMEI frame and then of a data frame: each byte would have
    # restarted an idle timer; the deadline (2 s) ignores them.
    payload = encode_imei("356307042441099") + frame("doc-c8-tcp-example1")
    with caplog.at_level(logging.WARNING, logger="fleetgate.listeners"):
        closed_after = await asyncio.gather(
            *(trickle(port, payload, 1.0, give_up_s=15.0) for _ in range(SLOW_CLIENTS))
        )
    stop.set()
    acks = await asyncio.gather(*trackers)

    assert None not in closed_after, f"{closed_after.count(None)} slow connections stayed open"
    assert max(t for t in closed_after if t is not None) < 15.0
    assert refused("handshake_timeout") == before + SLOW_CLIENTS
    # The honest trackers were acked the whole time (one frame per ~0.2 s for >= 2 s).
    assert all(count >= 5 for count in acks), acks
    # Each close was logged with the peer, but 500 closes are not 500 lines.
    lines = [r for r in caplog.records if "handshake_timeout" in r.getMessage()]
    assert 1 <= len(lines) <= 10
    assert all(r.fields["peer"].startswith("127.0.0.1:") for r in lines)  # type: ignore[attr-defined]
    listener = slow_server.listener("teltonika")
    assert listener is not None
    async with asyncio.timeout(TIMEOUT):
        while listener.health()["connections"]:  # noqa: ASYNC110 - a socket count
            await asyncio.sleep(0.01)


async def test_a_frame_trickled_after_the_handshake_is_cut_at_the_idle_deadline(
    slow_server: Server,
) -> None:
    port = port_of(slow_server)
    before = refused("frame_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_imei(str(GOOD_IMEI)))
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
    data = frame("doc-c8-tcp-example1")
    started = time.monotonic()
    closed = False
    for byte in data:  # ~ 0.15 s per byte: never silent, never finishing in 2 s
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(reader.read(1), 0.15) == b"":
                closed = True
                break
    assert closed, "a frame trickled over more than idle_timeout_s was never cut"
    assert time.monotonic() - started < len(data) * 0.15
    assert refused("frame_timeout") == before + 1
    writer.close()


async def test_a_silent_tracker_is_closed_at_the_idle_deadline(slow_server: Server) -> None:
    before = refused("idle_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(slow_server))
    writer.write(encode_imei(str(GOOD_IMEI)) + frame("doc-c8-tcp-example1"))
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"\x01\x00\x00\x00\x01"
    assert await closed_by_server(reader, 2.0 + TIMEOUT)
    assert refused("idle_timeout") == before + 1
    writer.close()


async def open_from(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_per_ip_cap_refuses_the_extra_connection_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path, max_connections_per_ip=2)
    port = port_of(server)
    before = refused("max_connections_per_ip")
    try:
        first = await open_from(port, "127.0.0.1")
        second = await open_from(port, "127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="fleetgate.listeners"):
            third = await open_from(port, "127.0.0.1")
            assert await closed_by_server(third[0], TIMEOUT)
        assert refused("max_connections_per_ip") == before + 1
        [line] = [r for r in caplog.records if r.getMessage().startswith("teltonika connection")]
        assert line.getMessage() == "teltonika connection refused: max_connections_per_ip"
        assert line.fields["peer"].startswith("127.0.0.1:")  # type: ignore[attr-defined]
        # Another address is not limited by 127.0.0.1's count.
        other = await open_from(port, "127.0.0.2")
        other[1].write(encode_imei(str(GOOD_IMEI)))
        assert await asyncio.wait_for(other[0].readexactly(1), TIMEOUT) == b"\x01"
        # Honest use still works on the capped address, and a closed one frees its slot.
        first[1].write(encode_imei(str(GOOD_IMEI + 1)))
        assert await asyncio.wait_for(first[0].readexactly(1), TIMEOUT) == b"\x01"
        second[1].close()
        await second[1].wait_closed()
        listener = server.listener("teltonika")
        assert listener is not None
        async with asyncio.timeout(TIMEOUT):
            while listener.health()["connections"] != 2:  # noqa: ASYNC110 - a socket count
                await asyncio.sleep(0.01)
        fourth = await open_from(port, "127.0.0.1")
        fourth[1].write(encode_imei(str(GOOD_IMEI + 2)))
        assert await asyncio.wait_for(fourth[0].readexactly(1), TIMEOUT) == b"\x01"
        for _, writer in (first, other, fourth):
            writer.close()
    finally:
        await server.stop()


async def test_total_cap_refuses_past_max_connections(tmp_path: Path) -> None:
    server = await start_server(tmp_path, max_connections=3)
    port = port_of(server)
    before = refused("max_connections")
    try:
        held = [await open_from(port, f"127.0.0.{i}") for i in (1, 2, 3)]
        extra = await open_from(port, "127.0.0.4")
        assert await closed_by_server(extra[0], TIMEOUT)
        assert refused("max_connections") == before + 1
        for reader, writer in held:
            writer.write(encode_imei(str(GOOD_IMEI)))
            assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
            writer.close()
    finally:
        await server.stop()


def test_limiter_counts_per_address_and_in_total() -> None:
    limiter = ConnectionLimiter("test", max_total=3, max_per_ip=2)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == "max_connections_per_ip"
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == "max_connections"
    limiter.release("a")
    assert limiter.connections_from("a") == 1
    assert limiter.acquire("c") is None
    assert limiter.total == 3


def test_default_total_is_sized_from_the_open_files_limit() -> None:
    import resource

    total = default_max_connections()
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert total == max(64, (soft - 256) // 2)
    assert ConnectionLimiter("test").max_total == total


async def test_2000_junk_datagrams_do_not_make_2000_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path, udp_enabled=True)
    listener = server.listener("teltonika-udp")
    assert listener is not None

    def junk_refused() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "fleetgate_teltonika_frames_total", {"codec": "udp", "result": "protocol_error"}
        )
        return value or 0.0

    def suppressed() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "fleetgate_log_lines_suppressed_total", {"key": "teltonika.udp.refused"}
        )
        return value or 0.0

    before, suppressed_before = junk_refused(), suppressed()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol,
        remote_addr=("127.0.0.1", listener.port),  # type: ignore[attr-defined]
    )
    try:
        with caplog.at_level(logging.WARNING, logger="fleetgate.teltonika"):
            for index in range(2000):
                transport.sendto(b"\x00\x10junk" + index.to_bytes(4, "big"))
                if index % 20 == 19:
                    # Let the server read. Bursts of 100 could fill the socket's receive
                    # buffer (~2 KiB of kernel memory per small datagram against ~208 KiB)
                    # and the kernel dropped some on a loaded machine: the count never came.
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(TIMEOUT):
                while junk_refused() < before + 2000:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.01)
        lines = [r for r in caplog.records if r.getMessage() == "udp datagram refused; no ack"]
        # Every datagram counted; only the first ten (with their evidence) logged.
        assert len(lines) == 10
        assert all(r.fields["peer"].startswith("127.0.0.1:") for r in lines)  # type: ignore[attr-defined]
        assert suppressed() == suppressed_before + 1990
    finally:
        transport.close()
        await server.stop()
