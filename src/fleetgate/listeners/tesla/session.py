"""One vehicle WebSocket: the thin asyncio shell around the sans-I/O :class:`FrameProcessor`.

Per binary frame: rate limiter, then ``FrameProcessor.process``; immediate replies (error
frames, acks that need no sink) are queued for the writer at once. Frames that produced
records go to the pipeline (:meth:`~fleetgate.pipeline.Pipeline.accept_now`, or
``accept_then`` when it must wait for room), which answers each frame from the ledger once
the ack policy says it is safe; only then is its ack queued: an ack is a promise (for a
topic in ``reliable_ack_sources`` the pipeline waits for that sink too). Frames of one
requirement are answered in order (the ledger's groups are).

Reading never waits for an ack: up to ``MAX_IN_FLIGHT`` frames per connection may be
waiting for the pipeline; beyond that the reader pauses (backpressure reaches the vehicle
through TCP). Outgoing frames go through the session's
:class:`~fleetgate.listeners.tesla.writer.FrameWriter`, the only place that writes to the
socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.typing import Data

from fleetgate.listeners.tesla.oversize import OversizeMessage, VehicleConnection
from fleetgate.listeners.tesla.writer import FrameWriter
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline import Pipeline
from fleetgate.protocols.tesla.core import (
    OUTCOME_DISPATCH,
    OUTCOME_TOO_BIG,
    FrameProcessor,
    FrameResult,
    connectivity_record,
    peek_topic,
)
from fleetgate.protocols.tesla.identity import VehicleIdentity
from fleetgate.protocols.tesla.ratelimit import RateLimitSettings, SlidingWindowLimiter
from fleetgate.records import now_ms

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fleetgate.records import Record

log = logging.getLogger("fleetgate.tesla")

PROTOCOL = "tesla"
MAX_IN_FLIGHT = 64
CONNECTIVITY = "connectivity"


# Lines a vehicle or a failing backend could otherwise cause once per frame.
_WITHHELD_LOG = LimitedLog(log, "tesla.ack_withheld")
_PIPELINE_CLOSED_LOG = LimitedLog(log, "tesla.pipeline_closed")
_SOCKET_ERR_LOG = LimitedLog(log, "tesla.socket_err")
_TEXT_FRAME_LOG = LimitedLog(log, "tesla.text_frame")

_ACKS_SENT = metrics.ACKS.labels(protocol=PROTOCOL, result="acked")
_ACKS_WITHHELD = metrics.ACKS.labels(protocol=PROTOCOL, result="withheld")
_ACKS_SOCKET_GONE = metrics.ACKS.labels(protocol=PROTOCOL, result="socket_gone")
_ADD_ACK_SENT = metrics.adder(_ACKS_SENT)  # once per acked frame

_Child = Any  # a labelled prometheus metric
_Add = Callable[[float], None]  # metrics.adder of a child
_FRAME_COUNTERS: dict[str, tuple[_Add, _Add, _Add]] = {}
_SIGNAL_COUNTERS: dict[str, _Child] = {}
_MAX_CACHED_TOPICS = 256  # topics come from vehicles; do not cache without bound


def _signal_counter(record_type: str) -> _Child:
    """The ``signal_count`` child of a record type (counted for every frame over the
    metrics-only limiter, so looked up once, like :func:`_frame_counters`)."""
    child = _SIGNAL_COUNTERS.get(record_type)
    if child is None:
        child = metrics.TESLA_SIGNAL_COUNT.labels(record_type)
        if len(_SIGNAL_COUNTERS) < _MAX_CACHED_TOPICS:
            _SIGNAL_COUNTERS[record_type] = child
    return child


def _frame_counters(record_type: str) -> tuple[_Add, _Add, _Add]:
    """The adders (:func:`metrics.adder`) of record_total, record_size_bytes_total and
    dispatch_total for a record type.

    Resolving labels costs more than the increment; the hot path looks them up once.
    """
    children = _FRAME_COUNTERS.get(record_type)
    if children is None:
        children = (
            metrics.adder(metrics.TESLA_RECORDS.labels(record_type=record_type)),
            metrics.adder(metrics.TESLA_RECORD_SIZE_BYTES.labels(record_type=record_type)),
            metrics.adder(metrics.TESLA_DISPATCH.labels(record_type=record_type)),
        )
        if len(_FRAME_COUNTERS) < _MAX_CACHED_TOPICS:
            _FRAME_COUNTERS[record_type] = children
    return children


class SessionSettings:
    """What every session of one listener shares (built once at listener start)."""

    def __init__(
        self,
        pipeline: Pipeline,
        configured_topics: frozenset[str] | None,
        reliable_sinks: Mapping[str, str],
        rate_limit: RateLimitSettings,
        max_frame_bytes: int = 1_000_000,
        *,
        tracked_vins: frozenset[str] = frozenset(),
    ) -> None:
        self.pipeline = pipeline
        self.tracked_vins = tracked_vins
        self.configured_topics = configured_topics
        self.reliable_sinks = dict(reliable_sinks)
        self.rate_limit = rate_limit
        self.max_frame_bytes = max_frame_bytes
        # None: every topic goes somewhere (the store, or a "*" rule).
        self.connectivity = configured_topics is None or CONNECTIVITY in configured_topics


class VehicleSession:
    """One connected vehicle, from the upgraded WebSocket to disconnect."""

    # Rarely set, so class defaults (nothing per idle vehicle):
    # what waits for the next answer from the pipeline (drain, the in-flight limit);
    _answered: asyncio.Future[None] | None = None
    # a frame taken in data_received that must wait for the pipeline, handed over by this
    # task, which the read loop waits for before its next frame;
    _held: asyncio.Task[None] | None = None
    # set on stop (abandon_tasks): answers from then on are dropped, as the ack tasks that
    # made them used to be cancelled.
    _abandoned = False

    def __init__(
        self,
        settings: SessionSettings,
        ws: VehicleConnection,
        identity: VehicleIdentity,
        socket_id: str,
        *,
        network_interface: str = "",
        client_version: str = "",
        on_close: Callable[[VehicleSession], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ws = ws
        self.identity = identity
        self.socket_id = socket_id
        self.network_interface = network_interface
        self.client_version = client_version
        self.processor = FrameProcessor(
            identity,
            configured_topics=settings.configured_topics,
            socket_id=socket_id,
            device_client_version=client_version,
            max_frame_bytes=settings.max_frame_bytes,
        )
        limit = settings.rate_limit
        self.limiter = SlidingWindowLimiter(limit.limit, limit.interval_s)
        self.closed = False
        # Stopping: frames from now on are not taken (the vehicle resends them later).
        self.draining = False
        self.bytes_by_topic: dict[str, int] = {}
        self.frames = 0
        self._on_close = on_close
        # Frames handed to the pipeline and not yet answered: at most MAX_IN_FLIGHT.
        self._unanswered = 0
        self._writer = FrameWriter(ws, self._fail)
        self._writer_task: asyncio.Task[None] | None = None
        self._rate_counters: dict[str, _Child] = {}
        # vins_signal_tracking_enabled: decided once, not per frame.
        self._tracked = self.device_id in settings.tracked_vins

    @property
    def device_id(self) -> str:
        return str(self.identity.device_id)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the socket until it closes; connectivity records around the read loop.

        One coroutine, the read loop inline: an idle vehicle waits in it, and each nested
        coroutine would be a frame (~250 bytes) kept per vehicle."""
        started = time.monotonic()
        await self._connectivity("CONNECTED")
        ws = self.ws
        # Messages, or the size of a binary message over the limit whose bytes were skipped.
        recv, delivered, ready = ws.recv, ws.delivered, ws.ready_message
        # Whole binary frames that arrive while this loop waits in recv() are taken by
        # data_received itself (take_now): no wake-up of this task per frame.
        ws.taker = self
        try:
            while True:
                message: Data | OversizeMessage | None = ready()
                if message is None:
                    message = delivered(await recv())
                if self._held is not None:
                    await self._held  # a frame taken before this one goes first
                    if self.closed:
                        break
                if isinstance(message, str):
                    # Only binary frames are telemetry; anything else ends the session.
                    _TEXT_FRAME_LOG.warning(
                        "unexpected_record",
                        extra=fields(vin=self.device_id, reason="text frame; closing"),
                    )
                    await ws.close(1003, "binary frames only")
                    break
                await self._on_frame(message)
                # Not kept while waiting for the next one (a frame can be 1 MB).
                del message
                if self.closed:
                    break
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            ws.taker = None
            if self._writer_task is not None:
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
            with contextlib.suppress(Exception):
                await self.ws.close()
            log.info(
                "socket_disconnected",
                extra=fields(
                    vin=self.device_id,
                    socket_id=self.socket_id,
                    total=sum(self.bytes_by_topic.values()),
                    bytes=self.bytes_by_topic,
                    frames=self.frames,
                    duration_sec=round(time.monotonic() - started, 3),
                ),
            )
            if self._held is not None:
                # Its records go to the pipeline before the disconnect's, as they would
                # have from this loop.
                with contextlib.suppress(Exception):
                    await self._held
            await self._connectivity("DISCONNECTED")
            if self._on_close is not None:
                self._on_close(self)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking frames, answer the frames taken (at most ``timeout_s``), then close
        the WebSocket normally (1001, going away): the acks go out before the close."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._unanswered:
                    await self._answer_waited()
        await self._writer.flush()
        with contextlib.suppress(Exception):
            await self.ws.close(1001, "server shutting down")

    def abandon_tasks(self) -> set[asyncio.Task[None]]:
        """On stop: frames still waiting for the pipeline get no answer from now on.

        Their answers come from the ledger, not from tasks, so there is none to cancel."""
        self._abandoned = True
        return set()

    def _answer_waited(self) -> asyncio.Future[None]:
        """A future done with the next answer."""
        waiter = self._answered
        if waiter is None:
            waiter = self._answered = asyncio.get_running_loop().create_future()
        return waiter

    # -- frames --------------------------------------------------------------------------
    async def _on_frame(self, frame: bytes | OversizeMessage) -> None:
        result = self._take(frame)
        if result is not None:
            await self._hand_over(result)

    def take_now(self, message: bytes) -> bool:
        """A whole binary message from the connection's data_received, while the read loop
        waits in recv(): handled here, as the loop would (False, with nothing done, leaves
        it to the loop: frames waiting for the pipeline's room, or the session closing)."""
        if self.closed or self._held is not None or self._unanswered >= MAX_IN_FLIGHT:
            return False
        result = self._take(message)
        if result is None:
            return True
        records = result.records
        answer = self._answer_for(result, records)
        self._unanswered += 1  # before: the pipeline may answer at once
        try:
            if self.settings.pipeline.accept_now(records, answer):
                return True
        except RuntimeError as exc:  # the pipeline is closing
            self._unanswered -= 1
            self._held = asyncio.create_task(self._hand_over_later(result, exc))
            return True
        self._unanswered -= 1
        # It must wait for room: handed over from a task, the loop's next frame after it.
        self._held = asyncio.create_task(self._hand_over_later(result, None))
        return True

    async def _hand_over_later(self, result: FrameResult, error: RuntimeError | None) -> None:
        """:meth:`_hand_over` of a frame taken by :meth:`take_now`; a pipeline that is
        closing ends the session as it does from the read loop."""
        try:
            if error is not None:
                self._pipeline_closed(error)
            await self._hand_over(result)
        except ConnectionClosed:
            with contextlib.suppress(Exception):
                await self.ws.close()
        finally:
            self._held = None

    def _take(self, frame: bytes | OversizeMessage) -> FrameResult | None:
        """Everything one frame needs but handing its records to the pipeline: the result
        whose records the pipeline must take, or None when nothing is left to do."""
        self.frames += 1
        if self.draining:
            return None  # not taken, no reply: the vehicle resends it after the restart
        over_limit = not self.limiter.allow(time.monotonic())
        if over_limit and self.settings.rate_limit.enforce:
            # Dropped without a reply: the vehicle resends what was not acked.
            topic = peek_topic(frame) if isinstance(frame, bytes) else ""
            self._rate_limit_counter(topic).inc()
            log.debug(
                "rate_limit_exceeded",
                extra=fields(vin=self.device_id, txtype=topic, limit=self.limiter.limit),
            )
            return None
        # The reference checks the size after the rate limiter; of a skipped frame only
        # its size is left.
        if isinstance(frame, OversizeMessage):
            result = self.processor.too_big(frame.size)
        else:
            result = self.processor.process(frame, now_ms())
        if over_limit:
            # Metrics-only limiter: counted, processed as usual (label from the result, so
            # the frame is not parsed twice). The reference adds this frame's signals too.
            self._rate_limit_counter(result.record_type).inc()
            self._count_signals(result)
        if result.outcome == OUTCOME_DISPATCH:
            # The usual frame: one Record, its ack once the pipeline has it; no replies.
            self._count_processed(result.record_type, result.payload_size)
            return result
        self._count(result)
        for reply in result.immediate_replies:
            self._send(reply)
        if result.records:
            return result
        if result.ack_reply is not None:
            self._send(result.ack_reply)
        return None

    async def _hand_over(self, result: FrameResult) -> None:
        """Give the pipeline ``result``'s records; their ack is sent once it answers."""
        while self._unanswered >= MAX_IN_FLIGHT:
            await self._answer_waited()
        records = result.records
        answer = self._answer_for(result, records)
        pipeline = self.settings.pipeline
        self._unanswered += 1  # before: the pipeline may answer at once
        try:
            if not pipeline.accept_now(records, answer):
                await pipeline.accept_then(records, answer)
        except RuntimeError as exc:  # the pipeline is closing: stop reading
            self._unanswered -= 1
            self._pipeline_closed(exc)

    def _answer_for(self, result: FrameResult, records: list[Record]) -> Callable[[bool], None]:
        # The dispatched frame's own record type; else (a general frame) its records' topic.
        topic = result.record_type if result.outcome == OUTCOME_DISPATCH else records[0].topic
        return partial(self._answer, (topic, result.ack_reply, len(records)))

    def _pipeline_closed(self, exc: RuntimeError) -> None:
        _PIPELINE_CLOSED_LOG.warning(
            "pipeline closed; frame not taken", extra=fields(vin=self.device_id)
        )
        self.closed = True
        raise ConnectionClosedError(None, None) from exc

    def _rate_limit_counter(self, txtype: str) -> _Child:
        """``rate_limit_exceeded_total`` for this vehicle and ``txtype``.

        With the metrics-only limiter every frame past the limit counts, and resolving the
        labels costs more than the increment: children are kept per session.
        """
        child = self._rate_counters.get(txtype)
        if child is None:
            child = metrics.TESLA_RATE_LIMIT_EXCEEDED.labels(
                device_id=self.device_id, txtype=txtype
            )
            if len(self._rate_counters) < _MAX_CACHED_TOPICS:
                self._rate_counters[txtype] = child
        return child

    def _count_signals(self, result: FrameResult) -> None:
        if not result.signals:
            return
        _signal_counter(result.record_type).inc(result.signals)
        if self._tracked:
            metrics.TESLA_VIN_SIGNAL_COUNT.labels(result.record_type, self.device_id).inc(
                result.signals
            )

    def _count(self, result: FrameResult) -> None:
        """The reference's frame metrics, from what the core decided."""
        if result.is_error:
            metrics.TESLA_UNEXPECTED_RECORD_ERR.inc()
            metrics.TESLA_FRAMES_REFUSED.labels(reason=result.refusal or "").inc()
            if result.outcome == OUTCOME_TOO_BIG:
                metrics.TESLA_RECORD_TOO_BIG.inc()
            log.debug(
                "unexpected_record",
                extra=fields(vin=self.device_id, txid=result.txid, error=result.error),
            )
        if result.unknown_msg_type is not None:
            metrics.TESLA_UNKNOWN_MESSAGE_TYPE.labels(msg_type=result.unknown_msg_type).inc()
            log.debug(
                "unknown_message_type_error",
                extra=fields(vin=self.device_id, txid=result.txid, error=result.error),
            )
        if result.counts_as_processed:
            self._count_processed(result.record_type, result.payload_size)

    def _count_processed(self, record_type: str, payload_size: int) -> None:
        """record_total, record_size_bytes_total, dispatch_total and the session's bytes."""
        add_records, add_size, add_dispatch = _frame_counters(record_type)
        add_records(1)
        add_size(payload_size)
        add_dispatch(1)
        bytes_by_topic = self.bytes_by_topic
        bytes_by_topic[record_type] = bytes_by_topic.get(record_type, 0) + payload_size

    def _answer(self, frame: tuple[str, bytes | None, int], safe: bool) -> None:
        """The pipeline decided on a frame: send its ack if it is safe and still wanted."""
        self._unanswered -= 1
        waiter = self._answered
        if waiter is not None:
            self._answered = None
            if not waiter.done():
                waiter.set_result(None)
        if self._abandoned:
            return
        topic, ack_reply, count = frame
        if not safe:
            # Not safe (sink failed or timed out): no ack, so the vehicle resends.
            _ACKS_WITHHELD.inc()
            _WITHHELD_LOG.warning(
                "records not confirmed in time; ack withheld",
                extra=fields(vin=self.device_id, txtype=topic, records=count),
            )
            return
        if ack_reply is None:
            return
        reliable = self.settings.reliable_sinks.get(topic)
        if self.closed:
            _ACKS_SOCKET_GONE.inc()
            if reliable is not None:
                metrics.TESLA_RELIABLE_ACK_MISS.labels(record_type=topic, dispatcher=reliable).inc()
            return
        self._send(ack_reply)
        _ADD_ACK_SENT(1)
        if reliable is not None:
            metrics.TESLA_RELIABLE_ACK.labels(record_type=topic, dispatcher=reliable).inc()

    async def _connectivity(self, status: str) -> None:
        if not self.settings.connectivity:
            return
        record = connectivity_record(
            self.identity,
            self.socket_id,
            status,
            self.network_interface,
            now_ms(),
            device_client_version=self.client_version,
        )
        try:
            # Never acked, so only queued: no need to wait for a sink.
            await self.settings.pipeline.submit([record])
        except Exception:
            log.exception("connectivity record failed", extra=fields(vin=self.device_id))

    # -- output --------------------------------------------------------------------------
    def _send(self, frame: bytes) -> None:
        """Queue ``frame`` for the writer; a vehicle that stops reading is disconnected."""
        if not self.closed:
            if self._writer_task is None:
                # Started with the first reply: an idle vehicle holds no task (memory).
                self._writer_task = asyncio.create_task(
                    self._writer.run(), name=f"tesla-writer:{self.device_id}"
                )
            self._writer.send(frame)

    def _fail(self, reason: str) -> None:
        metrics.TESLA_SOCKET_ERR.inc()
        _SOCKET_ERR_LOG.warning("socket_err", extra=fields(vin=self.device_id, error=reason))
        self.closed = True
        # Ending the read loop: closing the transport makes the iterator stop.
        self.ws.transport.abort()

    def health(self) -> dict[str, Any]:
        return {"vin": self.device_id, "socket_id": self.socket_id, "frames": self.frames}
