"""Feeds one sink from a bounded queue: batching, retries, health, metrics.

The runner is a consumer of the ledger (:mod:`fleetgate.pipeline.ledger`). The pipeline
pushes it the records routed to it, each frame as one *entry* with the frame's offsets.
The runner drains entries into batches of up to ``max_batch`` records, calls
:meth:`Sink.publish`, and publishes its progress as a watermark: every offset below its
oldest unconfirmed entry is done. It owes nobody a future per frame; the ledger wakes ack
waiters when the watermark passes them.

Errors, as :mod:`fleetgate.sinks.base` defines them: transient ones (the backend is
unreachable or busy) are retried with exponential backoff, forever, until the runner is
closed, so records wait in the queue while a backend is down and nothing a sink was given
is dropped for a transient error. Any other error means these records cannot be taken:
they are not retried, and their offsets are marked refused (no ack waits for them).

The queue is bounded in records. When it is full, the pipeline waits before adding more:
sessions stop reading, devices are not acknowledged, and their retransmission takes over.
That is the backpressure rule of the architecture: memory never grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetgate.observability import metrics
from fleetgate.observability.redact import redact
from fleetgate.pipeline.ledger import Ledger
from fleetgate.records import Record
from fleetgate.sinks.base import Health, Sink, TransientSinkError

log = logging.getLogger("fleetgate.pipeline")

# Errors that say "not now": the same records may be taken later.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientSinkError, OSError, TimeoutError)
# Refused frames remembered for their waiters, which look right after the batch that
# refused them settles (bounded: the oldest are forgotten first).
_REFUSALS_KEPT = 65_536


@dataclass(slots=True)
class RunnerSettings:
    """Queue and retry limits for one sink."""

    max_queue_records: int = 100_000
    max_batch: int = 1000
    # How long the first record of a batch may wait for more to join it.
    max_linger_s: float = 0.005
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    # Consecutive failures after which a retrying sink is reported "down".
    down_after_failures: int = 3


class PublishHooks(Protocol):
    """Extra accounting per confirmed batch (e.g. the reference's dispatcher metrics)."""

    def published(self, batch: Sequence[Record]) -> None: ...

    def failed(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    """The records of one frame routed to this sink, with the frame's offsets."""

    first: int
    last: int
    records: Sequence[Record]


class SinkRunner:
    """Owns one sink's queue and publish loop; a consumer of the ledger."""

    def __init__(
        self,
        sink: Sink,
        settings: RunnerSettings | None = None,
        hooks: PublishHooks | None = None,
    ) -> None:
        self.sink = sink
        self.hooks = hooks
        self.name = sink.name
        self.settings = settings or RunnerSettings()
        self.health = Health.OK
        self.last_error: str = ""
        self.ledger = Ledger()  # replaced by the pipeline's (bind)
        self._pending: deque[_Entry] = deque()
        # The batch being published: out of the queue, not yet confirmed.
        self._inflight: list[_Entry] = []
        self._queued_records = 0
        self._taken = 0
        # Last offsets of refused frames (what ack waiters ask about), oldest first.
        self._refused: set[int] = set()
        self._refused_order: deque[int] = deque()
        self._space = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(queue=f"sink:{self.name}")

    def bind(self, ledger: Ledger) -> None:
        """Use ``ledger`` (the pipeline's) for offsets and for waking ack waiters."""
        self.ledger = ledger

    # -- the ledger's view ---------------------------------------------------------------
    @property
    def taken(self) -> int:
        return self._taken

    def watermark(self) -> int:
        """Every offset at or below this is confirmed here, refused, or not routed here."""
        if self._inflight:
            return self._inflight[0].first - 1
        if self._pending:
            return self._pending[0].first - 1
        return self.ledger.head

    def refused(self, offset: int) -> bool:
        """True when the frame whose last offset is ``offset`` was refused here."""
        return offset in self._refused

    @property
    def queued(self) -> int:
        """Records waiting for this sink (not yet confirmed)."""
        return self._queued_records

    # -- feeding ---------------------------------------------------------------------------
    def has_room(self, count: int) -> bool:
        """Whether ``count`` more records fit. A batch larger than the whole queue fits an
        empty queue, so it can never deadlock."""
        queued = self._queued_records
        return queued == 0 or queued + count <= self.settings.max_queue_records

    async def wait_for_room(self, count: int) -> None:
        """Wait until :meth:`has_room` (backpressure)."""
        while not self.has_room(count):
            if self._closing:
                raise RuntimeError(f"sink {self.name} is closed")
            self._space.clear()
            await self._space.wait()

    def push(self, first: int, last: int, records: Sequence[Record]) -> None:
        """Queue the ``records`` of the frame at offsets ``first``..``last``."""
        if self._closing:
            raise RuntimeError(f"sink {self.name} is closed")
        self._pending.append(_Entry(first, last, records))
        self._queued_records += len(records)
        # The depth gauge is updated per batch (in _finish), not per frame: a gauge write
        # per frame showed up in profiles.
        self._wakeup.set()

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the sink (failure only marks it down; the loop keeps retrying)."""
        try:
            await self.sink.start()
        except Exception as exc:
            self._mark_failure(exc, attempt=self.settings.down_after_failures)
            log.error("%s: start failed: %s; records will wait and be retried", self.name, exc)
        self._task = asyncio.create_task(self._run(), name=f"sink:{self.name}")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded by ``timeout_s``), then close the sink."""
        if self._closing and self._task is None:
            return  # closed already
        self._closing = True
        self._wakeup.set()
        self._space.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                log.error(
                    "%s: shutdown with %d records unconfirmed", self.name, self._queued_records
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Whatever is still unconfirmed (a publish cut short by the timeout, or never
        # started) is refused now, so no ack waits for it forever.
        unconfirmed = [*self._inflight, *self._pending]
        self._pending.clear()
        if unconfirmed:
            self._finish(unconfirmed, refused=True)
        try:
            await self.sink.close()
        except Exception as exc:
            log.warning("%s: close failed: %s", self.name, exc)

    async def _run(self) -> None:
        settings = self.settings
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queued_records < settings.max_batch and settings.max_linger_s > 0:
                # Let a little more arrive so small frames share one publish.
                await asyncio.sleep(settings.max_linger_s)
            taken = self._take_batch()
            self._queue_gauge.set(self._queued_records)
            self._inflight = taken
            batch = [record for entry in taken for record in entry.records]
            await self._publish_with_retry(batch, taken)

    def _take_batch(self) -> list[_Entry]:
        taken: list[_Entry] = []
        size = 0
        limit = self.settings.max_batch
        pending = self._pending
        while pending and (not taken or size + len(pending[0].records) <= limit):
            entry = pending.popleft()
            taken.append(entry)
            size += len(entry.records)
        self._taken += 1
        return taken

    async def _publish_with_retry(self, batch: list[Record], taken: list[_Entry]) -> None:
        attempt = 0
        delay = self.settings.retry_initial_s
        while True:
            started = time.perf_counter()
            try:
                if batch:
                    await self.sink.publish(batch)
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                metrics.SINK_RETRIES.labels(sink=self.name).inc()
                self._mark_failure(exc, attempt)
                if self._closing and attempt >= self.settings.down_after_failures:
                    self._finish(taken, refused=True)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            except Exception as exc:
                # Not "not now": retrying the same records cannot help.
                metrics.SINK_FAILED.labels(sink=self.name).inc(len(batch))
                log.error(
                    "%s: dropped %d records the backend refused: %s", self.name, len(batch), exc
                )
                self._finish(taken, refused=True)
                return
            metrics.SINK_LATENCY.labels(sink=self.name).observe(time.perf_counter() - started)
            metrics.SINK_PUBLISHED.labels(sink=self.name).inc(len(batch))
            if self.hooks is not None:
                self.hooks.published(batch)
            if self.health is not Health.OK:
                log.info("%s: recovered, publishing again", self.name)
            self.health = Health.OK
            self.last_error = ""
            self._finish(taken, refused=False)
            return

    def _mark_failure(self, exc: BaseException, attempt: int) -> None:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Shown by the unauthenticated /health: never a URL's credentials.
        self.last_error = redact(text)
        metrics.SINK_ERRORS.labels(sink=self.name).inc()
        self._queue_gauge.set(self._queued_records)
        if self.hooks is not None:
            self.hooks.failed()
        down = attempt >= self.settings.down_after_failures
        new_health = Health.DOWN if down else Health.DEGRADED
        if new_health is not self.health or attempt == 1:
            log.error(
                "%s: %s unreachable or failing (%s), %d records waiting",
                self.name,
                self.sink.describe(),
                self.last_error,
                self._queued_records,
            )
        self.health = new_health

    def _finish(self, taken: list[_Entry], refused: bool) -> None:
        if refused:
            for entry in taken:
                self._refused.add(entry.last)
                self._refused_order.append(entry.last)
            while len(self._refused_order) > _REFUSALS_KEPT:
                self._refused.discard(self._refused_order.popleft())
        self._queued_records -= sum(len(entry.records) for entry in taken)
        self._inflight = []
        self._queue_gauge.set(self._queued_records)
        self._space.set()
        self.ledger.advanced(self)
