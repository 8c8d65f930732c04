"""Teltonika TCP listener: the thin asyncio shell around :class:`TcpConnection`.

Each accepted socket gets a :class:`TeltonikaSession` (an ``asyncio.Protocol``). Bytes go
straight into the sans-I/O connection; the events it returns are handled in order by one
worker task per session, because handing records to the pipeline is asynchronous. The
session writes to the socket from exactly one method, :meth:`TeltonikaSession._send`, and
the record-count ack is written only after the pipeline said the records are safe
(:meth:`Pipeline.accept_then`, which answers from the ledger as soon as they are): an ack
is a promise. The worker takes the next event only once the frame before it is answered.

Backpressure: when a session has more unhandled events than ``MAX_PENDING_EVENTS`` (the
pipeline is slow), it stops reading the socket until the worker catches up.

Hostile peers (see :mod:`fleetgate.listeners.limits`): a connection takes a slot of the
listener's caps before any byte is read. Its time is bounded by deadlines that bytes
trickling in never extend: the IMEI must be accepted within ``handshake_timeout_s`` of the
connect; after that the device may be silent for at most ``idle_timeout_s`` and must finish
each frame within ``idle_timeout_s`` of its first byte. Time the server spends on the
device's frames (the pipeline, a paused socket) never counts against it.

Stop: the listener stops accepting, every session stops reading, the frames already
received are answered (ack if their records are safe) within ``shutdown_timeout_s``, and
the socket is closed after the last ack (FIN once the write buffer is flushed).

Device authority (:mod:`.authority`): the IMEI is checked against the configured list; the
handshake metric says whether it was ``known``; strict mode answers ``00`` and closes.

Commands (:mod:`.commands`): the session sends a queued command itself, from its worker,
only when the device is between frames: no received frame is waiting for its ack and no
frame is half-received. A tracker that has sent a frame reads the next four bytes as the
ack; a command written then would be read as a wrong ack (and the device would resend)
and its own bytes would be lost. One command is in flight at a time; the device's codec
12/14 response (or nACK) answers it, and no answer within ``command_timeout_s`` times it
out. Responses are also records (topic ``command_response``), as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, cast

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.limits import (
    FRAME_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    ConnectionLimiter,
)
from fleetgate.listeners.teltonika.acked import AckedCounter
from fleetgate.listeners.teltonika.authority import DeviceGate
from fleetgate.listeners.teltonika.command_journal import Command
from fleetgate.listeners.teltonika.commands import CommandCenter
from fleetgate.listeners.teltonika.io_naming import IoTables
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline import Pipeline
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    FrameRefused,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.gprs import TYPE_NACK, TYPE_RESPONSE, encode_command
from fleetgate.protocols.teltonika.io_names import IoTable
from fleetgate.protocols.teltonika.model import CODEC_12, CODEC_14, GprsMessage, codec_name
from fleetgate.protocols.teltonika.records import gprs_message_data, to_records
from fleetgate.records import now_ms
from fleetgate.runtime import ServerContext

log = logging.getLogger("fleetgate.teltonika")

PROTOCOL = "teltonika"
_count_acked = AckedCounter(PROTOCOL)
MAX_PENDING_EVENTS = 64
RESUME_PENDING_EVENTS = 16

# Lines a device (or a failing backend) could otherwise cause once per frame.
_CRC_LOG = LimitedLog(log, "teltonika.crc_mismatch")
_VIOLATION_LOG = LimitedLog(log, "teltonika.protocol_violation")
_REJECTED_LOG = LimitedLog(log, "teltonika.imei_rejected")
_WITHHELD_LOG = LimitedLog(log, "teltonika.ack_withheld")
_IMPOSSIBLE_LOG = LimitedLog(log, "teltonika.impossible_value")


class TeltonikaSession(asyncio.Protocol):
    """One tracker connection."""

    def __init__(self, listener: TeltonikaListener) -> None:
        self.listener = listener
        settings = listener.settings
        self.connection = TcpConnection(max_frame_bytes=settings.max_frame_bytes)
        self.pipeline: Pipeline = listener.pipeline
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._ip = ""
        self._events: deque[TcpEvent] = deque()
        # The worker's wait for something to do (see _wake): a bare future costs a third of
        # an asyncio.Event per frame.
        self._waiter: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake_deadline = 0.0
        self._last_activity = 0.0
        # When the first byte of the frame still incomplete in the buffer arrived.
        self._frame_started: float | None = None
        self._handling = False
        # The AVL frame appended and not answered yet: its record count and codec name
        # (the ledger answers it through _answer_avl; the worker waits for that).
        self._unanswered: tuple[int, str] | None = None
        self._paused = False
        self._closed = False
        self._draining = False
        self._counted = False  # holds a slot of the listener's caps
        self._identified = False
        # The IMEI accepted for this connection, and the IO table that names its elements.
        self._device: str | None = None
        self._io_table: IoTable | None = None
        # The command sent and not answered yet, and its timer.
        self._command: Command | None = None
        self._command_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._ip = str(peer[0]) if peer else "?"
        listener = self.listener
        refusal = listener.limiter.acquire(self._ip)
        if refusal is not None or listener.stopping:
            self._closed = True
            if refusal is not None:
                listener.limiter.refuse(self.peer, refusal)
            self.transport.close()
            return
        self._counted = True
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last_activity = now
        self._handshake_deadline = now + listener.settings.handshake_timeout_s
        self._timer = loop.call_at(self._handshake_deadline, self._check_deadlines)
        self._worker = loop.create_task(self._work(), name=f"teltonika:{self.peer}")
        listener.sessions.add(self)
        metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).inc()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._draining:
            return  # stopping: frames not complete yet are resent by the device
        now = asyncio.get_running_loop().time()
        self._last_activity = now
        connection = self.connection
        events = connection.receive_data(data)
        if not connection.buffered:
            self._frame_started = None
        elif events or self._frame_started is None:
            # A new frame began in this chunk: its bytes have idle_timeout_s to arrive.
            self._frame_started = now
        if events:
            if len(events) == 1 and self._take_now(events[0]):
                return
            self._events.extend(events)
            self._wake()
            if len(self._events) > MAX_PENDING_EVENTS and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
        self._drop_command("the connection closed before the device answered")
        commands = self.listener.commands
        if commands is not None and self._device is not None:
            commands.detach(self._device, self)
        if self._counted:
            self._counted = False
            self.listener.limiter.release(self._ip)
            self.listener.sessions.discard(self)
            metrics.OPEN_CONNECTIONS.labels(protocol=PROTOCOL).dec()
        if self._identified:  # logged like "tracker connected"
            reason = str(exc) if exc is not None else "closed"
            log.info(
                "tracker disconnected",
                extra=fields(peer=self.peer, imei=self.connection.imei, reason=reason),
            )

    # -- deadlines -------------------------------------------------------------------------
    def _check_deadlines(self) -> None:
        """One timer per session: close it past a deadline, else re-arm for the next one."""
        self._timer = None
        if self._closed or self._draining:
            return
        settings = self.listener.settings
        loop = asyncio.get_running_loop()
        now = loop.time()
        reason: str | None = None
        if not self._identified:
            deadline = self._handshake_deadline
            reason = HANDSHAKE_TIMEOUT
        elif self._paused or self._handling or self._events or self._unanswered is not None:
            # The device waits for us (an ack, a paused socket): its clock does not run.
            self._last_activity = now
            deadline = now + settings.idle_timeout_s
        else:
            deadline = self._last_activity + settings.idle_timeout_s
            reason = IDLE_TIMEOUT
            if self._frame_started is not None:
                frame_deadline = self._frame_started + settings.idle_timeout_s
                if frame_deadline <= deadline:
                    deadline, reason = frame_deadline, FRAME_TIMEOUT
        if reason is not None and now >= deadline:
            self.listener.limiter.refuse(
                self.peer,
                reason,
                imei=self.connection.imei,
                buffered=self.connection.buffered,
            )
            self.close()
            return
        self._timer = loop.call_at(deadline, self._check_deadlines)

    # -- the worker: events in order, one ack writer -------------------------------------
    async def _work(self) -> None:
        try:
            while True:
                if self._unanswered is not None:  # the next frame waits for this one's ack
                    if self._closed:
                        return
                    await self._idle()
                    continue
                if not self._events:
                    if self._closed or self._draining:
                        return
                    self._send_next_command()
                    await self._idle()
                    continue
                event = self._events.popleft()
                if self._paused and len(self._events) <= RESUME_PENDING_EVENTS:
                    self._paused = False
                    if self.transport is not None and not (self._closed or self._draining):
                        self.transport.resume_reading()
                self._handling = True
                try:
                    await self._handle(event)
                finally:
                    self._handling = False
                    self._last_activity = asyncio.get_running_loop().time()
        except Exception:
            log.exception("teltonika session failed", extra=fields(peer=self.peer))
            self.close()

    async def _idle(self) -> None:
        """Wait for :meth:`_wake`."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

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
            case FrameRefused():
                metrics.TELTONIKA_FRAMES.labels(
                    codec=codec_name(event.codec), result="impossible_value"
                ).inc()
                _IMPOSSIBLE_LOG.warning(
                    "frame refused: a value that cannot be true; no ack (the device keeps it)",
                    extra=fields(
                        peer=self.peer,
                        imei=self.connection.imei,
                        reason=event.reason,
                        frame=event.raw[:64].hex(),
                    ),
                )
            case CrcMismatch():
                metrics.TELTONIKA_FRAMES.labels(
                    codec=codec_name(event.codec), result="crc_error"
                ).inc()
                _CRC_LOG.warning(
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
        listener = self.listener
        admission = listener.gate.admit(imei)
        accepted = admission.allowed
        self._send(self.connection.accept_imei(accepted))
        metrics.labelled(
            metrics.TELTONIKA_HANDSHAKES, "accepted" if accepted else "rejected", admission.device
        ).inc()
        if accepted:
            if not self._identified:
                log.info(
                    "tracker connected",
                    extra=fields(peer=self.peer, imei=imei, device=admission.device),
                )
            elif self._device is not None and listener.commands is not None:
                # A repeated IMEI frame (spec 3.5): the session starts over as this IMEI.
                self._drop_command("the device identified itself again")
                listener.commands.detach(self._device, self)
            self._identified = True
            self._device = imei
            self._io_table = listener.io_tables.for_imei(imei)
            if listener.commands is not None:
                listener.commands.attach(imei, self)
        else:
            _REJECTED_LOG.warning(
                "tracker rejected: IMEI not allowed", extra=fields(peer=self.peer, imei=imei)
            )
            self.close()

    def _take_now(self, event: TcpEvent) -> bool:
        """Hand an AVL frame to the pipeline here, without a step of the worker (a loop pass
        later), when the worker has nothing else to do first and the pipeline has room; the
        ack still waits for the pipeline's answer (_answer_avl). False: the worker does it."""
        if (
            type(event) is not AvlFrame
            or self._events
            or self._unanswered is not None
            or self._handling
            or self._command is not None
            or not self._identified
            or self.connection.imei is None
        ):
            return False
        try:
            records = to_records(self.connection.imei, event, now_ms(), self._io_table)
            self._unanswered = (len(records), codec_name(event.codec))
            if self.pipeline.accept_now(records, self._answer_avl):
                return True
        except Exception:  # as the worker does with a frame that fails
            log.exception("teltonika session failed", extra=fields(peer=self.peer))
            self.close()
            return True
        self._unanswered = None
        return False

    async def _on_avl(self, frame: AvlFrame) -> None:
        imei = self.connection.imei
        codec = codec_name(frame.codec)
        if imei is None or not self._identified:
            metrics.TELTONIKA_FRAMES.labels(codec=codec, result="unidentified").inc()
            self.close()
            return
        records = to_records(imei, frame, now_ms(), self._io_table)
        # Answered from the ledger (the spool's commit reaching the loop), not when this
        # task resumes: that is a loop step later, behind every frame read meanwhile.
        self._unanswered = (len(records), codec)
        await self.pipeline.accept_then(records, self._answer_avl)

    def _answer_avl(self, safe: bool) -> None:
        """The pipeline's answer for the frame in :attr:`_unanswered`: ack it or not."""
        unanswered, self._unanswered = self._unanswered, None
        if unanswered is None:
            return
        count, codec = unanswered
        self._last_activity = asyncio.get_running_loop().time()
        if safe:
            self._send(self.connection.ack(count))
            _count_acked(codec)
        else:
            # Not safe yet (sink failed or timed out): no ack, so the device resends.
            metrics.TELTONIKA_FRAMES.labels(codec=codec, result="not_acked").inc()
            metrics.ACKS.labels(protocol=PROTOCOL, result="withheld").inc()
            _WITHHELD_LOG.warning(
                "records not confirmed in time; ack withheld",
                extra=fields(peer=self.peer, imei=self.connection.imei, records=count),
            )
        self._wake()

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
            self._on_answer(message)
        if imei is not None and self._identified:
            await self.pipeline.accept(to_records(imei, frame, now_ms()))

    def _on_violation(self, event: ProtocolViolation) -> None:
        codec = codec_name(event.codec) if event.codec is not None else "none"
        if not self._identified and event.codec is None:
            metrics.TELTONIKA_HANDSHAKES.labels(result="malformed", device="none").inc()
        metrics.TELTONIKA_FRAMES.labels(codec=codec, result="protocol_error").inc()
        _VIOLATION_LOG.warning(
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

    # -- commands ------------------------------------------------------------------------
    def wake(self) -> None:
        """A command is queued for this device (:class:`.commands.CommandLink`)."""
        self._wake()

    def _wake(self) -> None:
        """Let the worker look again (at its events, a closed socket, a queued command);
        a no-op while it is busy, since it looks at all of them before it waits."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send_next_command(self) -> None:
        """Send the device's next command if it is between frames (module docstring)."""
        commands = self.listener.commands
        imei = self._device
        if (
            commands is None
            or imei is None
            or self._command is not None
            or not self._identified
            or self._closed
            or self._draining
            or self._events
            or self.connection.buffered
        ):
            return
        command = commands.take(imei)
        if command is None:
            return
        self._send(
            encode_command(
                command.command,
                codec=command.codec,
                imei=imei if command.codec == CODEC_14 else None,
            )
        )
        self._command = command
        commands.sent(command)
        timeout = self.listener.settings.command_timeout_s
        self._command_timer = asyncio.get_running_loop().call_later(
            timeout, self._command_expired, command
        )

    def _on_answer(self, message: GprsMessage) -> None:
        """A codec 12/14 response or nACK answers the command in flight."""
        command = self._command
        commands = self.listener.commands
        if command is None or commands is None or message.codec not in (CODEC_12, CODEC_14):
            return
        if message.type == TYPE_RESPONSE:
            data = gprs_message_data(message)
            commands.answered(command, data["text"] if "text" in data else data["hex"])
        elif message.type == TYPE_NACK:
            commands.nacked(command)
        else:
            return
        self._clear_command()
        self._wake()  # the next queued command may go

    def _command_expired(self, command: Command) -> None:
        if self._command is not command:
            return
        self._command_timer = None
        self._drop_command(
            f"no answer within command_timeout_s ({self.listener.settings.command_timeout_s:g} s)"
        )
        self._wake()

    def _drop_command(self, detail: str) -> None:
        """The command in flight will get no answer here: it timed out."""
        command = self._command
        commands = self.listener.commands
        if command is None or commands is None:
            return
        self._clear_command()
        commands.timed_out(command, detail)

    def _clear_command(self) -> None:
        self._command = None
        if self._command_timer is not None:
            self._command_timer.cancel()
            self._command_timer = None

    # -- output --------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """The one place bytes are written to the device."""
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, without waiting for the frames in progress (the device resends)."""
        if self._worker is not None:
            self._worker.cancel()
        self.close()

    async def drain(self) -> None:
        """Stop reading, answer the frames already received, then close (FIN after the
        last ack). The listener bounds how long this may take."""
        self._draining = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._wake()
        worker = self._worker
        if worker is not None and not self._closed:
            # The worker ends once its queue is empty (see _work): every received frame
            # got its answer.
            await asyncio.shield(worker)
        self.close()


class TeltonikaListener:
    """Accepts Teltonika trackers on TCP."""

    name = "teltonika"

    def __init__(
        self,
        settings: TeltonikaConfig,
        pipeline: Pipeline,
        reuse_port: bool = False,
        commands: CommandCenter | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.reuse_port = reuse_port
        self.gate = DeviceGate.from_settings(settings)
        self.io_tables = IoTables(settings)
        self.commands = commands
        self.limiter = ConnectionLimiter(
            PROTOCOL, settings.max_connections, settings.max_connections_per_ip
        )
        self.sessions: set[TeltonikaSession] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        await self.gate.start()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: TeltonikaSession(self),
                host=self.settings.host,
                port=self.settings.port,
                reuse_address=True,
                # Worker processes share the port (scale by processes; see ARCHITECTURE.md).
                reuse_port=self.reuse_port,
                backlog=1024,
            )
        except BaseException:
            await self.gate.stop()
            raise
        log.info(
            "teltonika listening",
            extra=fields(
                address=self.address,
                max_connections=self.limiter.max_total,
                max_connections_per_ip=self.limiter.max_per_ip,
            ),
        )

    async def stop(self) -> None:
        """Stop accepting; answer what was received (bounded); close every connection."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        sessions = list(self.sessions)
        if sessions:
            drains = [asyncio.create_task(session.drain()) for session in sessions]
            _, late = await asyncio.wait(drains, timeout=self.settings.shutdown_timeout_s)
            if late:
                log.warning(
                    "teltonika: %d connections still waiting for the pipeline after %g s; "
                    "closed without their ack (the devices resend)",
                    len(late),
                    self.settings.shutdown_timeout_s,
                )
            for task in late:
                task.cancel()
            for session in sessions:
                session.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None
        await self.gate.stop()

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
            "authority": self.gate.health(),
        }


def create_listener(context: ServerContext) -> TeltonikaListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    settings = context.config.teltonika
    if not settings.enabled:
        return None
    commands = context.commands if isinstance(context.commands, CommandCenter) else None
    return TeltonikaListener(settings, context.pipeline, context.config.shares_ports, commands)
