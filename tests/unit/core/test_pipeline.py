from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fleetgate.pipeline import (
    AckLevel,
    AckPolicy,
    Ledger,
    Pipeline,
    Router,
    RunnerSettings,
    SinkRunner,
)
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
        self.published = asyncio.Event()  # set after every batch taken
        self.closed = False

    async def publish(self, batch: Sequence[Record]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise self.error
        self.batches.append(list(batch))
        self.published.set()

    async def until_delivered(self, expected: list[int]) -> None:
        """Wait until the records delivered so far are ``expected``."""
        while self.delivered != expected:
            self.published.clear()
            await self.published.wait()

    async def close(self) -> None:
        self.closed = True

    @property
    def delivered(self) -> list[int]:
        return [record.created_at for batch in self.batches for record in batch]


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


def single(sink: ScriptedSink, settings: RunnerSettings = FAST,
           level: AckLevel = AckLevel.STORE, timeout: float = 1.0,
           hooks: Any = None) -> tuple[Pipeline, SinkRunner]:
    """A pipeline whose store is ``sink`` (every topic goes there)."""
    runner = SinkRunner(sink, settings, hooks)
    pipeline = Pipeline({sink.name: runner}, Router({}, always=[sink.name]),
                        AckPolicy(level, sink.name), ack_timeout_s=timeout)
    return pipeline, runner


async def test_acks_wait_for_the_publish_and_small_frames_share_a_batch() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()
    pipeline, _ = single(sink)
    await pipeline.start()
    accepts = [asyncio.create_task(pipeline.accept([rec(i)])) for i in range(5)]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in accepts)
    sink.gate.set()
    assert await asyncio.gather(*accepts) == [True] * 5
    assert sink.delivered == [0, 1, 2, 3, 4]
    assert len(sink.batches) <= 2
    await pipeline.close()
    assert sink.closed


async def test_waiters_share_one_group_per_batch_not_one_future_per_frame() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()
    pipeline, _ = single(sink, RunnerSettings(max_batch=1000, max_linger_s=0))
    await pipeline.start()
    first = asyncio.create_task(pipeline.accept([rec(0)]))
    await asyncio.sleep(0.01)  # the runner took frame 0 and waits at the gate
    later = [asyncio.create_task(pipeline.accept([rec(i)])) for i in range(1, 200)]
    await asyncio.sleep(0.01)
    # One group for frame 0 (taken), one shared by the 199 frames queued behind it.
    assert pipeline.ledger.waiting_groups() == 2
    sink.gate.set()
    assert await first and all(await asyncio.gather(*later))
    assert pipeline.ledger.waiting_groups() == 0
    await pipeline.close()


async def test_transient_errors_are_retried_without_loss_and_health_follows() -> None:
    sink = ScriptedSink("sqlite", fail_times=4)
    pipeline, runner = single(sink)
    seen: list[Health] = []
    await pipeline.start()
    accept = asyncio.create_task(pipeline.accept([rec(1), rec(2)]))
    while not accept.done():
        seen.append(runner.health)
        await asyncio.sleep(0.001)
    assert accept.result() is True
    assert Health.DOWN in seen
    assert runner.health is Health.OK
    assert sink.delivered == [1, 2]
    await pipeline.close()


@pytest.mark.parametrize("error", [PermanentSinkError("too large"), TypeError("a bug"),
                                   OverflowError("int too big")])
async def test_an_error_that_is_not_transient_refuses_those_records_and_moves_on(
    error: Exception,
) -> None:
    sink = ScriptedSink("sqlite", fail_times=1, error=error)
    pipeline, _ = single(sink)
    await pipeline.start()
    assert await pipeline.accept([rec(1)]) is False
    assert await pipeline.accept([rec(2)]) is True
    assert sink.delivered == [2]
    await pipeline.close()


