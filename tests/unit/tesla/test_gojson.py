"""Go encoding/json compatibility of the MQTT payload encoder."""

from __future__ import annotations

import math

import pytest

from fleetgate.protocols.tesla.gojson import (
    Float32,
    float32_repr,
    go_float,
    go_json_dumps,
    rfc3339_nanos,
    rfc3339_seconds,
)


@pytest.mark.parametrize(
    ("value", "bits", "text"),
    [
        (75.5, 64, "75.5"),
        (1.0, 64, "1"),
        (-0.0, 64, "-0"),
        (123456789.0, 64, "123456789"),
        (1e20, 64, "100000000000000000000"),
        (1e21, 64, "1e+21"),
        (0.000001, 64, "0.000001"),
        (1e-7, 64, "1e-7"),
        (-1.25e-9, 64, "-1.25e-9"),
        (1e-320, 64, "1e-320"),
        (1e100, 64, "1e+100"),
        (0.1, 64, "0.1"),
        (0.1, 32, "0.1"),  # not 0.10000000149011612
        (16777217.0, 32, "16777216"),
        (3.4028234663852886e38, 32, "3.4028235e+38"),
        (1e-7, 32, "1e-7"),
        (37.412374, 64, "37.412374"),
    ],
)
def test_go_float(value: float, bits: int, text: str) -> None:
    assert go_float(value, bits) == text


def test_float32_repr_is_shortest_round_trip() -> None:
    assert float32_repr(0.1) == "1e-01"
    assert float32_repr(75.5) == "7.55e+01"
    assert float(float32_repr(1 / 3)) != 1 / 3  # float32 precision, not float64


def test_go_json_escapes_like_go() -> None:
    text = '<a href="x">&</a>\u2028\u2029\x01\x7f\b\f\n\r\t\\é'
    assert go_json_dumps(text) == (
        b'"\\u003ca href=\\"x\\"\\u003e\\u0026\\u003c/a\\u003e\\u2028\\u2029\\u0001'
        + b"\x7f"
        + b"\\b\\f\\n\\r\\t\\\\"
        + "é".encode()
        + b'"'
    )


def test_go_json_sorts_keys_and_nests() -> None:
    value = {"b": [1, Float32(0.1), None, True], "a": {"z": False, "y": "s"}, "A": 2}
    assert go_json_dumps(value) == b'{"A":2,"a":{"y":"s","z":false},"b":[1,0.1,null,true]}'


def test_non_finite_floats_become_null() -> None:
    assert go_json_dumps([math.nan, math.inf]) == b"[null,null]"


def test_rfc3339_forms() -> None:
    assert rfc3339_seconds(1692044886) == "2023-08-14T20:28:06Z"
    assert rfc3339_seconds(0) == "1970-01-01T00:00:00Z"
    assert rfc3339_nanos(1692044886, 0) == "2023-08-14T20:28:06Z"
    assert rfc3339_nanos(1692044886, 337_000_000) == "2023-08-14T20:28:06.337Z"
    assert rfc3339_nanos(1, 1_000) == "1970-01-01T00:00:01.000001Z"
    assert rfc3339_nanos(1, 1) == "1970-01-01T00:00:01.000000001Z"
