"""The nats sink: conformance against a private JetStream server, plus naming and de-dup."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from fleetgate.forms import wire_payload
from fleetgate.records import Record
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.sinks.nats import NatsSink, message_id, subject_token
from fleetgate.sinks.registry import sink_class
from tests.integration.services import ManagedProcess
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    teltonika_record,
)

pytestmark = pytest.mark.integration


class NatsHarness(SinkHarness):
    name = "nats"
    supports_headers = True
    supports_keys = False  # NATS has no message key; the device id is the last subject token

    def __init__(self, server: ManagedProcess | None, port: int | None = None) -> None:
        super().__init__(server)
        self.port = port if port is not None else server.port  # type: ignore[union-attr]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.stream = f"fgt{self.token}"  # the sink names its stream after the namespace

    async def make_sink(self, ctx: SinkContext) -> Sink:
        config = {"servers": [self.url], "publish_timeout_ms": 3000, "connect_timeout_ms": 1000}
        return NatsSink(config, ctx)

    def expected_destination(self, sink: Sink, record: Record) -> str:
        assert isinstance(sink, NatsSink)
        return sink.subject(record)

    async def _client(self) -> Client:
        return await nats.connect(self.url, allow_reconnect=False, connect_timeout=2)

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        return await self.poll(self._read_all, expected, timeout)

    async def _read_all(self) -> list[Delivered]:
        try:
            nc = await self._client()
        except Exception:
            return []  # server restarting
        try:
            js = nc.jetstream()
            try:
                stored = (await js.stream_info(self.stream)).state.messages
            except nats.js.errors.NotFoundError:
                return []
            delivered: list[Delivered] = []
            if not stored:
                return delivered
            # A fresh ephemeral consumer each time: everything, from the first message.
            # No acks: an explicit-ack consumer would stall at max_ack_pending (1000).
            config = ConsumerConfig(ack_policy=AckPolicy.NONE)
            sub = await js.pull_subscribe(f"{self.stream}.>", stream=self.stream, config=config)
            try:
                while len(delivered) < stored:
                    batch = await sub.fetch(min(1000, stored - len(delivered)), timeout=5)
                    for msg in batch:
                        headers = {k: v.encode() for k, v in (msg.headers or {}).items()}
                        delivered.append(Delivered(msg.subject, None, headers, msg.data))
            finally:
                await sub.unsubscribe()
            return delivered
        finally:
            await nc.close()

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            nc = await self._client()
            try:
                await nc.jetstream().delete_stream(self.stream)
            finally:
                await nc.close()


class TestNatsConformance(SinkConformance):
    harness_class = NatsHarness

    @pytest.fixture
    def harness_factory(self, private_nats: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: NatsHarness(private_nats)


def test_subject_and_stream_naming() -> None:
    record = teltonika_record("dev.1 *x>", 1)
    sink = NatsSink({}, SinkContext(namespace="tesla"))
    assert sink.subject(record) == "tesla.avl.dev_1__x_"
    assert sink.stream == "tesla"
    prefixed = NatsSink({"subject_prefix": "acme.fleet"}, SinkContext(namespace="tesla"))
    assert prefixed.subject(record).startswith("acme.fleet.avl.")
    assert prefixed.stream == "acme_fleet"
    assert NatsSink({}, SinkContext()).prefix == "fleetgate"
    assert subject_token("") == "_"
    assert sink_class("nats") is NatsSink


def test_message_id_is_stable_and_distinct() -> None:
    a, b = make_records(2)
    assert message_id(a, wire_payload(a)) == message_id(a, wire_payload(a))
    assert message_id(a, wire_payload(a)) != message_id(b, wire_payload(b))


async def test_republished_batch_is_deduplicated(private_nats: ManagedProcess) -> None:
    """A batch retried after a lost ack is stored once (Nats-Msg-Id)."""
    if not private_nats.running:
        private_nats.start()
    harness = NatsHarness(private_nats)
    sink = await harness.make_sink(SinkContext(namespace=f"fgt{harness.token}"))
    records = make_records(50)
    try:
        await sink.start()
        await sink.publish(records)
        await sink.publish(records)
        delivered = await harness.read_back(100, 0)
    finally:
        await sink.close()
        await harness.cleanup()
    assert len(delivered) == 50


async def test_shared_nats_round_trip(shared_nats: int) -> None:
    """One quick round trip against the always-running server (unique stream, deleted)."""
    harness = NatsHarness(None, shared_nats)
    records = make_records(30)
    sink = await harness.make_sink(SinkContext(namespace=f"fgt{harness.token}"))
    try:
        await sink.start()
        await sink.publish(records)
        delivered = await harness.read_back(len(records), 5)
    finally:
        await sink.close()
        await harness.cleanup()
    assert [d.payload for d in delivered] == [wire_payload(r) for r in records]
