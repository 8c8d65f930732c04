"""The listener's TLS layer against the path it replaces, uvloop's TLS (``ssl=`` on the loop).

Each scenario runs on both servers, same context, same client; what the application and the
client observe must be the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetgate.listeners.tesla.tlslayer import TlsLayer
from fleetgate.pki import DevPki, client_ssl_context, init_pki

VIN = "5YJ3E1EA7KF000001"
KINDS = ("uvloop", "layer")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("pki"), host="localhost", vins=[VIN])


def server_context(pki: DevPki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca_cert)
    return context


def vehicle_context(pki: DevPki, with_cert: bool = True) -> ssl.SSLContext:
    cert, key = pki.vehicles[VIN]
    return client_ssl_context(cert if with_cert else None, key, pki.ca_cert)


class App(asyncio.Protocol):
    """Records what it is told; echoes data; ``b"close"`` makes it say bye and close."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.pause_first = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.pause_first:
            self.pause_first = False
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.05, self.transport.resume_reading)
        if data.endswith(b"close"):
            self.transport.write(b"bye")
            self.transport.close()
        else:
            self.transport.write(data)

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(f"lost:{type(exc).__name__ if exc else None}")
        self.lost.set_result(None)


async def serve_one(
    kind: str, context: ssl.SSLContext, app: App, listener: socket.socket
) -> BaseException | None:
    """Accept one connection and shake hands the ``kind`` way; the handshake's error."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    conn.setblocking(False)
    try:
        if kind == "uvloop":
            await loop.connect_accepted_socket(lambda: app, conn, ssl=context)
        else:
            layer = TlsLayer(context, app, loop)
            assert layer.handshake is not None
            await loop.connect_accepted_socket(lambda: layer, conn)
            await layer.handshake
    except (OSError, EOFError) as exc:
        return exc
    return None


def run(
    kind: str,
    pki: DevPki,
    client: Callable[[int], Awaitable[Any]],
    app_setup: Callable[[App], None] = lambda app: None,
) -> tuple[Any, App, Any]:
    """Serve one connection of ``kind`` while ``client(port)`` runs; (client result, app,
    handshake error)."""

    async def main() -> tuple[Any, App, Any]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        app = App()
        app_setup(app)
        server = asyncio.ensure_future(serve_one(kind, server_context(pki), app, listener))
        try:
            result = await asyncio.wait_for(client(listener.getsockname()[1]), 20)
            error = await asyncio.wait_for(server, 20)
            if error is None:
                await asyncio.wait_for(asyncio.shield(app.lost), 20)
        finally:
            server.cancel()
            listener.close()
        return result, app, error

    return uvloop.run(main())


def echo_client(pki: DevPki, payloads: list[bytes], ending: str) -> Callable[[int], Awaitable[Any]]:
    async def client(port: int) -> Any:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=vehicle_context(pki), server_hostname="localhost"
        )
        echoed = bytearray()
        for payload in payloads:
            writer.write(payload)
            echoed += await reader.readexactly(len(payload))
        if ending == "server closes":
            writer.write(b"close")
            tail = await reader.read()  # "bye", then the end of the stream
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            return bytes(echoed), tail
        if ending == "client closes":
            writer.close()  # close_notify
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        else:
            writer.transport.abort()
        return bytes(echoed), None

    return client


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 70_000), min_size=0, max_size=4),
    ending=st.sampled_from(["client closes", "server closes", "client aborts"]),
    pause=st.booleans(),
)
def test_what_application_and_client_see_is_the_same(
    pki: DevPki, sizes: list[int], ending: str, pause: bool
) -> None:
    # The first round trip makes sure the server has finished its handshake (TLS 1.3: the
    # client is done first) before the client may abort.
    payloads = [b"x"] + [bytes([n % 251]) * size for n, size in enumerate(sizes)]

    def setup(app: App) -> None:
        app.pause_first = pause

    seen = {}
    for kind in KINDS:
        result, app, error = run(kind, pki, echo_client(pki, payloads, ending), setup)
        assert error is None
        seen[kind] = (result, app.events, bytes(app.data))
    assert seen["layer"] == seen["uvloop"]
    result, _, data = seen["layer"]
    assert result[0] == b"".join(payloads)
    assert data == b"".join(payloads) + (b"close" if ending == "server closes" else b"")
    if ending == "server closes":
        assert result[1] == b"bye"


def client_without_certificate(pki: DevPki) -> Callable[[int], Awaitable[str]]:
    """A client offering no certificate: what it saw of the refused handshake."""

    async def client(port: int) -> str:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=vehicle_context(pki, with_cert=False),
                server_hostname="localhost",
            )
            data = await reader.read()  # TLS 1.3: the client learns of it on reading
            writer.transport.abort()
            return f"read {data!r}"
        except (OSError, ssl.SSLError) as exc:
            return type(exc).__name__

    return client


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_without_certificate_fails_the_handshake(pki: DevPki, kind: str) -> None:
    result, app, error = run(kind, pki, client_without_certificate(pki))
    assert isinstance(error, ssl.SSLError)
    assert "CERTIFICATE" in str(error).upper()
    assert app.events == []  # the application never saw the connection
    assert result in ("read b''", "ConnectionResetError", "SSLError")


def test_a_client_without_certificate_sees_the_same(pki: DevPki) -> None:
    outcomes = {run(kind, pki, client_without_certificate(pki))[0] for kind in KINDS}
    assert len(outcomes) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_peer_certificate_and_extra_info(pki: DevPki, kind: str) -> None:
    seen: dict[str, Any] = {}

    class Inspecting(App):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            seen["der"] = ssl_object.getpeercert(binary_form=True)
            seen["peercert"] = transport.get_extra_info("peercert")
            seen["peername"] = transport.get_extra_info("peername")
            seen["cipher"] = transport.get_extra_info("cipher")
            seen["closing"] = transport.is_closing()
            seen["eof"] = transport.can_write_eof()  # type: ignore[attr-defined]

    async def client(port: int) -> Any:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=vehicle_context(pki), server_hostname="localhost"
        )
        name = writer.get_extra_info("sockname")
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return name

    async def main() -> Any:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        app = Inspecting()
        server = asyncio.ensure_future(serve_one(kind, server_context(pki), app, listener))
        name = await client(listener.getsockname()[1])
        assert await server is None
        await asyncio.wait_for(app.lost, 20)
        listener.close()
        return name

    name = uvloop.run(main())
    cert = Path(pki.vehicles[VIN][0]).read_text()
    assert seen["der"] == ssl.PEM_cert_to_DER_cert(cert)
    assert seen["peercert"]["subject"]
    assert tuple(seen["peername"][:2]) == tuple(name[:2])
    assert seen["cipher"][1].startswith("TLSv1.")
    assert seen["closing"] is False
    assert seen["eof"] is False
