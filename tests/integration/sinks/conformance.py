"""The one test suite every network sink must pass, whatever its backend.

A backend plugs in with two pieces:

* a :class:`SinkHarness` subclass: builds the sink for a test (unique names per test),
  reads deliveries back with an *independent* consumer, and stops/starts the backend;
* a test class ``TestXConformance(SinkConformance)`` that sets ``harness_class`` and
  provides a ``harness_factory`` fixture returning a fresh harness.

Example (``test_redis.py``)::

    class TestRedisConformance(SinkConformance):
        harness_class = RedisHarness

        @pytest.fixture
        def harness_factory(self, private_redis):
            return lambda: RedisHarness(private_redis)

Tests that need a capability the harness lacks (``restartable``, ``durable``) are not
generated for it: ``conftest.py`` deselects them at collection (marker ``sink_requires``).

What the suite proves, per sink:

* a batch read back by an independent consumer matches byte for byte: payload =
  :func:`~fleetgate.forms.wire_payload` (JSON records *and* raw wire bytes, both payload
  modes), key = device id, headers = :func:`~fleetgate.records.record_metadata`;
* per-device order survives, through a real :class:`SinkRunner`;
* 10,000 records arrive, each exactly once when nothing fails;
* confirmation means stored: once ``publish`` returned, the server is stopped, the sink
  abandoned, the server restarted, and every confirmed record is still there;
* backend down at start: health goes down, records wait, the backend comes up, all arrive,
  health is ok again;
* backend killed mid-stream and restarted: no loss (duplicates allowed: at-least-once);
* ``runner.close()`` flushes everything queued; closing while the backend is down is bounded.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import pytest

from fleetgate.config import AckLevel
from fleetgate.forms import register_wire_form, wire_payload
from fleetgate.observability import metrics
from fleetgate.pipeline import AckPolicy, Pipeline, Router
from fleetgate.pipeline.runner import RunnerSettings, SinkRunner
from fleetgate.records import Record, record_metadata
from fleetgate.sinks.base import Health, Sink, SinkContext
from tests.integration.services import ManagedProcess

# -- what a harness returns -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message as an independent consumer saw it."""

    destination: str
    key: bytes | None
    headers: Mapping[str, bytes]
    payload: bytes


