"""The TLS layer's less-travelled paths, over loopback: renegotiation, write flow control,
aborts during the handshake, a peer gone in the middle of a record, bad certificates.

Where uvloop's TLS (the path the layer replaced) has an answer, both are run and compared.
The tests drive the ciphertext themselves where they need to (:class:`RawClient`: a TLS
client over ``ssl.MemoryBIO``, which sends what the test says when the test says it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shutil
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fleetgate.config import TlsConfig
from fleetgate.listeners.tesla.tls import server_ssl_context
from fleetgate.listeners.tesla.tlslayer import TlsLayer
from fleetgate.observability.metrics import REGISTRY
from fleetgate.pki import (
    DevPki,
    client_ssl_context,
    generate_ca,
    init_pki,
    issue_client_cert,
    write_cert,
    write_key,
)
from tests.ports import LOOPBACK, free_port

VIN = "5YJ3E1EA7KF000001"
KINDS = ("uvloop", "layer")
GUARD_S = 20  # a hang guard only: every wait ends long before unless something is broken
BIG = 4 * 1024 * 1024  # far more than the socket buffers set below hold


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("pki"), host="localhost", vins=[VIN])


def listener_context(pki: DevPki) -> ssl.SSLContext:
    """The Tesla listener's own context (refused handshakes counted per alert)."""
    return server_ssl_context(
        TlsConfig(
            server_cert=str(pki.server_cert),
            server_key=str(pki.server_key),
            ca_file=str(pki.ca_cert),
        )
    )


