"""CAN-gateway ingest over MQTT: fleetgate's subscriber against a bare paho subscriber.

One private mosquitto on loopback (in-memory, unlimited queues, QoS 0 queued for offline
sessions too). For each QoS level the broker is loaded first: a persistent session is
created, the subscriber goes away, N gateway messages (JSON payloads with value, ts,
unit, seq, across many gateways and signals) are published and wait on the broker. Then
the subscriber connects and drains them; the figure is N / (connect → last message done):

* **bare**: paho-mqtt's own threaded loop, auto-PUBACK, counting in ``on_message``: what
  mosquitto delivers to a subscriber that does nothing;
* **fleetgate**: :class:`~fleetgate.listeners.mqtt.MqttIngestListener` on uvloop into a
  real :class:`~fleetgate.pipeline.Pipeline` with the embedded SQLite store and ack level
  ``store``: done means every record committed and, at QoS 1, every PUBACK sent after its
  commit (the ack policy on).

Preloading keeps the publisher's speed out of the figure. mosquitto runs on the other core
and its CPU is reported. Run: ``.venv/bin/python bench/ingest_mqtt.py [--messages 100000]
[--gateways 100] [--hmac] [--protocol 3.1.1]`` (``--hmac``: signed messages, keys configured
for every gateway; ``--protocol``: both subscribers speak MQTT 3.1.1 instead of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from procstats import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.services: the servers the tests use

from fleetgate.listeners.mqtt import MqttIngestConfig, MqttIngestListener  # noqa: E402
from fleetgate.pipeline import (  # noqa: E402
    AckLevel,
    AckPolicy,
    Pipeline,
    Router,
    RunnerSettings,
    SinkRunner,
)
from fleetgate.protocols.mqtt import SIGNALS, format_payload  # noqa: E402
from fleetgate.sinks.base import SinkContext  # noqa: E402
from fleetgate.sinks.sqlite import SqliteSink  # noqa: E402
from fleetgate.store import RecordStore  # noqa: E402
from tests.integration import services  # noqa: E402

NUMERIC = [s for s in SIGNALS if s.kind in ("int", "float")]


def start_broker(workdir: Path) -> services.ManagedProcess:
    proc = services.mosquitto_server(workdir)
    conf = proc.workdir / "mosquitto.conf"
    conf.write_text(
        conf.read_text().replace(
            "persistence false",
            "persistence false\nmax_queued_messages 0\nmax_queued_bytes 0\n"
            "queue_qos0_messages true\nmax_inflight_messages 0",
        )
    )
    return proc.start()


PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


def session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 65535
    return properties


def subscriber_client(client_id: str, protocol: str) -> paho.Client:
    return paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[protocol],
        clean_session=None if protocol == "5" else False,
    )


def connect(client: paho.Client, port: int, protocol: str, clean_start: bool) -> None:
    if protocol == "5":
        client.connect("127.0.0.1", port, clean_start=clean_start, properties=session_properties())
    else:
        client.connect("127.0.0.1", port)


def create_session(port: int, client_id: str, qos: int, protocol: str) -> None:
    """Connect once and subscribe, so the broker queues for ``client_id`` while it is away."""
    done = threading.Event()
    client = subscriber_client(client_id, protocol)
    client.on_subscribe = lambda *args: done.set()
    connect(client, port, protocol, clean_start=True)
    client.loop_start()
    client.subscribe("vehicles/+/#", qos=qos)
    assert done.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def preload(port: int, messages: int, gateways: int, qos: int, key: bytes | None) -> None:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-gateways", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ts = int(time.time() * 1000)
    last = None
    for n in range(messages):
        signal = NUMERIC[n % len(NUMERIC)]
        topic = f"vehicles/gw-{n % gateways:04d}/{signal.group}/{signal.name}"
        value = int(signal.low) + n % 100
        payload = format_payload(value, topic=topic, ts=ts, unit=signal.unit, seq=n, key=key)
        last = client.publish(topic, payload, qos=qos)
        if n % 5000 == 4999:
            # QoS 0 has no flow control; QoS 1 packet ids must not wrap around (65535).
            last.wait_for_publish(120) if qos else time.sleep(0.05)
    assert last is not None
    last.wait_for_publish(120)
    # A marker through the same connection: once it is acknowledged, all went before it.
    client.publish("bench/marker", b"", qos=1).wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def run_bare(port: int, client_id: str, messages: int, protocol: str) -> tuple[float, float]:
    """Seconds to drain ``messages`` with paho's own loop, and this process's CPU seconds."""
    count = 0
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count >= messages:
            done.set()

    client = subscriber_client(client_id, protocol)
    client.on_message = on_message
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    connect(client, port, protocol, clean_start=False)
    client.loop_start()
    finished = done.wait(600)
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    client.disconnect()
    client.loop_stop()
    assert finished, f"bare subscriber got {count} of {messages}"
    return elapsed, (used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


async def run_fleetgate(
    port: int,
    client_id: str,
    messages: int,
    qos: int,
    keys: dict[str, str],
    data_dir: Path,
    protocol: str,
) -> tuple[float, float]:
    store = RecordStore(data_dir / f"fleetgate-{client_id}.db")
    sink = SqliteSink({}, SinkContext(data_dir=str(data_dir)), store=store)
    runner = SinkRunner(
        sink, RunnerSettings(max_queue_records=100_000, max_batch=10_000, max_linger_s=0.005)
    )
    pipeline = Pipeline(
        {"sqlite": runner}, Router({}, always=["sqlite"]), AckPolicy(AckLevel.STORE, "sqlite")
    )
    await pipeline.start()
    settings = MqttIngestConfig(
        url=f"mqtt://127.0.0.1:{port}",
        client_id=client_id,
        qos=qos,
        hmac_keys=keys,
        receive_maximum=65535,
        protocol=protocol,
    )
    listener = MqttIngestListener(settings, pipeline)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await listener.start()
    while True:
        done = listener.acked >= messages if qos else listener.records >= messages
        if done and runner.queued == 0:
            break
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    assert listener.records == messages, listener.health()
    await listener.stop()
    await pipeline.close()
    store.close()
    return elapsed, (used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--hmac", action="store_true", help="signed messages, keys configured")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="5")
    args = parser.parse_args()
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = start_broker(workdir)
    key = b"bench-key" if args.hmac else None
    keys = {f"gw-{n:04d}": "bench-key" for n in range(args.gateways)} if args.hmac else {}
    print(
        f"{args.messages} messages from {args.gateways} gateways, "
        f"{'signed' if key else 'unsigned'} JSON payloads, MQTT {args.protocol}; "
        f"mosquitto on :{broker.port}"
    )
    print(
        f"{'QoS':>3} {'subscriber':<10} {'msg/s':>9} {'seconds':>8} {'own CPU s':>9} {'mosquitto CPU s':>15}"
    )
    try:
        for qos in (0, 1):
            for kind in ("bare", "fleetgate"):
                client_id = f"bench-{kind}-q{qos}"
                create_session(broker.port, client_id, qos, args.protocol)
                preload(broker.port, args.messages, args.gateways, qos, key)
                assert broker.proc is not None
                broker_cpu = cpu_seconds(broker.proc.pid)
                if kind == "bare":
                    elapsed, own_cpu = run_bare(
                        broker.port, client_id, args.messages, args.protocol
                    )
                else:
                    elapsed, own_cpu = uvloop.run(
                        run_fleetgate(
                            broker.port, client_id, args.messages, qos, keys, workdir, args.protocol
                        )
                    )
                broker_used = cpu_seconds(broker.proc.pid) - broker_cpu
                print(
                    f"{qos:>3} {kind:<10} {args.messages / elapsed:>9,.0f} {elapsed:>8.2f} "
                    f"{own_cpu:>9.2f} {broker_used:>15.2f}",
                    flush=True,
                )
    finally:
        broker.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
