"""Helpers for the Tesla listener tests: start a server, connect a vehicle, build frames."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.listeners.tesla.listener import TeslaListener
from fleetgate.pki import DevPki, client_ssl_context
from fleetgate.protocols.tesla.envelope import Envelope, build_stream_envelope, parse_envelope
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.records import Record
from fleetgate.sinks.base import Sink
from fleetgate.sinks.registry import register_sink

VIN = "device-1"
OTHER_VIN = "5YJ3E1EA7KF000002"
TIMEOUT = 5.0


def tls_section(pki: DevPki) -> dict[str, str]:
    return pki.config_snippet()["tls"]


async def start_server(tmp_path: Path, pki: DevPki | None, **overrides: Any) -> Server:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "api": {"enabled": False},
        "teltonika": {"enabled": False},
        "host": "127.0.0.1",
        "port": 0,
        "namespace": "tesla_telemetry",
        "records": {"V": ["logger"], "connectivity": ["logger"]},
    }
    if pki is not None:
        data["tls"] = tls_section(pki)
    data.update(overrides)
    server = Server(build_config(data, environ={}))
    await server.start()
    return server


def tesla(server: Server) -> TeslaListener:
    listener = server.listener("tesla")
    assert isinstance(listener, TeslaListener)
    return listener


def url(server: Server, path: str = "/") -> str:
    return f"wss://127.0.0.1:{tesla(server).port}{path}"


def vehicle_context(pki: DevPki, vin: str = VIN) -> ssl.SSLContext:
    cert, key = pki.vehicles[vin]
    return client_ssl_context(cert, key, pki.ca_cert)


async def connect_vehicle(
    server: Server, pki: DevPki, vin: str = VIN, headers: Mapping[str, str] | None = None
) -> ClientConnection:
    return await connect(
        url(server),
        ssl=vehicle_context(pki, vin),
        additional_headers=dict(headers or {"X-Network-Interface": "wifi", "Version": "1.0.0"}),
        compression=None,
        max_size=2**22,
        ping_interval=None,
        open_timeout=TIMEOUT,
    )


def vehicle_payload(name: str = "My Test Vehicle") -> bytes:
    payload = vd.Payload()
    datum = payload.data.add()
    datum.key = vd.VehicleName
    datum.value.string_value = name
    datum = payload.data.add()
    datum.key = vd.Location
    datum.value.string_value = "(37.412374 S, 122.145867 E)"
    created = Timestamp()
    created.FromSeconds(1_700_000_000)
    payload.created_at.CopyFrom(created)
    return payload.SerializeToString()


def stream_frame(
    txid: str = "integration-test-txid",
    topic: str = "V",
    sender: str = f"vehicle_device.{VIN}",
    payload: bytes | None = None,
) -> bytes:
    return build_stream_envelope(
        txid=txid.encode(),
        topic=topic.encode(),
        payload=vehicle_payload() if payload is None else payload,
        sender_id=sender.encode(),
        device_type=b"vehicle_device",
        device_id=sender.rsplit(".", 1)[-1].encode(),
        created_at=1,
        delivered_at_epoch_ms=1_700_000_000_000,
        message_id=b"integration-test-message-id",
    )


async def receive(ws: ClientConnection, timeout: float = TIMEOUT) -> Envelope:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, bytes)
    return parse_envelope(message)


async def no_message(ws: ClientConnection, wait: float = 0.5) -> bool:
    """True when nothing arrives within ``wait`` seconds (the socket stays quiet)."""
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False


async def eventually(predicate: Any, timeout: float = TIMEOUT) -> None:
    # Polls: the conditions (store rows, metric values) have no event to wait on.
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def handshake_refused(target: str, context: ssl.SSLContext) -> bool:
    """True if the server refuses the TLS client: no WebSocket round trip is possible."""
    try:
        async with await connect(target, ssl=context, open_timeout=TIMEOUT) as ws:
            # With TLS 1.3 the server's refusal shows up on the first read after the handshake.
            await ws.send(stream_frame(txid="refused?"))
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except (ssl.SSLError, ConnectionError, OSError, ConnectionClosed, InvalidHandshake):
        return True
    return False


class GatedSink(Sink):
    """Confirms a batch only when the test opens the gate (a late-confirming backend)."""

    name = "test-tesla-gated"
    gate: asyncio.Event | None = None
    received = 0
    published: list[str] = []  # noqa: RUF012 - test instrumentation

    async def publish(self, batch: Sequence[Record]) -> None:
        assert GatedSink.gate is not None
        GatedSink.received += len(batch)
        await GatedSink.gate.wait()
        GatedSink.published.extend(record.meta["txid"] for record in batch if record.meta)


class NeverSink(Sink):
    """Never confirms while a test runs (a backend that is down).

    Tests set ``release`` before stopping the server, so shutdown does not wait for the
    runner's flush timeout.
    """

    name = "test-tesla-never"
    release: asyncio.Event | None = None

    async def publish(self, batch: Sequence[Record]) -> None:
        assert NeverSink.release is not None
        await NeverSink.release.wait()


register_sink(GatedSink)
register_sink(NeverSink)
