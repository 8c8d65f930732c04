"""The runner with several batches in flight (``Sink.concurrent_publishes`` > 1).

A fake sink completes its publishes when (and in whichever order) the test says. The
runner must confirm batches strictly in order, never move its watermark (the acks, the
spool cursor) past a batch that is not delivered, and when a batch fails, publish it again
and then every batch that was in flight behind it, in order (at-least-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fleetgate.pipeline import AckLevel, AckPolicy, Pipeline, Router, RunnerSettings, SinkRunner
from fleetgate.pipeline.ledger import Ledger
from fleetgate.pipeline.spool import Spool, SpoolSettings
from fleetgate.records import Record
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

BATCH = 10
SETTINGS = RunnerSettings(
    max_queue_records=10_000,
    max_batch=BATCH,
    max_linger_s=0,
    retry_initial_s=0.001,
    retry_max_s=0.005,
    down_after_failures=3,
)


def rec(index: int, device: str = "d1") -> Record:
    return Record("teltonika", device, "position", index, index, {"i": index})


def frames(first: int, last: int) -> list[list[Record]]:
    """Records ``first``..``last`` in full batches (one frame each)."""
    return [
        [rec(i) for i in range(start, min(start + BATCH, last + 1))]
        for start in range(first, last + 1, BATCH)
    ]


@dataclass
class Call:
    """One publish the fake sink is inside of, until the test settles it."""

    values: list[int]
    future: asyncio.Future[None]
    cancelled: bool = False
    confirmed: bool = False

    def succeed(self) -> None:
        self.future.set_result(None)

    def fail(self, error: Exception) -> None:
        self.future.set_exception(error)


class FlightSink(Sink):
    """A sink whose publishes wait for the test. Like Kafka's producer, it keeps the
    order publishes were *started* in, whichever is confirmed first: ``log`` is what it
    confirmed, in that order (a failed publish adds nothing)."""

    name: ClassVar[str] = "flights"
    concurrent_publishes: ClassVar[int] = 2

    def __init__(self, auto: bool = False) -> None:
        super().__init__({}, SinkContext())
        self.calls: list[Call] = []
        self.auto = auto  # confirm every publish by itself
        self.busy = 0
        self.most_at_once = 0
        self.changed = asyncio.Event()

    async def publish(self, batch: Sequence[Record]) -> None:
        call = Call([r.created_at for r in batch], asyncio.get_running_loop().create_future())
        self.calls.append(call)
        self.busy += 1
        self.most_at_once = max(self.most_at_once, self.busy)
        self.changed.set()
        try:
            if self.auto:  # confirmed a moment later (another publish may start meanwhile)
                asyncio.get_running_loop().call_soon(call.succeed)
            await call.future
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            self.busy -= 1
        call.confirmed = True
        self.changed.set()

    @property
    def log(self) -> list[int]:
        return [value for call in self.calls if call.confirmed for value in call.values]

    async def until(self, calls: int) -> None:
        """Until ``calls`` publishes have started."""
        async with asyncio.timeout(5):
            while len(self.calls) < calls:
                self.changed.clear()
                await self.changed.wait()


def vars_of(settings: RunnerSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


async def settle(rounds: int = 30) -> None:
    """Let the runner do whatever it can without the sink answering."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def setup(sink: Sink, settings: RunnerSettings = SETTINGS) -> tuple[Pipeline, SinkRunner]:
    runner = SinkRunner(sink, settings)
    pipeline = Pipeline(
        {sink.name: runner},
        Router({}, always=[sink.name]),
        AckPolicy(AckLevel.STORE, sink.name),
        ack_timeout_s=30,
    )
    return pipeline, runner


async def submit(pipeline: Pipeline, records: list[Record]) -> asyncio.Task[bool]:
    offset = await pipeline.append(records)
    requirement = pipeline.requirement_for(records)
    return asyncio.ensure_future(pipeline.settled(offset, requirement))


def last_copies_in_order(log: list[int]) -> bool:
    """True when the last copy of every record comes after the last copy of each earlier
    one (what a consumer keeping the latest copy per record id sees)."""
    last = {value: position for position, value in enumerate(log)}
    ordered = sorted(last, key=last.__getitem__)
    return ordered == sorted(ordered)


