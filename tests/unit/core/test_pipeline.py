from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fleetgate.pipeline import AckLevel, AckPolicy, Pipeline, Router, RunnerSettings, SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import (
    Health,
    PermanentSinkError,
    Sink,
    SinkContext,
    TransientSinkError,
)

FAST = RunnerSettings(
    max_queue_records=100, max_batch=10, max_linger_s=0, retry_initial_s=0.001,
    retry_max_s=0.005, down_after_failures=3,
)


def rec(index: int, topic: str = "position", device: str = "d1") -> Record:
    return Record("teltonika", device, topic, index, index, {"i": index})


class ScriptedSink(Sink):
    """An in-memory sink whose failures and pace the test scripts."""

    name = "scripted"

    def __init__(self, name: str = "scripted", fail_times: int = 0,
                 error: Exception | None = None) -> None:
        super().__init__({}, SinkContext())
        self.name = name  # type: ignore[misc]
        self.fail_times = fail_times
        self.error = error or TransientSinkError("backend unreachable")
        self.batches: list[list[Record]] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def publish(self, batch: Sequence[Record]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise self.error
        self.batches.append(list(batch))

    async def close(self) -> None:
        self.closed = True

    @property
    def delivered(self) -> list[int]:
        return [record.created_at for batch in self.batches for record in batch]


async def test_submission_resolves_after_publish_and_small_frames_share_a_batch() -> None:
    sink = ScriptedSink()
    runner = SinkRunner(sink, FAST)
    sink.gate = asyncio.Event()
    await runner.start()
    futures = [await runner.submit([rec(i)]) for i in range(5)]
    await asyncio.sleep(0.01)
    assert not any(future.done() for future in futures)
    sink.gate.set()
    await asyncio.gather(*futures)
    assert sink.delivered == [0, 1, 2, 3, 4]
    assert len(sink.batches) <= 2
    await runner.close()
    assert sink.closed


async def test_transient_errors_are_retried_without_loss_and_health_follows() -> None:
    sink = ScriptedSink(fail_times=4)
    runner = SinkRunner(sink, FAST)
    seen: list[Health] = []
    await runner.start()
    future = await runner.submit([rec(1), rec(2)])
    while not future.done():
        seen.append(runner.health)
        await asyncio.sleep(0.001)
    await future
    assert Health.DOWN in seen
    assert runner.health is Health.OK
    assert sink.delivered == [1, 2]
    await runner.close()


async def test_permanent_error_fails_the_submission_and_moves_on() -> None:
    sink = ScriptedSink(fail_times=1, error=PermanentSinkError("too large"))
    runner = SinkRunner(sink, FAST)
    await runner.start()
    bad = await runner.submit([rec(1)])
    with pytest.raises(PermanentSinkError):
        await bad
    good = await runner.submit([rec(2)])
    await good
    assert sink.delivered == [2]
    await runner.close()


async def test_full_queue_makes_submit_wait_until_space_frees() -> None:
    sink = ScriptedSink()
    sink.gate = asyncio.Event()
    runner = SinkRunner(sink, RunnerSettings(max_queue_records=4, max_batch=4, max_linger_s=0))
    await runner.start()
    await runner.submit([rec(i) for i in range(4)])
    blocked = asyncio.create_task(runner.submit([rec(9)]))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    assert runner.queued == 4
    sink.gate.set()
    await (await blocked)
    assert sink.delivered == [0, 1, 2, 3, 9]
    await runner.close()


async def test_close_flushes_what_is_queued() -> None:
    sink = ScriptedSink()
    runner = SinkRunner(sink, FAST)
    await runner.start()
    for i in range(25):
        await runner.submit([rec(i)])
    await runner.close()
    assert sink.delivered == list(range(25))


def test_router_combines_always_topic_and_wildcard_rules() -> None:
    router = Router({"V": ["kafka", "logger"], "*": ["jsonl", "kafka"]}, always=["sqlite"])
    assert router.targets("V") == ("sqlite", "kafka", "logger", "jsonl")
    assert router.targets("position") == ("sqlite", "jsonl", "kafka")
    assert router.sink_names == {"sqlite", "kafka", "logger", "jsonl"}
    assert router.topics == {"V"}


def test_ack_policy_levels() -> None:
    store = AckPolicy(AckLevel.STORE, "sqlite", {"V": "kafka"})
    assert store.required_sinks("position") == ("sqlite",)
    assert store.required_sinks("V") == ("sqlite", "kafka")
    receipt = AckPolicy(AckLevel.RECEIPT, "sqlite", {"V": "kafka"})
    assert receipt.required_sinks("position") == ()
    assert receipt.required_sinks("V") == ("kafka",)


def make_pipeline(sinks: Mapping[str, ScriptedSink], records: dict[str, list[str]],
                  policy: AckPolicy, timeout: float = 1.0) -> Pipeline:
    runners = {name: SinkRunner(sink, FAST) for name, sink in sinks.items()}
    return Pipeline(runners, Router(records, always=["sqlite"]), policy, ack_timeout_s=timeout)


async def test_accept_waits_for_the_store_only_by_default() -> None:
    store, slow = ScriptedSink("sqlite"), ScriptedSink("kafka")
    slow.gate = asyncio.Event()
    pipeline = make_pipeline({"sqlite": store, "kafka": slow}, {"*": ["kafka"]},
                             AckPolicy(AckLevel.STORE, "sqlite"))
    await pipeline.start()
    assert await pipeline.accept([rec(1), rec(2)])
    assert store.delivered == [1, 2]
    assert slow.delivered == []
    slow.gate.set()
    await pipeline.close()
    assert slow.delivered == [1, 2]


async def test_accept_with_reliable_sink_waits_for_it_and_refuses_on_timeout() -> None:
    store, kafka = ScriptedSink("sqlite"), ScriptedSink("kafka")
    kafka.gate = asyncio.Event()
    pipeline = make_pipeline({"sqlite": store, "kafka": kafka}, {"V": ["kafka"]},
                             AckPolicy(AckLevel.STORE, "sqlite", {"V": "kafka"}), timeout=0.05)
    await pipeline.start()
    assert not await pipeline.accept([rec(1, topic="V")])
    kafka.gate.set()
    assert await pipeline.accept([rec(2, topic="V")])
    await pipeline.close()
    assert kafka.delivered == [1, 2]


async def test_accept_refuses_when_the_required_sink_fails_permanently() -> None:
    store = ScriptedSink("sqlite", fail_times=1, error=PermanentSinkError("disk full"))
    pipeline = make_pipeline({"sqlite": store}, {}, AckPolicy(AckLevel.STORE, "sqlite"))
    await pipeline.start()
    assert not await pipeline.accept([rec(1)])
    assert await pipeline.accept([rec(2)])
    await pipeline.close()


async def test_mixed_topics_route_per_record_and_observers_see_everything() -> None:
    store, kafka = ScriptedSink("sqlite"), ScriptedSink("kafka")
    pipeline = make_pipeline({"sqlite": store, "kafka": kafka}, {"event": ["kafka"]},
                             AckPolicy(AckLevel.STORE, "sqlite"))
    seen: list[Any] = []
    pipeline.add_observer(seen.extend)
    await pipeline.start()
    batch = [rec(1, "position"), rec(2, "event"), rec(3, "position")]
    assert await pipeline.accept(batch)
    await pipeline.close()
    assert store.delivered == [1, 2, 3]
    assert kafka.delivered == [2]
    assert seen == batch


def test_pipeline_refuses_routes_to_unconfigured_sinks() -> None:
    with pytest.raises(ValueError, match="kafka"):
        Pipeline({}, Router({"V": ["kafka"]}), AckPolicy(AckLevel.RECEIPT, None))


async def test_close_timeout_fails_the_batch_being_published() -> None:
    sink = ScriptedSink()
    sink.gate = asyncio.Event()  # never opened: the backend hangs
    runner = SinkRunner(sink, FAST)
    await runner.start()
    inflight = await runner.submit([rec(1)])
    await asyncio.sleep(0.01)
    queued = await runner.submit([rec(2)])
    await runner.close(timeout_s=0.05)
    assert inflight.done()
    assert queued.done()
    with pytest.raises(RuntimeError, match="closed"):
        await inflight


async def test_reference_dispatcher_metrics_count_confirmed_records_bytes_and_errors() -> None:
    from fleetgate.observability import metrics
    from fleetgate.observability.dispatcher_metrics import dispatcher_metrics

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = (sample("zmq_publish_total", record_type="V"),
              sample("zmq_publish_total_bytes", record_type="V"),
              sample("zmq_reliable_ack_total", record_type="V"), sample("zmq_err"))
    hooks = dispatcher_metrics("zmq", ["V"], lambda record: len(record.raw))
    assert hooks is not None
    assert dispatcher_metrics("postgres", [], len) is None  # not a reference dispatcher
    sink = ScriptedSink("zmq", fail_times=1)
    runner = SinkRunner(sink, FAST, hooks)
    await runner.start()
    records = [Record("tesla", "VIN", "V", i, i, {}, b"abcd") for i in range(3)]
    await (await runner.submit(records))
    await runner.close()
    assert sample("zmq_publish_total", record_type="V") == before[0] + 3
    assert sample("zmq_publish_total_bytes", record_type="V") == before[1] + 12
    assert sample("zmq_reliable_ack_total", record_type="V") == before[2] + 3
    assert sample("zmq_err") == before[3] + 1
