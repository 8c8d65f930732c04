"""The demo's embedded broker (a private mosquitto on loopback): the simulator publishes,
fleetgate's subscriber reads, with a persistent session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetgate.listeners.mqtt import MqttIngestListener
from fleetgate.protocols.mqtt import SIGNALS
from fleetgate.sim.can_gateway import CanGatewaySettings, CanGatewaySimulator
from fleetgate.sim.embedded_broker import EmbeddedBroker, mosquitto_binary
from tests.integration.conftest import missing
from tests.integration.mqtt.conftest import Ingest, unique
from tests.integration.mqtt.test_ingest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def embedded() -> AsyncIterator[EmbeddedBroker]:
    if mosquitto_binary() is None:
        missing("mosquitto is not installed")
    async with EmbeddedBroker() as broker:
        yield broker


async def test_simulated_gateways_through_the_embedded_broker(
    embedded: EmbeddedBroker, ingest: Ingest
) -> None:
    assert embedded.port > 0 and embedded.url == f"mqtt://127.0.0.1:{embedded.port}"
    listener = MqttIngestListener(
        embedded.ingest_settings(client_id=unique("demo")), ingest.pipeline
    )
    await listener.start()
    try:
        assert listener.health()["connection"] == "connected"
        simulator = CanGatewaySimulator(
            CanGatewaySettings(broker=embedded.url, gateway_id="demo-gw", gateways=2, snapshots=1)
        )
        await simulator.start()
        await simulator.run_schedule()
        await simulator.stop()
        per_gateway = len(SIGNALS) + 2  # the tree, connected, disconnected
        records = await ingest.wait_for(2 * per_gateway, settle=0.2)
        assert len(records) == 2 * per_gateway
        assert {r["device_id"] for r in records} == {"demo-gw-001", "demo-gw-002"}
        # QoS 1 messages (events, connection state) were acknowledged; QoS 0 need none.
        assert 0 < listener.acked <= len(records)
    finally:
        await listener.stop()


async def test_qos1_published_while_stopped_arrive_after_restart(
    embedded: EmbeddedBroker, ingest: Ingest
) -> None:
    settings = embedded.ingest_settings(client_id=unique("demo"))
    first = MqttIngestListener(settings, ingest.pipeline)
    await first.start()
    await first.stop()

    def publish() -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("gw"))
        client.connect("127.0.0.1", embedded.port)
        client.loop_start()
        infos = [client.publish("vehicles/gw-e/engine/rpm", str(900 + i), qos=1) for i in range(20)]
        for info in infos:
            info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()

    await asyncio.to_thread(publish)
    again = MqttIngestListener(settings, ingest.pipeline)
    await again.start()
    try:
        records = await ingest.wait_for(20, settle=0.2)
        assert [r["data"]["value"] for r in records] == [900 + i for i in range(20)]
        assert await wait_until(lambda: again.acked == 20)
    finally:
        await again.stop()
