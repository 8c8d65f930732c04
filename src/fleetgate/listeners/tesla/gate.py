"""The Tesla listener's door: connection caps before TLS, one deadline to the upgrade.

The listener's sockets are accepted here, not by ``loop.create_server``: every accepted
socket

1. takes a slot of the listener's :class:`~fleetgate.listeners.limits.ConnectionLimiter`
   (total and per address) before a byte is read, or is closed at once: a refusal costs
   no TLS handshake;
2. gets its TLS handshake from :class:`~fleetgate.listeners.tesla.tlslayer.TlsLayer`
   over a plain transport of the loop (``loop.connect_accepted_socket``), with the door's
   *current* context, so a certificate reloaded on SIGHUP serves every new handshake while
   connected vehicles keep their sessions (the layer holds ~9 KiB less per idle vehicle
   than uvloop's TLS, and behaves the same: see its module);
3. must be upgraded to a WebSocket within ``tesla.handshake_timeout_s`` of the accept,
   TLS and HTTP upgrade together, however slowly its bytes come;
4. is then a websockets connection like any other: websockets' own connection handler
   (upgrade, ``process_request``, the listener's handler) runs it.

Why sockets are accepted here rather than by ``create_server``: the caps are checked before
the loop makes a transport (and its protocol) for a socket at all.

Refusals and deadlines are counted in ``fleetgate_connections_refused_total{protocol=
"tesla", reason}`` and logged rate-limited with the peer; a handshake the TLS layer refuses
(no certificate, unknown CA, plaintext, TLS below 1.2) also has its alert counted by
:mod:`fleetgate.listeners.tesla.tls_alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server
from websockets.protocol import State
from websockets.server import ServerProtocol

from fleetgate.listeners.limits import HANDSHAKE_TIMEOUT, ConnectionLimiter
from fleetgate.listeners.tesla.oversize import VehicleConnection
from fleetgate.listeners.tesla.tlslayer import TlsLayer
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog

log = logging.getLogger("fleetgate.tesla")

TLS_FAILED = "tls_handshake_failed"
_ACCEPT_FAILED_LOG = LimitedLog(log, "tesla.accept_failed")
# After accept() fails for want of descriptors, wait this long before trying again.
_ACCEPT_BACKOFF_S = 0.5


class _Slot:
    """One connection's place under the caps, given back exactly once."""

    __slots__ = ("ip", "limiter", "taken")

    def __init__(self, limiter: ConnectionLimiter, ip: str) -> None:
        self.limiter = limiter
        self.ip = ip
        self.taken = True

    def release(self) -> None:
        if self.taken:
            self.taken = False
            self.limiter.release(self.ip)


class _Accepted:
    """A socket accepted under the caps, until the event loop takes it over."""

    __slots__ = ("conn", "handed_over", "peer", "slot")

    def __init__(self, conn: socket.socket, peer: str, slot: _Slot) -> None:
        self.conn = conn
        self.peer = peer
        self.slot = slot
        self.handed_over = False


class GatedConnection(VehicleConnection):
    """A vehicle connection that gives its slot back when its transport is lost, and
    drops its upgrade deadline once the upgrade is over."""

    # Slots, not __dict__ entries: past 30 attributes CPython stops sharing the instance
    # dict's keys between connections and each gets a 1.6 KB dict of its own (websockets
    # sets 27, the connection 30 once made).
    __slots__ = ("deadline", "slot")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot: _Slot | None = None
        self.deadline: asyncio.TimerHandle | None = None

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        # Upgraded, or refused (websockets then aborts the connection): either way the
        # deadline has nothing left to do, and its timer would hold ~0.5 KB until then.
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._drop_deadline()

    def _drop_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        # The TLS layer calls it only after connection_made (never for a failed handshake).
        try:
            self._drop_deadline()
            super().connection_lost(exc)
        finally:
            if self.slot is not None:
                self.slot.release()