async def test_a_full_queue_makes_append_wait_until_space_frees() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()
    pipeline, runner = single(sink, RunnerSettings(max_queue_records=4, max_batch=4,
                                                   max_linger_s=0), level=AckLevel.RECEIPT)
    await pipeline.start()
    await pipeline.append([rec(i) for i in range(4)])
    blocked = asyncio.create_task(pipeline.append([rec(9)]))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    assert runner.queued == 4
    sink.gate.set()
    await blocked
    await pipeline.close()
    assert sink.delivered == [0, 1, 2, 3, 9]


async def test_group_commit_waits_for_a_full_batch_after_one_was_taken() -> None:
    sink = ScriptedSink("sqlite")
    # An hour of fill: only a full batch (or the first record after a quiet spell, or a
    # close) may end a wait in this test.
    settings = RunnerSettings(max_batch=10, max_linger_s=0, fill_s=3600)
    pipeline, runner = single(sink, settings, level=AckLevel.RECEIPT)
    await pipeline.start()
    await pipeline.append([rec(0)])
    for _ in range(20):
        await asyncio.sleep(0)
    assert sink.delivered == [0]  # nothing taken for an hour: it goes at once
    for i in range(1, 10):
        await pipeline.append([rec(i)])
    for _ in range(20):
        await asyncio.sleep(0)
    assert sink.delivered == [0]  # nine wait for the tenth
    await pipeline.append([rec(10)])
    await sink.until_delivered(list(range(11)))
    assert sink.batches[1] == [rec(i) for i in range(1, 11)]
    await pipeline.append([rec(11)])
    await pipeline.close()  # a close ends the wait and flushes
    assert sink.delivered == list(range(12))
    assert runner.queued == 0


async def test_group_commit_publishes_a_short_batch_once_its_time_is_up() -> None:
    sink = ScriptedSink("sqlite")
    pipeline, _ = single(sink, RunnerSettings(max_batch=1000, max_linger_s=0, fill_s=0.05),
                         level=AckLevel.RECEIPT)
    await pipeline.start()
    await pipeline.append([rec(0)])
    await sink.until_delivered([0])  # the first at once
    await pipeline.append([rec(1)])
    await asyncio.sleep(0)
    await pipeline.append([rec(2)])
    await sink.until_delivered([0, 1, 2])
    assert sink.batches[1:] == [[rec(1), rec(2)]]  # the other two together
    await pipeline.close()


async def test_close_flushes_what_is_queued() -> None:
    sink = ScriptedSink("sqlite")
    pipeline, _ = single(sink, level=AckLevel.RECEIPT)
    await pipeline.start()
    for i in range(25):
        assert await pipeline.accept([rec(i)])
    await pipeline.close()
    assert sink.delivered == list(range(25))


async def test_a_close_that_times_out_refuses_the_acks_still_waiting() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()  # never opened: the backend hangs
    pipeline, runner = single(sink)
    await pipeline.start()
    inflight = asyncio.create_task(pipeline.accept([rec(1)]))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(pipeline.accept([rec(2)]))
    await asyncio.sleep(0.01)
    await runner.close(timeout_s=0.05)
    await pipeline.close()
    assert await inflight is False
    assert await queued is False
    with pytest.raises(RuntimeError, match="closed"):
        await pipeline.accept([rec(3)])  # nothing is taken after close


async def test_an_ack_for_a_topic_waits_only_for_the_sinks_it_goes_to() -> None:
    store, kafka = ScriptedSink("sqlite"), ScriptedSink("kafka")
    kafka.gate = asyncio.Event()  # kafka holds V records back
    pipeline = make_pipeline({"sqlite": store, "kafka": kafka}, {"V": ["kafka"]},
                             AckPolicy(AckLevel.STORE, "sqlite", {"V": "kafka"}))
    await pipeline.start()
    vehicle = asyncio.create_task(pipeline.accept([rec(1, topic="V")]))
    await asyncio.sleep(0.01)
    # A later position is behind the V record in offsets, but kafka never gets it.
    assert await pipeline.accept([rec(2, topic="position")]) is True
    assert not vehicle.done()
    kafka.gate.set()
    assert await vehicle is True
    await pipeline.close()


