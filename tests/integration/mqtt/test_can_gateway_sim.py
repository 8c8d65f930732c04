"""The gateway simulator against a real mosquitto, read back through fleetgate's subscriber.

Proved here: the offline queue (broker stopped, then back: every QoS 1 message arrives,
QoS 0 gives way first); ``POST /publish`` on the simulator's REST API becomes a record;
the gateway's config file and certificates from ``fleetgate certs gateway`` work over
mutual TLS (P-256, P-384, P-521, RSA 2048; TLS 1.2 and 1.3); real-time mode publishes
telemetry at QoS 0 and events at QoS 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetgate.pki import GATEWAY_KEY_TYPES, init_gateway_pki
from fleetgate.protocols.mqtt import SIGNALS
from fleetgate.sim.can_gateway import (
    CanGatewaySettings,
    CanGatewaySimulator,
    settings_from_config_file,
)
from fleetgate.sim.can_gateway_api import ApiServer
from tests.integration.conftest import start_private
from tests.integration.mqtt.conftest import Ingest, unique
from tests.integration.mqtt.test_ingest import MakeListener, wait_until
from tests.integration.services import ManagedProcess, mosquitto_durable_server

pytestmark = pytest.mark.integration

QOS1_SIGNALS = {signal.name for signal in SIGNALS if signal.qos == 1}


@contextlib.asynccontextmanager
async def running(simulator: CanGatewaySimulator) -> AsyncIterator[asyncio.Task[None]]:
    await simulator.start()
    schedule = asyncio.create_task(simulator.run_schedule())
    try:
        yield schedule
    finally:
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
        await simulator.stop()


def spy_on_queues(simulator: CanGatewaySimulator) -> list[tuple[str, int, dict[str, Any]]]:
    """Every message the gateways queue: (gateway, qos, payload fields)."""
    seen: list[tuple[str, int, dict[str, Any]]] = []
    for gateway in simulator.gateways:
        original = gateway.queue.put

        def put(
            topic: str,
            payload: bytes,
            qos: int,
            _orig: Any = original,
            _gw: str = gateway.gateway_id,
        ) -> None:
            seen.append((_gw, qos, json.loads(payload)))
            _orig(topic, payload, qos)

        gateway.queue.put = put  # type: ignore[method-assign]
    return seen


async def test_offline_queue_every_qos1_message_arrives(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    listener = make_listener(ingest.pipeline)
    await listener.start()
    settings = CanGatewaySettings(
        broker=f"mqtt://127.0.0.1:{broker.port}",
        gateway_id=unique("gw"),
        gateways=2,
        topic_root=root,
        interval_s=0.1,
        queue_size=60,  # smaller than what piles up: QoS 0 must give way
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        seed=1,
    )
    simulator = CanGatewaySimulator(settings)
    queued = spy_on_queues(simulator)
    async with running(simulator) as schedule:
        assert await wait_until(lambda: len(ingest.records()) >= 30)
        broker.kill()
        assert await wait_until(lambda: not any(g.connected for g in simulator.gateways))
        down_from = len(queued)
        assert await wait_until(
            lambda: (
                all(g.queue.dropped_qos0 > 0 for g in simulator.gateways)
                and sum(1 for _, qos, _ in queued[down_from:] if qos) >= 32
            )
        )
        schedule.cancel()  # nothing new from here on
        assert all(len(g.queue) >= 20 for g in simulator.gateways)  # held while offline
        broker.start()
        assert await wait_until(
            lambda: all(g.connected and len(g.queue) == 0 for g in simulator.gateways)
        )
    expected = {(gw, fields["seq"]) for gw, qos, fields in queued if qos == 1}
    assert await wait_until(
        lambda: expected <= {(r["device_id"], r["data"]["seq"]) for r in ingest.records()},
        timeout=30,
    ), "a QoS 1 message was lost"
    assert all(g.queue.dropped_qos1 == 0 for g in simulator.gateways)
    assert simulator.totals()["dropped_qos0"] > 0
    states = [
        r["data"]["value"] for r in ingest.records() if r["data"]["signal"] == "connection_state"
    ]
    assert states.count("connected") >= 4  # each gateway said so on both connections
    records = ingest.records()
    assert {r["data"]["signal"] for r in records} == {signal.name for signal in SIGNALS}


async def test_rest_publish_becomes_a_record(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    listener = make_listener(ingest.pipeline)
    await listener.start()
    gateway_id = unique("gw-rest")
    settings = CanGatewaySettings(
        broker=f"mqtt://127.0.0.1:{broker.port}",
        gateway_id=gateway_id,
        topic_root=root,
        interval_s=3600,  # one snapshot at start, then only what the API asks for
        hmac_key=b"rest secret",
    )
    simulator = CanGatewaySimulator(settings)
    api = ApiServer(simulator, "127.0.0.1", 0)
    await api.start()
    try:
        async with (
            running(simulator),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}") as http,
        ):
            assert await wait_until(lambda: simulator.gateways[0].connected)
            first = len(await ingest.wait_for(len(SIGNALS) + 1))
            response = await http.post("/publish", json={"engine_rpm": 2000, "vehicle_speed": 80})
            assert response.status_code == 200, response.text
            assert [p["topic"] for p in response.json()["published"]] == [
                f"{root}/{gateway_id}/engine/rpm",
                f"{root}/{gateway_id}/vehicle/speed",
            ]
            records = await ingest.wait_for(first + 2)
            new = {r["data"]["signal"]: r for r in records[first:]}
            assert new["rpm"]["data"]["value"] == 2000
            assert new["speed"]["data"]["value"] == 80.0
            assert new["rpm"]["device_id"] == gateway_id and new["rpm"]["topic"] == "engine"
            assert new["rpm"]["data"]["signed"] is False  # fleetgate has no key for it here

            bad = await http.post("/publish", json={"engine_rpm": -1})
            assert bad.status_code == 422 and "outside" in bad.json()["detail"]
            unknown = await http.post("/publish", json={"engine_torque": 1})
            assert unknown.status_code == 422 and "engine_rpm" in unknown.json()["detail"]

            health = (await http.get("/health")).json()
            assert health["status"] == "ok"
            assert health["gateways"][0]["connected"] is True
            assert health["config"]["thing_name"] == gateway_id
            config = (await http.get("/config")).json()
            assert config["hmac"] is True and "rest secret" not in json.dumps(config)
    finally:
        await api.stop()


class Subscriber:
    """A plain paho subscriber that notes each message's topic and delivered QoS."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: list[tuple[str, int]] = []
        self.payloads: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("fgt-sub"))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.seen.append((message.topic, message.qos))
            self.payloads.append((message.topic, message.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_realtime_mode_rates_and_qos(broker: ManagedProcess, root: str) -> None:
    subscriber = Subscriber(broker.port, f"{root}/#")
    try:
        settings = CanGatewaySettings(
            broker=f"mqtt://127.0.0.1:{broker.port}",
            gateway_id="gw-rt",
            topic_root=root,
            realtime=True,
            duration_s=1.5,
        )
        simulator = CanGatewaySimulator(settings)
        await simulator.start()
        await simulator.run_schedule()
        await simulator.stop()
        await asyncio.sleep(0.3)
    finally:
        subscriber.close()
    by_signal: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    for topic, qos in subscriber.seen:
        name = topic.rsplit("/", 1)[1]
        by_signal.setdefault(name, set()).add(qos)
        counts[name] = counts.get(name, 0) + 1
    assert by_signal["rpm"] == {0} and by_signal["coolant_temp"] == {0}
    assert by_signal["connection_state"] == {1} and by_signal["gear_status"] == {1}
    assert counts["rpm"] > counts["coolant_temp"]  # 10 a second against 1 a second
    states = [
        json.loads(p)["value"] for t, p in subscriber.payloads if t.endswith("/connection_state")
    ]
    assert states[0] == "connected" and states[-1] == "disconnected"  # said goodbye on stop


# -- certificates from `fleetgate certs gateway`, mutual TLS ---------------------------------
@pytest.fixture(scope="module")
def gateway_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gateway-pki")
    for key_type in GATEWAY_KEY_TYPES:
        init_gateway_pki(directory, [f"gw-{key_type}"], key_type=key_type)  # type: ignore[arg-type]
    return directory


@pytest.fixture(scope="module")
def pki_broker(gateway_pki: Path, services_dir: Path) -> Iterator[ManagedProcess]:
    pki = {
        "ca": gateway_pki / "ca.crt",
        "server_cert": gateway_pki / "server.crt",
        "server_key": gateway_pki / "server.key",
    }
    proc = start_private(lambda base: mosquitto_durable_server(base, pki=pki), services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


@pytest.mark.parametrize("key_type", GATEWAY_KEY_TYPES)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_gateway_certificates_connect_over_tls_12_and_13(
    gateway_pki: Path, pki_broker: ManagedProcess, key_type: str, version: ssl.TLSVersion
) -> None:
    context = ssl.create_default_context(cafile=str(gateway_pki / "ca.crt"))
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(
        gateway_pki / "gateways" / f"gw-{key_type}.crt",
        gateway_pki / "gateways" / f"gw-{key_type}.key",
    )
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique(f"gw-{key_type}"))
    client.tls_set_context(context)
    client.connect("127.0.0.1", pki_broker.info["tls_port"])
    client.loop_start()
    try:
        info = client.publish(f"{unique('tls')}/gw/engine/rpm", b"1", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
        sock = client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    finally:
        client.disconnect()
        client.loop_stop()


async def test_gateway_config_file_over_mutual_tls_into_fleetgate(
    gateway_pki: Path,
    pki_broker: ManagedProcess,
    ingest: Ingest,
    make_listener: MakeListener,
    root: str,
) -> None:
    port = pki_broker.info["tls_port"]
    listener = make_listener(
        ingest.pipeline,
        url=f"mqtts://127.0.0.1:{port}",
        tls={
            "ca_file": str(gateway_pki / "ca.crt"),
            "cert": str(gateway_pki / "subscriber.crt"),
            "key": str(gateway_pki / "subscriber.key"),
        },
    )
    await listener.start()
    assert listener.health()["connection"] == "connected"
    config = json.loads((gateway_pki / "gateways" / "gw-p256.json").read_text())
    config["endpoint"] = f"127.0.0.1:{port}"
    config_path = gateway_pki / "gw-p256-test.json"
    config_path.write_text(json.dumps(config))
    settings = settings_from_config_file(config_path, topic_root=root, snapshots=1)
    assert settings.broker == f"mqtts://127.0.0.1:{port}"
    simulator = CanGatewaySimulator(settings)
    await simulator.start()
    await simulator.run_schedule()
    await simulator.stop()
    records = await ingest.wait_for(len(SIGNALS) + 2, settle=0.2)  # + connected, disconnected
    assert {r["device_id"] for r in records} == {"gw-p256"}
    assert len(records) == len(SIGNALS) + 2


def test_cli_with_the_gateway_config_file(
    broker: ManagedProcess, tmp_path: Path, root: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "endpoint": f"127.0.0.1:{broker.port}",
                "thing_name": "gw-cli",
                "client_id": "gw-cli",
                "publish_interval_seconds": 300,
            }
        )
    )
    subscriber = Subscriber(broker.port, f"{root}/#")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleetgate",
                "sim",
                "can-gateway",
                "--config",
                str(config),
                "--topic-root",
                root,
                "--snapshots",
                "1",
                "--no-api",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        time.sleep(0.3)
    finally:
        subscriber.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 gateway(s) -> mqtt://127.0.0.1" in result.stdout
    assert "dropped qos0=0 qos1=0 unsent=0" in result.stdout
    topics = {topic for topic, _ in subscriber.seen}
    assert {f"{root}/gw-cli/{s.group}/{s.name}" for s in SIGNALS} <= topics
