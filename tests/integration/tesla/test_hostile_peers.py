"""The Tesla listener against hostile or broken peers, over real TLS on loopback.

TLS: plaintext, TLS below 1.2 and (in test_listener.py) unknown CAs never reach HTTP.
Deadlines: a slow TLS handshake and a slow WebSocket upgrade are both cut at
``tesla.handshake_timeout_s`` from the connect. Caps: total and per address, refused
before the TLS handshake. Ids: a certificate whose CN is not a valid device id is refused.
Stop: a frame in flight is acked before the normal close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fleetgate.app import Server
from fleetgate.observability import metrics
from fleetgate.pki import DevPki, client_ssl_context, issue_client_cert, write_cert, write_key
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK
from tests.integration.tesla.helpers import (
    TIMEOUT,
    VIN,
    GatedSink,
    connect_vehicle,
    handshake_refused,
    receive,
    start_server,
    stream_frame,
    tesla,
    url,
    vehicle_context,
)

pytestmark = pytest.mark.integration


def refused(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_connections_refused_total", {"protocol": "tesla", "reason": reason}
    )
    return value or 0.0


async def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - metrics and counts have no event
            await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """Everything the server sent before it closed, or None if it kept the socket open."""
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                received += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return received


# -- TLS ---------------------------------------------------------------------------------
async def test_plaintext_http_never_reaches_http(server: Server) -> None:
    before = refused("tls_handshake_failed")
    reader, writer = await asyncio.open_connection("127.0.0.1", tesla(server).port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await closed_by_server(reader, TIMEOUT)
    assert answer is not None, "plaintext connection left open"
    assert b"HTTP/" not in answer  # at most a TLS alert, never an HTTP response
    await wait_for(lambda: refused("tls_handshake_failed") == before + 1)
    writer.close()


def tls11_client(pki: DevPki) -> ssl.SSLContext:
    cert, key = pki.vehicles[VIN]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client speak TLS 1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def client_speaks_tls11(pki: DevPki) -> bool:
    """The same client against a server that allows TLS 1.1: proves the client can."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_context.minimum_version = ssl.TLSVersion.TLSv1_1

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    permissive = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = permissive.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls11_client(pki), server_hostname="localhost"
        )
    except (ssl.SSLError, OSError):
        return False
    else:
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return bool(version == "TLSv1.1")
    finally:
        permissive.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused_and_1_2_is_served(server: Server, pki: DevPki) -> None:
    if not await client_speaks_tls11(pki):
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all")
    assert await handshake_refused(url(server), tls11_client(pki))

    tls12 = vehicle_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    async with await connect(url(server), ssl=tls12, open_timeout=TIMEOUT) as ws:
        assert ws.transport.get_extra_info("ssl_object").version() == "TLSv1.2"
        await ws.send(stream_frame(txid="tls12"))
        assert (await receive(ws)).message_type == MESSAGE_STREAM_ACK


# -- deadlines ---------------------------------------------------------------------------
async def test_slow_tls_handshakes_are_cut_at_the_deadline(tmp_path: Path, pki: DevPki) -> None:
    server = await start_server(tmp_path, pki, tesla={"handshake_timeout_s": 1.0})
    before = refused("handshake_timeout")
    port = tesla(server).port
    try:

        async def trickle() -> float | None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            # The start of a ClientHello, one byte per 0.25 s: each byte is "activity".
            hello = bytes.fromhex("16030100f4010000f00303") + bytes(200)
            try:
                for byte in hello:
                    writer.write(bytes([byte]))
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.25) == b"":
                            return time.monotonic() - started
            except ConnectionError:
                return time.monotonic() - started
            finally:
                writer.close()
            return None

        closed_after = await asyncio.gather(*(trickle() for _ in range(50)))
        assert None not in closed_after
        assert max(t for t in closed_after if t is not None) < 1.0 + TIMEOUT
        await wait_for(lambda: refused("handshake_timeout") == before + 50)
        # An honest vehicle connects at once meanwhile and after.
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame())
            assert (await receive(ws)).message_type == MESSAGE_STREAM_ACK
    finally:
        await server.stop()


async def test_a_slow_websocket_upgrade_is_cut_at_the_same_deadline(
    tmp_path: Path, pki: DevPki
) -> None:
    server = await start_server(tmp_path, pki, tesla={"handshake_timeout_s": 1.0})
    before = refused("handshake_timeout")
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tesla(server).port, ssl=vehicle_context(pki), server_hostname="localhost"
        )
        started = time.monotonic()
        request = (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )
        closed = False
        for byte in request:  # TLS done; the HTTP upgrade trickles in
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed = True
                    break
        assert closed, "the upgrade was never cut"
        assert time.monotonic() - started < len(request) * 0.1
        await wait_for(lambda: refused("handshake_timeout") == before + 1)
        writer.close()
    finally:
        await server.stop()


# -- caps --------------------------------------------------------------------------------
async def connect_from(server: Server, pki: DevPki, source: str) -> Any:
    return await connect(
        url(server),
        ssl=vehicle_context(pki),
        open_timeout=TIMEOUT,
        ping_interval=None,
        compression=None,
        local_addr=(source, 0),
    )


