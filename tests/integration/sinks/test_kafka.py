"""The kafka sink against a real Kafka-protocol broker (Tansu, memory-only).

Conformance runs the shared suite; Tansu forgets everything on restart, so the durable
restart tests are replaced by :mod:`volatile`'s kill/restart check. The last test is the
user story: a Tesla ``config.json`` with ``"records": {"V": ["kafka", "logger"]}`` and the
README's kafka section, run as a server, lands records with headers in
``tesla_telemetry_V``.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleetgate.forms import wire_payload
from fleetgate.pipeline import SinkRunner
from fleetgate.records import Record, record_metadata
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError
from fleetgate.sinks.kafka import KafkaSink
from fleetgate.sinks.registry import sink_class
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, tansu_server
from tests.integration.sinks.conformance import (
    Delivered,
    RunnerSession,
    SinkConformance,
    SinkHarness,
    await_all,
    bounded,
    failed_attempts,
    fast_settings,
    make_records,
)
from tests.integration.sinks.volatile import kill_and_restart_under_live_sink

pytestmark = pytest.mark.integration

TOPICS = ("avl", "can", "V")


@pytest.fixture(scope="session")
def tansu(services_dir: Path) -> Any:
    proc = start_private(tansu_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


def read_topics(bootstrap: str, topics: list[str], expected: int, timeout: float) -> list[Any]:
    """Every message of ``topics``, from the start (assign(): no slow group join)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = _read_once(bootstrap, topics)
        if len(messages) >= expected or time.monotonic() >= deadline:
            return messages
        time.sleep(0.1)


def _read_once(bootstrap: str, topics: list[str]) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fleetgate-test-reader",
            "enable.auto.commit": False,
            "socket.timeout.ms": 2000,
            "reconnect.backoff.max.ms": 200,
        }
    )
    try:
        try:
            metadata = consumer.list_topics(timeout=2)
        except Exception:
            return []  # broker restarting
        wanted: dict[TopicPartition, int] = {}
        for topic in topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in info.partitions:
                tp = TopicPartition(topic, partition)
                low, high = consumer.get_watermark_offsets(tp, timeout=2)
                if high > low:
                    wanted[TopicPartition(topic, partition, low)] = high
        if not wanted:
            return []
        consumer.assign(list(wanted))
        # Tansu reports the high watermark as (base offset of the last batch) + 1, not the
        # log end, so: read until the last batch's first message shows up, then drain what
        # that fetch brought along.
        last = {(tp.topic, tp.partition): high - 1 for tp, high in wanted.items()}
        seen = dict.fromkeys(last, -1)
        messages: list[Any] = []
        deadline = time.monotonic() + 10
        while any(seen[k] < last[k] for k in last) and time.monotonic() < deadline:
            messages += _take(consumer.consume(1000, 0.2), seen)
        while batch := consumer.consume(1000, 0.1):
            messages += _take(batch, seen)
        return messages
    finally:
        consumer.close()


def _take(batch: list[Any], seen: dict[tuple[str, int], int]) -> list[Any]:
    good = [m for m in batch if m.error() is None]
    for message in good:
        seen[(message.topic(), message.partition())] = message.offset()
    return good


class KafkaHarness(SinkHarness):
    name = "kafka"
    supports_headers = True
    supports_keys = True
    durable = False  # Tansu is memory-only: see volatile.py for the restart check

    def __init__(self, server: ManagedProcess) -> None:
        super().__init__(server)
        self.bootstrap = server.address
        self.namespace = ""

    async def make_sink(self, ctx: SinkContext) -> Sink:
        self.namespace = ctx.namespace
        config = {
            "bootstrap.servers": self.bootstrap,
            # Short so outage tests notice fast; the default is 10 s.
            "fleetgate.publish_timeout_ms": 2000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 300,
        }
        return KafkaSink(config, ctx)

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        topics = [f"{self.namespace}_{topic}" for topic in TOPICS]
        messages = await asyncio.to_thread(read_topics, self.bootstrap, topics, expected, timeout)
        return [
            Delivered(
                destination=m.topic(),
                key=m.key(),
                headers=dict(m.headers() or []),
                payload=m.value(),
            )
            for m in messages
        ]


