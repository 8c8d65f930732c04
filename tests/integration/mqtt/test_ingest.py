"""The mqtt_ingest subscriber against a real mosquitto, into a real pipeline and sink.

What is proved: records come out right; QoS 1 messages published while fleetgate is
stopped arrive after it starts again; PUBACK waits for the pipeline (a message whose
records were not safe is redelivered); a burst of 10,000 arrives complete and in order
per gateway; refusals (HMAC, drift, malformed payloads, unknown topics) are counted per
gateway and acknowledged; mutual TLS works and refuses what it must; shared
subscriptions split one stream; the subscriber comes back after the broker restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from fleetgate.listeners.mqtt import MqttIngestListener
from fleetgate.observability import metrics
from fleetgate.protocols.mqtt import format_payload
from tests.integration.mqtt.conftest import Ingest, Publisher, publish, unique
from tests.integration.services import ManagedProcess

pytestmark = pytest.mark.integration

MakeListener = Callable[..., MqttIngestListener]


def refused(gateway: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_mqtt_refused_total", {"gateway": gateway, "reason": reason}
    )
    return value or 0.0


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_signals_become_records(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    listener = make_listener(ingest.pipeline)
    await listener.start()
    assert listener.health()["connection"] == "connected"
    ts = int(time.time() * 1000)
    await publish(
        broker.port,
        [
            (f"{root}/gw-001/engine/rpm", b"3500", 0),
            (f"{root}/gw-001/vehicle/gear_status", b"D", 1),
            (f"{root}/gw-002/vehicle/speed", format_payload(80.5, topic="", ts=ts, seq=3), 1),
            (f"{root}/gw-002/diagnostics/dtc", b'["P0301"]', 1),
        ],
    )
    records = await ingest.wait_for(4)
    by_signal = {r["data"]["signal"]: r for r in records}
    assert set(by_signal) == {"rpm", "gear_status", "speed", "dtc"}
    assert {(r["source"], r["device_id"], r["topic"]) for r in records} == {
        ("mqtt", "gw-001", "engine"),
        ("mqtt", "gw-001", "vehicle"),
        ("mqtt", "gw-002", "vehicle"),
        ("mqtt", "gw-002", "diagnostics"),
    }
    assert by_signal["rpm"]["data"]["value"] == 3500
    assert by_signal["gear_status"]["data"]["value"] == "D"
    assert by_signal["dtc"]["data"]["value"] == ["P0301"]
    speed = by_signal["speed"]["data"]
    assert (speed["value"], speed["unit"], speed["device_time"], speed["seq"]) == (
        80.5,
        "km/h",
        ts,
        3,
    )
    # The file holds the records once the sink wrote them; the listener counts them when
    # the pipeline's ack (after the sink confirmed) comes back, a moment later.
    async with asyncio.timeout(30):
        while listener.health()["records"] < 4:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.01)
    health = listener.health()
    assert (health["status"], health["messages"], health["records"]) == ("ok", 4, 4)


async def test_qos1_published_while_stopped_arrive_after_restart(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    client_id = unique("fgt-ingest")
    first = make_listener(ingest.pipeline, client_id=client_id)
    await first.start()
    await first.stop()  # the session (and its subscription) stays on the broker
    messages = [(f"{root}/gw-9/engine/rpm", str(1000 + i), 1) for i in range(200)]
    await publish(broker.port, messages)
    assert ingest.records() == []
    again = make_listener(ingest.pipeline, client_id=client_id)
    await again.start()
    assert again.health()["session_present"] is True
    records = await ingest.wait_for(200, settle=0.3)
    assert [r["data"]["value"] for r in records] == [1000 + i for i in range(200)]


async def test_puback_waits_for_the_pipeline(
    broker: ManagedProcess, tmp_path: Path, make_listener: MakeListener, root: str
) -> None:
    """Records the pipeline never confirmed are not acknowledged: after a stop the broker
    redelivers them to the next start."""
    blocked = Ingest(tmp_path / "blocked.jsonl")
    await blocked.pipeline.start()
    blocked.sink.gate.clear()  # the sink never writes: accept() cannot return True
    client_id = unique("fgt-ingest")
    first = make_listener(blocked.pipeline, client_id=client_id, stop_timeout_s=0.3)
    await first.start()
    await publish(broker.port, [(f"{root}/gw-5/diagnostics/error_count", b"7", 1)])
    assert await wait_until(lambda: first.health()["pending"] == 1)
    await first.stop()  # gives up waiting after stop_timeout_s
    assert first.acked == 0
    blocked.sink.gate.set()
    await blocked.pipeline.close()

    healthy = Ingest(tmp_path / "healthy.jsonl")
    await healthy.pipeline.start()
    try:
        second = make_listener(healthy.pipeline, client_id=client_id)
        await second.start()
        records = await healthy.wait_for(1)
        assert [(r["device_id"], r["data"]["value"]) for r in records] == [("gw-5", 7)]
        assert await wait_until(lambda: second.acked == 1)
    finally:
        await healthy.pipeline.close()


async def test_unconfirmed_records_are_redelivered_without_a_restart(
    broker: ManagedProcess, tmp_path: Path, make_listener: MakeListener, root: str
) -> None:
    """accept() returning False (ack timeout) withholds the PUBACK and reconnects; the
    broker sends the message again and it lands once the sink works."""
    slow = Ingest(tmp_path / "slow.jsonl", ack_timeout_s=0.2)
    await slow.pipeline.start()
    try:
        slow.sink.gate.clear()
        listener = make_listener(slow.pipeline)
        await listener.start()
        withheld = (
            metrics.REGISTRY.get_sample_value(
                "fleetgate_acks_total", {"protocol": "mqtt", "result": "withheld"}
            )
            or 0.0
        )
        await publish(broker.port, [(f"{root}/gw-6/gateway/connection_state", b"connected", 1)])
        assert await wait_until(lambda: listener.connects >= 2)  # reconnected for redelivery
        slow.sink.gate.set()
        records = await slow.wait_for(2)  # the first attempt's write, and the redelivery
        assert {r["data"]["value"] for r in records} == {"connected"}
        assert await wait_until(lambda: listener.acked >= 1)
        after = metrics.REGISTRY.get_sample_value(
            "fleetgate_acks_total", {"protocol": "mqtt", "result": "withheld"}
        )
        assert after is not None and after > withheld
    finally:
        slow.sink.gate.set()
        await slow.pipeline.close()


async def test_burst_of_10000_complete_and_in_order_per_gateway(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    listener = make_listener(ingest.pipeline)
    await listener.start()
    gateways = [f"gw-{n:03d}" for n in range(10)]
    messages = [
        (
            f"{root}/{gateways[i % 10]}/gateway/uptime",
            format_payload(i, topic="", seq=i // 10),
            1,
        )
        for i in range(10_000)
    ]
    await publish(broker.port, messages)
    records = await ingest.wait_for(10_000, timeout=60, settle=0.5)
    assert len(records) == 10_000
    sequences: dict[str, list[int]] = defaultdict(list)
    for record in records:
        sequences[record["device_id"]].append(record["data"]["seq"])
    assert sorted(sequences) == gateways
    for gateway in gateways:
        assert sequences[gateway] == list(range(1000)), gateway
    assert await wait_until(lambda: listener.acked == 10_000)


async def test_hmac_good_bad_missing(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    gateway = unique("gw-hmac")
    key = b"per-gateway secret"
    listener = make_listener(ingest.pipeline, hmac_keys={gateway: key.decode()})
    await listener.start()
    topic = f"{root}/{gateway}/engine/rpm"
    good = format_payload(3000, topic=topic, ts=int(time.time() * 1000), key=key)
    forged = format_payload(3000, topic=topic, key=b"not the key")
    tampered = orjson.loads(good)
    tampered["value"] = 6000
    await publish(
        broker.port,
        [
            (topic, good, 1),
            (topic, forged, 1),
            (topic, orjson.dumps(tampered), 1),
            (topic, b"3000", 1),  # unsigned
            (topic, format_payload(3000, topic=topic), 1),  # JSON, no hmac
            (f"{root}/other-gw/engine/rpm", b"1234", 1),  # no key: accepted unsigned
        ],
    )
    assert await wait_until(lambda: listener.health()["messages"] == 6)
    records = await ingest.wait_for(2, settle=0.2)
    assert sorted((r["device_id"], r["data"]["value"], r["data"]["signed"]) for r in records) == [
        (gateway, 3000, True),
        ("other-gw", 1234, False),
    ]
    assert refused(gateway, "bad_hmac") == 2
    assert refused(gateway, "missing_hmac") == 2
    assert listener.health()["refused"] == {"bad_hmac": 2, "missing_hmac": 2}
    assert await wait_until(lambda: listener.acked == 6)  # refused ones are acked too


async def test_drift(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    gateway = unique("gw-drift")
    listener = make_listener(ingest.pipeline, max_drift_s=60)
    await listener.start()
    topic = f"{root}/{gateway}/vehicle/odometer"
    now = int(time.time() * 1000)
    await publish(
        broker.port,
        [
            (topic, format_payload(100.0, topic=topic, ts=now), 1),
            (topic, format_payload(101.0, topic=topic, ts=now - 3_600_000), 1),  # an hour old
            (topic, format_payload(102.0, topic=topic, ts=now + 600_000), 1),  # 10 min ahead
            (topic, b"103.5", 1),  # no ts: nothing to check
        ],
    )
    records = await ingest.wait_for(2, settle=0.3)
    assert sorted(r["data"]["value"] for r in records) == [100.0, 103.5]
    assert refused(gateway, "drift") == 2


async def test_malformed_payloads_and_unknown_topics_are_dropped_and_acked(
    broker: ManagedProcess,
    ingest: Ingest,
    make_listener: MakeListener,
    root: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = unique("gw-bad")
    client_id = unique("fgt-ingest")
    listener = make_listener(ingest.pipeline, client_id=client_id)
    await listener.start()
    bad = [
        (f"{root}/{gateway}/engine/rpm", b"", 1),
        (f"{root}/{gateway}/engine/rpm", b"{not json", 1),
        (f"{root}/{gateway}/engine/rpm", b"-5", 1),
        (f"{root}/{gateway}/vehicle/gear_status", b"Z", 1),
        (f"{root}/{gateway}/engine/rpm", b"\xff\xfe", 1),
        (f"{root}/{gateway}/engine/torque", b"5", 1),
        (f"{root}/{gateway}/engine", b"5", 1),
        (f"{root}/bad gateway/engine/rpm", b"5", 1),
    ]
    with caplog.at_level("WARNING", logger="fleetgate.mqtt_ingest"):
        await publish(broker.port, [*bad, (f"{root}/{gateway}/engine/rpm", b"800", 1)])
        records = await ingest.wait_for(1, settle=0.3)
    assert [r["data"]["value"] for r in records] == [800]
    assert refused(gateway, "bad_payload") == 5
    assert refused(gateway, "unknown_topic") == 2
    assert refused("_unknown", "unknown_topic") >= 1
    # Rate-limited: one line per gateway and reason, carrying the evidence.
    lines = [
        r.__dict__["fields"]
        for r in caplog.records
        if r.getMessage().startswith("gateway message dropped")
    ]
    assert sorted(line["reason"] for line in lines) == [
        "bad_payload",
        "unknown_topic",
        "unknown_topic",
    ]
    first_bad = next(line for line in lines if line["reason"] == "bad_payload")
    assert (first_bad["gateway"], first_bad["detail"], first_bad["topic"]) == (
        gateway,
        "payload is empty",
        f"{root}/{gateway}/engine/rpm",
    )
    # All nine were acknowledged: a restart of the same session gets none of them again.
    assert await wait_until(lambda: listener.acked == 9)
    await listener.stop()
    again = make_listener(ingest.pipeline, client_id=client_id)
    await again.start()
    await asyncio.sleep(0.5)
    assert again.health()["messages"] == 0


async def test_shared_subscription_splits_one_stream(
    broker: ManagedProcess, tmp_path: Path, make_listener: MakeListener, root: str
) -> None:
    ingests = [Ingest(tmp_path / f"node{n}.jsonl") for n in range(2)]
    for each in ingests:
        await each.pipeline.start()
    try:
        group = unique("fleetgate")
        nodes = [make_listener(each.pipeline, shared_group=group) for each in ingests]
        for node in nodes:
            await node.start()
            assert node.health()["subscriptions"] == [f"$share/{group}/{root}/+/#"]
        messages = [(f"{root}/gw-{i % 4}/engine/load", str(i % 100), 1) for i in range(400)]
        await publish(broker.port, messages)
        assert await wait_until(lambda: sum(len(each.records()) for each in ingests) >= 400)
        await asyncio.sleep(0.3)
        counts = [len(each.records()) for each in ingests]
        assert sum(counts) == 400  # each message went to exactly one node
        assert all(count > 0 for count in counts)
    finally:
        for each in ingests:
            await each.pipeline.close()


async def test_reconnects_after_the_broker_restarts(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    listener = make_listener(ingest.pipeline)
    await listener.start()
    broker.kill()
    assert await wait_until(lambda: listener.health()["connection"] != "connected")
    assert listener.health()["status"] == "degraded"
    connected = metrics.REGISTRY.get_sample_value(
        "fleetgate_mqtt_broker_connected", {"broker": f"mqtt://127.0.0.1:{broker.port}"}
    )
    assert connected == 0
    broker.start()
    assert await wait_until(lambda: listener.health()["connection"] == "connected")
    assert listener.health()["session_present"] is True  # mosquitto persisted it
    await publish(broker.port, [(f"{root}/gw-r/gateway/connection_state", b"reconnecting", 1)])
    records = await ingest.wait_for(1)
    assert [r["data"]["value"] for r in records] == ["reconnecting"]


# -- mutual TLS ------------------------------------------------------------------------------
def tls_settings(broker: ManagedProcess, **tls: Any) -> dict[str, Any]:
    return {"url": f"mqtts://127.0.0.1:{broker.info['tls_port']}", "tls": tls}


async def test_mutual_tls(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, root: str
) -> None:
    info = broker.info
    listener = make_listener(
        ingest.pipeline,
        **tls_settings(
            broker, ca_file=info["ca"], cert=info["client_cert"], key=info["client_key"]
        ),
    )
    await listener.start()
    assert listener.health()["connection"] == "connected"
    assert listener.health()["broker"].startswith("mqtts://")
    await publish(broker.port, [(f"{root}/gw-tls/engine/coolant_temp", b"88.5", 1)])
    records = await ingest.wait_for(1)
    assert records[0]["data"]["value"] == 88.5


@pytest.mark.parametrize("case", ["no client certificate", "certificate from another CA"])
async def test_mutual_tls_refuses_clients_the_broker_does_not_trust(
    broker: ManagedProcess,
    ingest: Ingest,
    make_listener: MakeListener,
    tmp_path: Path,
    case: str,
) -> None:
    info = broker.info
    tls: dict[str, Any] = {"ca_file": info["ca"]}
    if case == "certificate from another CA":
        stranger = trustme.CA().issue_cert("stranger", common_name="stranger")
        cert, key = tmp_path / "stranger.pem", tmp_path / "stranger.key"
        stranger.cert_chain_pems[0].write_to_path(str(cert))
        stranger.private_key_pem.write_to_path(str(key))
        tls.update(cert=str(cert), key=str(key))
    listener = make_listener(ingest.pipeline, connect_timeout_s=3, **tls_settings(broker, **tls))
    await listener.start()
    health = listener.health()
    assert health["connection"] != "connected"
    assert health["status"] == "degraded"
    assert health["last_error"]  # the refusal is visible, whatever TLS 1.3 made of it


async def test_broker_certificate_from_an_unknown_ca_is_refused(
    broker: ManagedProcess, ingest: Ingest, make_listener: MakeListener, tmp_path: Path
) -> None:
    info = broker.info
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    listener = make_listener(
        ingest.pipeline,
        **tls_settings(
            broker, ca_file=str(other_ca), cert=info["client_cert"], key=info["client_key"]
        ),
    )
    await listener.start()
    health = listener.health()
    assert health["connection"] != "connected"
    assert "CERTIFICATE_VERIFY_FAILED" in health["last_error"]


def test_publisher_helper_reaches_the_tls_port(broker: ManagedProcess) -> None:
    """The stand-in gateway itself speaks mutual TLS (what the simulator tests build on)."""
    info = broker.info
    publisher = Publisher(
        info["tls_port"],
        ca_certs=info["ca"],
        certfile=info["client_cert"],
        keyfile=info["client_key"],
    )
    with publisher:
        publisher.publish([(f"{unique('x')}/gw/engine/rpm", b"1", 1)])
