"""Tesla vehicle listener: mTLS WebSocket on ``host:port`` plus the optional status port.

Transport rules follow the reference server (spec section 2):

* TLS with a **required, verified** client certificate on every connection, trusting
  Tesla's bundled production CAs (engineering ones with ``use_default_eng_ca``) plus the
  PEM certificates of ``tls.ca_file``. A client without a certificate, or with one from an
  unknown CA, fails the TLS handshake and never reaches HTTP.
* ``GET /status`` answers ``200 mtls ok``; every other path is the WebSocket endpoint, and a
  request there that is not an upgrade gets ``400``.
* The vehicle identity comes from the verified leaf certificate *after* the upgrade; if
  the certificate maps to no identity the socket is closed (``extract_sender_id_err``).
* ``status_port > 0``: a plain-HTTP listener whose ``/status`` answers ``200 ok``.
* TLS 1.2 or newer only; plaintext, missing or unknown client certificates fail the
  handshake (:mod:`fleetgate.listeners.tesla.tls`).

fleetgate's own rules for hostile peers and restarts (section ``tesla``):

* Caps on open connections, in total and per address, checked before the TLS handshake,
  and one deadline from connect to upgraded WebSocket, ``tesla.handshake_timeout_s``
  (:mod:`fleetgate.listeners.tesla.gate`). A certificate whose vehicle id is not a valid
  device id (:func:`fleetgate.records.valid_device_id`; a CN such as ``a/../b``) is
  refused like one without an identity.
* SIGHUP (:meth:`TeslaListener.reload`): the certificate files are read again; new
  handshakes use them, connected vehicles keep their sessions. Files that do not load
  leave the running certificate in place, with an error line.
* Stop: no new connections, no new frames taken; frames already taken get their ack (if
  safe) within ``tesla.shutdown_timeout_s``; then each socket gets a WebSocket close 1001
  (going away).

With no ``tls`` section (``fleetgate serve`` on embedded defaults) a development CA and
server certificate are generated under ``<data_dir>/tesla-dev-ca/`` and a loud warning is
logged: no real vehicle trusts that CA, it is for simulators and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from fleetgate.config import Config, ConfigError, TlsConfig
from fleetgate.listeners.limits import ConnectionLimiter
from fleetgate.listeners.tesla.allowlist import vin_allow_list
from fleetgate.listeners.tesla.gate import Door, connection_factory
from fleetgate.listeners.tesla.oversize import VehicleConnection
from fleetgate.listeners.tesla.tls import ca_file_warnings, server_ssl_context
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline import Pipeline
from fleetgate.pipeline.router import WILDCARD
from fleetgate.pki import init_pki
from fleetgate.protocols.tesla.limits import MAX_FRAME_BYTES
from fleetgate.protocols.tesla.ratelimit import RateLimitSettings, rate_limit_settings
from fleetgate.records import DEVICE_ID_MAX_LENGTH, valid_device_id
from fleetgate.runtime import ServerContext

if TYPE_CHECKING:
    # Loaded with the first vehicle (frame processing: protobuf, flatbuffers, cryptography).
    from fleetgate.listeners.tesla.session import SessionSettings, VehicleSession

log = logging.getLogger("fleetgate.tesla")
# The websockets library logs every open/close at INFO, duplicating socket_connected and
# socket_disconnected; its own lines go here, quiet unless configured otherwise.
ws_log = logging.getLogger("fleetgate.tesla.websockets")

DEV_CA_DIR = "tesla-dev-ca"
# The metrics' protocol label (session.PROTOCOL, which this module loads on first use).
PROTOCOL = "tesla"
# Binary messages up to the reference's limit are assembled; the bytes of larger ones are
# skipped as they arrive and the session answers them with the error reply, keeping the
# socket, as the reference does (see oversize.py). So at most this much is buffered per
# connection, however large the frame.
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES
STATUS_PATH = "/status"

_IDENTITY_LOG = LimitedLog(log, "tesla.extract_sender_id_err")


def _path(request_path: str) -> str:
    return request_path.split("?", 1)[0]


def _connection_id(header: str | None) -> str:
    """``X-TXID`` becomes the connection id when it is a UUID; otherwise a random one."""
    if header:
        with contextlib.suppress(ValueError):
            return str(uuid.UUID(header))
    return str(uuid.uuid4())


class TeslaListener:
    """Accepts Tesla vehicles over mTLS WebSocket."""

    name = "tesla"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.sessions: set[VehicleSession] = set()
        self.dev_pki_dir: Path | None = None
        self._tls_files: TlsConfig | None = None
        self._server: WsServer | None = None
        self._status_server: asyncio.Server | None = None
        self._settings: SessionSettings | None = None
        self._rate_limit: RateLimitSettings | None = None
        self._door: Door | None = None
        # data_connectors' vin_allowed check (None: every VIN may connect).
        self.allow_list = vin_allow_list(config)

    # -- configuration -------------------------------------------------------------------
    def _tls(self) -> TlsConfig:
        if self.config.tls is not None:
            return self.config.tls
        directory = self.config.data_path / DEV_CA_DIR
        pki = init_pki(directory, host="localhost")
        self.dev_pki_dir = directory
        log.warning(
            "!!! Tesla listener: no tls configured - using a DEVELOPMENT CA and server "
            "certificate generated in %s. Real vehicles will not connect; configure "
            "tls.server_cert/server_key for production. !!!",
            directory,
            extra=fields(dev_ca=str(pki.ca_cert)),
        )
        return TlsConfig(
            server_cert=str(pki.server_cert),
            server_key=str(pki.server_key),
            ca_file=str(pki.ca_cert),
        )

    def build_ssl_context(self) -> ssl.SSLContext:
        tls = self._tls_files = self._tls()
        context = server_ssl_context(tls, self.config.use_default_eng_ca)
        if tls.ca_file:
            log.info("custom_ca_file_appened", extra=fields(ca_file=tls.ca_file))
            pem = Path(tls.ca_file).read_text(encoding="ascii")
            for warning in ca_file_warnings(pem, self.config.use_default_eng_ca):
                log.warning("%s", warning)
        return context

    # -- Listener protocol ---------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: load the certificate files again for every new handshake.

        Connected vehicles keep their TLS sessions. Files that do not load keep the running
        certificate (False, and an error line)."""
        if self._door is None:
            return False
        try:
            context = self.build_ssl_context()
        except (ConfigError, OSError, ValueError) as exc:
            log.error("tls reload failed; keeping the running certificate: %s", exc)
            return False
        self._door.ssl_context = context
        log.info("tls certificate reloaded", extra=fields(**self._certificate_facts()))
        return True

    def _certificate_facts(self) -> dict[str, str]:
        """Serial and expiry of the configured server certificate, for the reload line."""
        from cryptography import x509

        tls = self._tls_files
        if tls is None or not tls.server_cert:
            return {}
        try:
            cert = x509.load_pem_x509_certificate(Path(tls.server_cert).read_bytes())
        except (OSError, ValueError):
            return {}
        return {
            "server_cert": tls.server_cert,
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }

    async def start(self) -> None:
        config = self.config
        ssl_context = self.build_ssl_context()
        own = config.tesla
        limiter = ConnectionLimiter(PROTOCOL, own.max_connections, own.max_connections_per_ip)
        door = Door(
            limiter,
            ssl_context,
            own.handshake_timeout_s,
            # What serve() would build per socket: no compression, no pings (the reference
            # never pings; vehicles keep their own connections alive).
            connection_factory(MAX_MESSAGE_BYTES, ws_log, ping_interval=None),
        )
        # Binding first: a taken port fails start-up here, with the usual OSError.
        door.bind(config.host or None, config.port, config.shares_ports, backlog=1024)
        self._door = door
        limit = rate_limit_settings(config.rate_limit)
        if limit.warning:
            log.warning("config: %s", limit.warning)
        self._rate_limit = limit
        self._settings = None  # made with the first vehicle (_session_settings)
        if ws_log.level == logging.NOTSET:
            ws_log.setLevel(logging.WARNING)
        if self.allow_list is not None:
            await self.allow_list.start()
        # websockets' server runs each connection the door hands it (upgrade,
        # process_request, the handler); the door listens in its place.
        server = serve(
            self._handle,
            process_request=self._process_request,
            open_timeout=None,  # the door's deadline covers TLS and the upgrade
            server_header=None,
            logger=ws_log,
        )
        server.create_server = door.listen  # type: ignore[assignment]
        door.server = server
        self._server = await server
        log.info(
            "tesla listening",
            extra=fields(
                address=self.address,
                rate_limit=limit.enforce,
                limit=limit.limit,
                max_connections=limiter.max_total,
                max_connections_per_ip=limiter.max_per_ip,
            ),
        )
        if config.status_port > 0:
            self._status_server = await asyncio.start_server(
                _status_client,
                config.host or None,
                config.status_port,
                reuse_address=True,
                reuse_port=config.shares_ports,
            )
            log.info("status_server_configured", extra=fields(port=self.status_port))

    async def stop(self) -> None:
        if self.allow_list is not None:
            await self.allow_list.stop()
        if self._status_server is not None:
            self._status_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._status_server.wait_closed(), 5)
            self._status_server = None
        if self._server is None:
            return
        # No new connections (handshakes in progress are dropped), no new frames taken.
        if self._door is not None:
            self._door.close()
        sessions = list(self.sessions)
        if sessions:
            timeout_s = self.config.tesla.shutdown_timeout_s
            drains = [asyncio.create_task(session.drain(timeout_s)) for session in sessions]
            _, late = await asyncio.wait(drains, timeout=timeout_s)
            if late:
                log.warning(
                    "tesla: %d vehicles still waiting for the pipeline after %g s; "
                    "closed without their acks (the vehicles resend)",
                    len(late),
                    timeout_s,
                )
            for task in late:
                task.cancel()
        # Whatever is still open gets a close 1001; handlers end.
        pending: set[asyncio.Task[None]] = set()
        for session in list(self.sessions):
            pending |= session.abandon_tasks()
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 10)
        for session in list(self.sessions):
            pending |= session.abandon_tasks()
        for task in pending:
            task.cancel()
        self._server = None

    @property
    def port(self) -> int:
        if self._server is None:
            return 0
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return 0

    @property
    def status_port(self) -> int:
        if self._status_server is None or not self._status_server.sockets:
            return 0
        return int(self._status_server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._server is not None else "down",
            "address": self.address,
            "connections": len(self.sessions),
            "tls": "development" if self.dev_pki_dir is not None else "configured",
        }

    # -- HTTP before the upgrade ---------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if _path(request.path) == STATUS_PATH:
            return connection.respond(http.HTTPStatus.OK, "mtls ok")
        upgrade = request.headers.get("Upgrade", "")
        if "websocket" not in upgrade.lower():
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Bad Request\n")
        return None

    # -- one vehicle ---------------------------------------------------------------------
    def _session_settings(self) -> SessionSettings:
        """What every session shares, made with the first vehicle: the frame processing it
        loads (protobuf, flatbuffers, cryptography) is not loaded by a server without any."""
        from fleetgate.listeners.tesla.session import SessionSettings

        config = self.config
        assert self._rate_limit is not None
        # The store takes every record and "*" matches every topic: then every topic is
        # dispatched; otherwise only the topics ``records`` names, as in the reference.
        everything = config.store.enabled or WILDCARD in config.records
        self._settings = SessionSettings(
            self.pipeline,
            None if everything else frozenset(config.records),
            config.reliable_ack_sources,
            self._rate_limit,
            tracked_vins=frozenset(config.vins_signal_tracking_enabled),
        )
        return self._settings

    def _handle(self, ws: ServerConnection) -> Awaitable[None]:
        """websockets' handler: what serves an upgraded socket, the session's own run()
        once the vehicle code is loaded. A plain function: an idle vehicle then waits in
        the session's coroutine alone, not in one more frame (~0.3 KB) above it."""
        if self._settings is None:
            return self._handle_first(ws)
        return self._open_session(ws)

    async def _handle_first(self, ws: ServerConnection) -> None:
        # The first vehicle's imports (~0.3 s) run beside the loop, not in it.
        await asyncio.to_thread(_load_vehicle_code)
        await self._open_session(ws)

    def _open_session(self, ws: ServerConnection) -> Awaitable[None]:
        """The session's run() for an upgraded socket, or what refuses the vehicle.

        Not a coroutine: what only the upgrade needs (headers, the peer certificate's
        bytes) is gone before the session waits for its first frame.
        """
        from fleetgate.listeners.tesla.session import VehicleSession
        from fleetgate.protocols.tesla.identity import IdentityError, identity_from_certificate

        settings = self._settings or self._session_settings()
        headers = ws.request.headers if ws.request is not None else None
        socket_id = _connection_id(headers.get("X-TXID") if headers else None)
        network_interface = headers.get("X-Network-Interface", "") if headers else ""
        version = headers.get("Version", "") if headers else ""
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            if not der:
                raise IdentityError("no client certificate")
            identity = identity_from_certificate(der)
            if not valid_device_id(str(identity.device_id)):
                # It would name files, URLs, topics and subjects: refused, not rewritten.
                raise IdentityError(
                    f"vehicle id {str(identity.device_id)[:DEVICE_ID_MAX_LENGTH]!r} is not a "
                    "valid device id (letters, digits and ._:- only, at most "
                    f"{DEVICE_ID_MAX_LENGTH} characters)"
                )
        except IdentityError as exc:
            _IDENTITY_LOG.warning(
                "extract_sender_id_err",
                extra=fields(socket_id=socket_id, remote=str(ws.remote_address), error=str(exc)),
            )
            return ws.close(1008, "unauthorized certificate")
        if self.allow_list is not None and not self.allow_list.admits(identity.device_id):
            # As the reference: the connection is dropped, no close frame, nothing dispatched.
            ws.transport.close()
            return _nothing()
        assert isinstance(ws, VehicleConnection)  # built by the door
        session = VehicleSession(
            settings,
            ws,
            identity,
            socket_id,
            network_interface=network_interface,
            client_version=version,
            on_close=self._forget,
        )
        self.sessions.add(session)
        metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).inc()
        log.info(
            "socket_connected",
            extra=fields(
                vin=session.device_id,
                sender_id=identity.sender_id,
                txid=socket_id,
                network_interface=network_interface,
                path=ws.request.path if ws.request is not None else "",
                user_agent=headers.get("User-Agent", "") if headers else "",
                version=version,
            ),
        )
        # websockets keeps the handshake for the connection's life, a few KiB of parsed
        # headers per idle vehicle, and reads only whether there was a request (None means
        # "still in the handshake"): the path stays, the headers go.
        if ws.request is not None:
            ws.request = Request(ws.request.path, Headers())
        ws.response = None
        return session.run()

    def _forget(self, session: VehicleSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).dec()


async def _nothing() -> None:
    """Nothing left to do for a connection (the refused vehicle's socket is closed)."""


def _load_vehicle_code() -> None:
    """Import what the first vehicle needs: frame processing and certificate parsing."""
    import fleetgate.listeners.tesla.session
    import fleetgate.protocols.tesla.identity  # noqa: F401


async def _status_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Plain-HTTP status port: ``GET /status`` → ``200 ok``; anything else 404."""
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        found = len(parts) >= 2 and _path(parts[1]) == STATUS_PATH
        body = b"ok" if found else b"404 page not found\n"
        status = b"200 OK" if found else b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def create_listener(context: ServerContext) -> TeslaListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    if not context.config.tesla_enabled:
        return None
    return TeslaListener(context.config, context.pipeline)
