"""Teltonika TCP listener: the thin asyncio shell around :class:`TcpConnection`.

Each accepted socket gets a :class:`TeltonikaSession` (an ``asyncio.Protocol``). Bytes go
straight into the sans-I/O connection; the events it returns are handled in order by one
worker task per session, because handing records to the pipeline is asynchronous. The
session writes to the socket from exactly one method, :meth:`TeltonikaSession._send`, and
the record-count ack is written only after :meth:`Pipeline.accept` said the records are
safe: an ack is a promise.

Backpressure: when a session has more unhandled events than ``MAX_PENDING_EVENTS`` (the
pipeline is slow), it stops reading the socket until the worker catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, cast

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.authority import DeviceAuthority
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.pipeline import Pipeline
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.model import codec_name
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.records import now_ms
from fleetgate.runtime import ServerContext

log = logging.getLogger("fleetgate.teltonika")

PROTOCOL = "teltonika"
MAX_PENDING_EVENTS = 64
RESUME_PENDING_EVENTS = 16


class TeltonikaSession(asyncio.Protocol):
    """One tracker connection."""

    def __init__(self, listener: TeltonikaListener) -> None:
        self.listener = listener
        settings = listener.settings
        self.connection = TcpConnection(max_frame_bytes=settings.max_frame_bytes)
        self.pipeline: Pipeline = listener.pipeline
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._events: deque[TcpEvent] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._paused = False
        self._closed = False
        self._identified = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._arm_idle_timer(self.listener.settings.handshake_timeout_s)
        self._worker = loop.create_task(self._work(), name=f"teltonika:{self.peer}")
        self.listener.sessions.add(self)
        metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).inc()

    def data_received(self, data: bytes) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        events = self.connection.receive_data(data)
        if events:
            self._events.extend(events)
            self._wakeup.set()
            if len(self._events) > MAX_PENDING_EVENTS and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wakeup.set()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.listener.sessions.discard(self)
        metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).dec()
        if self._identified:  # logged like "tracker connected"
            reason = str(exc) if exc is not None else "closed"
            log.info(
                "tracker disconnected",
                extra=fields(peer=self.peer, imei=self.connection.imei, reason=reason),
            )

    # -- timers --------------------------------------------------------------------------
    def _arm_idle_timer(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_at(self._last_activity + timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per session, re-armed from the last activity, rather than one per read.
        if self._closed:
            return
        timeout = (
            self.listener.settings.idle_timeout_s
            if self._identified
            else self.listener.settings.handshake_timeout_s
        )
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_activity >= timeout:
            log.info(
                "closing idle connection",
                extra=fields(peer=self.peer, imei=self.connection.imei, idle_s=timeout),
            )
            metrics.TELTONIKA_FRAMES.labels(codec="none", result="idle_timeout").inc()
            self.close()
            return
        self._arm_idle_timer(timeout)

    # -- the worker: events in order, one ack writer -------------------------------------
    async def _work(self) -> None:
        try:
            while True:
                if not self._events:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                event = self._events.popleft()
                if self._paused and len(self._events) <= RESUME_PENDING_EVENTS:
                    self._paused = False
                    if self.transport is not None and not self._closed:
                        self.transport.resume_reading()
                await self._handle(event)
        except Exception:
            log.exception("teltonika session failed", extra=fields(peer=self.peer))
            self.close()

    async def _handle(self, event: TcpEvent) -> None:
        match event:
            case AvlFrame():
                await self._on_avl(event)
            case ImeiReceived(imei=imei):
                self._on_imei(imei)
            case KeepAlive():
                metrics.TELTONIKA_FRAMES.labels(codec="ping", result="ok").inc()
            case GprsFrame():
                await self._on_gprs(event)
            case CrcMismatch():
                metrics.TELTONIKA_FRAMES.labels(
                    codec=codec_name(event.codec), result="crc_error"
                ).inc()
                log.warning(
                    "crc mismatch; frame discarded, no ack (device will resend)",
                    extra=fields(
                        peer=self.peer,
                        imei=self.connection.imei,
                        expected_crc=f"{event.expected:04x}",
                        computed_crc=f"{event.computed:04x}",
                        frame=event.raw[:64].hex(),
                    ),
                )
            case ProtocolViolation():
                self._on_violation(event)

    def _on_imei(self, imei: str) -> None:
        accepted = self.listener.authority.allows(imei)
        self._send(self.connection.accept_imei(accepted))
        metrics.TELTONIKA_HANDSHAKES.labels(result="accepted" if accepted else "rejected").inc()
        if accepted:
            if not self._identified:
                log.info("tracker connected", extra=fields(peer=self.peer, imei=imei))
            self._identified = True
        else:
            log.warning(
                "tracker rejected: IMEI not allowed", extra=fields(peer=self.peer, imei=imei)
            )
            self.close()

    async def _on_avl(self, frame: AvlFrame) -> None:
        imei = self.connection.imei
        codec = codec_name(frame.codec)
        if imei is None or not self._identified:
            metrics.TELTONIKA_FRAMES.labels(codec=codec, result="unidentified").inc()
            self.close()
            return
        records = to_records(imei, frame, now_ms())
        if await self.pipeline.accept(records):
            self._send(self.connection.ack(len(records)))
            metrics.labelled(metrics.TELTONIKA_FRAMES, codec, "accepted").inc()
            metrics.labelled(metrics.ACKS, PROTOCOL, "acked").inc()
        else:
            # Not safe yet (sink failed or timed out): no ack, so the device resends.
            metrics.TELTONIKA_FRAMES.labels(codec=codec, result="not_acked").inc()
            metrics.ACKS.labels(protocol=PROTOCOL, result="withheld").inc()
            log.warning(
                "records not confirmed in time; ack withheld",
                extra=fields(peer=self.peer, imei=imei, records=len(records)),
            )

    async def _on_gprs(self, frame: GprsFrame) -> None:
        imei = self.connection.imei
        for message in frame.messages:
            codec = codec_name(message.codec)
            metrics.TELTONIKA_FRAMES.labels(codec=codec, result="accepted").inc()
            log.info(
                "gprs message received",
                extra=fields(
                    peer=self.peer,
                    imei=imei,
                    codec=codec,
                    type=message.type,
                    payload=message.payload[:256].hex(),
                ),
            )
        if imei is not None and self._identified:
            await self.pipeline.accept(to_records(imei, frame, now_ms()))

    def _on_violation(self, event: ProtocolViolation) -> None:
        codec = codec_name(event.codec) if event.codec is not None else "none"
        if not self._identified and event.codec is None:
            metrics.TELTONIKA_HANDSHAKES.labels(result="malformed").inc()
        metrics.TELTONIKA_FRAMES.labels(codec=codec, result="protocol_error").inc()
        log.warning(
            "protocol violation; closing connection",
            extra=fields(
                peer=self.peer,
                imei=self.connection.imei,
                reason=event.reason,
                codec=codec,
                evidence=event.evidence,
            ),
        )
        self.close()

    # -- output --------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """The one place bytes are written to the device."""
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self.transport is not None:
            self.transport.close()


class TeltonikaListener:
    """Accepts Teltonika trackers on TCP."""

    name = "teltonika"

    def __init__(
        self, settings: TeltonikaConfig, pipeline: Pipeline, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.reuse_port = reuse_port
        self.authority = DeviceAuthority(settings.allowed_imeis)
        self.sessions: set[TeltonikaSession] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TeltonikaSession(self),
            host=self.settings.host,
            port=self.settings.port,
            reuse_address=True,
            # Worker processes share the port (scale by processes; see ARCHITECTURE.md).
            reuse_port=self.reuse_port,
            backlog=1024,
        )
        log.info("teltonika listening", extra=fields(address=self.address))

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self.sessions):
            session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._server is not None else "down",
            "address": self.address,
            "connections": len(self.sessions),
        }


def create_listener(context: ServerContext) -> TeltonikaListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    settings = context.config.teltonika
    if not settings.enabled:
        return None
    return TeltonikaListener(settings, context.pipeline, context.config.shares_ports)
