"""SinkRunner with a sink that takes concurrent publishes (``Sink.concurrent_publishes``):
the next batch is published while the one before waits for its confirmation, and the
watermark (what acks wait for) still never passes a batch that is not confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fleetgate.pipeline import AckLevel, AckPolicy, Pipeline, Router, RunnerSettings, SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext

SETTINGS = RunnerSettings(max_queue_records=1000, max_batch=2, max_linger_s=0,
                          retry_initial_s=0.001, retry_max_s=0.005)


def rec(index: int) -> Record:
    return Record("teltonika", "d1", "position", index, index, {"i": index})


class GatedSink(Sink):
    """Each publish waits until the test releases it (by its order of arrival)."""

    name = "gated"

    def __init__(self, concurrent: int) -> None:
        super().__init__({}, SinkContext())
        self.concurrent_publishes = concurrent  # type: ignore[misc]
        self.started: list[list[int]] = []
        self.gates: list[asyncio.Future[Exception | None]] = []
        self.active = 0
        self.most_active = 0

    async def publish(self, batch: Sequence[Record]) -> None:
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.started.append([record.created_at for record in batch])
        self.gates.append(gate)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            error = await gate
        finally:
            self.active -= 1
        if error is not None:
            raise error

    async def wait_started(self, count: int) -> None:
        for _ in range(5000):
            if len(self.started) >= count:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"{len(self.started)} publishes started, expected {count}")


def single(sink: Sink) -> tuple[Pipeline, SinkRunner]:
    runner = SinkRunner(sink, SETTINGS)
    pipeline = Pipeline({sink.name: runner}, Router({}, always=[sink.name]),
                        AckPolicy(AckLevel.STORE, sink.name), ack_timeout_s=5)
    return pipeline, runner


async def test_a_later_batch_confirmed_first_waits_for_the_earlier_one() -> None:
    sink = GatedSink(concurrent=2)
    pipeline, runner = single(sink)
    await pipeline.start()
    first = asyncio.create_task(pipeline.accept([rec(1), rec(2)]))
    second = asyncio.create_task(pipeline.accept([rec(3), rec(4)]))
    await sink.wait_started(2)  # both batches in publish at once, in order
    assert sink.started == [[1, 2], [3, 4]]
    assert runner.watermark() == 0
    sink.gates[1].set_result(None)  # the later one is confirmed first
    await asyncio.sleep(0.02)
    assert runner.watermark() == 0  # the first batch (offsets 1-2) is not confirmed
    assert not first.done() and not second.done()
    sink.gates[0].set_result(None)
    assert await first is True
    assert await second is True
    assert runner.watermark() == 4
    assert runner.queued == 0
    await pipeline.close()


async def test_no_more_publishes_at_once_than_the_sink_takes() -> None:
    for concurrent in (1, 2, 3):
        sink = GatedSink(concurrent)
        pipeline, _ = single(sink)
        await pipeline.start()
        accepts = [asyncio.create_task(pipeline.accept([rec(2 * i), rec(2 * i + 1)]))
                   for i in range(8)]
        released = 0
        while released < 8:
            await sink.wait_started(released + 1)
            await asyncio.sleep(0.005)
            assert sink.active <= concurrent
            sink.gates[released].set_result(None)
            released += 1
        assert all(await asyncio.gather(*accepts))
        assert sink.most_active == concurrent
        assert [r for batch in sink.started for r in batch] == list(range(16))
        await pipeline.close()


async def test_a_refused_earlier_batch_is_refused_and_the_later_one_acked() -> None:
    sink = GatedSink(concurrent=2)
    pipeline, runner = single(sink)
    await pipeline.start()
    first = asyncio.create_task(pipeline.accept([rec(1), rec(2)]))
    second = asyncio.create_task(pipeline.accept([rec(3), rec(4)]))
    await sink.wait_started(2)
    sink.gates[1].set_result(None)
    sink.gates[0].set_result(PermanentSinkError("never"))
    assert await first is False
    assert await second is True
    assert runner.watermark() == 4
    await pipeline.close()


async def test_close_refuses_what_is_still_in_publish_and_resumes_before_it() -> None:
    sink = GatedSink(concurrent=2)
    pipeline, runner = single(sink)
    await pipeline.start()
    first = asyncio.create_task(pipeline.accept([rec(1), rec(2)]))
    second = asyncio.create_task(pipeline.accept([rec(3), rec(4)]))
    await sink.wait_started(2)
    sink.gates[1].set_result(None)  # only the later batch is confirmed
    await asyncio.sleep(0.01)
    await runner.close(timeout_s=0.05)
    assert await first is False
    # Confirmed, but behind an unconfirmed batch: the cursor stays before both, so a
    # restart replays them (at least once), and the frame's waiter is answered.
    assert runner.cursor() == 0
    await second
    assert runner.queued == 0
    await pipeline.close()