async def test_flights_are_confirmed_in_order_whichever_lands_first() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 30)]
    await sink.until(2)
    await settle()
    assert len(sink.calls) == 2, "two in flight, no more"
    assert sink.calls[0].values == list(range(1, 11))
    assert sink.calls[1].values == list(range(11, 21))
    sink.calls[1].succeed()  # the later one lands first
    await settle()
    assert runner.watermark() == 0 and runner.cursor() == 0
    assert not any(ack.done() for ack in acks)
    assert len(sink.calls) == 2, "a landed flight behind an unconfirmed one frees no slot"
    sink.calls[0].succeed()
    await sink.until(3)
    assert runner.watermark() == 20
    # (the three frames' acks share one ledger group: queued before any batch was taken)
    sink.calls[2].succeed()
    assert all(await asyncio.gather(*acks))
    assert runner.watermark() == 30 and runner.queued == 0
    assert sink.log == list(range(1, 31))
    assert sink.most_at_once == 2
    await pipeline.close()


async def test_a_short_batch_waits_while_a_batch_is_in_flight() -> None:
    sink = FlightSink()
    pipeline, _ = setup(sink)
    await pipeline.start()
    first = await submit(pipeline, [rec(i) for i in range(1, 11)])
    await sink.until(1)
    second = await submit(pipeline, [rec(11), rec(12)])
    await settle()
    assert len(sink.calls) == 1, "only a full batch goes while another is in flight"
    sink.calls[0].succeed()
    await sink.until(2)
    assert sink.calls[1].values == [11, 12]
    sink.calls[1].succeed()
    assert await first and await second
    await pipeline.close()


async def test_the_oldest_failing_republishes_it_then_the_later_ones_in_order() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 20)]
    await sink.until(2)
    sink.calls[0].fail(TransientSinkError("broker away"))
    await settle()
    # The later flight is still in publish: nothing is sent again before it finished.
    assert len(sink.calls) == 2
    assert runner.watermark() == 0
    sink.calls[1].succeed()  # confirmed by the backend, but behind a failed batch
    await sink.until(3)
    assert sink.calls[2].values == list(range(1, 11))
    await settle()
    assert len(sink.calls) == 3, "the republish goes one batch at a time"
    assert runner.watermark() == 0, "the later batch is not confirmed past the failed one"
    assert not any(ack.done() for ack in acks)
    sink.calls[2].succeed()
    await sink.until(4)
    assert sink.calls[3].values == list(range(11, 21))  # the later one, again, after it
    assert runner.watermark() == 10
    sink.calls[3].succeed()
    assert all(await asyncio.gather(*acks))
    assert runner.watermark() == 20
    # The log holds the later batch twice; its last copies are in order, nothing is lost.
    assert sink.log == [*range(11, 21), *range(1, 11), *range(11, 21)]
    assert last_copies_in_order(sink.log)
    assert set(sink.log) == set(range(1, 21))
    await pipeline.close()


async def test_a_later_flight_failing_is_republished_once_the_oldest_is_confirmed() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 30)]
    await sink.until(2)
    sink.calls[1].fail(TransientSinkError("timeout"))
    await settle()
    assert len(sink.calls) == 2 and runner.watermark() == 0
    sink.calls[0].succeed()
    await sink.until(3)
    assert runner.watermark() == 10
    assert sink.calls[2].values == list(range(11, 21))
    await settle()
    assert len(sink.calls) == 3, "the third batch waits until the failed one is through"
    sink.calls[2].succeed()
    await sink.until(4)
    assert runner.watermark() == 20
    assert sink.calls[3].values == list(range(21, 31))
    sink.calls[3].succeed()
    assert all(await asyncio.gather(*acks))
    assert sink.log == list(range(1, 31))
    await pipeline.close()


async def test_a_refused_oldest_batch_is_refused_and_the_later_one_still_delivered() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 20)]
    await sink.until(2)
    sink.calls[0].fail(PermanentSinkError("message too large"))
    sink.calls[1].succeed()
    await sink.until(3)
    assert sink.calls[2].values == list(range(11, 21))
    assert runner.watermark() == 10  # refused: no ack for it, but nothing waits on it
    sink.calls[2].succeed()
    assert [await ack for ack in acks] == [False, True]
    assert runner.watermark() == 20
    await pipeline.close()


async def test_close_with_flights_outstanding_refuses_them_and_keeps_the_cursor() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 30)]
    await sink.until(2)
    sink.calls[1].succeed()  # the later one landed; the oldest never does
    await settle()
    await runner.close(timeout_s=0.05)
    assert [await ack for ack in acks] == [False, False, False]
    assert runner.cursor() == 0, "the cursor never moves past an undelivered batch"
    assert sink.calls[0].cancelled, "the publish still in flight was cancelled"
    assert sink.busy == 0
    assert runner.queued == 0
    await pipeline.close()


async def test_close_waits_for_the_flights_and_delivers_everything() -> None:
    sink = FlightSink(auto=True)
    pipeline, runner = setup(sink)
    await pipeline.start()
    for frame in frames(1, 95):
        await pipeline.append(frame)
    await pipeline.close()
    assert sink.log == list(range(1, 96))
    assert runner.cursor() == 95
    assert sink.most_at_once == 2


