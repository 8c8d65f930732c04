"""``/stream`` over real sockets: sign-in (every refusal), filters, batching, slow consumers,
keepalive, token expiry and reconnects, against a server running in this event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.uri import parse_uri

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.records import Record, now_ms
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.integration

ISSUER = "fleetgate-test"
AUDIENCE = "dashboards"
WAIT_S = 10.0

ServerFactory = Callable[..., Awaitable[Server]]


def _nested(overrides: dict[str, Any]) -> dict[str, Any]:
    stream = {"stall_timeout_s": 60.0, "batch_linger_ms": 0.0, **overrides.pop("stream", {})}
    auth = {"secret": TEST_SECRET, **overrides.pop("auth", {})}
    return {
        "data_dir": overrides.pop("data_dir"),
        "teltonika": {"enabled": False},
        "tesla_enabled": False,
        "store": {"enabled": False},
        "api": {"host": "127.0.0.1", "port": 0, "auth": auth, "stream": stream, **overrides},
    }


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        config = build_config(_nested({"data_dir": str(tmp_path), **overrides}), environ={})
        server = Server(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: ServerFactory) -> Server:
    return await start_server()


def url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.api_port}/stream{query}"


def record(device: str = "356307042441013", topic: str = "position", **data: Any) -> Record:
    now = now_ms()
    return Record("teltonika", device, topic, now, now, data or {"speed": 1})


async def publish(server: Server, *records: Record) -> None:
    assert await server.pipeline.accept(list(records))


async def receive(client: ClientConnection) -> Any:
    return orjson.loads(await asyncio.wait_for(client.recv(), WAIT_S))


async def ready(client: ClientConnection) -> dict[str, Any]:
    message = await receive(client)
    assert message["type"] == "ready", message
    return dict(message)


async def refused(client: ClientConnection) -> tuple[dict[str, Any], int, str]:
    """The error message and the close code and reason of a refused stream."""
    error = await receive(client)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.recv(), WAIT_S)
    assert client.close_code is not None
    return error, client.close_code, client.close_reason or ""


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- sign-in ---------------------------------------------------------------------------------
async def test_token_in_header_query_or_first_message(server: Server) -> None:
    token = make_token()
    async with (
        connect(url(server), additional_headers=bearer(token)) as by_header,
        connect(url(server, f"?token={token}")) as by_query,
        connect(url(server)) as by_message,
    ):
        await by_message.send(orjson.dumps({"type": "auth", "token": token}).decode())
        for client in (by_header, by_query, by_message):
            hello = await ready(client)
            assert hello["subject"] == "tester"
            assert hello["batch"] is False
        await publish(server, record(speed=42))
        for client in (by_header, by_query, by_message):
            got = await receive(client)
            assert got["device_id"] == "356307042441013"
            assert got["data"] == {"speed": 42}
            assert set(got) == {"source", "device_id", "topic", "created_at", "received_at", "data"}


REFUSALS = {
    "forged (another key)": (
        lambda: make_token("another-secret-that-is-long-enough-0123456789"),
        "invalid_token",
        "signature",
    ),
    "expired": (lambda: make_token(exp=int(time.time()) - 3600), "token_expired", "expired"),
    "not yet valid (nbf)": (
        lambda: make_token(nbf=int(time.time()) + 3600),
        "token_not_yet_valid",
        "not valid before",
    ),
    "no exp": (lambda: make_token(exp=None), "invalid_token", "'exp'"),
    "malformed": (lambda: "not.a.jwt", "invalid_token", "not a JWT"),
    "alg none": (
        lambda: make_token(algorithm="none", secret=""),
        "invalid_token",
        "algorithm",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("where", ["header", "query", "message"])
async def test_bad_tokens_are_refused_with_4401_and_a_reason(
    server: Server, case: str, where: str
) -> None:
    factory, code, words = REFUSALS[case]
    token = factory()
    headers = bearer(token) if where == "header" else {}
    query = f"?token={token}" if where == "query" else ""
    async with connect(url(server, query), additional_headers=headers) as client:
        if where == "message":
            await client.send(orjson.dumps({"type": "auth", "token": token}).decode())
        error, close_code, reason = await refused(client)
    assert close_code == 4401
    assert error["type"] == "error"
    assert error["error"] == code
    assert words in error["detail"]
    assert reason.startswith(code)


async def test_missing_token_is_refused_after_the_first_message(server: Server) -> None:
    async with connect(url(server)) as client:
        await client.send('{"type": "ping"}')
        error, close_code, _ = await refused(client)
    assert close_code == 4401
    assert error["error"] == "missing_token"


async def test_missing_token_is_refused_after_the_sign_in_timeout(
    start_server: ServerFactory,
) -> None:
    server = await start_server(stream={"auth_timeout_s": 0.2})
    async with connect(url(server)) as client:
        error, close_code, _ = await refused(client)
    assert (close_code, error["error"]) == (4401, "missing_token")


async def test_token_without_the_stream_scope_is_refused_with_4403(server: Server) -> None:
    async with connect(url(server), additional_headers=bearer(make_token(scope="read"))) as client:
        error, close_code, _ = await refused(client)
    assert close_code == 4403
    assert error["error"] == "insufficient_scope"
    assert "'stream'" in error["detail"]


async def test_issuer_and_audience_are_checked_when_configured(
    start_server: ServerFactory,
) -> None:
    server = await start_server(auth={"issuer": ISSUER, "audience": AUDIENCE})
    cases = {
        "right": make_token(iss=ISSUER, aud=AUDIENCE),
        "wrong iss": make_token(iss="someone-else", aud=AUDIENCE),
        "wrong aud": make_token(iss=ISSUER, aud="elsewhere"),
        "no iss": make_token(aud=AUDIENCE),
    }
    outcomes = {}
    for name, token in cases.items():
        async with connect(url(server), additional_headers=bearer(token)) as client:
            first = await receive(client)
            outcomes[name] = first.get("error") or first["type"]
            if first["type"] == "error":
                assert "iss" in first["detail"] or "audience" in first["detail"]
    assert outcomes == {
        "right": "ready",
        "wrong iss": "invalid_token",
        "wrong aud": "invalid_token",
        "no iss": "invalid_token",
    }


async def test_a_node_telemetry_server_token_works_with_jwt_secret(
    tmp_path: Path,
) -> None:
    """The Node server's test client: HS256 {userId, iat, exp} signed with JWT_SECRET, sent
    as ?token=, and {"type": "ping"} messages."""
    import jwt

    secret = "the-node-servers-jwt-secret-0123456789"
    config = build_config(
        {
            "data_dir": str(tmp_path),
            "teltonika": {"enabled": False},
            "tesla_enabled": False,
            "store": {"enabled": False},
            "api": {"port": 0},
        },
        environ={"JWT_SECRET": secret},
    )
    server = Server(config)
    await server.start()
    try:
        now = int(time.time())
        token = jwt.encode({"userId": "test-client", "iat": now, "exp": now + 3600}, secret)
        async with connect(url(server, f"?token={token}")) as client:
            assert (await ready(client))["subject"] == "test-client"
            await client.send('{"type": "ping", "timestamp": "2026-01-01T00:00:00Z"}')
            assert await receive(client) == {"type": "pong", "timestamp": "2026-01-01T00:00:00Z"}
            await publish(server, record(speed=7))
            assert (await receive(client))["data"] == {"speed": 7}
        # Unscoped tokens stream, but do not read the REST API.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}") as http:
            response = await http.get("/api/v1/devices", headers=bearer(token))
        assert response.status_code == 403
    finally:
        await server.stop()


# -- filters and batching --------------------------------------------------------------------
async def test_filters_from_the_query_and_changed_by_message(server: Server) -> None:
    token = make_token()
    query = "?device_id=A,B&topic=position"
    async with connect(url(server, query), additional_headers=bearer(token)) as client:
        hello = await ready(client)
        assert hello["filter"]["device_id"] == ["A", "B"]
        await publish(
            server,
            record("A", speed=1),
            record("C", speed=2),
            record("B", "event", speed=3),
            record("B", speed=4),
        )
        assert [(await receive(client))["data"]["speed"] for _ in range(2)] == [1, 4]

        await client.send(orjson.dumps({"type": "filter", "device_id": "C"}).decode())
        confirmed = await receive(client)
        assert confirmed == {
            "type": "filter",
            "filter": {"device_id": ["C"], "source": [], "topic": [], "signal": []},
        }
        await publish(server, record("A", speed=5), record("C", "event", speed=6))
        assert (await receive(client))["data"] == {"speed": 6}

        await client.send('{"type": "filter", "colour": ["red"]}')
        error = await receive(client)
        assert error["error"] == "bad_filter"
        assert "colour" in error["detail"]
        await client.send("this is not json")
        assert (await receive(client))["error"] == "bad_message"


async def test_signal_filter_narrows_data_and_source_filter_selects(server: Server) -> None:
    token = make_token()
    query = "?signal=speed&signal=rpm&source=teltonika,mqtt"
    async with connect(url(server, query), additional_headers=bearer(token)) as client:
        await ready(client)
        now = now_ms()
        await publish(
            server,
            Record("teltonika", "T", "position", now, now, {"speed": 3, "altitude": 100}),
            Record("teltonika", "T", "position", now, now, {"altitude": 101}),
            Record("tesla", "V", "V", now, now, {"speed": 9}),
            Record(
                "mqtt", "G", "engine", now, now, {"signal": "rpm", "value": 3500, "unit": "rpm"}
            ),
            Record("mqtt", "G", "engine", now, now, {"signal": "load", "value": 40, "unit": "%"}),
        )
        first, second = await receive(client), await receive(client)
        assert first["data"] == {"speed": 3}
        assert second["data"] == {"signal": "rpm", "value": 3500, "unit": "rpm"}


async def test_batch_mode_sends_json_arrays(server: Server) -> None:
    async with connect(url(server, "?batch=1"), additional_headers=bearer(make_token())) as client:
        assert (await ready(client))["batch"] is True
        await publish(server, *(record(speed=n) for n in range(5)))
        got: list[dict[str, Any]] = []
        while len(got) < 5:
            message = await receive(client)
            assert isinstance(message, list)
            got += message
        assert [item["data"]["speed"] for item in got] == [0, 1, 2, 3, 4]


# -- slow consumers --------------------------------------------------------------------------
async def test_records_past_the_buffer_are_dropped_and_counted_to_the_client(
    start_server: ServerFactory,
) -> None:
    server = await start_server(stream={"buffer_records": 5})
    dropped_before = await _metric(server, "fleetgate_stream_dropped_total")
    async with connect(url(server), additional_headers=bearer(make_token())) as client:
        await ready(client)
        # One batch of 20 arrives before the client's sender runs: 5 fit, 15 are dropped.
        await publish(server, *(record(speed=n) for n in range(20)))
        notice = await receive(client)
        assert notice == {"type": "dropped", "count": 15, "total": 15}
        assert [(await receive(client))["data"]["speed"] for _ in range(5)] == [0, 1, 2, 3, 4]
        await publish(server, record(speed=99))
        assert (await receive(client))["data"]["speed"] == 99
    assert await _metric(server, "fleetgate_stream_dropped_total") == dropped_before + 15


def _small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_a_stalled_client_neither_slows_ingest_nor_other_clients_and_is_disconnected(
    start_server: ServerFactory,
) -> None:
    server = await start_server(stream={"buffer_records": 200, "stall_timeout_s": 0.3})
    evicted_before = await _metric(server, "fleetgate_stream_evicted_total")
    token = make_token()
    padding = os.urandom(2000).hex()  # incompressible, whatever the WebSocket compression
    batches, per_batch = 300, 10
    total = batches * per_batch
    # The stalled client reads nothing: its socket fills, then the server's buffers.
    stalled = await connect(
        url(server),
        additional_headers=bearer(token),
        max_queue=1,
        sock=_small_buffer_socket(server.api_port),
    )
    received: list[int] = []

    async with connect(url(server), additional_headers=bearer(token), max_size=None) as fast:
        await ready(fast)

        async def read_fast() -> None:
            while len(received) < total:
                received.append(orjson.loads(await fast.recv())["data"]["n"])

        reader = asyncio.create_task(read_fast())
        for batch in range(batches):
            records = [record(n=batch * per_batch + i, pad=padding) for i in range(per_batch)]
            await publish(server, *records)
            # Ingest goes on while the stalled client holds its records; the fast client
            # gets each batch before the next is sent.
            await wait_for(lambda b=batch: len(received) >= (b + 1) * per_batch, "fast client")
        await asyncio.wait_for(reader, WAIT_S)
        assert received == list(range(total))
        # Records keep coming; once the stalled client has dropped them for stall_timeout_s
        # without taking any, it is disconnected.
        deadline = time.monotonic() + WAIT_S
        while server.hub.clients > 1:
            assert time.monotonic() < deadline, "the stalled client was never disconnected"
            await publish(server, record(n=-1, pad=padding))
            await asyncio.sleep(0.05)

    # Reading at last, the stalled client finds the records it was sent, then the close.
    got = await _count_records_until_closed(stalled)
    assert stalled.close_code == 4408
    assert "too slow" in (stalled.close_reason or "")
    assert 0 < got < total
    assert await _metric(server, "fleetgate_stream_evicted_total") == evicted_before + 1
    await wait_for(lambda: server.hub.clients == 0, "every client gone")


async def _count_records_until_closed(client: ClientConnection) -> int:
    got = 0
    try:
        while True:
            message = orjson.loads(await asyncio.wait_for(client.recv(), WAIT_S))
            got += message.get("type") is None
    except ConnectionClosed:
        return got


async def _metric(server: Server, name: str) -> float:
    """A metric's value from the server's /metrics (counters are process-wide: compare)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}") as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# -- keepalive, expiry, reconnect ------------------------------------------------------------