class TestKafkaConformance(SinkConformance):
    harness_class = KafkaHarness

    @pytest.fixture
    def harness_factory(self, tansu: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: KafkaHarness(tansu)

    async def test_broker_killed_under_live_sink_then_back(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        await kill_and_restart_under_live_sink(harness, ctx)


# -- kafka specifics ---------------------------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert sink_class("kafka") is KafkaSink


def test_describe_names_the_broker() -> None:
    sink = KafkaSink({"bootstrap.servers": "127.0.0.1:9092"}, SinkContext())
    assert sink.describe() == "kafka broker 127.0.0.1:9092"


def test_fleetgate_keys_do_not_reach_librdkafka() -> None:
    sink = KafkaSink(
        {"bootstrap.servers": "x:1", "fleetgate.publish_timeout_ms": 1500}, SinkContext()
    )
    assert sink.publish_timeout_s == 1.5
    assert "fleetgate.publish_timeout_ms" not in sink.settings


def test_linger_is_short_unless_the_section_sets_it() -> None:
    # publish waits for each batch's reports: librdkafka's 5 ms linger would be paid per batch.
    default = KafkaSink({"bootstrap.servers": "x:1"}, SinkContext()).producer_config()
    assert default == {"bootstrap.servers": "x:1", "linger.ms": 1}
    for key in ("linger.ms", "queue.buffering.max.ms"):
        config = KafkaSink({"bootstrap.servers": "x:1", key: 20}, SinkContext()).producer_config()
        assert config == {"bootstrap.servers": "x:1", key: 20}


async def test_invalid_librdkafka_property_is_permanent() -> None:
    sink = KafkaSink({"bootstrap.servers": "127.0.0.1:1", "no.such.property": 1}, SinkContext())
    with pytest.raises(PermanentSinkError, match=r"no\.such\.property"):
        await sink.start()


async def test_same_device_same_partition(tansu: ManagedProcess) -> None:
    """Key = device id, so librdkafka's partitioner keeps one vehicle on one partition."""
    ctx = SinkContext(namespace=f"fgtpart{time.monotonic_ns()}")
    records = make_records(300)
    sink = KafkaSink({"bootstrap.servers": tansu.address}, ctx)
    await sink.start()
    try:
        await sink.publish(records)
    finally:
        await sink.close()
    topics = [f"{ctx.namespace}_{t}" for t in TOPICS]
    messages = await asyncio.to_thread(read_topics, tansu.address, topics, len(records), 10)
    partitions: dict[bytes, set[tuple[str, int]]] = {}
    for message in messages:
        partitions.setdefault(message.key(), set()).add((message.topic(), message.partition()))
    assert len(messages) == len(records)
    assert all(len(where) == 1 for where in partitions.values()), partitions


async def test_broker_down_publish_fails_in_bounded_time() -> None:
    from tests.integration.services import free_port

    config = {
        "bootstrap.servers": f"127.0.0.1:{free_port()}",
        "fleetgate.publish_timeout_ms": 500,
    }
    sink = KafkaSink(config, SinkContext(namespace="fgtdown"))
    await sink.start()
    from fleetgate.sinks.base import TransientSinkError

    records = make_records(5)
    with pytest.raises(TransientSinkError, match="without delivery report"):
        await asyncio.wait_for(sink.publish(records), 10)
    # A retry of the same batch waits for the messages librdkafka still holds instead of
    # producing them a second time.
    with pytest.raises(TransientSinkError):
        await asyncio.wait_for(sink.publish(records), 10)
    assert len(sink._inflight) == len(records)
    await asyncio.wait_for(sink.close(), 15)


async def test_retry_waits_for_held_messages_then_each_lands_once(services_dir: Path) -> None:
    """A batch that timed out while the broker was away is retried once it is back: the
    retry counts the delivery reports of the messages librdkafka still held, and produces
    none of them a second time."""
    from fleetgate.sinks.base import TransientSinkError

    proc = tansu_server(services_dir)  # created, not started: the broker is down at first
    config = {
        "bootstrap.servers": proc.address,
        "fleetgate.publish_timeout_ms": 500,
        "reconnect.backoff.max.ms": 200,
    }
    ctx = SinkContext(namespace=f"fgtheld{uuid.uuid4().hex[:8]}")
    sink = KafkaSink(config, ctx)
    await sink.start()
    records = make_records(300)
    try:
        with pytest.raises(TransientSinkError, match="without delivery report"):
            await sink.publish(records)
        assert len(sink._inflight) == len(records)
        start_private(lambda _base: proc, services_dir)
        deadline = time.monotonic() + 30
        while True:  # the runner's retries, until librdkafka has reconnected
            try:
                await sink.publish(records)
                break
            except TransientSinkError:
                if time.monotonic() > deadline:
                    raise
        assert not sink._inflight
        topics = sorted({sink.destination(r.topic) for r in records})
        messages = await asyncio.to_thread(read_topics, proc.address, topics, len(records), 10)
        values = sorted(m.value() for m in messages)
        assert values == sorted(wire_payload(r) for r in records)  # each exactly once
    finally:
        await asyncio.wait_for(sink.close(), 15)
        proc.destroy()


# -- two batches in flight (concurrent_publishes = 2) -------------------------------------------


class _OldestReportedFailed(KafkaSink):
    """Reports publish number ``fail_call`` failed after its records landed and after the
    publish behind it (in flight at the same time) was confirmed too: the runner must
    publish both again, in order."""

    def __init__(self, config: dict[str, Any], ctx: SinkContext, fail_call: int) -> None:
        super().__init__(config, ctx)
        self.fail_call = fail_call
        self.calls = 0
        self.later_confirmed = asyncio.Event()

    async def publish(self, batch: Sequence[Record]) -> None:
        self.calls += 1
        call = self.calls
        await super().publish(batch)
        if call == self.fail_call + 1:
            self.later_confirmed.set()
        if call == self.fail_call:
            await asyncio.wait_for(self.later_confirmed.wait(), 30)
            raise TransientSinkError("injected: reported failed after it landed")


async def _through_runner(
    sink: KafkaSink, records: list[Record], max_batch: int, frame: int, bootstrap: str
) -> list[Any]:
    """``records`` in frames of ``frame`` through a runner; then what the broker holds."""
    runner = SinkRunner(sink, fast_settings(max_batch=max_batch))
    await runner.start()
    session = RunnerSession(sink, runner)
    try:
        await session.submit(records, size=frame)  # all queued before the first batch
        await await_all(session.futures, timeout=120)
    finally:
        await bounded(runner.close(), "runner.close()")
    topics = sorted({sink.destination(r.topic) for r in records})
    want = len(records)
    return await asyncio.to_thread(read_topics, bootstrap, topics, want, 30)


def _positions_per_device(records: list[Record], messages: list[Any]) -> dict[bytes, list[int]]:
    """Per key (device), the positions in ``records`` of its messages, in log order (a
    device keeps to one partition, and a partition is read in offset order)."""
    index = {wire_payload(r): i for i, r in enumerate(records)}
    per_device: dict[bytes, list[int]] = defaultdict(list)
    for message in messages:
        per_device[message.key()].append(index[message.value()])
    return per_device


def _last_copies(positions: list[int]) -> list[int]:
    last = {position: at for at, position in enumerate(positions)}
    return sorted(last, key=last.__getitem__)


async def test_many_batches_two_in_flight_keep_per_device_order_and_lose_nothing(
    tansu: ManagedProcess,
) -> None:
    assert KafkaSink.concurrent_publishes == 2
    ctx = SinkContext(namespace=f"fgtflights{uuid.uuid4().hex[:8]}")
    records = make_records(6000)
    sink = KafkaSink({"bootstrap.servers": tansu.address}, ctx)
    failed_before = failed_attempts("kafka")
    messages = await _through_runner(sink, records, 97, 7, tansu.address)  # 62 batches
    assert {m.value() for m in messages} == {wire_payload(r) for r in records}, "lost"
    per_device = _positions_per_device(records, messages)
    for device, positions in per_device.items():
        assert _last_copies(positions) == sorted(set(positions)), f"{device!r}: out of order"
    if failed_attempts("kafka") == failed_before:  # nothing failed: no copies, strict order
        assert len(messages) == len(records)
        for device, positions in per_device.items():
            assert positions == sorted(positions), f"{device!r}: out of order"


async def test_a_failed_batch_with_a_later_one_confirmed_is_published_again_with_it(
    tansu: ManagedProcess,
) -> None:
    ctx = SinkContext(namespace=f"fgtrefly{uuid.uuid4().hex[:8]}")
    records = make_records(2000)
    batch = 100
    sink = _OldestReportedFailed({"bootstrap.servers": tansu.address}, ctx, fail_call=5)
    failed_before = failed_attempts("kafka")
    messages = await _through_runner(sink, records, batch, 10, tansu.address)
    assert {m.value() for m in messages} == {wire_payload(r) for r in records}, "lost"
    per_device = _positions_per_device(records, messages)
    for device, positions in per_device.items():
        assert _last_copies(positions) == sorted(set(positions)), f"{device!r}: out of order"
    if failed_attempts("kafka") == failed_before + 1:  # only the injected failure
        # Batches 5 and 6 (records 400..599) went twice, each later copy after both first
        # copies; every other record once.
        assert len(messages) == len(records) + 2 * batch
        twice = {p for ps in per_device.values() for p in ps if ps.count(p) == 2}
        assert twice == set(range(4 * batch, 6 * batch))


# -- the user story: Tesla config.json with records V -> kafka + logger -------------------------


def _tesla_v_record(vin: str, seq: int, run: str) -> Record:
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

    payload = vd.Payload(vin=vin, is_resend=False)
    payload.created_at.FromMilliseconds(1_717_171_717_000 + seq)
    datum = payload.data.add()
    datum.key = vd.Field.VehicleSpeed
    datum.value.string_value = f"{40 + seq}"
    return Record(
        source="tesla",
        device_id=vin,
        topic="V",
        created_at=1_717_171_717_000 + seq,
        received_at=1_717_171_718_000 + seq,
        data={"VehicleSpeed": str(40 + seq)},
        raw=payload.SerializeToString(),
        meta={"txid": f"{run}-{seq}", "device_client_version": "2024.44.25.1"},
    )


async def test_tesla_config_records_v_to_kafka(tansu: ManagedProcess, tmp_path: Path) -> None:
    from fleetgate.app import Server
    from fleetgate.config import build_config
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

    config = build_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "namespace": "tesla_telemetry",
            "tesla_enabled": False,
            "records": {"V": ["kafka", "logger"]},
            "kafka": {"bootstrap.servers": tansu.address, "queue.buffering.max.messages": 1000},
            "api": {"enabled": False},
            "teltonika": {"enabled": False},
            "data_dir": str(tmp_path),
        },
        environ={},
    )
    run = uuid.uuid4().hex  # the broker is shared by the session: find this run's messages
    server = Server(config)
    await server.start()
    vins = ("5YJ3E1EA7KF000001", "5YJ3E1EA7KF000002")
    records = [_tesla_v_record(vins[i % 2], i, run) for i in range(20)]
    try:
        for record in records:
            assert await server.pipeline.accept([record]) is True
        assert server.pipeline.health()["kafka"]["status"] == "ok"
    finally:
        await server.stop()
    messages = await asyncio.to_thread(
        read_topics, tansu.address, ["tesla_telemetry_V"], len(records), 10
    )
    mine = [m for m in messages if dict(m.headers())["txid"].startswith(run.encode())]
    assert len(mine) == len(records), "each record exactly once"
    by_txid = {dict(m.headers())["txid"].decode(): m for m in mine}
    assert len(by_txid) == len(records)
    for record in records:
        message = by_txid[record.meta["txid"]]  # type: ignore[index]
        assert message.topic() == "tesla_telemetry_V"
        assert message.key() == record.device_id.encode()
        assert message.value() == wire_payload(record) == record.raw  # vehicle's protobuf
        # Tesla's seven metadata headers, plus the record id consumers de-duplicate by.
        assert dict(message.headers()) == {
            **{k: v.encode() for k, v in record_metadata(record).items()},
            "record_id": f"{socket.gethostname()}-{record.offset}".encode(),
        }
        decoded = vd.Payload.FromString(message.value())
        assert decoded.vin == record.device_id