class SinkHarness(abc.ABC):
    """Adapts one backend to the conformance suite. One instance per test.

    Capabilities (class attributes) decide which tests are generated:

    * ``supports_keys`` / ``supports_headers``: the backend carries a message key / headers
      (attributes) that the suite checks against device id / record metadata;
    * ``restartable``: ``stop_server``/``start_server`` work (the suite owns the server);
    * ``durable``: what the server confirmed survives ``stop_server`` + ``start_server``.
    """

    name: ClassVar[str]
    supports_headers: ClassVar[bool] = False
    supports_keys: ClassVar[bool] = False
    restartable: ClassVar[bool] = True
    durable: ClassVar[bool] = True

    def __init__(self, server: ManagedProcess | None = None) -> None:
        self.server = server
        # Unique per test: harnesses derive every stream/table/topic name from it.
        self.token = uuid.uuid4().hex[:10]

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Before the test (e.g. connect the independent consumer)."""

    async def cleanup(self) -> None:  # noqa: B027 - optional hook
        """After the test: delete what the test created, disconnect."""

    @abc.abstractmethod
    async def make_sink(self, ctx: SinkContext) -> Sink:
        """A new, unstarted sink writing to destinations unique to this test."""

    @abc.abstractmethod
    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        """Everything delivered so far by this test's sinks, in backend order.

        Waits up to ``timeout`` seconds for at least ``expected`` messages, then returns what
        it has (all of it, from the first message, every call; duplicates included). With
        ``timeout=0`` it must still return everything the server holds at the time of the
        call (e.g. read up to the high watermark): the confirmation test relies on it.
        """

    @staticmethod
    async def poll(
        read_all: Callable[[], Awaitable[list[Delivered]]], expected: int, timeout: float
    ) -> list[Delivered]:
        """``read_back`` for backends read by a full re-read: repeat until ``expected`` or
        ``timeout``, returning the last read either way."""
        deadline = time.monotonic() + timeout
        while True:
            delivered = await read_all()
            if len(delivered) >= expected or time.monotonic() >= deadline:
                return delivered
            await asyncio.sleep(0.05)

    def expected_destination(self, sink: Sink, record: Record) -> str:
        """Where ``record`` should show up (``Delivered.destination``)."""
        return sink.destination(record.topic)

    def expected_payload(self, record: Record, ctx: SinkContext) -> bytes:
        """``Delivered.payload`` for ``record``: the wire payload, byte for byte.

        Only a backend that does not carry the payload as bytes overrides this (postgres
        stores columns; its harness compares a canonical form of them instead).
        """
        return wire_payload(record, ctx.transmit_decoded)

    async def stop_server(self) -> None:
        if self.server is None:
            raise NotImplementedError(f"{self.name}: no server to stop")
        await asyncio.to_thread(self.server.kill)

    async def start_server(self) -> None:
        if self.server is None:
            raise NotImplementedError(f"{self.name}: no server to start")
        await asyncio.to_thread(self.server.start)

    async def ensure_server_running(self) -> None:
        if self.server is not None and not self.server.running:
            await self.start_server()


# -- test records ---------------------------------------------------------------------------

# A source with a registered wire form whose bytes are the record's raw bytes: it checks
# that sinks forward wire_payload() untouched (Tesla forwards its protobuf this way).
WIRE_SOURCE = "conformance-wire"


def _wire_form(record: Record, transmit_decoded: bool) -> bytes:
    if transmit_decoded:
        return orjson.dumps({"decoded": record.raw.hex(), "vin": record.device_id})
    return record.raw


register_wire_form(WIRE_SOURCE, _wire_form)

TELTONIKA_IMEIS = ("356307042441013", "356307042441014")
MQTT_GATEWAYS = ("can-gw-01",)
WIRE_VINS = ("5YJ3E1EA7KF000001", "5YJ3E1EA7KF000002")
BASE_MS = 1_717_171_717_000


def teltonika_record(device: str, seq: int) -> Record:
    return Record(
        source="teltonika",
        device_id=device,
        topic="avl",
        created_at=BASE_MS + seq * 1000,
        received_at=BASE_MS + seq * 1000 + 250,
        data={
            "seq": seq,
            "priority": seq % 3,
            "gps": {"lat": 54.6872 + seq * 1e-5, "lon": 25.2797, "speed": seq % 130},
            "io": {"239": seq % 2, "66": 12_800 + seq % 100, "name": "Kraštas ✓"},
        },
    )


def mqtt_record(device: str, seq: int) -> Record:
    return Record(
        source="mqtt",
        device_id=device,
        topic="can",
        created_at=BASE_MS + seq,
        received_at=BASE_MS + seq + 3,
        data={"seq": seq, "frame": {"id": 0x18FEF100, "bytes": "00ff10a2"}},
        meta={"txid": f"m-{seq}"},
    )


def wire_record(device: str, seq: int) -> Record:
    # Binary on purpose: NUL, 0xff and bytes that are not UTF-8.
    raw = b"\x0a\x11" + device.encode() + b"\x00\xff\xfe\x80" + seq.to_bytes(4, "big") + b"\x12"
    return Record(
        source=WIRE_SOURCE,
        device_id=device,
        topic="V",
        created_at=BASE_MS + seq,
        received_at=BASE_MS + seq + 7,
        data={"seq": seq},
        raw=raw,
        meta={"txid": f"tx-{seq:08d}", "device_client_version": "2024.44.25"},
    )


_MAKERS: tuple[tuple[Callable[[str, int], Record], tuple[str, ...]], ...] = (
    (teltonika_record, TELTONIKA_IMEIS),
    (mqtt_record, MQTT_GATEWAYS),
    (wire_record, WIRE_VINS),
)


def make_records(count: int, start: int = 0) -> list[Record]:
    """``count`` records cycling over every kind and device, each with a unique payload."""
    devices = [(maker, device) for maker, names in _MAKERS for device in names]
    return [
        maker(device, seq)
        for seq, (maker, device) in zip(
            range(start, start + count), itertools.cycle(devices), strict=False
        )
    ]


def chunks(records: Sequence[Record], size: int) -> list[Sequence[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


# -- helpers --------------------------------------------------------------------------------


def fast_settings(**overrides: Any) -> RunnerSettings:
    """Runner settings that retry quickly, so outage tests stay short."""
    settings = RunnerSettings(
        max_queue_records=200_000,
        max_batch=500,
        max_linger_s=0.002,
        retry_initial_s=0.05,
        retry_max_s=0.4,
        down_after_failures=3,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)


async def collect(
    harness: SinkHarness, records: Sequence[Record], ctx: SinkContext, timeout: float = 30.0
) -> list[Delivered]:
    """Read back until every record's payload was delivered (or ``timeout``)."""
    want = {harness.expected_payload(record, ctx) for record in records}
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 0.0)
        delivered = await harness.read_back(len(want), min(remaining, 2.0))
        if want <= {d.payload for d in delivered} or remaining <= 0:
            return delivered