def vehicle_context(pki: DevPki, tls12: bool = False) -> ssl.SSLContext:
    cert, key = pki.vehicles[VIN]
    context = client_ssl_context(cert, key, pki.ca_cert)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class App(asyncio.Protocol):
    """Records what it is told (connection, data, flow control, end)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.arrived = asyncio.Event()  # data came
        self.paused = asyncio.Event()
        self.resumed: asyncio.Future[None] = loop.create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    async def received(self, size: int) -> None:
        """Until ``size`` bytes have come."""
        while len(self.data) < size:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), GUARD_S)

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause")
        self.paused.set()

    def resume_writing(self) -> None:
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(f"lost:{type(exc).__name__ if exc else None}")
        self.lost.set_result(None)


class Server:
    """One listening socket; :meth:`accept` serves one connection the ``kind`` way."""

    def __init__(self, kind: str, context: ssl.SSLContext) -> None:
        self.kind = kind
        self.context = context
        self.sock = socket.create_server((LOOPBACK, free_port()))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.layer: TlsLayer | None = None

    async def accept(self, app: App, sndbuf: int = 0) -> BaseException | None:
        """Accept and shake hands; the handshake's error, if any."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        conn.setblocking(False)
        if sndbuf:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        try:
            if self.kind == "uvloop":
                await loop.connect_accepted_socket(lambda: app, conn, ssl=self.context)
            else:
                self.layer = layer = TlsLayer(self.context, app, loop)
                assert layer.handshake is not None
                await loop.connect_accepted_socket(lambda: layer, conn)
                await layer.handshake
        except (OSError, EOFError) as exc:
            return exc
        return None

    async def connected(self, app: App) -> TlsLayer:
        """Accept one connection with the layer, handshake not awaited: the layer."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        conn.setblocking(False)
        self.layer = layer = TlsLayer(self.context, app, loop)
        await loop.connect_accepted_socket(lambda: layer, conn)
        return layer

    def close(self) -> None:
        self.sock.close()


class RawClient:
    """A TLS client over a plain connection: which ciphertext goes out, and when, is the
    test's to say."""

    def __init__(
        self, context: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> RawClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(context, reader, writer)

    def pending(self) -> bytes:
        """Ciphertext the client has produced and not sent."""
        return self.outgoing.read()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> bool:
        """Ciphertext from the server into the client; False at the end of the stream."""
        try:
            data = await self.reader.read(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.send(self.pending())
                if not await self.receive():
                    raise ConnectionResetError("server gone during the handshake") from None
        await self.send(self.pending())

    def record(self, data: bytes) -> bytes:
        """``data`` as the TLS record(s) the client would send."""
        self.tls.write(data)
        return self.pending()

    async def read_until_closed(self) -> bytes:
        """Plaintext until the server's close_notify or the end of the stream."""
        plain = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
                if chunk:
                    plain += chunk
                    continue
            except ssl.SSLWantReadError:
                if await self.receive():
                    continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                pass
            return bytes(plain)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(main(), GUARD_S * 2)

    return uvloop.run(guarded())


def on_each_tls(one: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
    """``one(kind)`` against the layer and against uvloop's own TLS, in turn: each outcome."""

    async def main() -> dict[str, Any]:
        return {kind: await one(kind) for kind in KINDS}

    result: dict[str, Any] = run(main)
    return result


# -- renegotiation ---------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("kind", KINDS)
def test_a_client_renegotiation_ends_the_session_as_an_error_and_is_counted(
    pki: DevPki, kind: str
) -> None:
    """TLS 1.2: the server refuses a client's renegotiation (OpenSSL 3 sends a
    no_renegotiation warning); the client gives up with a fatal alert. The application
    learns of the connection's loss with that error (as from uvloop), and the layer counts
    it: a session ended by a TLS error is not a silent disconnect."""
    cert, key = pki.vehicles[VIN]
    counted = "fleetgate_tls_session_errors_total"
    labels = {"listener": "tesla", "reason": "sslv3_alert_handshake_failure"}
    before = sample(counted, labels)

    async def main() -> tuple[list[str], bytes, str]:
        server = Server(kind, listener_context(pki))
        client = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"{LOOPBACK}:{server.port}",
            "-tls1_2",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-CAfile",
            str(pki.ca_cert),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert client.stdin is not None and client.stdout is not None
        app = App()
        try:
            assert await server.accept(app) is None
            client.stdin.write(b"hello\n")
            await client.stdin.drain()
            await app.received(6)  # the session works before the renegotiation
            client.stdin.write(b"R\n")  # s_client: renegotiate
            await client.stdin.drain()
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            client.stdin.close()
            output = await asyncio.wait_for(client.stdout.read(), GUARD_S)
            return app.events, bytes(app.data), output.decode(errors="replace")
        finally:
            with contextlib.suppress(ProcessLookupError):
                client.kill()
            await client.wait()
            server.close()

    events, data, output = run(main)
    assert "RENEGOTIATING" in output
    assert data == b"hello\n"
    assert events == ["made", "lost:SSLError"]
    if kind == "layer":
        assert sample(counted, labels) == before + 1


@pytest.mark.parametrize("when", ["open", "closing"])
def test_a_record_that_does_not_decrypt_ends_the_session_as_an_error_and_is_counted(
    pki: DevPki, when: str
) -> None:
    """A record altered on the way (its last byte flipped: the tag does not match): the
    connection is dropped, the application gets the error, as from uvloop; the layer
    counts it. ``closing``: the server had sent its close_notify, waiting for the peer's."""
    counted = "fleetgate_tls_session_errors_total"
    labels = {"listener": "tesla", "reason": "decryption_failed_or_bad_record_mac"}

    async def one(kind: str) -> tuple[list[str], bytes, float]:
        before = sample(counted, labels)
        server = Server(kind, listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            await client.handshake()
            assert await accepted is None
            await client.send(client.record(b"fine"))
            await app.received(1)
            if when == "closing":
                app.transport.close()
                assert await client.read_until_closed() == b""
            record = bytearray(client.record(b"altered"))
            record[-1] ^= 0xFF
            await client.send(bytes(record))
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            return app.events, bytes(app.data), sample(counted, labels) - before
        finally:
            client.writer.transport.abort()
            server.close()

    seen = on_each_tls(one)
    assert seen["layer"][:2] == seen["uvloop"][:2]
    events, data, count = seen["layer"]
    assert events == ["made", "lost:SSLError"]
    assert data == b"fine"
    assert count == 1


# -- write flow control ----------------------------------------------------------------------
async def small_buffer_client(port: int, context: ssl.SSLContext) -> tuple[Any, Any]:
    """An asyncio TLS client whose socket takes little before the server must wait."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    return await asyncio.open_connection(sock=sock, ssl=context, server_hostname="localhost")


def test_a_slow_reader_pauses_the_writer_and_reading_resumes_it(pki: DevPki) -> None:
    """The layer's write flow control is the TCP transport's (uvloop's TLS has buffers and
    water marks of its own, so it is not compared here)."""

    async def main() -> tuple[list[str], int, bytes]:
        server = Server("layer", listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app, sndbuf=32 * 1024))
        reader, writer = await small_buffer_client(server.port, vehicle_context(pki))
        try:
            assert await accepted is None
            app.transport.write(b"x" * BIG)
            await asyncio.wait_for(app.paused.wait(), GUARD_S)
            queued = app.transport.get_write_buffer_size()
            received = await reader.readexactly(BIG)  # the reader catches up
            await asyncio.wait_for(asyncio.shield(app.resumed), GUARD_S)
            app.transport.write(b"after")
            received += await reader.readexactly(5)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            return app.events, queued, received
        finally:
            server.close()

    events, queued, received = run(main)
    assert events[:3] == ["made", "pause", "resume"]
    assert events[-1].startswith("lost:")
    assert queued > 0  # what waits while the application is paused is in the buffer
    assert received == b"x" * BIG + b"after"


def test_a_paused_writer_that_closes_is_resumed_before_the_connection_ends(pki: DevPki) -> None:
    """The application, paused, closes its transport (as websockets does after its close
    frame): once the reader has taken what was queued, the application's writers must be
    released (resume_writing), not left waiting until the close handshake ends, which a peer
    that never answers close_notify makes last SHUTDOWN_TIMEOUT_S."""

    async def main() -> tuple[list[str], bytes]:
        server = Server("layer", listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app, sndbuf=32 * 1024))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            await client.handshake()
            assert await accepted is None
            app.transport.write(b"y" * BIG)
            await asyncio.wait_for(app.paused.wait(), GUARD_S)
            app.transport.close()
            # Everything, up to the server's close_notify; the client never answers it.
            received = await client.read_until_closed()
            done, _ = await asyncio.wait(
                [app.resumed, app.lost], timeout=GUARD_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, "neither resumed nor lost"
            events = list(app.events)
            assert server.layer is not None
            server.layer.abort()  # not waiting for the shutdown deadline
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            return events, received
        finally:
            client.writer.transport.abort()
            server.close()

    events, received = run(main)
    assert events == ["made", "pause", "resume"]  # resumed while the connection is still up
    assert received == b"y" * BIG


def test_a_paused_writer_whose_peer_goes_is_told_of_the_loss(pki: DevPki) -> None:
    async def main() -> list[str]:
        server = Server("layer", listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app, sndbuf=32 * 1024))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            await client.handshake()
            assert await accepted is None
            app.transport.write(b"z" * BIG)
            await asyncio.wait_for(app.paused.wait(), GUARD_S)
            client.writer.transport.abort()  # the reader is gone, nothing read
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            app.transport.write(b"dropped")  # after the loss: dropped, no error
            return app.events
        finally:
            server.close()

    events = run(main)
    assert events[:2] == ["made", "pause"]
    assert events[-1].startswith("lost:")
    assert "resume" not in events


# -- aborts during the handshake -------------------------------------------------------------
@pytest.mark.parametrize("how", ["abort", "close"])
@pytest.mark.parametrize("stage", ["nothing received", "client hello answered"])
def test_ending_the_connection_during_the_handshake_fails_the_handshake(
    pki: DevPki, how: str, stage: str
) -> None:
    """Whoever awaits the handshake (the listener's door) learns that it will not finish,
    at once; the application, never connected, is told nothing."""

    async def main() -> tuple[BaseException | None, list[str], bool]:
        server = Server("layer", listener_context(pki))
        app = App()
        connecting = asyncio.ensure_future(server.connected(app))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            layer = await connecting
            if stage == "client hello answered":
                with contextlib.suppress(ssl.SSLWantReadError):
                    client.tls.do_handshake()
                await client.send(client.pending())
                assert await client.receive()  # the server's first flight
            handshake = layer.handshake
            assert handshake is not None
            getattr(layer, how)()
            settled = handshake.done()
            error = handshake.exception() if settled else None
            while await client.receive():  # what the server had sent, then the end
                pass
            return error, app.events, settled
        finally:
            client.writer.transport.abort()
            server.close()

    error, events, settled = run(main)
    assert settled
    assert isinstance(error, ConnectionAbortedError)
    assert events == []


# -- the handshake's last flight and the first records in one read -------------------------
@pytest.mark.parametrize("size", [1, 300, 40_000])
def test_records_that_come_with_the_last_handshake_flight_are_delivered(
    pki: DevPki, size: int
) -> None:
    """The layer feeds the handshake to OpenSSL in small slices and what follows it in
    record-sized ones: records in the same read as the client's Finished all arrive."""
    payload = bytes(n % 251 for n in range(size))

    async def one(kind: str) -> tuple[list[str], bytes]:
        server = Server(kind, listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            while True:
                try:
                    client.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await client.send(client.pending())
                    assert await client.receive()
            # Finished (and the certificate flight), then the data: one write.
            await client.send(client.pending() + client.record(payload))
            assert await accepted is None
            await app.received(size)
            client.writer.close()
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            return app.events, bytes(app.data)
        finally:
            client.writer.transport.abort()
            server.close()

    seen = on_each_tls(one)
    assert seen["layer"] == seen["uvloop"]
    assert seen["layer"][1] == payload


# -- a peer gone in the middle of a record ---------------------------------------------------
@pytest.mark.parametrize("ending", ["fin", "reset"])
def test_a_peer_gone_in_the_middle_of_a_record_is_a_lost_connection(
    pki: DevPki, ending: str
) -> None:
    """Whole records are delivered; the half record is not, and (no close_notify) the
    application hears of a lost connection, not of an end of stream: as from uvloop."""

    async def one(kind: str) -> tuple[list[str], bytes]:
        server = Server(kind, listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            await client.handshake()
            assert await accepted is None
            first = client.record(b"hello")
            second = client.record(b"world")
            await client.send(first + second[: len(second) // 2])
            await app.received(1)
            if ending == "fin":
                client.writer.write_eof()
            else:
                client.writer.transport.abort()
            await asyncio.wait_for(asyncio.shield(app.lost), GUARD_S)
            return app.events, bytes(app.data)
        finally:
            client.writer.transport.abort()
            server.close()

    seen = on_each_tls(one)
    assert seen["layer"] == seen["uvloop"]
    events, data = seen["layer"]
    assert data == b"hello"
    assert "eof" not in events


@pytest.mark.parametrize("ending", ["fin", "reset"])
def test_a_peer_gone_in_the_middle_of_its_client_hello_fails_the_handshake(
    pki: DevPki, ending: str
) -> None:
    async def one(kind: str) -> tuple[str, list[str]]:
        server = Server(kind, listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app))
        client = await RawClient.connect(server.port, vehicle_context(pki))
        try:
            with contextlib.suppress(ssl.SSLWantReadError):
                client.tls.do_handshake()
            hello = client.pending()
            await client.send(hello[: len(hello) // 2])
            if ending == "fin":
                client.writer.write_eof()
            else:
                client.writer.transport.abort()
            error = await asyncio.wait_for(accepted, GUARD_S)
            return type(error).__name__, app.events
        finally:
            client.writer.transport.abort()
            server.close()

    seen = on_each_tls(one)
    assert seen["layer"] == seen["uvloop"]
    error, events = seen["layer"]
    assert error in ("ConnectionResetError", "ConnectionAbortedError")
    assert events == []


# -- bad certificates ------------------------------------------------------------------------
def _client_files(directory: Path, pki: DevPki, which: str) -> tuple[Path, Path]:
    """A client certificate and key the listener must refuse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{which}.crt", directory / f"{which}.key"
    if which == "server certificate":  # the right CA, but for servers only (EKU)
        return pki.server_cert, pki.server_key
    if which == "other ca":
        ca_cert, ca_key = generate_ca("some other CA")
        cert, key = issue_client_cert(ca_cert, ca_key, VIN)
    elif which == "self-signed":
        cert, key = generate_ca(VIN)
    else:  # expired yesterday, from the right CA
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        ca_key: Any = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        _, key = issue_client_cert(ca_cert, ca_key, VIN)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, VIN)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
    write_cert(cert_path, cert)
    write_key(key_path, key)
    return cert_path, key_path


@pytest.mark.parametrize(
    ("which", "alert"),
    [
        ("other ca", "unknown_ca"),
        ("self-signed", "unknown_ca"),
        ("expired", "certificate_expired"),
        ("server certificate", "unsupported_certificate"),
    ],
)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_bad_client_certificate_fails_the_handshake_and_is_counted(
    pki: DevPki, tmp_path: Path, which: str, alert: str, version: str
) -> None:
    cert, key = _client_files(tmp_path, pki, which)
    context = client_ssl_context(cert, key, pki.ca_cert)
    if version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    labels = {"listener": "tesla", "alert": alert}

    async def one(kind: str) -> tuple[str, list[str], float]:
        before = sample("fleetgate_tls_handshake_errors_total", labels)
        server = Server(kind, listener_context(pki))
        app = App()
        accepted = asyncio.ensure_future(server.accept(app))
        try:
            try:
                reader, writer = await asyncio.open_connection(
                    LOOPBACK, server.port, ssl=context, server_hostname="localhost"
                )
                await reader.read()  # TLS 1.3: the client learns of it on reading
                writer.transport.abort()
            except (OSError, ssl.SSLError):
                pass
            error = await asyncio.wait_for(accepted, GUARD_S)
            assert isinstance(error, ssl.SSLError), error
            return (
                error.reason or "",
                app.events,
                (sample("fleetgate_tls_handshake_errors_total", labels) - before),
            )
        finally:
            server.close()

    seen = on_each_tls(one)
    assert seen["layer"] == seen["uvloop"]
    _reason, events, counted = seen["layer"]
    assert events == []
    assert counted == 1
