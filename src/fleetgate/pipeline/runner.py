"""Feeds one sink from a bounded queue: batching, retries, health, metrics.

Protocol sessions hand records to :meth:`SinkRunner.submit` one *submission* at a time (the
records of one frame). Each submission gets one future that resolves when the sink has
confirmed every record of it. The runner drains submissions into batches of up to
``max_batch`` records, calls :meth:`Sink.publish`, and retries transient failures with
exponential backoff, forever, until it is closed: records wait in the queue while a
backend is down, and nothing a sink was given is dropped for a transient error.

The queue is bounded in records. When it is full, ``submit`` waits: the session stops
reading, the device is not acknowledged, and the device's own retransmission takes over.
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
from fleetgate.records import Record
from fleetgate.sinks.base import Health, PermanentSinkError, Sink

log = logging.getLogger("fleetgate.pipeline")


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
class _Submission:
    records: Sequence[Record]
    future: asyncio.Future[None]


class SinkRunner:
    """Owns one sink's queue and publish loop."""

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
        self._pending: deque[_Submission] = deque()
        # The batch being published: out of the queue, not yet confirmed.
        self._inflight: list[_Submission] = []
        self._queued_records = 0
        self._space = asyncio.Condition()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(queue=f"sink:{self.name}")

    @property
    def queued(self) -> int:
        """Records waiting for this sink (not yet confirmed)."""
        return self._queued_records

    async def start(self) -> None:
        """Connect the sink (failure only marks it down; the loop keeps retrying)."""
        try:
            await self.sink.start()
        except Exception as exc:
            self._mark_failure(exc, attempt=self.settings.down_after_failures)
            log.error("%s: start failed: %s; records will wait and be retried", self.name, exc)
        self._task = asyncio.create_task(self._run(), name=f"sink:{self.name}")

    async def submit(self, records: Sequence[Record]) -> asyncio.Future[None]:
        """Queue ``records``; the returned future resolves once the sink confirmed them.

        Waits while the queue is full (backpressure). A submission larger than the whole
        queue is still accepted once the queue is empty, so it can never deadlock.
        """
        if self._closing:
            raise RuntimeError(f"sink {self.name} is closed")
        count = len(records)
        limit = self.settings.max_queue_records
        if self._queued_records + count > limit and self._queued_records:
            async with self._space:
                await self._space.wait_for(
                    lambda: self._queued_records == 0 or self._queued_records + count <= limit
                )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission(records, future))
        self._queued_records += count
        # The depth gauge is updated per batch (in _finish), not per submission: a gauge
        # write per frame showed up in profiles.
        self._wakeup.set()
        return future

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded by ``timeout_s``), then close the sink."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.error(
                    "%s: shutdown with %d records unconfirmed", self.name, self._queued_records
                )
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        # Whatever is still unconfirmed (a publish cut short by the timeout, or never
        # started) fails now, so nobody awaits it forever.
        unconfirmed = [*self._inflight, *self._pending]
        self._inflight = []
        self._pending.clear()
        for submission in unconfirmed:
            if not submission.future.done():
                submission.future.set_exception(RuntimeError(f"sink {self.name} closed"))
                submission.future.exception()
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
            batch = [record for sub in taken for record in sub.records]
            await self._publish_with_retry(batch, taken)
            self._inflight = []

    def _take_batch(self) -> list[_Submission]:
        taken: list[_Submission] = []
        size = 0
        limit = self.settings.max_batch
        while self._pending and (not taken or size + len(self._pending[0].records) <= limit):
            submission = self._pending.popleft()
            taken.append(submission)
            size += len(submission.records)
        return taken

    async def _publish_with_retry(self, batch: list[Record], taken: list[_Submission]) -> None:
        attempt = 0
        delay = self.settings.retry_initial_s
        while True:
            started = time.perf_counter()
            try:
                if batch:
                    await self.sink.publish(batch)
            except PermanentSinkError as exc:
                metrics.SINK_FAILED.labels(sink=self.name).inc(len(batch))
                log.error(
                    "%s: dropped %d records the backend refused: %s", self.name, len(batch), exc
                )
                self._finish(taken, exc)
                return
            except Exception as exc:
                attempt += 1
                metrics.SINK_RETRIES.labels(sink=self.name).inc()
                self._mark_failure(exc, attempt)
                if self._closing and attempt >= self.settings.down_after_failures:
                    self._finish(taken, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            metrics.SINK_LATENCY.labels(sink=self.name).observe(time.perf_counter() - started)
            metrics.SINK_PUBLISHED.labels(sink=self.name).inc(len(batch))
            if self.hooks is not None:
                self.hooks.published(batch)
            if self.health is not Health.OK:
                log.info("%s: recovered, publishing again", self.name)
            self.health = Health.OK
            self.last_error = ""
            self._finish(taken, None)
            return

    def _mark_failure(self, exc: BaseException, attempt: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
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

    def _finish(self, taken: list[_Submission], error: BaseException | None) -> None:
        released = 0
        for submission in taken:
            released += len(submission.records)
            if submission.future.done():
                continue
            if error is None:
                submission.future.set_result(None)
            else:
                submission.future.set_exception(error)
                # Mark it retrieved: only the ack policy awaits some of these futures.
                submission.future.exception()
        self._queued_records -= released
        self._queue_gauge.set(self._queued_records)
        if released:
            asyncio.get_running_loop().create_task(self._notify_space())

    async def _notify_space(self) -> None:
        async with self._space:
            self._space.notify_all()
