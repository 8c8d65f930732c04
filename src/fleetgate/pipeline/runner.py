"""Feeds one sink from a bounded queue: batching, retries, health, metrics.

The runner is a consumer of the ledger (:mod:`fleetgate.pipeline.ledger`). The pipeline
pushes it the records routed to it, each frame as one *entry* with the frame's offsets.
The runner drains entries into batches of up to ``max_batch`` records, calls
:meth:`Sink.publish`, and publishes its progress as a watermark: every offset below its
oldest unconfirmed entry is done. It owes nobody a future per frame; the ledger wakes ack
waiters when the watermark passes them.

Errors, as :mod:`fleetgate.sinks.base` defines them: transient ones (the backend is
unreachable or busy) are retried with exponential backoff, forever, until the runner is
closed, so records wait while a backend is down and nothing a sink was given is dropped
for a transient error. Any other error means some record of the batch cannot be taken:
the runner halves the batch until it has found the records the sink refuses, publishes
the others, and sets the refused ones aside (:mod:`fleetgate.pipeline.deadletter`), so
one bad record never blocks the records behind it.

The in-memory queue is bounded in records. With the durable spool, a full queue *spills*:
further records stay only in the spool, and the runner reads them back from there once it
has caught up, so a slow or absent backend costs disk, not memory, and never stops the
other sinks. Without the spool, a full queue makes the pipeline wait before adding more:
sessions stop reading, devices are not acknowledged, and their retransmission takes over.
Either way memory never grows without bound.

After a restart the runner starts again after its cursor (what it confirmed before), from
the spool.

A sink whose ``concurrent_publishes`` is above 1 (Kafka) gets the next *full* batch while
earlier ones are still in ``publish`` (*flights*; a short batch still waits until nothing
is in flight). Flights are confirmed strictly in order: the watermark, and with it the
spool cursor and every ack, only moves past a batch once it and every batch before it are
confirmed, whichever order the backend confirms them in. When the oldest flight fails,
the runner lets the later ones finish, publishes the oldest again with the usual retries
(or sets its refused records aside), then publishes every later flight again after it,
in order, even those the backend had already confirmed: at-least-once (duplicates are
possible, never loss), and per device the log's last copy of each record is in order
again. The sinks of ``concurrent_publishes`` 1 see one publish at a time, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Protocol

from fleetgate.observability import metrics
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.observability.redact import redact
from fleetgate.pipeline.deadletter import DeadLetters
from fleetgate.pipeline.ledger import Ledger
from fleetgate.pipeline.spool import Spool, SpoolReader
from fleetgate.records import Record
from fleetgate.sinks.base import Health, Sink, TransientSinkError

log = logging.getLogger("fleetgate.pipeline")
# Per refused batch or record: a backend refusing everything must not flood the log.
_DROPPED = LimitedLog(log, "pipeline.runner.dropped")
_SET_ASIDE = LimitedLog(log, "pipeline.runner.dead_letter")

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
    # Group commit (the embedded store, when no ack waits for it): a batch short of
    # ``max_batch`` waits until this long after the previous batch was taken. Under load
    # batches grow to ~rate x fill_s records (a store updates each device's span row once
    # per commit, so its bytes per record fall with the batch); a record arriving after a
    # quiet spell goes at once. 0: ``max_linger_s`` alone.
    fill_s: float = 0.0
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


def _records_of(taken: list[_Entry]) -> list[Record]:
    """The records of ``taken`` entries as one batch (chained in C: no bytecode a record)."""
    return list(chain.from_iterable([entry.records for entry in taken]))


# One publish attempt's outcome: the error (None: confirmed) and how long it took.
_Outcome = tuple[Exception | None, float]


@dataclass(slots=True)
class _Flight:
    """A batch in ``publish`` while earlier ones may be too (``concurrent_publishes``)."""

    taken: list[_Entry]
    batch: list[Record]
    task: asyncio.Task[_Outcome]


class SinkRunner:
    """Owns one sink's queue and publish loop; a consumer of the ledger."""

    def __init__(
        self,
        sink: Sink,
        settings: RunnerSettings | None = None,
        hooks: PublishHooks | None = None,
        *,
        spill: bool = True,
    ) -> None:
        self.sink = sink
        self.hooks = hooks
        # Whether a full queue spills to the spool (sinks) or holds up new frames (the
        # embedded store: the API stays current and nothing is read back from disk).
        self.spill = spill
        self.name = sink.name
        self.settings = settings or RunnerSettings()
        self.health = Health.OK
        self.last_error: str = ""
        self.ledger = Ledger()  # replaced by the pipeline's (bind)
        self.spool: Spool | None = None
        self.dead_letters: DeadLetters | None = None
        self.routes: Callable[[str], bool] = lambda topic: True
        self._pending: deque[_Entry] = deque()
        self._pending_records = 0  # records in _pending
        # The batches being published: out of the queue, not yet confirmed, oldest first.
        self._inflight: list[_Entry] = []
        self._queued_records = 0
        # Batches the sink may have in publish at once; above 1, the ones there (in order).
        self._concurrency = max(1, int(sink.concurrent_publishes))
        self._flights: deque[_Flight] = deque()
        # With the spool: the first offset not in memory (read back from the spool), and
        # how many records routed here were left there since.
        self._spilled_from: int | None = None
        self._spilled_records = 0
        self._reader: SpoolReader | None = None
        self._taken = 0
        # Set at shutdown: the cursor to save (records refused then were never confirmed).
        self._final_cursor: int | None = None
        # Last offsets of refused frames (what ack waiters ask about), oldest first.
        self._refused: set[int] = set()
        self._refused_order: deque[int] = deque()
        self._space = asyncio.Event()
        self._wakeup = asyncio.Event()
        # Set once ``max_batch`` records are queued: ends a group-commit wait early.
        self._full = asyncio.Event()
        self._last_take = -math.inf  # loop time the previous batch was taken
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(queue=f"sink:{self.name}")

    def bind(
        self,
        ledger: Ledger,
        spool: Spool | None = None,
        routes: Callable[[str], bool] | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """Use the pipeline's ``ledger`` and ``spool``; ``routes(topic)`` says which of the
        spool's records are for this sink (when reading them back)."""
        self.ledger = ledger
        self.spool = spool
        self.dead_letters = dead_letters
        if routes is not None:
            self.routes = routes

    def resume_after(self, cursor: int) -> None:
        """Start after ``cursor``: what follows it in the spool was never confirmed here."""
        if self.spool is not None and cursor < self.ledger.head:
            self._spilled_from = cursor + 1
            self._wakeup.set()

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
        if self._spilled_from is not None:
            return self._spilled_from - 1
        return self.ledger.head

    def refused(self, offset: int) -> bool:
        """True when the frame whose last offset is ``offset`` was refused here."""
        return offset in self._refused

    def cursor(self) -> int:
        """The offset to resume after on the next start: everything up to it is confirmed
        here (or never was for this sink)."""
        if self._final_cursor is not None:
            return self._final_cursor
        synced = self.sink.synced_offset()
        return self.watermark() if synced is None else min(self.watermark(), synced)

    @property
    def queued(self) -> int:
        """Records waiting for this sink (not yet confirmed), as far as this run knows
        (records left in the spool by an earlier run are counted as they are read)."""
        return self._queued_records

    @property
    def behind(self) -> bool:
        """True while records for this sink are waiting in the spool, not in memory."""
        return self._spilled_from is not None

    # -- feeding ---------------------------------------------------------------------------
    def has_room(self, count: int) -> bool:
        """Whether ``count`` more records fit (always, with a spool to spill to). A batch
        larger than the whole queue fits an empty queue, so it can never deadlock."""
        if self.spool is not None and self.spill:
            return True
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
        count = len(records)
        self._queued_records += count
        if self.spool is not None and (
            self._spilled_from is not None
            or (self.spill and self._queued_records > self.settings.max_queue_records)
        ):
            # Memory is full: the record stays in the spool and is read back from there.
            if self._spilled_from is None:
                self._spilled_from = first
            self._spilled_records += count
        else:
            self._pending.append(_Entry(first, last, records))
            self._pending_records += count
            if self._pending_records >= self.settings.max_batch:
                self._full.set()
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
        self._full.set()
        self._space.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Whatever is still unconfirmed (a publish cut short by the timeout, or never
        # started) is refused now, so no ack waits for it forever. With the spool it is
        # not lost: the next start reads it back from there.
        unconfirmed = [*self._inflight, *self._pending]
        remaining = self._queued_records
        self._final_cursor = self.watermark()
        self._pending.clear()
        self._pending_records = 0
        if unconfirmed:
            self._finish(unconfirmed, refused=True)
        if remaining:
            where = "spooled, delivered after the restart" if self.spool else "not delivered"
            log.warning(
                "%s: %d records unconfirmed at shutdown (%s)", self.name, remaining, where
            )
        try:
            await self.sink.close()
        except Exception as exc:
            log.warning("%s: close failed: %s", self.name, exc)

    async def _run(self) -> None:
        if self._concurrency > 1:
            try:
                await self._run_flights()
            finally:
                await self._ground()
            return
        while True:
            if not self._pending:
                if self._spilled_from is not None and not self._closing:
                    await self._read_back()
                    continue
                if not await self._idle():
                    return
                continue
            await self._linger()
            taken = self._take_batch()
            self._queue_gauge.set(self._queued_records)
            self._inflight = taken
            batch = _records_of(taken)
            if not await self._publish_with_retry(batch, taken):
                return  # closing, and the backend is still down: the batch stays unconfirmed

    async def _idle(self) -> bool:
        """Nothing to publish: wait until something is pushed; False when closing."""
        if self._closing:
            return False
        self._wakeup.clear()
        await self._wakeup.wait()
        return True

    async def _linger(self) -> None:
        """Before taking a short batch: let a little more arrive so small frames share
        one publish (or group-commit, ``fill_s``)."""
        settings = self.settings
        if self._queued_records < settings.max_batch:
            if settings.fill_s > 0:
                await self._fill(settings.fill_s)
            elif settings.max_linger_s > 0:
                await asyncio.sleep(settings.max_linger_s)

    # -- several batches in flight (concurrent_publishes > 1) ------------------------------
    async def _run_flights(self) -> None:
        max_batch = self.settings.max_batch
        flights = self._flights
        while True:
            # Confirm, strictly in order, whatever has landed at the front.
            while flights and flights[0].task.done():
                if not await self._land():
                    return  # closing, and the backend is still failing
            if (
                self._spilled_from is not None
                and not self._closing
                and self._pending_records < max_batch
                and len(flights) < self._concurrency
            ):
                await self._read_back()
                continue
            if not flights:
                if self._pending:
                    # Nothing in flight: as with one publish at a time.
                    await self._linger()
                    self._launch()
                    continue
                if not await self._idle():
                    return
                continue
            if (
                self._pending
                and len(flights) < self._concurrency
                and (self._pending_records >= max_batch or self._closing)
            ):
                self._launch()  # a full batch (or the last ones at shutdown) goes now
                continue
            # Until a flight lands or a full batch is queued (push, _landed, close set it).
            self._full.clear()
            await self._full.wait()

    def _launch(self) -> None:
        taken = self._take_batch()
        batch = _records_of(taken)
        task = asyncio.create_task(self._attempt(batch), name=f"sink:{self.name}:publish")
        task.add_done_callback(self._landed)
        self._flights.append(_Flight(taken, batch, task))
        self._inflight.extend(taken)
        self._queue_gauge.set(self._queued_records)

    def _landed(self, _task: asyncio.Task[_Outcome]) -> None:
        self._full.set()

    async def _attempt(self, batch: list[Record]) -> _Outcome:
        """One publish of a flight (the runner retries it in order, see _land)."""
        started = time.perf_counter()
        try:
            await self.sink.publish(batch)
        except Exception as exc:
            return exc, 0.0
        return None, time.perf_counter() - started

    async def _land(self) -> bool:
        """Settle the oldest flight, which is done; False when the runner gave up on it
        (closing while the backend still fails)."""
        flights = self._flights
        flight = flights[0]
        error, elapsed = flight.task.result()
        if error is None:
            flights.popleft()
            self._published(flight.batch, elapsed)
            self._finish(flight.taken, refused=False)
            return True
        # The oldest failed, while later batches may have been confirmed already. Let them
        # finish; then publish the oldest again (retries, or setting refused records
        # aside) and, after it, every later one again, in order, so that per device the
        # log's latest copies are in order (at-least-once: duplicates, no loss).
        later = [other.task for other in flights if not other.task.done()]
        if later:
            await asyncio.wait(later)
        first_error: Exception | None = error
        while flights:
            flight = flights[0]
            if not await self._publish_with_retry(flight.batch, flight.taken, first_error):
                return False
            first_error = None
            flights.popleft()
        return True

    async def _ground(self) -> None:
        """The runner stopped: cancel publishes still in flight (their batches stay
        unconfirmed; close refuses them and the spool keeps them)."""
        tasks = [flight.task for flight in self._flights]
        self._flights.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_back(self) -> None:
        """Queue the next records for this sink from the spool (memory holds none)."""
        spool = self.spool
        start = self._spilled_from
        assert spool is not None
        assert start is not None
        if start > self.ledger.head:
            self._spilled_from = None  # nothing left in the spool for us
            return
        limit = self.settings.max_batch
        entries = spool.recent_from(start, limit)
        if entries is None:
            if self._reader is None or self._reader.next != start:
                if self._reader is not None:
                    self._reader.close()
                self._reader = spool.reader(start)
            upto = min(spool.written, (spool.oldest_in_memory or start) - 1)
            if upto < start:
                upto = spool.written
            entries = await asyncio.to_thread(self._reader.read, limit, upto)
            if not entries:
                # Not written yet: the next group commit brings it.
                await spool.flushed()
                return
        for entry in entries:
            routed = [record for record in entry.records if self.routes(record.topic)]
            if routed:
                counted = min(self._spilled_records, len(routed))
                self._spilled_records -= counted
                self._queued_records += len(routed) - counted
                self._pending.append(_Entry(entry.first, entry.last, routed))
                self._pending_records += len(routed)
            self._spilled_from = entry.last + 1
        if self._spilled_from is not None and self._spilled_from > self.ledger.head:
            # Caught up: from here on records are queued in memory again.
            self._spilled_from = None
            self._spilled_records = 0
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._space.set()
        self.ledger.advanced(self)

    async def _fill(self, fill_s: float) -> None:
        """Wait (group commit) until a full batch is queued, the runner closes, or
        ``fill_s`` has passed since the previous batch was taken."""
        loop = asyncio.get_running_loop()
        remaining = self._last_take + fill_s - loop.time()
        if remaining <= 0 or self._closing:
            return
        self._full.clear()
        if self._queued_records >= self.settings.max_batch:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await self._full.wait()

    def _take_batch(self) -> list[_Entry]:
        self._last_take = asyncio.get_running_loop().time()
        taken: list[_Entry] = []
        size = 0
        limit = self.settings.max_batch
        pending = self._pending
        while pending and (not taken or size + len(pending[0].records) <= limit):
            entry = pending.popleft()
            taken.append(entry)
            size += len(entry.records)
        self._pending_records -= size
        self._taken += 1
        return taken

    async def _publish_with_retry(
        self, batch: list[Record], taken: list[_Entry], failed: Exception | None = None
    ) -> bool:
        """Deliver the batch (or set its refused records aside); False when the runner gave
        up because it is closing while the backend is still failing. ``failed``: how a
        publish of it already failed (it counts as the first attempt)."""
        error = await self._publish(batch, failed)
        if error is None:
            self._finish(taken, refused=False)
            return True
        if isinstance(error, asyncio.CancelledError):
            return False
        if self.dead_letters is None:
            metrics.SINK_FAILED.labels(sink=self.name).inc(len(batch))
            _DROPPED.error(
                "%s: dropped %d records the backend refused: %s", self.name, len(batch), error
            )
            self._finish(taken, refused=True)
            return True
        # Some record of the batch cannot be taken: find it, deliver the rest.
        if not await self._set_aside(batch, error):
            return False
        self._finish(taken, refused=False)
        return True

    async def _publish(
        self, batch: Sequence[Record], failed: Exception | None = None
    ) -> BaseException | None:
        """Publish, retrying transient errors; the error that is not transient, or None.
        ``failed``: the outcome of a first attempt made elsewhere (a flight).

        While closing, gives up after a few attempts (CancelledError is returned then)."""
        attempt = 0
        delay = self.settings.retry_initial_s
        while True:
            started = time.perf_counter()
            try:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                if batch:
                    await self.sink.publish(batch)
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                metrics.SINK_RETRIES.labels(sink=self.name).inc()
                self._mark_failure(exc, attempt)
                if self._closing and attempt >= self.settings.down_after_failures:
                    return asyncio.CancelledError()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            except Exception as exc:
                return exc
            self._published(batch, time.perf_counter() - started)
            return None

    def _published(self, batch: Sequence[Record], elapsed: float) -> None:
        """Account for a confirmed batch."""
        metrics.SINK_LATENCY.labels(sink=self.name).observe(elapsed)
        metrics.SINK_PUBLISHED.labels(sink=self.name).inc(len(batch))
        if self.hooks is not None:
            self.hooks.published(batch)
        if self.health is not Health.OK:
            log.info("%s: recovered, publishing again", self.name)
        self.health = Health.OK
        self.last_error = ""

    async def _set_aside(self, batch: Sequence[Record], error: BaseException) -> bool:
        """Halve ``batch`` until the records the sink refuses are found; publish the rest;
        write the refused ones to the dead-letter file. False if it gave up (closing)."""
        if len(batch) == 1:
            return await self._dead_letter(batch[0], error)
        middle = len(batch) // 2
        for part in (batch[:middle], batch[middle:]):
            part_error = await self._publish(part)
            if isinstance(part_error, asyncio.CancelledError):
                return False
            if part_error is not None and not await self._set_aside(part, part_error):
                return False
        return True

    async def _dead_letter(self, record: Record, error: BaseException) -> bool:
        assert self.dead_letters is not None
        reason = f"{type(error).__name__}: {error}"
        delay = self.settings.retry_initial_s
        while True:
            try:
                await asyncio.to_thread(self.dead_letters.write, self.name, [record], reason)
                break
            except OSError as exc:
                log.error("%s: cannot write the dead-letter file: %s", self.name, exc)
                if self._closing:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
        metrics.DEAD_LETTERS.labels(sink=self.name).inc()
        _SET_ASIDE.error(
            "%s: refused a record of %s/%s for good (%s); set aside in %s",
            self.name,
            record.device_id,
            record.topic,
            reason,
            self.dead_letters.path(self.name),
        )
        return True

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
        # What was confirmed or refused is the front of what is in flight (or all of it).
        self._inflight = self._inflight[len(taken) :]
        self._queue_gauge.set(self._queued_records)
        self._space.set()
        self.ledger.advanced(self)