def assert_all_delivered(
    records: Sequence[Record],
    delivered: Iterable[Delivered],
    ctx: SinkContext,
    harness: SinkHarness | None = None,
) -> None:
    expected = harness.expected_payload if harness is not None else _wire_payload
    seen = {d.payload for d in delivered}
    lost = [r for r in records if expected(r, ctx) not in seen]
    assert not lost, f"{len(lost)} of {len(records)} records never arrived, e.g. {lost[0]}"


def _wire_payload(record: Record, ctx: SinkContext) -> bytes:
    return wire_payload(record, ctx.transmit_decoded)


class Feeder:
    """A runner behind a one-sink pipeline: each ``submit`` is one frame, its ack a task.

    The task's result is the ack decision: True once the sink confirmed the frame.
    """

    def __init__(self, runner: SinkRunner) -> None:
        self.pipeline = Pipeline(
            {runner.name: runner},
            Router({}, always=[runner.name]),
            AckPolicy(AckLevel.STORE, runner.name),
            ack_timeout_s=3600,
        )

    async def submit(self, records: Sequence[Record]) -> asyncio.Task[bool]:
        offset = await self.pipeline.append(records)
        requirement = self.pipeline.requirement_for(records)
        return asyncio.ensure_future(self.pipeline.settled(offset, requirement))


def failed_attempts(sink: str) -> float:
    """Failed publish attempts of ``sink`` in this process so far."""
    value = metrics.REGISTRY.get_sample_value("fleetgate_sink_errors_total", {"sink": sink})
    return value or 0.0


async def await_all(futures: Sequence[asyncio.Future[bool]], timeout: float = 60.0) -> None:
    try:
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout)
    except TimeoutError:
        done = sum(f.done() for f in futures)
        pytest.fail(f"only {done} of {len(futures)} submissions confirmed within {timeout:.0f} s")
    refused = results.count(False)
    assert not refused, f"{refused} of {len(futures)} submissions refused"


async def bounded(awaitable: Awaitable[Any], what: str, timeout: float = 20.0) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        pytest.fail(f"{what} did not finish within {timeout:.0f} s")


