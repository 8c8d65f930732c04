"""The CAN-gateway core: topic map, payload forms, typed values, HMAC, drift, refusals."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.mqtt import (
    MAX_PAYLOAD_BYTES,
    SIGNALS,
    GatewayDecoder,
    PayloadError,
    Refusal,
    RefusalReason,
    Signal,
    TopicError,
    canonical_bytes,
    format_bare,
    format_payload,
    key_bytes,
    parse_payload,
    parse_topic,
    sign,
    signal_for,
    signal_topic,
)
from fleetgate.records import Record

NOW = 1_700_000_000_000
KEY = b"gw-001-secret"


def decode(topic: str, payload: bytes, **kwargs: Any) -> Record | Refusal:
    return GatewayDecoder(**kwargs).decode(topic, payload, NOW)


def record(topic: str, payload: bytes, **kwargs: Any) -> Record:
    result = decode(topic, payload, **kwargs)
    assert isinstance(result, Record), result
    return result


def refusal(topic: str, payload: bytes, **kwargs: Any) -> Refusal:
    result = decode(topic, payload, **kwargs)
    assert isinstance(result, Refusal), result
    return result


# -- topic map ---------------------------------------------------------------------------------
def test_every_leaf_of_the_seed_tree_is_in_the_map() -> None:
    tree = {
        "engine": {"rpm", "coolant_temp", "load"},
        "vehicle": {"speed", "odometer", "gear_status"},
        "diagnostics": {"dtc", "error_count", "health"},
        "security": {"auth_failures", "timestamp_drift", "policy_violations"},
        "gateway": {"connection_state", "uptime", "message_rate"},
    }
    assert {(s.group, s.name) for s in SIGNALS} == {
        (group, name) for group, names in tree.items() for name in names
    }
    where = parse_topic("vehicles/gateway-001/vehicle/gear_status")
    assert (where.gateway_id, where.group, where.signal.name) == (
        "gateway-001",
        "vehicle",
        "gear_status",
    )


@pytest.mark.parametrize(
    ("topic", "gateway"),
    [
        ("fleet/gw-1/engine/rpm", None),  # wrong root
        ("vehicles//engine/rpm", None),  # empty gateway level
        ("vehicles/gw 1/engine/rpm", None),  # space is not in the alphabet
        ("vehicles/" + "g" * 129 + "/engine/rpm", None),
        ("vehicles/gw-1/engine", "gw-1"),  # too short
        ("vehicles/gw-1/engine/rpm/extra", "gw-1"),
        ("vehicles/gw-1/engine/torque", "gw-1"),  # no such signal
        ("vehicles/gw-1/cabin/rpm", "gw-1"),
    ],
)
def test_unknown_topics_are_refused_and_attributed_when_possible(
    topic: str, gateway: str | None
) -> None:
    with pytest.raises(TopicError) as caught:
        parse_topic(topic)
    assert caught.value.gateway_id == gateway
    refused = refusal(topic, b"1")
    assert (refused.reason, refused.gateway_id) == (RefusalReason.UNKNOWN_TOPIC, gateway)


def test_a_configured_root_may_have_several_levels() -> None:
    assert (
        parse_topic("fleet/eu/vehicles/gw-9/engine/rpm", "fleet/eu/vehicles").gateway_id == "gw-9"
    )
    assert (
        record("fleet/eu/vehicles/gw-9/engine/rpm", b"900", root="fleet/eu/vehicles").device_id
        == "gw-9"
    )


gateway_ids = st.from_regex(r"[A-Za-z0-9:_.-]{1,128}", fullmatch=True)


@given(gateway_ids, st.sampled_from(SIGNALS))
def test_topic_format_parse_round_trip(gateway_id: str, signal: Signal) -> None:
    where = parse_topic(signal_topic(gateway_id, signal.group, signal.name))
    assert (where.gateway_id, where.signal) == (gateway_id, signal)


# -- payloads ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("topic", "payload", "value"),
    [
        ("engine/rpm", b"3500", 3500),
        ("engine/rpm", b" 3500\r\n", 3500),
        ("engine/rpm", b"3500.0", 3500),
        ("engine/rpm", b'"3500"', 3500),
        ("engine/coolant_temp", b"87.5", 87.5),
        ("engine/coolant_temp", b"-12", -12.0),
        ("vehicle/gear_status", b"D", "D"),
        ("vehicle/gear_status", b"r", "R"),
        ("vehicle/gear_status", b'"N"', "N"),
        ("gateway/connection_state", b"connected", "connected"),
        ("gateway/connection_state", b"DISCONNECTED", "disconnected"),
        ("diagnostics/dtc", b"P0301", ["P0301"]),
        ("diagnostics/dtc", b"p0301, U0100", ["P0301", "U0100"]),
        ("diagnostics/dtc", b'["P0420","C1234"]', ["P0420", "C1234"]),
        ("diagnostics/dtc", b"[]", []),
        ("diagnostics/health", b"Warning", "warning"),
        ("gateway/uptime", b"86400", 86400),
    ],
)
def test_bare_values_become_typed_values(topic: str, payload: bytes, value: Any) -> None:
    result = record(f"vehicles/gw-1/{topic}", payload)
    assert result.data["value"] == value
    assert type(result.data["value"]) is type(value)
    assert result.created_at == result.received_at == NOW
    assert result.data["device_time"] is None
    assert result.raw == payload


def test_json_object_carries_time_unit_and_sequence() -> None:
    payload = b'{"value": 80, "ts": 1699999999000, "unit": "mph", "seq": 42}'
    result = record("vehicles/gw-1/vehicle/speed", payload)
    assert (result.source, result.device_id, result.topic) == ("mqtt", "gw-1", "vehicle")
    assert result.created_at == 1_699_999_999_000
    assert result.received_at == NOW
    assert result.data == {
        "signal": "speed",
        "value": 80.0,
        "unit": "mph",
        "device_time": 1_699_999_999_000,
        "seq": 42,
        "signed": False,
    }


def test_default_unit_when_none_is_sent() -> None:
    assert record("vehicles/gw-1/vehicle/speed", b"80").data["unit"] == "km/h"
    assert record("vehicles/gw-1/vehicle/gear_status", b"D").data["unit"] is None


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "does not parse"),
        (b'{"val": 1}', 'no "value"'),
        (b'["P0301",', "does not parse"),
        (b'{"value": 1, "ts": -1}', '"ts"'),
        (b'{"value": 1, "ts": true}', '"ts"'),
        (b'{"value": 1, "ts": 1.5}', '"ts"'),
        (b'{"value": 1, "ts": 9007199254740992}', '"ts"'),
        (b'{"value": 1, "seq": "7"}', '"seq"'),
        (b'{"value": 1, "unit": 5}', '"unit"'),
        (b'{"value": 1, "unit": ""}', '"unit"'),
        (b'{"value": 1, "hmac": 5}', '"hmac"'),
        (b"1" * (MAX_PAYLOAD_BYTES + 1), "over"),
    ],
)
def test_malformed_payloads_raise_payload_error(payload: bytes, detail: str) -> None:
    with pytest.raises(PayloadError, match=detail):
        parse_payload(payload)
    refused = refusal("vehicles/gw-7/engine/rpm", payload)
    assert (refused.reason, refused.gateway_id) == (RefusalReason.BAD_PAYLOAD, "gw-7")
    assert detail in refused.detail


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("engine/rpm", b"3500.5"),  # not an integer
        ("engine/rpm", b"-1"),
        ("engine/rpm", b"20001"),
        ("engine/rpm", b"true"),
        ("engine/rpm", b"null"),
        ("engine/rpm", b"fast"),
        ("engine/rpm", b'"1_000"'),  # Python would parse it, JSON would not
        ("engine/rpm", b'"NaN"'),
        ("engine/coolant_temp", b"1e400"),
        ("engine/load", b"100.01"),
        ("vehicle/speed", b'{"value": [80]}'),
        ("vehicle/gear_status", b"X"),
        ("vehicle/gear_status", b"3"),
        ("diagnostics/dtc", b"P9999"),  # second character must be 0-3
        ("diagnostics/dtc", b"[1]"),
        ("gateway/connection_state", b"online"),
    ],
)
def test_impossible_values_are_refused_not_clamped(topic: str, payload: bytes) -> None:
    refused = refusal(f"vehicles/gw-1/{topic}", payload)
    assert refused.reason is RefusalReason.BAD_PAYLOAD


# -- HMAC --------------------------------------------------------------------------------------
def test_canonical_form_and_mac_match_an_independent_implementation() -> None:
    """Expected MACs computed with `openssl dgst -sha256 -hmac gw-001-secret` over the
    canonical bytes written out by hand (topic, LF, sorted keys, no whitespace)."""
    fields = {"value": 3500, "ts": 1_700_000_000_000, "seq": 7, "unit": "rpm", "hmac": "x"}
    topic = "vehicles/gw-001/engine/rpm"
    assert canonical_bytes(topic, fields) == (
        b'vehicles/gw-001/engine/rpm\n{"seq":7,"ts":1700000000000,"unit":"rpm","value":3500}'
    )
    assert sign(KEY, topic, fields) == (
        "6da913ccacbbd085a22aad78c1a5979a88de127e8b645312e3df9ef5c728fa08"
    )
    # 87.5 is written the ECMAScript way; an integral float loses its ".0" (RFC 8785).
    speed = {"value": 87.5, "ts": 1_700_000_000_000}
    assert sign(KEY, "vehicles/gw-001/vehicle/speed", speed) == (
        "b7963955f7e10f3dd3f7ebcea254a611b4a830d3cada4d004a056142fc7e8401"
    )
    assert canonical_bytes("t", {"value": 80.0}) == b't\n{"value":80}'


def test_a_device_built_payload_verifies() -> None:
    # What ESP32 firmware would send: its own key order and spacing, upper-case hex.
    payload = (
        b'{"value":3500, "ts":1700000000000, "seq":7, "unit":"rpm", '
        b'"hmac":"6DA913CCACBBD085A22AAD78C1A5979A88DE127E8B645312E3DF9EF5C728FA08"}'
    )
    result = record("vehicles/gw-001/engine/rpm", payload, hmac_keys={"gw-001": KEY})
    assert result.data["signed"] is True
    assert result.data["value"] == 3500


def test_hmac_good_bad_missing() -> None:
    keys = {"gw-001": KEY}
    topic = "vehicles/gw-001/engine/rpm"
    good = format_payload(3500, topic=topic, ts=NOW, seq=1, key=KEY)
    assert record(topic, good, hmac_keys=keys).data["signed"] is True

    wrong_key = format_payload(3500, topic=topic, ts=NOW, seq=1, key=b"other")
    assert refusal(topic, wrong_key, hmac_keys=keys).reason is RefusalReason.BAD_HMAC

    tampered = orjson.loads(good)
    tampered["value"] = 9000
    assert refusal(topic, orjson.dumps(tampered), hmac_keys=keys).reason is RefusalReason.BAD_HMAC

    # A signed message replayed on another signal's topic does not verify.
    replayed = refusal("vehicles/gw-001/gateway/uptime", good, hmac_keys=keys)
    assert replayed.reason is RefusalReason.BAD_HMAC

    for unsigned in (b"3500", format_payload(3500, topic=topic, ts=NOW)):
        missing = refusal(topic, unsigned, hmac_keys=keys)
        assert (missing.reason, missing.gateway_id) == (RefusalReason.MISSING_HMAC, "gw-001")

    for garbage in ("zz", "é" * 64, "0" * 64):
        fields = {"value": 3500, "hmac": garbage}
        bad = refusal(topic, orjson.dumps(fields), hmac_keys=keys)
        assert bad.reason is RefusalReason.BAD_HMAC


def test_gateways_without_a_key_are_accepted_signed_or_not() -> None:
    keys = {"gw-001": KEY}
    topic = "vehicles/gw-002/engine/rpm"
    assert record(topic, b"3500", hmac_keys=keys).data["signed"] is False
    signed_anyway = format_payload(3500, topic=topic, key=b"unknown to us")
    assert record(topic, signed_anyway, hmac_keys=keys).data["signed"] is False


def test_binary_keys_are_written_as_hex() -> None:
    assert key_bytes("hex:00ff10") == b"\x00\xff\x10"
    assert key_bytes("plain text") == b"plain text"


@given(
    value=st.integers(0, 20_000),
    ts=st.none() | st.integers(0, 2**53 - 1),
    seq=st.none() | st.integers(0, 2**53 - 1),
    mutation=st.sampled_from(["value", "ts", "seq", "unit", "extra"]),
)
def test_any_change_to_a_signed_message_breaks_the_mac(
    value: int, ts: int | None, seq: int | None, mutation: str
) -> None:
    topic = "vehicles/gw-001/engine/rpm"
    fields = orjson.loads(format_payload(value, topic=topic, ts=ts, seq=seq, key=KEY))
    if mutation == "unit":
        fields[mutation] = "rpm?"
    else:
        # A different value that is still valid on its own (flip the lowest bit), so the
        # only thing wrong with the message is its MAC.
        fields[mutation] = (fields.get(mutation) or 0) ^ 1
    result = GatewayDecoder(hmac_keys={"gw-001": KEY}).decode(topic, orjson.dumps(fields), NOW)
    assert isinstance(result, Refusal) and result.reason is RefusalReason.BAD_HMAC


# -- drift -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        (NOW, True),
        (NOW - 30_000, True),  # exactly at the limit
        (NOW + 30_000, True),
        (NOW - 30_001, False),  # sent too long ago
        (NOW + 30_001, False),  # from the future
    ],
)
def test_drift_applies_to_messages_with_ts(ts: int, accepted: bool) -> None:
    payload = format_payload(1000, topic="vehicles/gw-1/engine/rpm", ts=ts)
    result = decode("vehicles/gw-1/engine/rpm", payload, max_drift_ms=30_000)
    if accepted:
        assert isinstance(result, Record) and result.created_at == ts
    else:
        assert isinstance(result, Refusal) and result.reason is RefusalReason.DRIFT
        assert result.gateway_id == "gw-1" and "limit 30 s" in result.detail
    # Without ts there is nothing to check; without a limit nothing is checked.
    assert isinstance(decode("vehicles/gw-1/engine/rpm", b"1000", max_drift_ms=30_000), Record)
    assert isinstance(decode("vehicles/gw-1/engine/rpm", payload), Record)


# -- round trips -------------------------------------------------------------------------------
def typed_values(signal: Signal) -> st.SearchStrategy[Any]:
    if signal.kind == "int":
        return st.integers(int(signal.low), int(signal.high))
    if signal.kind == "float":
        return st.floats(signal.low, signal.high, allow_nan=False, allow_infinity=False)
    if signal.kind == "enum":
        return st.sampled_from(signal.choices)
    codes = st.from_regex(r"[PCBU][0-3][0-9A-F]{3}", fullmatch=True)
    return st.lists(codes, max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Signal, str, Any, dict[str, Any]]:
    signal = draw(st.sampled_from(SIGNALS))
    gateway = draw(gateway_ids)
    value = draw(typed_values(signal))
    context = {
        "ts": draw(st.none() | st.integers(0, 2**53 - 1)),
        "unit": draw(st.none() | st.text(min_size=1, max_size=32)),
        "seq": draw(st.none() | st.integers(0, 2**53 - 1)),
    }
    return signal, gateway, value, context


def same_value(signal: Signal, got: Any, sent: Any) -> bool:
    if signal.kind == "float":
        return isinstance(got, float) and math.isclose(got, sent, rel_tol=0, abs_tol=0)
    return bool(got == sent) and type(got) is type(sent)


@given(messages(), st.booleans())
@settings(max_examples=300)
def test_json_payload_round_trip(
    message: tuple[Signal, str, Any, dict[str, Any]], signed: bool
) -> None:
    signal, gateway, value, context = message
    topic = signal_topic(gateway, signal.group, signal.name)
    key = KEY if signed else None
    payload = format_payload(value, topic=topic, key=key, **context)
    parsed = parse_payload(payload)
    assert (parsed.ts, parsed.unit, parsed.seq) == (context["ts"], context["unit"], context["seq"])
    keys = {gateway: KEY} if signed else {}
    result = GatewayDecoder(hmac_keys=keys).decode(topic, payload, NOW)
    assert isinstance(result, Record), result
    assert (result.device_id, result.topic) == (gateway, signal.group)
    assert same_value(signal, result.data["value"], value)
    assert result.data["unit"] == (context["unit"] if context["unit"] is not None else signal.unit)
    assert result.data["device_time"] == context["ts"]
    assert result.data["seq"] == context["seq"]
    assert result.data["signed"] is signed
    assert result.created_at == (context["ts"] if context["ts"] is not None else NOW)


@given(st.sampled_from(SIGNALS).flatmap(lambda s: st.tuples(st.just(s), typed_values(s))))
@settings(max_examples=300)
def test_bare_payload_round_trip(signal_and_value: tuple[Signal, Any]) -> None:
    signal, value = signal_and_value
    payload = format_bare(value)
    result = GatewayDecoder().decode(f"vehicles/gw/{signal.group}/{signal.name}", payload, NOW)
    assert isinstance(result, Record), (payload, result)
    assert same_value(signal, result.data["value"], value)


@given(st.text(max_size=40))
def test_bare_words_parse_back_as_themselves(word: str) -> None:
    assert parse_payload(format_bare(word)).value == word


@given(st.text(max_size=80), st.binary(max_size=200), st.none() | st.integers(0, 10**6))
@settings(max_examples=500)
def test_decode_never_raises(topic: str, payload: bytes, drift: int | None) -> None:
    decoder = GatewayDecoder(hmac_keys={"gw": KEY}, max_drift_ms=drift)
    for candidate in (topic, f"vehicles/gw/engine/{topic}", "vehicles/gw/engine/rpm"):
        result = decoder.decode(candidate, payload, NOW)
        assert isinstance(result, Record | Refusal)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_arbitrary_json_objects_never_raise(value: Any) -> None:
    for fields in ({"value": value}, {"value": 1, "ts": value}, {"value": 1, "hmac": value}):
        try:
            payload = orjson.dumps(fields)
        except (TypeError, orjson.JSONEncodeError):
            continue
        for topic in ("vehicles/gw/engine/rpm", "vehicles/gw/diagnostics/dtc"):
            result = GatewayDecoder(hmac_keys={"gw": KEY}).decode(topic, payload, NOW)
            assert isinstance(result, Record | Refusal)


def test_signal_table_rates_and_qos() -> None:
    rpm = signal_for("engine", "rpm")
    coolant = signal_for("engine", "coolant_temp")
    assert rpm is not None and (rpm.qos, rpm.period_s) == (0, 0.1)
    assert coolant is not None and (coolant.qos, coolant.period_s) == (0, 1.0)
    for events in (("diagnostics", "dtc"), ("gateway", "connection_state")):
        signal = signal_for(*events)
        assert signal is not None and signal.qos == 1
