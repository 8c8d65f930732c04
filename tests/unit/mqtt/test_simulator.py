"""The gateway simulator's pure parts: vehicle coherence, the offline queue, config files,
gateway certificates."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.pki import GATEWAY_KEY_TYPES, init_gateway_pki
from fleetgate.protocols.mqtt import SIGNALS, SignalValueError, signal_for
from fleetgate.sim.can_gateway import (
    CanGatewaySettings,
    CanGatewaySimulator,
    GatewayConfigError,
    OfflineQueue,
    endpoint_url,
    settings_from_config_file,
)
from fleetgate.sim.can_vehicle import VehicleModel


# -- the vehicle -------------------------------------------------------------------------------
def drive(seconds: float, seed: int = 7, step: float = 0.5) -> list[tuple[VehicleModel, set[str]]]:
    model = VehicleModel(random.Random(seed))
    states = []
    for _ in range(int(seconds / step)):
        changed = model.advance(step)
        snapshot = VehicleModel(random.Random(0))
        snapshot.__dict__.update({k: v for k, v in model.__dict__.items() if k != "rng"})
        snapshot.dtcs = list(model.dtcs)
        states.append((snapshot, changed))
    return states


def test_values_move_together_and_stay_in_range() -> None:
    states = drive(4 * 3600)  # four hours of simulated time
    odometer = states[0][0].odometer_km
    gears_seen, max_speed = set(), 0.0
    for model, _changed in states:
        for signal in SIGNALS:
            value = model.value(signal)
            assert signal.coerce(value) == value, (signal.key, value)  # a legal, typed value
        assert model.odometer_km >= odometer  # only grows
        odometer = model.odometer_km
        if not model.engine_on:
            assert (model.rpm, model.speed_kmh, model.gear) == (0, 0.0, "P")
        else:
            assert model.rpm >= 750
        if model.gear in ("P", "N"):
            assert model.speed_kmh == 0.0
        if model.gear == "R":
            assert model.speed_kmh <= 8
        if model.speed_kmh > 0:
            assert model.gear in ("D", "R") and model.rpm > 750
        gears_seen.add(model.gear)
        max_speed = max(max_speed, model.speed_kmh)
    assert gears_seen == {"P", "R", "N", "D"}
    assert max_speed > 60
    assert states[-1][0].odometer_km - states[0][0].odometer_km > 10  # it went somewhere


def test_dtcs_come_and_go_and_events_report_changes() -> None:
    states = drive(8 * 3600, seed=3)
    codes_seen = {code for model, _ in states for code in model.dtcs}
    assert codes_seen  # a DTC now and then
    previous = None
    cleared = 0
    for model, changed in states:
        if previous is not None:
            assert ("vehicle/gear_status" in changed) == (model.gear != previous.gear)
            assert ("diagnostics/dtc" in changed) == (model.dtcs != previous.dtcs)
            assert model.error_count >= previous.error_count
            cleared += len(model.dtcs) < len(previous.dtcs)
        assert (model.health == "ok") == (not model.dtcs)
        previous = model
    assert cleared
    assert states[-1][0].error_count >= len(codes_seen)


def test_same_seed_same_drive() -> None:
    a = [m.rpm for m, _ in drive(600, seed=11)]
    b = [m.rpm for m, _ in drive(600, seed=11)]
    assert a == b


# -- the offline queue -------------------------------------------------------------------------
def drain(queue: OfflineQueue) -> list[tuple[str, int]]:
    out = []
    while (message := queue.peek()) is not None:
        out.append((message.topic, message.qos))
        queue.remove(message)
    return out


def test_queue_drops_oldest_qos0_first_and_keeps_qos1() -> None:
    queue = OfflineQueue(4)
    for name, qos in [("a", 0), ("b", 1), ("c", 0), ("d", 1), ("e", 0), ("f", 1)]:
        queue.put(name, b"", qos)
    # a and c (the oldest QoS 0) made room for e and f
    assert drain(queue) == [("b", 1), ("d", 1), ("e", 0), ("f", 1)]
    assert (queue.dropped_qos0, queue.dropped_qos1) == (2, 0)


def test_full_of_qos1_a_new_qos0_is_dropped_and_qos1_only_beyond_capacity() -> None:
    queue = OfflineQueue(2)
    queue.put("a", b"", 1)
    queue.put("b", b"", 1)
    queue.put("c", b"", 0)
    assert len(queue) == 2 and queue.dropped_qos0 == 1
    queue.put("d", b"", 1)
    assert drain(queue) == [("b", 1), ("d", 1)]
    assert queue.dropped_qos1 == 1


@given(st.lists(st.tuples(st.integers(0, 1), st.booleans()), max_size=200), st.integers(1, 20))
def test_queue_invariants(operations: list[tuple[int, bool]], capacity: int) -> None:
    """Whatever happens: bounded, in order, and no QoS 1 lost while fewer than capacity."""
    queue = OfflineQueue(capacity)
    put_qos1: list[str] = []
    for n, (qos, take) in enumerate(operations):
        if take and (head := queue.peek()) is not None:
            queue.remove(head)
            if head.qos:
                put_qos1.remove(head.topic)
            continue
        queue.put(str(n), b"", qos)
        if qos:
            put_qos1.append(str(n))
        assert len(queue) <= capacity
    left = drain(queue)
    orders = [int(topic) for topic, _ in left]
    assert orders == sorted(orders)
    kept_qos1 = [topic for topic, qos in left if qos]
    if queue.dropped_qos1 == 0:
        assert kept_qos1 == put_qos1
    else:
        assert kept_qos1 == put_qos1[len(put_qos1) - len(kept_qos1) :]  # newest kept


# -- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "tls", "url"),
    [
        (
            "abc123-ats.iot.eu-west-1.amazonaws.com",
            True,
            "mqtts://abc123-ats.iot.eu-west-1.amazonaws.com:8883",
        ),
        ("localhost:18883", True, "mqtts://localhost:18883"),
        ("localhost", False, "mqtt://localhost:1883"),
        ("mqtt://broker:1884", True, "mqtt://broker:1884"),
    ],
)
def test_endpoint_forms(endpoint: str, tls: bool, url: str) -> None:
    assert endpoint_url(endpoint, tls) == url


def test_the_gateway_config_file_is_read_as_is(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    config = {
        "endpoint": "your-endpoint.iot.region.amazonaws.com",
        "thing_name": "can-gateway",
        "client_id": "can-gateway",
        "cert_path": "./certs/certificate.pem.crt",
        "key_path": "./certs/private.pem.key",
        "ca_path": "./certs/AmazonRootCA1.pem",
        "publish_interval_seconds": 300,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    settings = settings_from_config_file(path)
    assert settings.broker == "mqtts://your-endpoint.iot.region.amazonaws.com:8883"
    assert (settings.gateway_id, settings.client_id, settings.interval_s) == (
        "can-gateway",
        "can-gateway",
        300.0,
    )
    assert settings.cert == str(tmp_path / "certs/certificate.pem.crt")  # next to the file
    flags = settings_from_config_file(path, interval_s=5.0, gateways=3)
    assert flags.interval_s == 5.0
    assert flags.gateway_ids() == ["can-gateway-001", "can-gateway-002", "can-gateway-003"]
    assert settings.summary()["publish_interval_seconds"] == 300.0


@pytest.mark.parametrize(
    "settings",
    [
        CanGatewaySettings(broker="http://x"),
        CanGatewaySettings(gateway_id="has space"),
        CanGatewaySettings(cert="c.pem"),
        CanGatewaySettings(broker="mqtt://x:1883", ca="ca.pem"),
        CanGatewaySettings(interval_s=0),
    ],
)
def test_unusable_settings_are_refused(settings: CanGatewaySettings) -> None:
    with pytest.raises(GatewayConfigError):
        settings.check()


def test_summary_never_shows_the_hmac_key() -> None:
    settings = CanGatewaySettings(hmac_key=b"very secret")
    assert "very secret" not in json.dumps(settings.summary())
    assert settings.summary()["hmac"] is True


async def test_publish_checks_names_and_values() -> None:
    simulator = CanGatewaySimulator(CanGatewaySettings(gateways=2, gateway_id="gw"))
    queued = simulator.publish({"engine_rpm": 2000, "vehicle_speed": 80})
    assert [(q["gateway_id"], q["topic"], q["qos"], q["value"]) for q in queued] == [
        ("gw-001", "vehicles/gw-001/engine/rpm", 0, 2000),
        ("gw-001", "vehicles/gw-001/vehicle/speed", 0, 80.0),
        ("gw-002", "vehicles/gw-002/engine/rpm", 0, 2000),
        ("gw-002", "vehicles/gw-002/vehicle/speed", 0, 80.0),
    ]
    assert len(simulator.publish({}, "gw-002")) == len(SIGNALS)
    with pytest.raises(KeyError):
        simulator.publish({"engine_torque": 1})
    with pytest.raises(KeyError):
        simulator.publish({}, "gw-404")
    with pytest.raises(SignalValueError):
        simulator.publish({"engine_rpm": -5})
    dtc = signal_for("diagnostics", "dtc")
    assert dtc is not None and dtc.qos == 1


# -- gateway certificates ----------------------------------------------------------------------
@pytest.mark.parametrize("key_type", GATEWAY_KEY_TYPES)
def test_gateway_certificates_of_every_key_type_verify_with_openssl(
    tmp_path: Path, key_type: str
) -> None:
    pki = init_gateway_pki(tmp_path, ["gw-001"], key_type=key_type)  # type: ignore[arg-type]
    cert_path, key_path, config_path = pki.gateways["gw-001"]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=gw-001"
    public = cert.public_key()
    expected = {"p256": 256, "p384": 384, "p521": 521, "rsa2048": 2048}[key_type]
    if key_type == "rsa2048":
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == expected
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size == expected
    assert key_path.stat().st_mode & 0o077 == 0
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), "-purpose", "sslclient", str(cert_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads(config_path.read_text())
    assert config["thing_name"] == config["client_id"] == "gw-001"
    assert config["cert_path"] == str(cert_path.resolve())
    assert config["publish_interval_seconds"] == 300


def test_running_again_adds_gateways_and_keeps_the_rest(tmp_path: Path) -> None:
    first = init_gateway_pki(tmp_path, ["gw-001"])
    before = first.gateways["gw-001"][0].read_bytes()
    second = init_gateway_pki(tmp_path, ["gw-001", "gw-002"])
    assert second.gateways["gw-001"][0].read_bytes() == before
    assert second.ca_cert.read_bytes() == first.ca_cert.read_bytes()
    assert set(second.gateways) == {"gw-001", "gw-002"}
