"""The mqtt sink against mosquitto: conformance, per-source forms, mutual TLS.

The broker runs with persistence on and the harness reads through a durable session
(``clean_session=False``, QoS 1), so a QoS 1 message the broker acknowledged survives a
broker restart on its way to the reader: the suite's durable restart tests apply. Reading
back ends with a barrier (a marker message through the same broker), so "everything the
broker holds" has arrived when ``read_back`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from fleetgate.forms import register_mqtt_form, wire_payload
from fleetgate.records import Record, record_json
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError
from fleetgate.sinks.mqtt import MqttSink
from fleetgate.sinks.registry import sink_class
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, mosquitto_durable_server
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    mqtt_record,
    teltonika_record,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def mosquitto(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(mosquitto_durable_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


STOP_STEP_S = 10.0


class Reader:
    """A durable QoS 1 subscriber to ``<base>/#`` that reconnects across broker restarts."""

    def __init__(self, port: int, base: str) -> None:
        self.port = port
        self.base = base
        self.identifier = f"fgt-reader-{uuid.uuid4().hex[:10]}"
        self.seen: list[aiomqtt.Message] = []
        self.markers: set[str] = set()
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)

    async def _run(self) -> None:
        while True:
            client = aiomqtt.Client(
                "127.0.0.1", self.port, identifier=self.identifier, clean_session=False
            )
            try:
                async with client:
                    await client.subscribe(f"{self.base}/#", qos=1)
                    self.client = client
                    self.connected.set()
                    async for message in client.messages:
                        topic = str(message.topic)
                        if topic.startswith(f"{self.base}/_sync/"):
                            self.markers.add(topic)
                        else:
                            self.seen.append(message)
            except aiomqtt.MqttError:
                pass
            self.client = None
            self.connected.clear()
            await asyncio.sleep(0.05)

    async def barrier(self, timeout: float = 5.0) -> bool:
        """True once a marker published now came back: everything queued before it has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client = self.client
            if client is None:
                await asyncio.sleep(0.05)
                continue
            marker = f"{self.base}/_sync/{uuid.uuid4().hex}"
            try:
                await client.publish(marker, b"", qos=1, timeout=2)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)
                continue
            while time.monotonic() < deadline and self.client is client:
                if marker in self.markers:
                    return True
                await asyncio.sleep(0.01)
        return False

    async def stop(self) -> None:
        # Each step bounded without awaiting a cancellation: aiomqtt's exit can wait for a
        # disconnect that never completes once the broker was killed and restarted under
        # the client (a teardown once hung until the 120 s test timeout).
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_STEP_S)
        await asyncio.wait({asyncio.create_task(self._drop_session())}, timeout=STOP_STEP_S)

    async def _drop_session(self) -> None:
        """Drop the durable session so the broker does not keep queueing for it."""
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            async with aiomqtt.Client(
                "127.0.0.1", self.port, identifier=self.identifier, clean_session=True
            ):
                pass


class MqttHarness(SinkHarness):
    name = "mqtt"

    def __init__(self, server: ManagedProcess) -> None:
        super().__init__(server)
        self.base = f"fgt{self.token}"
        self.reader = Reader(server.port, self.base)

    async def setup(self) -> None:
        await self.reader.start()

    async def cleanup(self) -> None:
        await self.reader.stop()

    def sink_config(self, **overrides: Any) -> dict[str, Any]:
        assert self.server is not None
        config: dict[str, Any] = {
            "broker": self.server.address,
            "client_id": f"fgt-sink-{uuid.uuid4().hex[:10]}",
            "topic_base": self.base,
            "qos": 1,
            "connect_timeout_ms": 2000,
            "publish_timeout_ms": 2000,
        }
        config.update(overrides)
        return config

    async def make_sink(self, ctx: SinkContext) -> Sink:
        return MqttSink(self.sink_config(), ctx)

    def expected_destination(self, sink: Sink, record: Record) -> str:
        return f"{self.base}/{record.device_id}/{record.topic}"

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        await self.reader.barrier()
        deadline = time.monotonic() + timeout
        while len(self.reader.seen) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return [
            Delivered(str(m.topic), None, {}, bytes(m.payload))  # type: ignore[arg-type]
            for m in list(self.reader.seen)
        ]


class TestMqttConformance(SinkConformance):
    harness_class = MqttHarness

    @pytest.fixture
    def harness_factory(self, mosquitto: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: MqttHarness(mosquitto)


# -- mqtt specifics ------------------------------------------------------------------------------


@pytest.fixture
async def harness(mosquitto: ManagedProcess) -> AsyncIterator[MqttHarness]:
    if not mosquitto.running:
        mosquitto.start()
    harness = MqttHarness(mosquitto)
    await harness.setup()
    yield harness
    await harness.cleanup()


def test_registered_under_its_name() -> None:
    assert sink_class("mqtt") is MqttSink


def test_broker_must_be_host_port() -> None:
    from fleetgate.config import ConfigError

    with pytest.raises(ConfigError, match=r"mqtt\.broker"):
        MqttSink({"broker": "127.0.0.1:notaport"}, SinkContext())
    assert MqttSink({"broker": "[::1]:1884"}, SinkContext()).describe() == (
        "mqtt broker mqtt://::1:1884"
    )


FORM_SOURCE = "fgt-mqtt-form-test"


def _two_messages(record: Record, base: str) -> list[tuple[str, bytes]]:
    return [
        (f"{base}/{record.device_id}/x/first", b"1"),
        (f"{base}/{record.device_id}/x/second", str(record.data["seq"]).encode()),
    ]


register_mqtt_form(FORM_SOURCE, _two_messages)


async def test_registered_form_decides_topics_and_payloads(harness: MqttHarness) -> None:
    form_records = [Record(FORM_SOURCE, "dev-1", "V", 1, 2, {"seq": seq}) for seq in range(3)]
    plain = teltonika_record("356307042441013", 7)
    sink = await harness.make_sink(SinkContext(namespace="ignored"))
    await sink.start()
    try:
        await sink.publish([*form_records, plain])
    finally:
        await sink.close()
    got = [(d.destination, d.payload) for d in await harness.read_back(7, 10)]
    base = harness.base
    assert got == [
        *[
            message
            for seq in range(3)
            for message in (
                (f"{base}/dev-1/x/first", b"1"),
                (f"{base}/dev-1/x/second", str(seq).encode()),
            )
        ],
        (f"{base}/356307042441013/avl", record_json(plain)),  # default form
    ]


async def test_tesla_v_record_becomes_one_message_per_field(harness: MqttHarness) -> None:
    import fleetgate.protocols.tesla  # noqa: F401 - registers the Tesla MQTT form
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

    payload = vd.Payload(vin="5YJ3E1EA7KF000001")
    for key, text in ((vd.Field.VehicleSpeed, "42"), (vd.Field.Gear, "D")):
        datum = payload.data.add()
        datum.key = key
        datum.value.string_value = text
    record = Record("tesla", "5YJ3E1EA7KF000001", "V", 1, 2, {}, raw=payload.SerializeToString())
    sink = await harness.make_sink(SinkContext(namespace="ignored"))
    await sink.start()
    try:
        await sink.publish([record])
    finally:
        await sink.close()
    got = {d.destination: d.payload for d in await harness.read_back(2, 10)}
    base = f"{harness.base}/5YJ3E1EA7KF000001/v"
    assert got == {f"{base}/VehicleSpeed": b'"42"', f"{base}/Gear": b'"D"'}


async def test_retained_flag_from_config(harness: MqttHarness, mosquitto: ManagedProcess) -> None:
    record = mqtt_record("can-gw-retain", 1)
    sink = MqttSink(harness.sink_config(retained=True), SinkContext())
    await sink.start()
    try:
        await sink.publish([record])
    finally:
        await sink.close()
    topic = f"{harness.base}/can-gw-retain/can"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as late:
        await late.subscribe(topic, qos=1)
        message = await asyncio.wait_for(anext(aiter(late.messages)), 5)
        assert message.retain and bytes(message.payload) == record_json(record)  # type: ignore[arg-type]
        await late.publish(topic, b"", retain=True)  # clear the retained message


async def test_mutual_tls_client_certificate(
    harness: MqttHarness, mosquitto: ManagedProcess
) -> None:
    info = mosquitto.info
    tls_broker = f"127.0.0.1:{info['tls_port']}"
    records = make_records(12)
    with_cert = MqttSink(
        harness.sink_config(
            broker=tls_broker,
            tls={
                "server_cert": info["client_cert"],
                "server_key": info["client_key"],
                "ca_file": info["ca"],
            },
        ),
        SinkContext(),
    )
    assert with_cert.describe() == f"mqtt broker mqtts://{tls_broker}"
    await with_cert.start()
    try:
        await with_cert.publish(records)
    finally:
        await with_cert.close()
    delivered = await harness.read_back(len(records), 10)
    assert sorted(d.payload for d in delivered) == sorted(wire_payload(r) for r in records)

    without_cert = MqttSink(
        harness.sink_config(broker=tls_broker, tls={"ca_file": info["ca"]}), SinkContext()
    )
    # TLS 1.3 reports the refused certificate after the handshake: a connect failure or
    # timeout, bounded by connect_timeout_ms, never a hang.
    with pytest.raises(TransientSinkError, match="cannot connect"):
        await asyncio.wait_for(without_cert.start(), 10)
    await without_cert.close()