async def test_server_sends_websocket_pings(start_server: ServerFactory) -> None:
    server = await start_server(stream={"ping_interval_s": 0.1, "ping_timeout_s": 5})
    # A sans-I/O client over a plain socket: it shows the frames as they arrive.
    protocol = ClientProtocol(parse_uri(url(server, f"?token={make_token()}")))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.api_port)
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    opcodes: list[Opcode] = []
    deadline = time.monotonic() + WAIT_S
    while Opcode.PING not in opcodes and time.monotonic() < deadline:
        protocol.receive_data(await asyncio.wait_for(reader.read(65536), WAIT_S))
        opcodes += [
            event.opcode for event in protocol.events_received() if hasattr(event, "opcode")
        ]
    writer.close()
    assert Opcode.TEXT in opcodes  # the ready message
    assert Opcode.PING in opcodes


LIFETIMES_S = (2, 4, 8, 16, 32)


def expired(message: dict[str, Any]) -> bool:
    return message.get("error") == "token_expired"


async def test_the_stream_closes_when_the_token_expires_unless_renewed(
    start_server: ServerFactory,
) -> None:
    """A loaded machine can be slower to open a stream (or to renew its token) than a short
    token lives; the server then rightly refuses it as expired, and the next attempt uses a
    token that lives longer."""
    server = await start_server(auth={"leeway_s": 0})
    for lifetime_s in LIFETIMES_S:
        short = make_token(exp=int(time.time()) + lifetime_s)
        async with connect(url(server), additional_headers=bearer(short)) as client:
            if expired(first := await receive(client)):
                continue
            assert first["type"] == "ready", first
            await asyncio.sleep(max(0.0, short_exp(short) - time.time()))
            error, close_code, _ = await refused(client)
        assert (close_code, error["error"]) == (4401, "token_expired")
        break
    else:
        raise AssertionError("no stream opened before its token expired")

    for lifetime_s in LIFETIMES_S:
        short = make_token(exp=int(time.time()) + lifetime_s)
        async with connect(url(server), additional_headers=bearer(short)) as client:
            if expired(first := await receive(client)):
                continue
            assert first["type"] == "ready", first
            await client.send(orjson.dumps({"type": "auth", "token": make_token()}).decode())
            if expired(renewed := await receive(client)):
                continue
            assert renewed["type"] == "auth", renewed
            await asyncio.sleep(max(0.0, short_exp(short) - time.time()) + 0.3)
            await publish(server, record(speed=5))
            assert (await receive(client))["data"] == {"speed": 5}
        break
    else:
        raise AssertionError("no stream renewed its token before it expired")


