"""A private mosquitto (persistence on, plain and mutual-TLS listeners), a real pipeline
with a real sink to ingest into, and a plain paho publisher standing in for gateways."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetgate.listeners.mqtt import MqttIngestConfig, MqttIngestListener
from fleetgate.pipeline import AckLevel, AckPolicy, Pipeline, Router, RunnerSettings, SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.jsonl import JsonlSink
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, mosquitto_durable_server


@pytest.fixture(scope="session")
def gateway_broker(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(mosquitto_durable_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


@pytest.fixture
def broker(gateway_broker: ManagedProcess) -> ManagedProcess:
    """The private broker, running (a test before may have stopped it)."""
    if not gateway_broker.running:
        gateway_broker.start()
    return gateway_broker


class GatedJsonlSink(JsonlSink):
    """The real JSON-lines sink, whose writes a test can hold back."""

    def __init__(self, path: Path) -> None:
        super().__init__({"path": str(path)}, SinkContext())
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish(self, batch: Sequence[Record]) -> None:
        await self.gate.wait()
        await super().publish(batch)


class Ingest:
    """A real Pipeline (ack level ``store``, the jsonl sink as the store) and what it wrote."""

    def __init__(self, path: Path, ack_timeout_s: float = 30.0) -> None:
        self.path = path
        self.sink = GatedJsonlSink(path)
        runner = SinkRunner(self.sink, RunnerSettings(max_linger_s=0.001))
        self.pipeline = Pipeline(
            {"jsonl": runner},
            Router({"*": ["jsonl"]}),
            AckPolicy(AckLevel.STORE, "jsonl"),
            ack_timeout_s=ack_timeout_s,
        )

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        # The sink may be writing a batch right now: only whole lines are records yet.
        written = self.path.read_bytes()
        whole = written[: written.rfind(b"\n") + 1]
        return [orjson.loads(line) for line in whole.splitlines()]

    async def wait_for(
        self, count: int, timeout: float = 30.0, settle: float = 0.0
    ) -> list[dict[str, Any]]:
        """Records once at least ``count`` arrived (and nothing more came for ``settle`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if len(records) >= count:
                if settle:
                    await asyncio.sleep(settle)
                    return self.records()
                return records
            await asyncio.sleep(0.02)
        return self.records()


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[Ingest]:
    made = Ingest(tmp_path / "records.jsonl")
    await made.pipeline.start()
    yield made
    made.sink.gate.set()
    await made.pipeline.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def root() -> str:
    """A topic root of this test's own, so tests never see each other's messages."""
    return unique("fgt-vehicles")


@pytest.fixture
async def make_listener(
    broker: ManagedProcess, root: str
) -> AsyncIterator[Callable[..., MqttIngestListener]]:
    """Listeners on the plain port under this test's root; stopped and their sessions
    removed from the broker afterwards."""
    made: list[MqttIngestListener] = []

    def factory(pipeline: Any, **overrides: Any) -> MqttIngestListener:
        settings: dict[str, Any] = {
            "url": f"mqtt://127.0.0.1:{broker.port}",
            "topics": [f"{root}/+/#"],
            "topic_root": root,
            "client_id": unique("fgt-ingest"),
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "connect_timeout_s": 5,
        }
        settings.update(overrides)
        listener = MqttIngestListener(MqttIngestConfig.model_validate(settings), pipeline)
        made.append(listener)
        return listener

    yield factory
    for listener in made:
        await listener.stop()
        if broker.running:
            await asyncio.to_thread(drop_session, broker.port, listener.client_id)


def drop_session(port: int, client_id: str) -> None:
    """Connect once with clean start and no expiry: the broker forgets the session."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    try:
        client.connect("127.0.0.1", port, clean_start=True)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        client.disconnect()
    except OSError:
        pass
    finally:
        client.loop_stop()


class Publisher:
    """A gateway stand-in: a plain paho client that waits for every PUBACK."""

    def __init__(self, port: int, **tls: Any) -> None:
        self.port = port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=unique("fgt-gw"), protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if tls:
            self.client.tls_set(**tls)

    def __enter__(self) -> Publisher:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(
        self, messages: Sequence[tuple[str, bytes | str, int]], timeout: float = 60
    ) -> None:
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload, qos in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish"


async def publish(port: int, messages: Sequence[tuple[str, bytes | str, int]]) -> None:
    """Publish and wait for every PUBACK, off the event loop (the listener shares it)."""

    def run() -> None:
        with Publisher(port) as publisher:
            publisher.publish(messages)

    await asyncio.to_thread(run)