async def test_per_ip_cap_is_checked_before_tls(
    tmp_path: Path, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path, pki, tesla={"max_connections_per_ip": 1})
    before = refused("max_connections_per_ip")
    tls_refusals_before = metrics.REGISTRY.get_sample_value(
        "fleetgate_connections_refused_total",
        {"protocol": "tesla", "reason": "tls_handshake_failed"},
    )
    try:
        first = await connect_from(server, pki, "127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="fleetgate.listeners"):
            reader, writer = await asyncio.open_connection("127.0.0.1", tesla(server).port)
            # Closed before the server said a TLS byte.
            assert await closed_by_server(reader, TIMEOUT) == b""
            writer.close()
        assert refused("max_connections_per_ip") == before + 1
        assert any(
            r.getMessage() == "tesla connection refused: max_connections_per_ip"
            and r.fields["peer"].startswith("127.0.0.1:")  # type: ignore[attr-defined]
            for r in caplog.records
        )
        # Not a TLS failure: no handshake was started.
        assert (
            metrics.REGISTRY.get_sample_value(
                "fleetgate_connections_refused_total",
                {"protocol": "tesla", "reason": "tls_handshake_failed"},
            )
            == tls_refusals_before
        )
        # Another address is served; the first vehicle still is.
        async with await connect_from(server, pki, "127.0.0.2") as other:
            await other.send(stream_frame(txid="other"))
            assert (await receive(other)).message_type == MESSAGE_STREAM_ACK
        await first.send(stream_frame(txid="first"))
        assert (await receive(first)).message_type == MESSAGE_STREAM_ACK
        await first.close()
        # Its slot is free again once it is gone.
        await wait_for(lambda: tesla(server)._door.limiter.total == 0)  # type: ignore[union-attr]
        async with await connect_from(server, pki, "127.0.0.1") as again:
            await again.send(stream_frame(txid="again"))
            assert (await receive(again)).message_type == MESSAGE_STREAM_ACK
    finally:
        await server.stop()


async def test_total_cap(tmp_path: Path, pki: DevPki) -> None:
    server = await start_server(tmp_path, pki, tesla={"max_connections": 2})
    before = refused("max_connections")
    try:
        held = [await connect_from(server, pki, f"127.0.0.{i}") for i in (1, 2)]
        assert await handshake_refused(url(server), vehicle_context(pki))
        assert refused("max_connections") == before + 1
        for ws in held:
            await ws.close()
    finally:
        await server.stop()


# -- identity ------------------------------------------------------------------------------
async def test_a_certificate_whose_id_is_not_a_device_id_is_refused(
    tmp_path: Path, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    cert, key = issue_client_cert(ca, ca_key, "a/../b")  # type: ignore[arg-type]
    write_cert(tmp_path / "odd.crt", cert)
    write_key(tmp_path / "odd.key", key)
    server = await start_server(tmp_path, pki)
    try:
        context = client_ssl_context(tmp_path / "odd.crt", tmp_path / "odd.key", pki.ca_cert)
        with caplog.at_level(logging.WARNING, logger="fleetgate.tesla"):
            ws = await connect(url(server), ssl=context, open_timeout=TIMEOUT)
            with contextlib.suppress(ConnectionClosed):  # the server may close first
                await ws.send(stream_frame(sender="vehicle_device.a/../b"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1008
        [line] = [r for r in caplog.records if r.getMessage() == "extract_sender_id_err"]
        assert "is not a valid device id" in line.fields["error"]  # type: ignore[attr-defined]
        assert server.store is not None
        assert [d.id for d in server.store.devices()] == []
    finally:
        await server.stop()


# -- stop ----------------------------------------------------------------------------------
async def test_a_frame_in_flight_at_stop_is_acked_before_a_normal_close(
    tmp_path: Path, pki: DevPki
) -> None:
    GatedSink.gate = asyncio.Event()
    GatedSink.received = 0
    server = await start_server(
        tmp_path,
        pki,
        records={"V": ["test-tesla-gated"]},
        reliable_ack_sources={"V": "test-tesla-gated"},
        tesla={"shutdown_timeout_s": 10},
    )
    port = tesla(server).port
    ws = await connect_vehicle(server, pki)
    await ws.send(stream_frame(txid="in-flight"))
    await wait_for(lambda: GatedSink.received >= 1)
    stopping = asyncio.create_task(server.stop())

    # Stops accepting at once, while the vehicle waits for its ack.
    async def refuses() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        writer.close()
        return False

    async with asyncio.timeout(TIMEOUT):
        while not await refuses():  # noqa: ASYNC110 - polls a port
            await asyncio.sleep(0.01)
    assert not stopping.done()
    GatedSink.gate.set()
    ack = await receive(ws)
    assert ack.message_type == MESSAGE_STREAM_ACK
    assert ack.txid == b"in-flight"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001  # going away: a normal close, not a reset
    await asyncio.wait_for(stopping, 30)