def short_exp(token: str) -> float:
    import jwt

    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_reconnecting_clients_stream_again(start_server: ServerFactory) -> None:
    server = await start_server()
    token = make_token()
    for attempt in range(3):
        async with connect(url(server), additional_headers=bearer(token)) as client:
            await ready(client)
            await wait_for(lambda: server.hub.clients == 1, "the client to be subscribed")
            await publish(server, record(speed=attempt))
            assert (await receive(client))["data"] == {"speed": attempt}
        await wait_for(lambda: server.hub.clients == 0, "the client to be unsubscribed")


async def test_the_api_serves_https_and_wss_with_a_certificate(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """CERT_PATH / KEY_PATH (api.tls_cert / .tls_key): the Node server's dashboards used wss."""
    import ssl

    from fleetgate.pki import init_pki

    pki = init_pki(tmp_path / "pki", host="localhost")
    server = await start_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with httpx.AsyncClient(verify=context) as http:
        response = await http.get(f"https://localhost:{server.api_port}/health")
    assert response.status_code == 200
    wss = f"wss://localhost:{server.api_port}/stream"
    async with connect(wss, ssl=context, additional_headers=bearer(make_token())) as client:
        await ready(client)
        await publish(server, record(speed=11))
        assert (await receive(client))["data"] == {"speed": 11}
