"""The pubsub sink against drongo's Pub/Sub gRPC emulator (memory-only).

drongo has no StreamingPull, so the harness reads with unary ``pull`` + ``acknowledge`` and
keeps everything it has seen. It forgets topics and subscriptions on restart: the harness
recreates them, and the durable restart tests are replaced by :mod:`volatile`'s check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from fleetgate.config import ConfigError
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.sinks.pubsub import PubSubSink
from fleetgate.sinks.registry import sink_class
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, pubsub_emulator
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
)
from tests.integration.sinks.volatile import kill_and_restart_under_live_sink

pytestmark = pytest.mark.integration

PROJECT = "fleetgate-test"
TOPICS = ("avl", "can", "V")


@pytest.fixture(scope="session")
def drongo(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(pubsub_emulator, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


@pytest.fixture(autouse=True)
def emulator_env(drongo: ManagedProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client reads these when it is created: emulator, never real Google Cloud.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", drongo.info["host"])
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


class PubSubHarness(SinkHarness):
    name = "pubsub"
    supports_headers = True  # attributes
    durable = False  # drongo is memory-only: see volatile.py for the restart check

    def __init__(self, server: ManagedProcess) -> None:
        super().__init__(server)
        self.topics: list[str] = []
        self.seen: list[Delivered] = []
        self._publisher = pubsub_v1.PublisherClient()
        self._subscriber = pubsub_v1.SubscriberClient()

    def _subscription(self, topic: str) -> str:
        return f"projects/{PROJECT}/subscriptions/{topic}-reader"

    def _provision(self) -> None:
        if self.server is None or not self.server.running:
            return  # a test stopped it; start_server() provisions
        for topic in self.topics:
            path = f"projects/{PROJECT}/topics/{topic}"
            with contextlib.suppress(exceptions.AlreadyExists):
                self._publisher.create_topic(name=path, timeout=5)
            with contextlib.suppress(exceptions.AlreadyExists):
                self._subscriber.create_subscription(
                    name=self._subscription(topic), topic=path, timeout=5
                )

    async def make_sink(self, ctx: SinkContext) -> Sink:
        self.topics = [f"{ctx.namespace}_{topic}" for topic in TOPICS]
        await asyncio.to_thread(self._provision)
        config = {"gcp_project_id": PROJECT, "publish_timeout_ms": 2000}
        return PubSubSink(config, ctx)

    async def start_server(self) -> None:
        # The emulator restarts empty: have it create this test's topics and reading
        # subscriptions before its port opens, or the sink could publish into a topic
        # nobody subscribes to yet (and Pub/Sub would drop those messages).
        assert self.server is not None
        plan = {
            "topics": [f"projects/{PROJECT}/topics/{t}" for t in self.topics],
            "subscriptions": [
                [self._subscription(t), f"projects/{PROJECT}/topics/{t}"] for t in self.topics
            ],
        }
        self.server.info["provision"].write_text(json.dumps(plan))
        try:
            await super().start_server()
        finally:
            self.server.info["provision"].unlink()

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while True:
            await asyncio.to_thread(self._pull_all)
            if len(self.seen) >= expected or time.monotonic() >= deadline:
                return list(self.seen)
            await asyncio.sleep(0.1)

    def _pull_all(self) -> None:
        for topic in self.topics:
            subscription = self._subscription(topic)
            while True:
                try:
                    response = self._subscriber.pull(
                        subscription=subscription, max_messages=1000, timeout=5
                    )
                except exceptions.GoogleAPICallError:
                    break  # restarting, or not provisioned yet
                received = response.received_messages
                if not received:
                    break
                for item in received:
                    message = item.message
                    self.seen.append(
                        Delivered(
                            destination=topic,
                            key=None,
                            headers={k: v.encode() for k, v in message.attributes.items()},
                            payload=message.data,
                        )
                    )
                self._subscriber.acknowledge(
                    subscription=subscription, ack_ids=[item.ack_id for item in received]
                )

    async def cleanup(self) -> None:
        def delete() -> None:
            for topic in self.topics:
                with contextlib.suppress(Exception):
                    self._subscriber.delete_subscription(
                        subscription=self._subscription(topic), timeout=5
                    )
                with contextlib.suppress(Exception):
                    self._publisher.delete_topic(topic=f"projects/{PROJECT}/topics/{topic}")
            self._subscriber.close()

        await asyncio.to_thread(delete)


class TestPubSubConformance(SinkConformance):
    harness_class = PubSubHarness

    @pytest.fixture
    def harness_factory(self, drongo: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: PubSubHarness(drongo)

    async def test_emulator_killed_under_live_sink_then_back(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        await kill_and_restart_under_live_sink(harness, ctx)


# -- Tesla's start-up rules ----------------------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert sink_class("pubsub") is PubSubSink


def test_emulator_and_credentials_together_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    with pytest.raises(ConfigError, match="both set"):
        PubSubSink({"gcp_project_id": PROJECT}, SinkContext())


def test_empty_project_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gcp_project_id"):
        PubSubSink({"gcp_project_id": ""}, SinkContext())


async def test_missing_topic_is_created(drongo: ManagedProcess) -> None:
    if not drongo.running:
        drongo.start()
    ctx = SinkContext(namespace=f"fgtnew{time.monotonic_ns()}")
    sink = PubSubSink({"gcp_project_id": PROJECT}, ctx)
    publisher = pubsub_v1.PublisherClient()
    path = f"projects/{PROJECT}/topics/{ctx.namespace}_avl"
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=path, timeout=5)
    try:
        await sink.start()
        await sink.publish(make_records(1))  # one teltonika "avl" record
        assert publisher.get_topic(topic=path, timeout=5).name == path
    finally:
        await sink.close()
        with contextlib.suppress(Exception):
            publisher.delete_topic(topic=path)


def test_describe_names_project_and_emulator(drongo: ManagedProcess) -> None:
    sink = PubSubSink({"gcp_project_id": PROJECT}, SinkContext())
    assert sink.describe() == f"pubsub project {PROJECT} (emulator {drongo.info['host']})"