async def test_acks_time_out_from_one_timer_and_later_frames_still_get_theirs() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()
    pipeline, _ = single(sink, timeout=0.05)
    await pipeline.start()
    assert await pipeline.accept([rec(1)]) is False  # timed out
    sink.gate.set()
    assert await pipeline.accept([rec(2)]) is True
    await pipeline.close()
    assert sink.delivered == [1, 2]  # the timed-out records were still delivered


async def test_ack_queue_answers_in_order_and_lanes_are_independent() -> None:
    from fleetgate.pipeline import AckQueue

    store, kafka = ScriptedSink("sqlite"), ScriptedSink("kafka")
    kafka.gate = asyncio.Event()
    pipeline = make_pipeline({"sqlite": store, "kafka": kafka}, {"V": ["kafka"]},
                             AckPolicy(AckLevel.STORE, "sqlite", {"V": "kafka"}))
    await pipeline.start()
    answers: list[tuple[str, bool]] = []
    three = asyncio.Event()

    def answer(item: str, safe: bool) -> None:
        answers.append((item, safe))
        if len(answers) == 3:
            three.set()

    acks: AckQueue[str] = AckQueue(pipeline, answer)
    await acks.put([rec(1, topic="V")], "v1")
    for i in range(2, 5):
        await acks.put([rec(i)], f"p{i}")
    await asyncio.wait_for(three.wait(), 5)
    # Positions need only the store; the V frame before them waits for kafka alone.
    assert answers == [("p2", True), ("p3", True), ("p4", True)]
    kafka.gate.set()
    await acks.drain(1.0)
    assert answers[-1] == ("v1", True)
    acks.finish()
    await pipeline.close()


async def test_reference_dispatcher_metrics_count_confirmed_records_bytes_and_errors() -> None:
    from fleetgate.observability import metrics
    from fleetgate.observability.dispatcher_metrics import dispatcher_metrics

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = (sample("zmq_publish_total", record_type="V"),
              sample("zmq_publish_total_bytes", record_type="V"),
              sample("zmq_reliable_ack_total", record_type="V"), sample("zmq_err"))
    hooks = dispatcher_metrics("zmq", ["V"], lambda batch: [len(r.raw) for r in batch])
    assert hooks is not None
    assert dispatcher_metrics("postgres", [], len) is None  # not a reference dispatcher
    sink = ScriptedSink("zmq", fail_times=1)
    pipeline, _ = single(sink, hooks=hooks)
    await pipeline.start()
    records = [Record("tesla", "VIN", "V", i, i, {}, b"abcd") for i in range(3)]
    assert await pipeline.accept(records)
    await pipeline.close()
    assert sample("zmq_publish_total", record_type="V") == before[0] + 3
    assert sample("zmq_publish_total_bytes", record_type="V") == before[1] + 12
    assert sample("zmq_reliable_ack_total", record_type="V") == before[2] + 3
    assert sample("zmq_err") == before[3] + 1


def test_dispatcher_metrics_count_a_batch_of_several_topics_per_topic() -> None:
    from fleetgate.observability import metrics
    from fleetgate.observability.dispatcher_metrics import dispatcher_metrics

    def sample(name: str, topic: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, {"record_type": topic}) or 0.0

    names = [("kafka_produce_total", t) for t in ("A", "B")] + [
        ("kafka_produce_ack_total_bytes", t) for t in ("A", "B")
    ]
    before = [sample(name, topic) for name, topic in names]
    hooks = dispatcher_metrics("kafka", ["B"], lambda batch: [len(r.raw) for r in batch])
    assert hooks is not None
    # Topic strings equal but not the same objects, interleaved.
    batch = [Record("tesla", "VIN", "".join(t), 1, 1, {}, b"x" * n)
             for t, n in [("A", 1), ("B", 2), ("A", 3), ("B", 4), ("B", 5)]]
    hooks.published(batch)
    hooks.published([])
    after = [sample(name, topic) for name, topic in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 3, 4, 11]