async def test_close_while_the_backend_keeps_failing_gives_up_with_the_cursor_before() -> None:
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    for frame in frames(1, 20):
        await pipeline.append(frame)
    await sink.until(2)
    closing = asyncio.create_task(runner.close(timeout_s=5))
    failures = 0
    async with asyncio.timeout(5):
        while not closing.done():
            for call in sink.calls:
                if not call.future.done():
                    call.fail(TransientSinkError("down"))
                    failures += 1
            await asyncio.sleep(0)
    await closing
    assert failures >= 3
    assert runner.cursor() == 0
    assert sink.log == []
    await pipeline.close()


async def test_a_sink_of_one_publish_at_a_time_never_sees_two() -> None:
    class OneAtATime(FlightSink):
        concurrent_publishes: ClassVar[int] = 1

    sink = OneAtATime(auto=True)
    pipeline, _ = setup(sink)
    await pipeline.start()
    for frame in frames(1, 50):
        await pipeline.append(frame)
    await pipeline.close()
    assert sink.log == list(range(1, 51))
    assert sink.most_at_once == 1


# -- with the durable spool: what the saved cursor says after a restart --------------------


def spooled(
    directory: Path, sink: Sink, settings: RunnerSettings = SETTINGS, **spool_options: Any
) -> Pipeline:
    ledger = Ledger()
    spool = Spool(SpoolSettings(directory / "spool", **spool_options), ledger)
    spool.open()
    return Pipeline(
        {sink.name: SinkRunner(sink, settings)},
        Router({}, always=[sink.name]),
        AckPolicy(AckLevel.SPOOL, None),
        ack_timeout_s=5,
        spool=spool,
    )


async def test_after_a_restart_delivery_resumes_at_the_undelivered_batch(
    tmp_path: Path,
) -> None:
    sink = FlightSink()
    first_run = spooled(tmp_path, sink)
    await first_run.start()
    for frame in frames(1, 30):
        assert await first_run.accept(frame)
    await sink.until(2)
    sink.calls[1].succeed()  # 11..20 reached the backend, 1..10 never did
    await settle()
    await first_run.close(timeout_s=0.05)

    again = FlightSink(auto=True)
    second_run = spooled(tmp_path, again)
    await second_run.start()
    async with asyncio.timeout(5):
        while len(again.log) < 30:  # noqa: ASYNC110 - the fake sink's own state
            await asyncio.sleep(0.005)
    # Everything from the undelivered batch on comes again (11..20 twice in all).
    assert again.log == list(range(1, 31))
    await second_run.close()


async def test_reading_back_from_the_spool_keeps_the_order_with_flights(tmp_path: Path) -> None:
    sink = FlightSink()
    small = RunnerSettings(**{**vars_of(SETTINGS), "max_queue_records": 25})
    pipeline = spooled(tmp_path, sink, small, memory_records=15)
    runner = pipeline.runners[sink.name]
    await pipeline.start()
    for frame in frames(1, 200):  # far more than memory: the rest is read back
        assert await pipeline.accept(frame)
    assert runner.behind
    sink.auto = True
    for call in sink.calls:
        if not call.future.done():
            call.succeed()
    async with asyncio.timeout(10):
        while runner.watermark() < 200:  # noqa: ASYNC110 - the runner's own state
            await asyncio.sleep(0.005)
    assert sink.log == list(range(1, 201))
    assert sink.most_at_once == 2
    await pipeline.close()


@pytest.mark.parametrize("order", ["oldest first", "later first"])
async def test_many_batches_random_landing_order_keeps_the_last_copies_in_order(
    order: str,
) -> None:
    """Batches land in either order, every third publish fails: nothing is lost, acks
    come in order, and the last copy of each record is in order."""
    sink = FlightSink()
    pipeline, runner = setup(sink)
    await pipeline.start()
    acks = [await submit(pipeline, frame) for frame in frames(1, 200)]
    answered = 0
    seen: list[int] = []
    async with asyncio.timeout(10):
        while runner.watermark() < 200:
            open_calls = [call for call in sink.calls if not call.future.done()]
            if order == "later first":
                open_calls.reverse()
            if not open_calls:
                sink.changed.clear()
                await sink.changed.wait()
                continue
            call = open_calls[0]
            answered += 1
            if answered % 3 == 0:
                call.fail(TransientSinkError("flaky"))
            else:
                call.succeed()
            await settle(5)
            seen.append(runner.watermark())
    assert seen == sorted(seen), "the watermark only moves forward"
    assert all(await asyncio.gather(*acks))
    assert set(sink.log) == set(range(1, 201))
    assert last_copies_in_order(sink.log)
    await pipeline.close()
