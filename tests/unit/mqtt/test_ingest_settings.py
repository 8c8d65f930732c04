"""mqtt_ingest settings (validation, secrets) and the refusal counter/log limiter."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from fleetgate.listeners.mqtt import MqttIngestConfig
from fleetgate.listeners.mqtt.refusals import MAX_GATEWAY_LABELS, RefusalTracker
from fleetgate.observability import metrics
from fleetgate.protocols.mqtt import Refusal, RefusalReason


def test_defaults_follow_the_issue() -> None:
    settings = MqttIngestConfig()
    assert settings.topics == ["vehicles/+/#"]
    assert (settings.qos, settings.protocol, settings.max_drift_s) == (1, "5", None)
    assert str(settings.broker) == "mqtt://127.0.0.1:1883"
    assert settings.subscriptions == ["vehicles/+/#"]


def test_urls() -> None:
    assert str(MqttIngestConfig(url="mqtts://broker.example.com").broker) == (
        "mqtts://broker.example.com:8883"
    )
    assert str(MqttIngestConfig(url="mqtt://[::1]:1884").broker) == "mqtt://[::1]:1884"
    for bad in ("http://x", "mqtt://", "mqtt://x:notaport", "mqtt://user:pw@x", "mqtt://x/path"):
        with pytest.raises(ValidationError):
            MqttIngestConfig(url=bad)
    with pytest.raises(ValidationError, match="mqtts"):
        MqttIngestConfig(url="mqtt://x", tls={"ca_file": "ca.pem"})


def test_shared_group_prefixes_every_filter() -> None:
    settings = MqttIngestConfig(topics=["vehicles/+/#", "fleet/+/#"], shared_group="nodes")
    assert settings.subscriptions == ["$share/nodes/vehicles/+/#", "$share/nodes/fleet/+/#"]
    with pytest.raises(ValidationError):
        MqttIngestConfig(shared_group="a/b")
    with pytest.raises(ValidationError):
        MqttIngestConfig(topics=["$share/x/vehicles/#"])


def test_secrets_never_show() -> None:
    settings = MqttIngestConfig(
        username="fleetgate", password="hunter2", hmac_keys={"gw-1": "k3y", "gw-2": "hex:0aff"}
    )
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "hunter2" not in shown and "k3y" not in shown and "0aff" not in shown
    assert settings.key_map() == {"gw-1": b"k3y", "gw-2": b"\x0a\xff"}
    with pytest.raises(ValidationError, match="hex"):
        MqttIngestConfig(hmac_keys={"gw-1": "hex:zz"})
    with pytest.raises(ValidationError, match="gateway id"):
        MqttIngestConfig(hmac_keys={"bad id": "k"})


def test_the_default_topic_root_is_the_protocols() -> None:
    # mqtt_settings keeps its own copy: the protocol package loads only with the section.
    from fleetgate import mqtt_settings
    from fleetgate.protocols.mqtt import DEFAULT_ROOT

    assert mqtt_settings.DEFAULT_ROOT == DEFAULT_ROOT
    assert MqttIngestConfig().topic_root == DEFAULT_ROOT


def refusal(gateway: str | None, reason: RefusalReason = RefusalReason.BAD_PAYLOAD) -> Refusal:
    return Refusal(reason, gateway, "vehicles/x/engine/rpm", "detail")


def count(gateway: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_mqtt_refused_total", {"gateway": gateway, "reason": reason}
    )
    return value or 0.0


def test_one_log_line_per_gateway_and_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    tracker = RefusalTracker(log_interval_s=10)
    with caplog.at_level(logging.WARNING, logger="fleetgate.mqtt_ingest"):
        for second in range(5):
            tracker.record(refusal("gw-log"), now=float(second))
        tracker.record(refusal("gw-log", RefusalReason.DRIFT), now=5.0)
        tracker.record(refusal("gw-log"), now=10.0)
    lines = [r.__dict__["fields"] for r in caplog.records]
    assert [(f["reason"], f["suppressed"]) for f in lines] == [
        ("bad_payload", 0),
        ("drift", 0),
        ("bad_payload", 4),  # the four in between were counted, not logged
    ]
    assert tracker.by_reason == {"bad_payload": 6, "drift": 1}
    assert count("gw-log", "bad_payload") >= 6


def test_gateway_labels_are_bounded() -> None:
    tracker = RefusalTracker(log_interval_s=3600)
    tracker._labels = {f"seen-{n}" for n in range(MAX_GATEWAY_LABELS)}
    before = count("_other", "unknown_topic")
    tracker.record(refusal("one-too-many", RefusalReason.UNKNOWN_TOPIC), now=0)
    assert count("_other", "unknown_topic") == before + 1
    assert count("one-too-many", "unknown_topic") == 0
    tracker.record(refusal(None, RefusalReason.UNKNOWN_TOPIC), now=0)
    assert count("_unknown", "unknown_topic") >= 1