@pytest.mark.parametrize(("overrides", "fill_s"), [
    ({}, 0.1),  # acks wait for the spool: the store group-commits
    ({"store": {"commit_interval_ms": 40}}, 0.04),
    ({"ack_level": "store"}, 0.0),  # an ack waits for the store: no waiting to fill
    ({"ack_policy": {"teltonika": "store"}}, 0.0),
    ({"ack_policy": {"teltonika": ["sqlite"]}}, 0.0),
])
def test_the_store_group_commits_unless_an_ack_waits_for_it(
    tmp_path: Any, overrides: dict[str, Any], fill_s: float,
) -> None:
    from fleetgate.app import STORE_SINK, build_pipeline
    from fleetgate.config import Config

    config = Config.model_validate({"data_dir": str(tmp_path), **overrides})
    pipeline = build_pipeline(config)
    assert pipeline.runners[STORE_SINK].settings.fill_s == fill_s


class Mark:
    """A consumer whose watermark the test moves."""

    def __init__(self, name: str = "mark") -> None:
        self.name = name
        self.taken = 0
        self.mark = 0
        self.refuse: set[int] = set()

    def watermark(self) -> int:
        return self.mark

    def refused(self, offset: int) -> bool:
        return offset in self.refuse


async def test_then_answers_from_the_advance_itself_in_offset_order() -> None:
    ledger = Ledger()
    consumer = Mark()
    requirement = (consumer,)
    answers: list[tuple[int, bool]] = []
    for offset in (1, 2, 3):
        ledger.then(offset, requirement, lambda safe, o=offset: answers.append((o, safe)))
    consumer.refuse.add(2)
    consumer.mark = 3
    ledger.advanced(consumer)  # no loop step between this and the answers
    assert answers == [(1, True), (2, False), (3, True)]
    ledger.then(3, requirement, lambda safe: answers.append((30, safe)))  # settled already
    assert answers[-1] == (30, True)
    assert ledger.waiting_groups() == 0


async def test_then_answers_false_on_timeout_and_on_close() -> None:
    ledger = Ledger(timeout_s=0.01)
    consumer = Mark()
    answers: list[bool] = []
    ledger.then(1, (consumer,), answers.append)
    async with asyncio.timeout(5):
        while not answers:  # noqa: ASYNC110 - the ledger's timer answers
            await asyncio.sleep(0.005)
    assert answers == [False]
    ledger.timeout_s = 30
    consumer.taken += 1  # a new group
    ledger.then(2, (consumer,), answers.append)
    ledger.close()
    assert answers == [False, False]
    ledger.then(3, (consumer,), answers.append)  # closed: at once
    assert answers == [False, False, False]


async def test_accept_now_takes_nothing_when_it_would_wait_and_accept_then_waits() -> None:
    sink = ScriptedSink("sqlite")
    sink.gate = asyncio.Event()
    pipeline, runner = single(sink, RunnerSettings(max_queue_records=4, max_batch=4,
                                                   max_linger_s=0), level=AckLevel.STORE)
    await pipeline.start()
    answers: list[bool] = []
    assert pipeline.accept_now([rec(i) for i in range(4)], answers.append)
    assert answers == [] and runner.queued == 4  # taken; the store has not committed
    head = pipeline.ledger.head
    assert not pipeline.accept_now([rec(9)], answers.append)  # the queue is full
    assert pipeline.ledger.head == head and runner.queued == 4 and answers == []
    later = asyncio.create_task(pipeline.accept_then([rec(9)], answers.append))
    sink.gate.set()
    await later
    async with asyncio.timeout(5):
        while len(answers) < 2:  # noqa: ASYNC110 - answered from the ledger
            await asyncio.sleep(0.005)
    assert answers == [True, True]
    await pipeline.close()
    assert sink.delivered == [0, 1, 2, 3, 9]