def listening_sockets(
    host: str | None, port: int, reuse_port: bool, backlog: int
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port``, as ``create_server``
    makes them (one per address ``host`` resolves to; all interfaces for None)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Door:
    """Accepts the Tesla listener's sockets and hands each to websockets after TLS.

    ``server`` is a websockets :class:`Server` built by ``serve()`` (its connection
    handler: upgrade, ``process_request``, the listener's handler); :meth:`listen` is
    given to it as its ``create_server``, so its ``close()`` and ``wait_closed()`` work
    on the door as on an asyncio server. ``new_connection`` builds the websockets
    connection of one socket.
    """

    def __init__(
        self,
        limiter: ConnectionLimiter,
        ssl_context: ssl.SSLContext,
        handshake_timeout_s: float,
        new_connection: Callable[[Server], GatedConnection],
    ) -> None:
        self.limiter = limiter
        self.ssl_context = ssl_context  # replaced on reload; each handshake takes the current
        self.handshake_timeout_s = handshake_timeout_s
        self.new_connection = new_connection
        self.server: Server | None = None
        self.sockets: tuple[socket.socket, ...] = ()
        self._accepting: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    # -- what websockets' Server uses of an asyncio.Server --------------------------------
    def bind(self, host: str | None, port: int, reuse_port: bool, backlog: int) -> None:
        self.sockets = tuple(listening_sockets(host, port, reuse_port, backlog))

    async def listen(self) -> Door:
        """Start accepting (websockets' ``create_server``)."""
        for sock in self.sockets:
            task = self._loop.create_task(self._accept(sock), name="tesla-accept")
            self._accepting.add(task)
        return self

    def close(self) -> None:
        """Stop accepting; handshakes in progress are abandoned (sockets closed)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        tasks = {*self._accepting, *self._handshakes}
        if tasks:
            await asyncio.wait(tasks)

    def is_serving(self) -> bool:
        return bool(self._accepting) and not self._closed.is_set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        """Nothing to do: accepting starts in :meth:`listen`."""

    # -- one socket ------------------------------------------------------------------------
    async def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # out of descriptors (EMFILE, ENFILE) or buffers
                _ACCEPT_FAILED_LOG.error(
                    "tesla: accept failed; retrying", extra=fields(error=str(exc))
                )
                await asyncio.sleep(_ACCEPT_BACKOFF_S)
                continue
            self._admit(conn, address)

    def _admit(self, conn: socket.socket, address: Any) -> None:
        ip = str(address[0])
        peer = f"{address[0]}:{address[1]}"
        refusal = self.limiter.acquire(ip)
        if refusal is not None:
            self.limiter.refuse(peer, refusal)
            conn.close()
            return
        conn.setblocking(False)
        with contextlib.suppress(OSError):  # acks are small; do not let Nagle hold them
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted = _Accepted(conn, peer, _Slot(self.limiter, ip))
        task = self._loop.create_task(self._handshake(accepted), name=f"tls:{peer}")
        self._handshakes.add(task)
        task.add_done_callback(lambda done: self._handshake_done(done, accepted))

    def _handshake_done(self, task: asyncio.Task[None], accepted: _Accepted) -> None:
        self._handshakes.discard(task)
        if not accepted.handed_over:
            # Cancelled before the loop took the socket: it is still ours to close.
            accepted.conn.close()
            accepted.slot.release()

    async def _handshake(self, accepted: _Accepted) -> None:
        loop = self._loop
        assert self.server is not None
        connection = self.new_connection(self.server)
        connection.slot = slot = accepted.slot
        peer = accepted.peer
        deadline = loop.time() + self.handshake_timeout_s
        # From here the loop owns the socket: it closes it when the handshake fails.
        accepted.handed_over = True
        # TLS by the listener's own layer over a plain TCP transport (see tlslayer.py).
        layer = TlsLayer(self.ssl_context, connection, loop)
        handshake = layer.handshake
        assert handshake is not None
        try:
            async with asyncio.timeout_at(deadline):
                await loop.connect_accepted_socket(lambda: layer, accepted.conn)
                await handshake
        except TimeoutError:
            layer.abort()
            self.limiter.refuse(peer, HANDSHAKE_TIMEOUT, stage="tls")
            slot.release()
            return
        except asyncio.CancelledError:
            layer.abort()
            slot.release()
            raise
        except (OSError, ssl.SSLError, EOFError) as exc:
            # Refused by TLS (plaintext, no or unknown certificate, old version) or gone.
            self.limiter.refuse(peer, TLS_FAILED, error=str(exc) or type(exc).__name__)
            slot.release()
            return
        # websockets runs the upgrade now; it must be done by the same deadline.
        connection.deadline = loop.call_at(
            deadline, self._upgrade_deadline, connection, layer, peer
        )

    def _upgrade_deadline(
        self, connection: GatedConnection, transport: asyncio.BaseTransport, peer: str
    ) -> None:
        if connection.protocol.state is State.CONNECTING and not transport.is_closing():
            self.limiter.refuse(peer, HANDSHAKE_TIMEOUT, stage="websocket")
            transport.abort()  # type: ignore[attr-defined]


def connection_factory(
    max_size: int, logger: logging.Logger, **connection_options: Any
) -> Callable[[Server], GatedConnection]:
    """What websockets' ``serve()`` would build per socket, for the door to build."""

    def build(server: Server) -> GatedConnection:
        protocol = ServerProtocol(max_size=max_size, logger=logger)
        return GatedConnection(protocol, server, **connection_options)

    return build
