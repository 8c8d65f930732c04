"""AVL/GPRS → fleetgate Records: data shape, named values, topics, timestamps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.teltonika import records as records_module
from fleetgate.protocols.teltonika.events import AvlFrame, GprsFrame
from fleetgate.protocols.teltonika.io_names import FLAG, IO_NAMES, IO_TABLES, io_table
from fleetgate.protocols.teltonika.model import (
    CODEC_8,
    CODEC_8E,
    CODEC_13,
    CODEC_16,
    AvlRecord,
    GprsMessage,
)
from fleetgate.protocols.teltonika.records import (
    BASE_KEYS,
    avl_record_data,
    camera_data,
    gprs_message_data,
    to_records,
)
from fleetgate.records import format_rfc3339_ms, record_json
from tests.unit.teltonika.helpers import (
    TRACCAR_NAMES,
    check_record_invariants,
    check_traccar_invariants,
    frame,
    io16,
    select,
    vector,
)

GOOD = select(codecs=(CODEC_8, CODEC_8E, CODEC_16), integrity_error=False)


def first_data(vector_id: str, index: int = 0) -> dict[str, Any]:
    return avl_record_data(decode_frame(frame(vector_id)).records[index])


def record(io: dict[int, int | bytes], groups: tuple[int, ...] | None, **kw: Any) -> AvlRecord:
    fields: dict[str, Any] = {
        "timestamp_ms": 1_700_000_000_000, "priority": 0, "longitude": 25.0, "latitude": 54.0,
        "altitude": 100, "angle": 0, "satellites": 8, "speed": 0, "event_io_id": 0,
    } | kw
    return AvlRecord(**fields, io=io, io_groups=groups)  # type: ignore[arg-type]


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_named_values_agree_with_traccar(v: dict[str, Any]) -> None:
    decoded = decode_frame(bytes.fromhex(v["hex"]), io16_group=io16(v))
    for rec in decoded.records:
        check_record_invariants(rec)
    rec = decoded.records[0]
    data = avl_record_data(rec)
    assert rec.io_groups is not None
    widths = [w for w, n in zip((1, 2, 4, 8, 0, 16), rec.io_groups, strict=True) for _ in range(n)]
    sizes = dict(zip(rec.io, widths, strict=True))
    named = v["derived_expectations"]["first_record"].get("traccar_named_any_model", {})
    for traccar_name, expected in named.items():
        if traccar_name not in TRACCAR_NAMES:
            continue
        key = TRACCAR_NAMES[traccar_name]
        if key not in data:
            # Deliberate differences: Traccar reads a fixed width whatever the element's
            # size and calls any non-zero byte "true"; we name exact sizes and 0/1 flags
            # only (L99 sends DIN1 = 100), and an all-NUL VIN is "no VIN".
            spec = next(s for s in IO_NAMES if s.name == key)
            value = rec.io[spec.io_id]
            assert (
                sizes[spec.io_id] != spec.size
                or (spec.mode == FLAG and value not in (0, 1))
                or (key == "vin" and value == bytes(len(value)))  # type: ignore[arg-type]
            ), traccar_name
            continue
        ours = data[key]
        if traccar_name == "dtcs":
            ours = " ".join(ours)
        assert ours == expected, traccar_name
    if "dtcs" in named:
        assert " ".join(data["dtcs"]) == named["dtcs"]


def test_base_keys_and_types() -> None:
    data = first_data("doc-c16-tcp-example")
    assert {k: data[k] for k in BASE_KEYS if k != "io"} == {
        "latitude": 0.0, "longitude": 0.0, "altitude": 0, "angle": 0, "satellites": 0,
        "speed": 0, "priority": 0, "event_io_id": 11, "event_triggered": True,
        "generation_type": 5, "valid": False,
    }
    assert data["io"] == {"1": 0, "3": 0, "11": 39, "66": 22074}
    assert data["digital_input_1"] is False
    assert data["external_voltage"] == 22.074
    assert first_data("doc-c8-tcp-example1")["generation_type"] is None


def test_eye_temperature_is_signed_hundredths() -> None:
    assert first_data("traccar-c8e-L152")["eye_temperature_1"] == -11.87


def test_vin_and_dtcs() -> None:
    data = first_data("traccar-c8e-L54")
    assert data["vin"] == "WV1ZZZ2EZ86015388"
    assert data["dtcs"] == ["P0299", "P0675", "P0674", "P0672", "P0671", "P0471", "P2BAC"]
    assert data["io"]["256"] == "5756315a5a5a32455a3836303135333838"


def test_all_zero_vin_is_not_named() -> None:
    data = first_data("doc-c8e-tcp-old-example-with-nx-vin")
    assert "vin" not in data
    assert data["io"]["256"] == "00" * 17


def test_advanced_beacon_list() -> None:
    tags = first_data("traccar-c8e-L21")["ble_beacons"]
    assert [t["voltage_mv"] for t in tags[:3]] == [3090, 3070, 3050]
    assert tags[0] | {} == {"io": 548, "rssi": -58, "id": "babbf3630055", "flags": 128,
                            "low_battery": False, "voltage_mv": 3090}
    assert [t["id"] for t in tags[3:]] == ["fa54ba8d0055", "cabbf3630055"]
    assert "voltage_mv" not in tags[3]


def test_sixteen_byte_ids_in_beacon_list() -> None:
    tags = first_data("traccar-c8e-L25")["ble_beacons"]
    assert [(t["rssi"], t["id"], t["voltage_mv"]) for t in tags] == [
        (-27, "cde39f7e42bb55aa788e4a29ed650055", 2100),
        (-80, "f89b907e42bb55aaa3463b29ed650055", 2080),
    ]


def test_eye_sensor_list() -> None:
    (sensor,) = first_data("traccar-c8e-L28")["eye_sensors"]
    assert sensor["battery_mv"] == 3030
    assert sensor["rssi"] == -92
    assert sensor["low_battery"] is False


def test_eye_sensor_names_are_nul_stripped() -> None:
    data = first_data("traccar-c8e-L18", index=1)
    names = [s.get("name") for s in data["eye_sensors"]]
    assert names == ["Nevera_3", "Nevera_1", "Nevera_2"]  # wire order
    assert all("temperature" in s and "humidity" in s for s in data["eye_sensors"])


def test_ibeacon_list() -> None:
    (beacon,) = first_data("traccar-c8e-L57")["beacons"]
    assert beacon == {"io": 385, "flags": 33, "uuid": "0102030405060708090a0b0c0d0e0f10",
                      "major": 523, "minor": 266, "rssi": -48}


def test_name_only_when_the_wire_size_matches() -> None:
    # 66 (external voltage) is a 2-byte element; sent as 4 bytes it stays raw only.
    data = avl_record_data(record({66: 12000}, (0, 0, 1, 0, 0, 0)))
    assert "external_voltage" not in data
    assert data["io"] == {"66": 12000}
    data = avl_record_data(record({66: 12000}, (0, 1, 0, 0, 0, 0)))
    assert data["external_voltage"] == 12.0


def test_same_id_different_meaning_by_size() -> None:
    assert avl_record_data(record({4: 1}, (1, 0, 0, 0, 0, 0)))["digital_input_4"] is True
    assert avl_record_data(record({4: 77}, (0, 0, 1, 0, 0, 0)))["pulse_counter_din1"] == 77


def test_flags_outside_0_1_are_not_named() -> None:
    data = avl_record_data(record({239: 2, 240: 1}, (2, 0, 0, 0, 0, 0)))
    assert "ignition" not in data
    assert data["movement"] is True


def test_sensor_error_codes_are_not_named() -> None:
    data = avl_record_data(record({72: 850, 73: 0xFFFF_FF9C}, (0, 0, 2, 0, 0, 0)))
    assert "dallas_temperature_1" not in data
    assert data["dallas_temperature_2"] == -10.0


def test_signed_axes_and_ibutton() -> None:
    data = avl_record_data(record({17: 0xFFFF, 78: 0x0102030405060708}, (0, 1, 0, 1, 0, 0)))
    assert data["axis_x"] == -1
    assert data["ibutton"] == "0807060504030201"
    assert "ibutton" not in avl_record_data(record({78: 0}, (0, 0, 0, 1, 0, 0)))


def test_layout_plans_are_reused_and_distinct() -> None:
    one = avl_record_data(record({239: 1, 66: 5000}, (1, 1, 0, 0, 0, 0)))
    again = avl_record_data(record({239: 0, 66: 6000}, (1, 1, 0, 0, 0, 0)))
    other = avl_record_data(record({239: 1, 66: 5000}, (0, 2, 0, 0, 0, 0)))
    assert (one["ignition"], one["external_voltage"]) == (True, 5.0)
    assert (again["ignition"], again["external_voltage"]) == (False, 6.0)
    assert "ignition" not in other
    assert other["external_voltage"] == 5.0


def test_duplicate_ids_name_nothing() -> None:
    # Two wire elements with one id collapse into one dict entry: sizes are unknowable.
    data = avl_record_data(record({239: 1}, (1, 1, 0, 0, 0, 0)))
    assert data["io"] == {"239": 1}
    assert "ignition" not in data


def test_hand_built_record_gets_raw_io_only() -> None:
    data = avl_record_data(record({239: 1, 256: b"ABC"}, None))
    assert data["io"] == {"239": 1, "256": "414243"}
    assert "ignition" not in data


def test_malformed_beacon_list_is_not_named() -> None:
    data = avl_record_data(record({385: b"\x01\x21\x00"}, (0, 0, 0, 0, 1, 0)))
    assert "beacons" not in data
    assert data["io"]["385"] == "012100"


def test_two_sensor_lists_are_merged() -> None:
    tlv = b"\x01\x03\x00\x01\xc4"  # header, one sensor: RSSI -60
    data = avl_record_data(record({10828: tlv, 10829: tlv}, (0, 0, 0, 0, 2, 0)))
    assert [s["io"] for s in data["eye_sensors"]] == [10828, 10829]


NOW = 1_700_000_000_000  # a received_at after every vector's device time


def test_to_records_avl() -> None:
    raw = frame("doc-c16-tcp-example")
    decoded = decode_frame(raw)
    event = AvlFrame(decoded.codec or 0, decoded.records, raw)
    records = to_records("352093081452251", event, received_at=NOW)
    assert [r.created_at for r in records] == [1562760414000, 1562760415000]
    assert all(r.raw is raw and r.received_at == NOW for r in records)
    assert all(r.source == "teltonika" and r.device_id == "352093081452251" for r in records)
    orjson.loads(record_json(records[0]))


def test_one_position_stream_with_the_event_in_data() -> None:
    """Event-triggered and periodic records share the topic ``position``: one stream."""
    triggered = to_records("1", _avl("doc-c16-tcp-example"), NOW)  # event IO id 11
    periodic = to_records("1", _avl("traccar-c8e-L152"), NOW)  # event IO id 0
    assert {r.topic for r in triggered + periodic} == {"position"}
    assert [(r.data["event_io_id"], r.data["event_triggered"]) for r in triggered] == [
        (11, True), (11, True),
    ]
    assert [(r.data["event_io_id"], r.data["event_triggered"]) for r in periodic] == [(0, False)]


def _avl(vector_id: str) -> AvlFrame:
    raw = frame(vector_id)
    decoded = decode_frame(raw)
    return AvlFrame(decoded.codec or 0, decoded.records, raw)


@pytest.mark.parametrize(
    ("device_ms", "plausible"),
    [
        (0, False),
        (946_684_799_999, False),  # 1999-12-31T23:59:59.999Z
        (946_684_800_000, True),
        (NOW, True),
        (NOW + 25 * 3600 * 1000, True),
        (NOW + 25 * 3600 * 1000 + 1, False),
        (253_402_300_799_999, False),  # the last representable time
    ],
)
def test_implausible_device_time_is_not_a_fact(device_ms: int, plausible: bool) -> None:
    rec = record({}, (0, 0, 0, 0, 0, 0), timestamp_ms=device_ms)
    (out,) = to_records("1", AvlFrame(CODEC_8, (rec,), b""), NOW)
    if plausible:
        assert out.created_at == device_ms
        assert "device_time" not in out.data
        assert "device_time_valid" not in out.data
    else:
        assert out.created_at == NOW
        assert out.data["device_time"] == format_rfc3339_ms(device_ms)
        assert out.data["device_time_valid"] is False
    check_traccar_invariants([out], NOW)


def test_implausible_message_time_is_not_a_fact() -> None:
    msg = GprsMessage(CODEC_13, 6, b"x", 364_000)
    (out,) = to_records("1", GprsFrame((msg,), b""), NOW)
    assert out.created_at == NOW
    assert out.data["device_time"] == "1970-01-01T00:06:04.000Z"
    assert out.data["device_time_valid"] is False


def test_out_of_range_coordinates_are_not_a_valid_fix() -> None:
    for lat, lon in ((91.0, 0.0), (0.0, -180.5), (-214.7, 214.7)):
        data = avl_record_data(record({}, None, latitude=lat, longitude=lon))
        assert data["valid"] is False
    assert avl_record_data(record({}, None, latitude=90.0, longitude=-180.0))["valid"] is True


def test_to_records_gprs() -> None:
    raw = frame("doc-c15-example")
    decoded = decode_frame(raw)
    (rec,) = to_records("1", GprsFrame(decoded.messages, raw), received_at=NOW)
    assert rec.topic == "command_response"
    assert rec.created_at == 1699440036000
    assert rec.data == {"codec": "15", "type": 11, "kind": "message", "text": "Hello!\n",
                        "imei": "123456789123456"}
    decoded = decode_frame(frame("traccar-c12-L69"))
    (rec,) = to_records("1", GprsFrame(decoded.messages, b""), received_at=NOW)
    assert rec.created_at == NOW
    assert rec.data["hex"] == "010300010015d5c5"
    assert rec.data["kind"] == "response"
    assert "text" not in rec.data


def test_codec13_millisecond_message_gets_its_2019_time() -> None:
    decoded = decode_frame(frame("traccar-c13-L63"))
    (rec,) = to_records("1", GprsFrame(decoded.messages, b""), received_at=NOW)
    assert format_rfc3339_ms(rec.created_at) == "2019-07-19T13:52:52.000Z"
    assert rec.data["text"] == "getinfo"
    assert rec.data["kind"] == "message"


@pytest.mark.parametrize(
    ("codec", "msg_type", "kind"),
    [(12, 5, "command"), (12, 6, "response"), (14, 0x11, "nack"), (12, 0x0D, "camera"),
     (12, 0x42, "other"), (13, 5, "message"), (15, 0x0B, "message")],
)
def test_gprs_kinds(codec: int, msg_type: int, kind: str) -> None:
    assert gprs_message_data(GprsMessage(codec, msg_type, b"x"))["kind"] == kind


def test_camera_frames_are_recognised_and_kept_raw() -> None:
    decoded = decode_frame(frame("traccar-c12-L174"))  # sub-type 0: unknown, 1 byte
    (rec,) = to_records("1", GprsFrame(decoded.messages, b"raw"), received_at=NOW)
    assert rec.topic == "command_response"
    assert rec.data["kind"] == "camera"
    assert rec.data["camera"] == {"subtype": 0}
    assert rec.data["hex"] == "00"
    assert rec.raw == b"raw"
    announcement = b"\x01" + (0x598493ED).to_bytes(4, "big") + (2048).to_bytes(4, "big")
    assert camera_data(announcement) == {
        "subtype": 1, "event": "photo_announcement", "photo_id": 0x598493ED, "photo_size": 2048,
    }
    # Traccar's L177 announcement stops after the photo id: recognised, not parsed, kept
    assert camera_data(announcement[:5]) == {"subtype": 1}
    # the chunk of L180 (whose CRC is wrong, so it never reaches to_records) parses
    chunk = bytes.fromhex(vector("traccar-c12-L180")["derived_expectations"]["first_record"]
                          ["payload_hex"])
    assert camera_data(chunk) == {
        "subtype": 2, "event": "photo_chunk", "photo_id": 0x598493ED, "offset": 0,
        "chunk_length": 2048,
    }
    assert camera_data(chunk[:-1]) == {"subtype": 2}
    assert camera_data(b"") == {"subtype": None}


def test_gprs_text_detection() -> None:
    assert gprs_message_data(GprsMessage(12, 6, b"ok\r\n"))["text"] == "ok\r\n"
    assert gprs_message_data(GprsMessage(12, 6, b"\xffok"))["hex"] == "ff6f6b"
    assert gprs_message_data(GprsMessage(12, 6, b"a\x00b"))["hex"] == "610062"


def test_io_table_per_family_keeps_raw_ids() -> None:
    rec = record({84: 523, 701: 0xFB50}, (0, 2, 0, 0, 0, 0))
    frame_ = AvlFrame(CODEC_8E, (rec,), b"")
    (fmb,) = to_records("1", frame_, NOW)
    (fm6,) = to_records("1", frame_, NOW, io_table("FMB640"))
    assert fmb.data["can_fuel_level"] == 52.3
    assert "ble_temperature_1" not in fmb.data
    assert "can_fuel_level" not in fm6.data
    assert fm6.data["ble_temperature_1"] == -12.0
    assert fmb.data["io"] == fm6.data["io"] == {"84": 523, "701": 64336}


def test_layout_plans_are_cached_per_family() -> None:
    rec = record({10: 5000}, (0, 1, 0, 0, 0, 0))
    assert "analog_input_2" not in avl_record_data(rec)
    assert avl_record_data(rec, io_table("fm6"))["analog_input_2"] == 5.0
    assert "analog_input_2" not in avl_record_data(rec)


def test_eddystone_ids_in_a_real_beacon_list() -> None:
    tags = first_data("traccar-c8e-L25")["ble_beacons"]
    assert tags[0]["eddystone"] == {"namespace": "cde39f7e42bb55aa788e",
                                    "instance": "4a29ed650055"}
    (sensor,) = first_data("traccar-c8e-L28")["eye_sensors"]
    assert sensor["eddystone"]["instance"] == "1a154e2d0055"


# -- the compiled builders ------------------------------------------------------------------

NAMED_IDS = sorted({n.io_id for t in IO_TABLES.values() for n in t.names})


@st.composite
def named_layouts(draw: st.DrawFn) -> AvlRecord:
    """Records whose IO ids are mostly named ones, at named or other sizes, any values."""
    groups: list[list[tuple[int, int | bytes]]] = [[] for _ in range(6)]
    ids = draw(st.lists(st.sampled_from(NAMED_IDS) | st.integers(0, 0xFFFF), unique=True,
                        max_size=30))
    for key in ids:
        kind = draw(st.integers(0, 5))
        value: int | bytes
        if kind < 4:
            value = draw(st.integers(0, (1 << (8 << kind)) - 1) | st.sampled_from([0, 1, 850]))
        else:
            value = draw(st.binary(min_size=16, max_size=16) if kind == 5 else st.binary(max_size=30))
        groups[kind].append((key, value))
    io = {k: v for g in groups for k, v in g}
    return record(io, tuple(len(g) for g in groups))


@settings(max_examples=300, deadline=None)
@given(named_layouts(), st.sampled_from(sorted(IO_TABLES)))
def test_compiled_builder_equals_the_generic_loop(rec: AvlRecord, family: str) -> None:
    table = IO_TABLES[family]
    assert rec.io_groups is not None
    plan = records_module._Plan(table, rec.io_groups, tuple(rec.io))
    values = tuple(rec.io.values())
    generic: dict[str, Any] = {"io": None}
    compiled: dict[str, Any] = {"io": None}
    plan.fill_generic(values, generic)
    records_module._compile(plan)(values, compiled)
    assert list(compiled.items()) == list(generic.items())  # same values, same key order


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_every_real_record_is_the_same_cold_and_hot(v: dict[str, Any]) -> None:
    decoded = decode_frame(bytes.fromhex(v["hex"]), io16_group=io16(v))
    for rec in decoded.records:
        for table in IO_TABLES.values():
            table.plans.clear()  # the cold path again
        cold = [list(avl_record_data(rec).items())]
        hot = [list(avl_record_data(rec).items()) for _ in range(records_module._COMPILE_AFTER + 2)]
        assert all(item == cold[0] for item in hot)
