"""The Tesla vehicle listener over real mTLS WebSockets on loopback (spec sections 2, 5-8)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from fleetgate.app import Server
from fleetgate.observability import metrics
from fleetgate.pki import (
    DevPki,
    client_ssl_context,
    generate_ca,
    init_pki,
    issue_client_cert,
    write_cert,
    write_key,
)
from fleetgate.protocols.tesla.envelope import (
    ERROR_TEXT,
    MESSAGE_STREAM,
    MESSAGE_STREAM_ACK,
)
from tests.integration.stores import stored
from tests.integration.tesla.helpers import (
    OTHER_VIN,
    TIMEOUT,
    VIN,
    GatedSink,
    NeverSink,
    connect_vehicle,
    eventually,
    handshake_refused,
    no_message,
    receive,
    start_server,
    stream_frame,
    tesla,
    url,
    vehicle_context,
)

pytestmark = pytest.mark.integration


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


# -- the happy path ------------------------------------------------------------------------
async def test_vehicle_frame_is_acked_and_stored(server: Server, pki: DevPki) -> None:
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(stream_frame())
        reply = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM_ACK
    assert reply.txid == b"integration-test-txid"
    assert reply.topic == b"V"
    rows = await stored(server.store, VIN, 1, topic="V")
    assert len(rows) == 1
    assert rows[0]["source"] == "tesla"
    assert rows[0]["device_id"] == VIN


async def test_spoofed_sender_is_acked_but_stored_under_the_certificate_vin(
    server: Server, pki: DevPki
) -> None:
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(stream_frame(sender="vehicle_device.BAD123"))
        reply = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM_ACK
    assert server.store is not None
    assert len(await stored(server.store, VIN, 1, topic="V")) == 1
    assert server.store.records("BAD123") == []


async def test_many_frames_in_flight_are_all_acked(server: Server, pki: DevPki) -> None:
    txids = [f"tx-{n}" for n in range(50)]
    async with await connect_vehicle(server, pki) as ws:
        for txid in txids:
            await ws.send(stream_frame(txid=txid))
        replies = [await receive(ws) for _ in txids]
    assert sorted(r.txid.decode() for r in replies) == sorted(txids)
    assert {r.message_type for r in replies} == {MESSAGE_STREAM_ACK}


async def test_a_burst_of_immediate_replies_comes_back_complete_and_in_order(
    reference_server: Server, pki: DevPki
) -> None:
    server = reference_server
    # Frames answered without a sink (ack for an unconfigured topic, error for a wrong
    # sender) are queued while the burst is read; the writer sends what is queued together.
    count = 40
    async with await connect_vehicle(server, pki) as ws:
        for n in range(count):
            sender = f"vehicle_device.{VIN}" if n % 3 else "vehicle_device.BAD123"
            await ws.send(stream_frame(txid=f"b-{n}", topic="metrics", sender=sender))
        replies = [await receive(ws) for _ in range(count)]
    assert [r.txid for r in replies] == [f"b-{n}".encode() for n in range(count)]
    assert [r.message_type for r in replies] == [
        MESSAGE_STREAM_ACK if n % 3 else MESSAGE_STREAM for n in range(count)
    ]


# -- TLS refusals --------------------------------------------------------------------------
def refusals(alert: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_tls_handshake_errors_total", {"listener": "tesla", "alert": alert}
    )
    return value or 0.0


async def wait_for_count(read: Callable[[], float], target: float) -> float:
    for _ in range(100):
        if read() >= target:
            break
        await asyncio.sleep(0.02)
    return read()


async def test_client_without_certificate_fails_the_handshake(
    server: Server, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    before = refusals("certificate_required")
    context = client_ssl_context(None, None, pki.ca_cert)
    with caplog.at_level(logging.WARNING, logger="fleetgate.tesla"):
        assert await handshake_refused(url(server), context)
        assert await wait_for_count(lambda: refusals("certificate_required"), before + 1) == (
            before + 1
        )
    assert len(tesla(server).sessions) == 0
    assert "tls handshake refused: certificate_required" in caplog.text


async def test_certificate_from_an_unknown_ca_fails_the_handshake(
    server: Server, pki: DevPki, tmp_path: Path
) -> None:
    before = refusals("unknown_ca")
    stranger = init_pki(tmp_path / "other-ca", vins=[VIN])
    cert, key = stranger.vehicles[VIN]
    context = client_ssl_context(cert, key, pki.ca_cert)
    assert await handshake_refused(url(server), context)
    assert await wait_for_count(lambda: refusals("unknown_ca"), before + 1) == before + 1
    assert server.store is not None
    assert server.store.records(VIN) == []


async def test_plaintext_websocket_never_gets_an_upgrade(server: Server) -> None:
    port = tesla(server).port
    with pytest.raises((ConnectionError, OSError, InvalidHandshake, TimeoutError)):
        async with await connect(f"ws://127.0.0.1:{port}/", open_timeout=2):
            pass
    assert len(tesla(server).sessions) == 0


# -- frames the decision table refuses -----------------------------------------------------
async def test_text_frame_ends_the_session(server: Server, pki: DevPki) -> None:
    async with await connect_vehicle(server, pki) as ws:
        await ws.send("D4,test,1234")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)


async def test_oversize_frame_gets_an_error_reply(server: Server, pki: DevPki) -> None:
    before = sample("record_too_big_total")
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(stream_frame(payload=b"\x00" * 1_000_001))
        reply = await receive(ws)
        # The session goes on after an error.
        await ws.send(stream_frame(txid="after"))
        after = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM
    assert reply.txid == b""
    assert reply.stream is not None
    assert reply.stream.payload == ERROR_TEXT
    assert after.message_type == MESSAGE_STREAM_ACK
    assert sample("record_too_big_total") == before + 1


async def test_garbage_gets_an_error_reply(server: Server, pki: DevPki) -> None:
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(b"\xff" * 40)
        reply = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM
    assert reply.stream is not None
    assert reply.stream.payload == ERROR_TEXT


async def test_unknown_topic_with_wrong_sender_gets_an_error(
    reference_server: Server, pki: DevPki
) -> None:
    async with await connect_vehicle(reference_server, pki) as ws:
        await ws.send(stream_frame(txid="t1", topic="metrics", sender="vehicle_device.BAD123"))
        reply = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM
    assert reply.txid == b"t1"


async def test_unknown_topic_with_matching_sender_is_acked_with_its_topic(
    reference_server: Server, pki: DevPki
) -> None:
    topics: list[str] = []
    reference_server.pipeline.add_observer(lambda records: topics.extend(r.topic for r in records))
    async with await connect_vehicle(reference_server, pki) as ws:
        await ws.send(stream_frame(txid="t2", topic="metrics"))
        reply = await receive(ws)
    assert reply.message_type == MESSAGE_STREAM_ACK
    assert (reply.txid, reply.topic) == (b"t2", b"metrics")
    assert "metrics" not in topics  # acked, nothing dispatched


async def test_with_the_store_every_topic_is_stored_and_acked(server: Server, pki: DevPki) -> None:
    # records names only V and connectivity; the store still keeps a "metrics" frame.
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(stream_frame(txid="t3", topic="metrics"))
        reply = await receive(ws)
    assert (reply.message_type, reply.txid) == (MESSAGE_STREAM_ACK, b"t3")
    assert [r["topic"] for r in await stored(server.store, VIN, 1, topic="metrics")] == [
        "metrics"
    ]


# -- reliable ack --------------------------------------------------------------------------
async def test_reliable_ack_waits_for_the_named_sink(tmp_path: Path, pki: DevPki) -> None:
    GatedSink.gate = asyncio.Event()
    GatedSink.published = []
    labels = {"record_type": "V", "dispatcher": "test-tesla-gated"}
    before = sample("reliable_ack", labels)
    server = await start_server(
        tmp_path,
        pki,
        records={"V": ["logger", "test-tesla-gated"]},
        reliable_ack_sources={"V": "test-tesla-gated"},
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame(txid="reliable-1"))
            # Stored and logged, but the reliable sink has not confirmed: no ack yet.
            assert await no_message(ws, 0.5)
            assert GatedSink.published == []
            GatedSink.gate.set()
            reply = await receive(ws)
        assert reply.message_type == MESSAGE_STREAM_ACK
        assert reply.txid == b"reliable-1"
        assert GatedSink.published == ["reliable-1"]
        assert sample("reliable_ack", labels) == before + 1
    finally:
        await server.stop()


async def test_reliable_ack_never_comes_when_the_sink_never_confirms(
    tmp_path: Path, pki: DevPki
) -> None:
    withheld = {"protocol": "tesla", "result": "withheld"}
    before = sample("fleetgate_acks_total", withheld)
    NeverSink.release = asyncio.Event()
    server = await start_server(
        tmp_path,
        pki,
        records={"V": ["test-tesla-never"]},
        reliable_ack_sources={"V": "test-tesla-never"},
        ack_timeout_s=0.3,
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame(txid="never-1"))
            assert await no_message(ws, 1.5)
            await eventually(lambda: sample("fleetgate_acks_total", withheld) == before + 1)
            # The connection still works for frames of other topics.
            await ws.send(stream_frame(txid="t3", topic="metrics"))
            reply = await receive(ws)
            assert reply.txid == b"t3"
    finally:
        NeverSink.release.set()
        await server.stop()


async def test_reliable_ack_for_a_closed_socket_counts_a_miss(tmp_path: Path, pki: DevPki) -> None:
    GatedSink.gate = asyncio.Event()
    GatedSink.received = 0
    labels = {"record_type": "V", "dispatcher": "test-tesla-gated"}
    before = sample("reliable_ack_miss", labels)
    server = await start_server(
        tmp_path,
        pki,
        records={"V": ["test-tesla-gated"]},
        reliable_ack_sources={"V": "test-tesla-gated"},
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame(txid="gone-1"))
            # The record reached the reliable sink, which has not confirmed yet.
            await eventually(lambda: GatedSink.received == 1)
        await eventually(lambda: len(tesla(server).sessions) == 0)
        GatedSink.gate.set()
        await eventually(lambda: sample("reliable_ack_miss", labels) == before + 1)
    finally:
        await server.stop()


# -- rate limiting -------------------------------------------------------------------------
async def test_rate_limit_drops_frames_over_the_limit(tmp_path: Path, pki: DevPki) -> None:
    labels = {"device_id": VIN, "txtype": "V"}
    before = sample("rate_limit_exceeded_total", labels)
    server = await start_server(
        tmp_path,
        pki,
        rate_limit={"enabled": True, "message_limit": 3, "message_interval_time": 60},
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            for n in range(5):
                await ws.send(stream_frame(txid=f"rl-{n}"))
            replies = [await receive(ws) for _ in range(3)]
            assert await no_message(ws, 0.5)
        assert sorted(r.txid for r in replies) == [b"rl-0", b"rl-1", b"rl-2"]
        assert sample("rate_limit_exceeded_total", labels) == before + 2
        assert len(await stored(server.store, VIN, 3, topic="V")) == 3
    finally:
        await server.stop()


async def test_rate_limit_with_zero_limit_does_not_limit(tmp_path: Path, pki: DevPki) -> None:
    server = await start_server(tmp_path, pki, rate_limit={"enabled": True, "message_limit": 0})
    try:
        async with await connect_vehicle(server, pki) as ws:
            for n in range(5):
                await ws.send(stream_frame(txid=f"z-{n}"))
            replies = [await receive(ws) for _ in range(5)]
        assert len(replies) == 5
    finally:
        await server.stop()


async def test_reference_mode_counts_signals_of_frames_over_the_limit(
    tmp_path: Path, pki: DevPki
) -> None:
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
    from tests.integration.tesla.helpers import vehicle_payload

    signals = len(vd.Payload.FromString(vehicle_payload()).data)
    tracked = {"record_type": "V", "vin": VIN}
    before = (sample("signal_count", {"record_type": "V"}), sample("vin_signal_count", tracked))
    server = await start_server(
        tmp_path, pki, rate_limit={"mode": "reference"}, vins_signal_tracking_enabled=[VIN]
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            for n in range(103):  # the reference's metrics-only window is 100 per 60 s
                await ws.send(stream_frame(txid=f"s-{n}"))
            replies = [await receive(ws) for _ in range(103)]
        assert len(replies) == 103  # counted, never dropped
        assert sample("signal_count", {"record_type": "V"}) == before[0] + 3 * signals
        assert sample("vin_signal_count", tracked) == before[1] + 3 * signals
    finally:
        await server.stop()


# -- connectivity, headers -----------------------------------------------------------------
async def test_connectivity_records_on_connect_and_disconnect(server: Server, pki: DevPki) -> None:
    headers = {
        "X-Network-Interface": "cellular",
        "Version": "1.2.0",
        "X-TXID": "0b7e6a3c-9a35-4a3e-9a8e-3c2f6c7e1a11",
    }
    async with await connect_vehicle(server, pki, OTHER_VIN, headers=headers):
        pass
    assert server.store is not None
    store = server.store

    def connectivity() -> list[dict[str, str]]:
        rows = [r for r in store.records(OTHER_VIN) if r["topic"] == "connectivity"]
        return [r["data"] for r in reversed(rows)]  # oldest first

    await eventually(lambda: len(connectivity()) == 2)
    first, second = connectivity()
    assert [first["status"], second["status"]] == ["CONNECTED", "DISCONNECTED"]
    for data in (first, second):
        assert data["network_interface"] == "cellular"
        assert data["connection_id"] == "0b7e6a3c-9a35-4a3e-9a8e-3c2f6c7e1a11"


async def test_connectivity_records_reach_the_store_unconfigured(
    tmp_path: Path, pki: DevPki
) -> None:
    server = await start_server(tmp_path, pki, records={"V": ["logger"]})
    try:
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame())
            await receive(ws)
        await eventually(lambda: len(tesla(server).sessions) == 0)
        assert server.store is not None
        store = server.store
        await eventually(
            lambda: len([r for r in store.records(VIN) if r["topic"] == "connectivity"]) == 2
        )
    finally:
        await server.stop()


async def test_no_connectivity_records_without_store_or_rule(tmp_path: Path, pki: DevPki) -> None:
    server = await start_server(
        tmp_path, pki, records={"V": ["logger"]}, store={"enabled": False}
    )
    try:
        async with await connect_vehicle(server, pki) as ws:
            await ws.send(stream_frame())
            await receive(ws)
        await eventually(lambda: len(tesla(server).sessions) == 0)
        assert server.pipeline.ledger.head == 1  # the V record alone
    finally:
        await server.stop()


# -- HTTP on the vehicle port and the status port ------------------------------------------
async def test_status_over_mtls_and_400_for_other_non_upgrade_paths(
    server: Server, pki: DevPki
) -> None:
    cert, key = pki.vehicles[VIN]
    context = client_ssl_context(cert, key, pki.ca_cert)
    base = f"https://127.0.0.1:{tesla(server).port}"
    async with httpx.AsyncClient(verify=context, timeout=TIMEOUT) as client:
        status = await client.get(f"{base}/status")
        assert (status.status_code, status.text) == (200, "mtls ok")
        for path in ("/gc_stats", "/live_profiler", "/debug/pprof/", "/"):
            response = await client.get(f"{base}{path}")
            assert response.status_code == 400, path


async def test_websocket_upgrade_on_status_path_is_refused(server: Server, pki: DevPki) -> None:
    with pytest.raises(InvalidStatus):
        await connect(url(server, "/status"), ssl=vehicle_context(pki), open_timeout=TIMEOUT)


async def test_status_port_answers_ok(tmp_path: Path, pki: DevPki) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await start_server(tmp_path, pki, status_port=port)
    try:
        assert tesla(server).status_port == port
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(f"http://127.0.0.1:{port}/status")
            assert (response.status_code, response.text) == (200, "ok")
            assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404
    finally:
        await server.stop()


async def test_listener_disabled_by_tesla_enabled_false(tmp_path: Path, pki: DevPki) -> None:
    server = await start_server(tmp_path, pki, tesla_enabled=False)
    try:
        assert server.listener("tesla") is None
    finally:
        await server.stop()


# Frames of any size over the limit: test_oversize_frames.py (the socket stays open).


async def test_certificate_without_a_tesla_identity_is_closed_after_upgrade(
    tmp_path: Path, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    # A CA the TLS layer trusts, but whose name the identity rules do not accept.
    other_ca, other_key = generate_ca("Example Fleet CA")
    cert, key = issue_client_cert(other_ca, other_key, VIN)
    write_cert(tmp_path / "other.crt", cert)
    write_key(tmp_path / "other.key", key)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(pki.ca_cert.read_bytes() + other_ca.public_bytes(serialization.Encoding.PEM))
    tls = {**pki.config_snippet()["tls"], "ca_file": str(bundle)}
    server = await start_server(tmp_path, None, tls=tls)
    try:
        context = client_ssl_context(tmp_path / "other.crt", tmp_path / "other.key", pki.ca_cert)
        with caplog.at_level(logging.WARNING, logger="fleetgate.tesla"):
            # The TLS handshake and the upgrade succeed; then the server closes.
            ws = await connect(url(server), ssl=context, open_timeout=TIMEOUT)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1008
        assert any(r.getMessage() == "extract_sender_id_err" for r in caplog.records)
        assert server.store is not None
        assert server.store.records(VIN) == []
    finally:
        await server.stop()
