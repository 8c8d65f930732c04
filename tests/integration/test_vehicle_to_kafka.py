"""A user's Tesla config.json with ``"V": ["kafka", "logger"]``: vehicles → mTLS → Kafka.

The whole path of the reference's integration test, on loopback: simulated vehicles with
client certificates, the fleetgate listener, reliable ack from Kafka, and an independent
consumer reading ``tesla_telemetry_V`` and ``tesla_telemetry_connectivity``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.observability import metrics
from fleetgate.pki import init_pki
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2 as vc
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.sim.tesla import TeslaSimSettings, credentials_from_dir, run_simulation
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, tansu_server

pytestmark = pytest.mark.integration

VINS = ("5YJ3E1EA7KF000011", "5YJ3E1EA7KF000012")


@pytest.fixture(scope="module")
def broker(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(tansu_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 15) -> list[Any]:
    """Every message of ``topic`` (3 partitions, assign(): no slow group join)."""
    deadline = time.monotonic() + timeout
    messages: list[Any] = []
    while time.monotonic() < deadline:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                             "enable.auto.commit": False})
        try:
            metadata = consumer.list_topics(topic, timeout=5)
            partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            messages = []
            idle_until = time.monotonic() + 1.0
            while time.monotonic() < idle_until:
                message = consumer.poll(0.2)
                if message is None or message.error():
                    continue
                messages.append(message)
                idle_until = time.monotonic() + 0.5
        finally:
            consumer.close()
        if len(messages) >= expected:
            return messages
    return messages


async def test_vehicles_stream_through_fleetgate_into_kafka(
    broker: ManagedProcess, tmp_path: Path
) -> None:
    pki = init_pki(tmp_path / "pki", vins=list(VINS))
    config = build_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "namespace": "tesla_telemetry",
            "tls": pki.config_snippet()["tls"],
            "records": {"V": ["kafka", "logger"], "connectivity": ["kafka"]},
            "reliable_ack_sources": {"V": "kafka"},
            "kafka": {"bootstrap.servers": broker.address, "queue.buffering.max.messages": 1000},
            "data_dir": str(tmp_path / "data"),
            "api": {"enabled": False},
            "teltonika": {"enabled": False},
        },
        environ={},
    )
    def sample(name: str, record_type: str) -> float:
        value = metrics.REGISTRY.get_sample_value(name, {"record_type": record_type})
        return value or 0.0

    produced_before = sample("kafka_produce_total", "V")
    reliable_before = sample("kafka_reliable_ack_total", "V")
    server = Server(config)
    await server.start()
    try:
        listener = server.listener("tesla")
        assert listener is not None
        port = listener.port  # type: ignore[attr-defined]
        settings = TeslaSimSettings(
            url=f"wss://127.0.0.1:{port}/",
            ca=pki.ca_cert,
            credentials=credentials_from_dir(pki.directory / "vehicles"),
            vehicles=2,
            rate=0,
            duration_s=None,
            frames_per_vehicle=5,
            window=2,
            ack_timeout_s=20,
        )
        result = await run_simulation(settings)
        # Every frame acked, and with reliable ack that means Kafka confirmed it first.
        assert result.ok, result.summary()
        assert result.frames_acked == 10
    finally:
        await server.stop()
    # The reference's per-dispatcher metrics, for dashboards made for Tesla's server.
    assert sample("kafka_produce_total", "V") == produced_before + 10
    assert sample("kafka_reliable_ack_total", "V") == reliable_before + 10

    data = await asyncio.to_thread(read_all, broker.address, "tesla_telemetry_V", 10)
    assert len(data) == 10
    for message in data:
        headers = {key: value.decode() for key, value in message.headers()}
        # Tesla's seven metadata headers, plus the record id consumers de-duplicate by.
        assert set(headers) == {"vin", "receivedat", "timestamp", "txid", "txtype", "version",
                                "device_client_version", "record_id"}
        assert headers["record_id"].rsplit("-", 1)[1].isdigit()
        assert headers["txtype"] == "V"
        assert message.key().decode() == headers["vin"]
        payload = vd.Payload.FromString(message.value())
        assert payload.vin == headers["vin"] in VINS
        assert len(payload.data) > 0
    assert {m.key().decode() for m in data} == set(VINS)

    connectivity = await asyncio.to_thread(
        read_all, broker.address, "tesla_telemetry_connectivity", 4
    )
    statuses = sorted(
        (vc.VehicleConnectivity.FromString(m.value()).vin,
         vc.ConnectivityEvent.Name(vc.VehicleConnectivity.FromString(m.value()).status))
        for m in connectivity
    )
    assert statuses == sorted((vin, status) for vin in VINS
                              for status in ("CONNECTED", "DISCONNECTED"))
