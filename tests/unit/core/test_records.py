from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.forms import register_wire_form, wire_payload
from fleetgate.records import (
    Record,
    format_rfc3339_ms,
    parse_rfc3339_ms,
    record_dict,
    record_json,
    record_metadata,
)


def make_record(**overrides: object) -> Record:
    values: dict[str, object] = {
        "source": "teltonika",
        "device_id": "356307042441013",
        "topic": "position",
        "created_at": 1560161086000,
        "received_at": 1560161086123,
        "data": {"latitude": 54.1, "io": {"239": 1}},
        "raw": b"\x00\x01",
    }
    values.update(overrides)
    return Record(**values)  # type: ignore[arg-type]


def test_json_form_has_the_six_documented_keys_and_millisecond_times() -> None:
    body = orjson.loads(record_json(make_record()))
    assert body == {
        "source": "teltonika",
        "device_id": "356307042441013",
        "topic": "position",
        "created_at": "2019-06-10T10:04:46.000Z",
        "received_at": "2019-06-10T10:04:46.123Z",
        "data": {"latitude": 54.1, "io": {"239": 1}},
    }


def test_json_form_is_cached_per_record() -> None:
    record = make_record()
    assert record_json(record) is record_json(record)


def test_device_clocks_outside_rfc3339_are_clamped_not_fatal() -> None:
    assert format_rfc3339_ms(2**63 - 1) == "9999-12-31T23:59:59.999Z"
    assert format_rfc3339_ms(-(2**62)) == "0001-01-01T00:00:00.000Z"


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_rfc3339_round_trip(ms: int) -> None:
    assert parse_rfc3339_ms(format_rfc3339_ms(ms)) == ms


def test_parse_accepts_epoch_ms_and_offsets() -> None:
    assert parse_rfc3339_ms("1560161086000") == 1560161086000
    assert parse_rfc3339_ms("2019-06-10T12:04:46+02:00") == 1560161086000


def test_metadata_has_teslas_seven_keys() -> None:
    record = make_record(meta={"txid": "abc", "device_client_version": "1.0.0"})
    assert record_metadata(record) == {
        "vin": "356307042441013",
        "receivedat": "1560161086123",
        "timestamp": "0",
        "txid": "abc",
        "txtype": "position",
        "version": "0",
        "device_client_version": "1.0.0",
    }


def test_wire_payload_defaults_to_json_and_defers_to_registered_forms() -> None:
    record = make_record()
    assert wire_payload(record) == record_json(record)
    register_wire_form("test-raw", lambda r, decoded: b"{}" if decoded else r.raw)
    raw_record = make_record(source="test-raw")
    assert wire_payload(raw_record) == b"\x00\x01"
    assert wire_payload(raw_record, transmit_decoded=True) == b"{}"


def test_fast_constructor_builds_the_same_frozen_record() -> None:
    import dataclasses

    from fleetgate.records import new_record

    fast = new_record("teltonika", "1", "position", 1, 2, {"a": 1}, b"r", {"txid": "t"})
    assert fast == Record("teltonika", "1", "position", 1, 2, {"a": 1}, b"r", {"txid": "t"})
    assert new_record("s", "d", "t", 1, 2, {}).meta is None
    with __import__("pytest").raises(dataclasses.FrozenInstanceError):
        fast.topic = "x"  # type: ignore[misc]
    assert record_json(fast) == record_json(
        Record("teltonika", "1", "position", 1, 2, {"a": 1}, b"r", {"txid": "t"})
    )


@given(
    data=st.dictionaries(
        st.text(max_size=6),
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6),
        max_size=5,
    ),
    created=st.integers(-(2**40), 2**45),
)
def test_the_json_form_is_the_dict_form_serialised(data: dict[str, object], created: int) -> None:
    record = Record("teltonika", "356307042441013", "position", created, created + 5, data)
    assert record_json(record) == orjson.dumps(record_dict(record))
    assert orjson.loads(record_json(record))["data"] == data