@dataclass
class RunnerSession:
    """A sink behind a real SinkRunner, closed at the end of the test."""

    sink: Sink
    runner: SinkRunner
    futures: list[asyncio.Future[bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.feeder = Feeder(self.runner)

    async def submit(self, records: Sequence[Record], size: int = 50) -> None:
        for part in chunks(records, size):
            self.futures.append(await self.feeder.submit(part))


def sinks_require(*capabilities: str) -> pytest.MarkDecorator:
    """Generate the test only for harnesses that have every capability."""
    return pytest.mark.sink_requires(*capabilities)


# -- the suite ------------------------------------------------------------------------------


@pytest.mark.integration
class SinkConformance:
    """Subclass as ``Test<Backend>Conformance``; set ``harness_class``, define ``harness_factory``."""

    harness_class: ClassVar[type[SinkHarness]]

    @pytest.fixture
    def harness_factory(self) -> Callable[[], SinkHarness]:
        raise NotImplementedError("the sink's test class must define harness_factory")

    @pytest.fixture
    async def harness(
        self, harness_factory: Callable[[], SinkHarness]
    ) -> AsyncIterator[SinkHarness]:
        harness = harness_factory()
        await harness.ensure_server_running()
        await harness.setup()
        try:
            yield harness
        finally:
            await harness.ensure_server_running()
            await harness.cleanup()

    @pytest.fixture
    def ctx(self, harness: SinkHarness) -> SinkContext:
        # A namespace unique to the test gives every sink unique destination names.
        return SinkContext(namespace=f"fgt{harness.token}")

    async def _runner(
        self, harness: SinkHarness, ctx: SinkContext, **settings: Any
    ) -> RunnerSession:
        sink = await harness.make_sink(ctx)
        runner = SinkRunner(sink, fast_settings(**settings))
        await runner.start()
        return RunnerSession(sink, runner)

    # 1 ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("transmit_decoded", [False, True], ids=["wire", "decoded"])
    async def test_batch_round_trip_is_byte_exact(
        self, harness: SinkHarness, transmit_decoded: bool
    ) -> None:
        ctx = SinkContext(namespace=f"fgt{harness.token}", transmit_decoded=transmit_decoded)
        records = make_records(60)
        sink = await harness.make_sink(ctx)
        await sink.start()
        try:
            await sink.publish(records)
            delivered = await collect(harness, records, ctx)
        finally:
            await bounded(sink.close(), "sink.close()")

        by_payload: dict[bytes, list[Delivered]] = defaultdict(list)
        for item in delivered:
            by_payload[item.payload].append(item)
        assert len(delivered) == len(records), "each record exactly once"
        for record in records:
            if record.source == WIRE_SOURCE and not transmit_decoded:
                # the raw bytes themselves, untouched
                assert wire_payload(record, transmit_decoded) == record.raw
            payload = harness.expected_payload(record, ctx)
            matches = by_payload.get(payload)
            assert matches, f"missing {record}"
            got = matches[0]
            assert got.destination == harness.expected_destination(sink, record)
            if harness.supports_keys:
                assert got.key == record.device_id.encode()
            if harness.supports_headers:
                meta = record_metadata(record)
                assert {k: got.headers.get(k) for k in meta} == {
                    k: v.encode() for k, v in meta.items()
                }

    # 2 ---------------------------------------------------------------------------------
    async def test_per_device_order_through_runner(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        records = make_records(2000)
        session = await self._runner(harness, ctx, max_batch=173)
        failed_before = failed_attempts(session.runner.name)
        try:
            await session.submit(records, size=7)
            await await_all(session.futures)
            delivered = await collect(harness, records, ctx)
        finally:
            await bounded(session.runner.close(), "runner.close()")
        index = {harness.expected_payload(r, ctx): i for i, r in enumerate(records)}
        per_device: dict[str, list[int]] = defaultdict(list)
        for item in delivered:
            position = index[item.payload]
            per_device[records[position].device_id].append(position)
        assert len(per_device) == len(TELTONIKA_IMEIS) + len(MQTT_GATEWAYS) + len(WIRE_VINS)
        failed = failed_attempts(session.runner.name) != failed_before
        for device, positions in per_device.items():
            if failed:
                # A failed publish (a timeout on a loaded machine) is published again, with
                # the batches in flight behind it (concurrent_publishes): copies, whose
                # last ones keep the order.
                last = {position: at for at, position in enumerate(positions)}
                positions = sorted(last, key=last.__getitem__)
            assert positions == sorted(positions), f"{device}: order not preserved"
        assert_all_delivered(records, delivered, ctx, harness)

    # 3 ---------------------------------------------------------------------------------
    async def test_ten_thousand_records_exactly_once(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        records = make_records(10_000)
        session = await self._runner(harness, ctx, max_batch=1000)
        failed_before = failed_attempts(session.runner.name)
        try:
            await session.submit(records, size=100)
            await await_all(session.futures, timeout=120)
            delivered = await collect(harness, records, ctx, timeout=60)
        finally:
            await bounded(session.runner.close(), "runner.close()")
        assert_all_delivered(records, delivered, ctx, harness)
        # A publish that failed (a timeout on a loaded machine) is retried, and at least
        # once may then mean twice; with no failed attempt, each record arrives once.
        if failed_attempts(session.runner.name) == failed_before:
            assert len(delivered) == len(records), "no duplicates when nothing failed"
        assert session.runner.health is Health.OK

    # 4 ---------------------------------------------------------------------------------
    @sinks_require("restartable", "durable")
    async def test_confirmed_means_stored_on_the_server(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        records = make_records(300)
        sink = await harness.make_sink(ctx)
        await sink.start()
        for part in chunks(records, 100):
            await sink.publish(part)
        # publish() returned: the server must hold every record, right now...
        assert_all_delivered(records, await harness.read_back(len(records), 0), ctx, harness)
        # ...and keep them: take the server away at once and abandon the sink, so nothing
        # buffered client-side can still sneak in, then look again.
        await harness.stop_server()
        await bounded(sink.close(), "sink.close() with the server down")
        await harness.start_server()
        delivered = await collect(harness, records, ctx)
        assert_all_delivered(records, delivered, ctx, harness)

    # 5 ---------------------------------------------------------------------------------
    @sinks_require("restartable")
    async def test_server_down_at_start_then_up(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        await harness.stop_server()
        records = make_records(500)
        session = await self._runner(harness, ctx)
        try:
            await session.submit(records, size=25)
            await eventually(lambda: session.runner.health is Health.DOWN, "health down")
            assert not any(f.done() for f in session.futures), "confirmed with the server down"
            assert session.runner.queued == len(records), "records must wait, not be dropped"
            await harness.start_server()
            await await_all(session.futures)
            assert session.runner.health is Health.OK
            delivered = await collect(harness, records, ctx)
        finally:
            await bounded(session.runner.close(), "runner.close()")
        assert_all_delivered(records, delivered, ctx, harness)

    # 6 ---------------------------------------------------------------------------------
    @sinks_require("restartable", "durable")
    async def test_server_killed_mid_stream_loses_nothing(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        records = make_records(4000)
        first, rest = records[:1500], records[1500:]
        session = await self._runner(harness, ctx, max_batch=200)
        try:
            await session.submit(first, size=50)
            await await_all(session.futures)
            # Keep submitting while the server goes away and comes back.
            producer = asyncio.create_task(self._trickle(session, rest))
            await asyncio.sleep(0.05)
            await harness.stop_server()
            await eventually(
                lambda: session.runner.health is not Health.OK, "the sink to notice the outage"
            )
            await asyncio.sleep(0.3)
            await harness.start_server()
            await producer
            await await_all(session.futures, timeout=90)
            delivered = await collect(harness, records, ctx, timeout=60)
        finally:
            await bounded(session.runner.close(), "runner.close()")
        assert_all_delivered(records, delivered, ctx, harness)
        assert session.runner.health is Health.OK

    @staticmethod
    async def _trickle(session: RunnerSession, records: Sequence[Record]) -> None:
        for part in chunks(records, 50):
            session.futures.append(await session.feeder.submit(part))
            await asyncio.sleep(0.005)

    # 7 ---------------------------------------------------------------------------------
    async def test_runner_close_flushes_everything_queued(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        records = make_records(3000)
        session = await self._runner(harness, ctx, max_batch=250)
        await session.submit(records, size=30)
        await bounded(session.runner.close(timeout_s=60), "runner.close()", timeout=90)
        assert all(f.done() and f.result() is True for f in session.futures)
        delivered = await collect(harness, records, ctx)
        assert_all_delivered(records, delivered, ctx, harness)

    # 8 ---------------------------------------------------------------------------------
    @sinks_require("restartable")
    async def test_close_while_server_down_is_bounded(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        await harness.stop_server()
        session = await self._runner(harness, ctx)
        await session.submit(make_records(20), size=10)
        await eventually(lambda: session.runner.health is Health.DOWN, "health down")
        # Shutdown with an unreachable backend gives up on the records (they were never
        # confirmed, so no device was acked for them) instead of hanging or crashing.
        await bounded(session.runner.close(timeout_s=2), "runner.close() with server down")
        assert all(f.done() for f in session.futures)
        assert not any(f.result() for f in session.futures)

    # 9 ---------------------------------------------------------------------------------
    async def test_describe_names_backend_and_address(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        sink = await harness.make_sink(ctx)
        description = sink.describe()
        assert description.startswith(f"{sink.name} ")
        assert len(description) > len(sink.name) + 1
