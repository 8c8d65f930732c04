"""Plain, slow readings of the ``V`` transforms and ``data`` shape, kept as test oracles.

The server's versions read each datum once (one pass, lookup tables built from the
descriptors); these follow the spec text step by step, walking descriptors every time, so
the property tests can hold the fast versions to them. Also: a Value strategy that covers
every oneof member plus the strings the transforms care about.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st

from fleetgate.protocols.tesla.gojson import float32_value
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.protocols.tesla.transforms import parse_location, rewrite_scientific

_VALUE_FIELDS = list(vd.Value.DESCRIPTOR.fields)


# -- oracles ------------------------------------------------------------------------------


def transform_v(message: vd.Payload, vin: str) -> None:
    """The reference's two loops: first Location datum, then every string datum."""
    message.vin = vin
    for datum in message.data:
        if datum.key == vd.Location:
            value = datum.value
            if value.WhichOneof("value") == "string_value" and value.string_value:
                parsed = parse_location(value.string_value)
                if parsed is not None:
                    value.location_value.latitude = parsed[0]
                    value.location_value.longitude = parsed[1]
            break
    for datum in message.data:
        value = datum.value
        if value.WhichOneof("value") == "string_value" and value.string_value:
            rewritten = rewrite_scientific(value.string_value)
            if rewritten is not None:
                value.string_value = rewritten


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _message(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            known = fd.enum_type.values_by_number.get(value)
            out[fd.name] = known.name if known is not None else value
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:
            out[fd.name] = _message(value) if message.HasField(fd.name) else None
        elif fd.type == FieldDescriptor.TYPE_FLOAT:
            out[fd.name] = _finite(float32_value(value))
        elif fd.type == FieldDescriptor.TYPE_DOUBLE:
            out[fd.name] = _finite(value)
        elif not fd.is_repeated:
            out[fd.name] = value
    return out


def value_data(value: vd.Value) -> Any:
    """One datum value, branch by branch as the module docstring of jsonform lists them."""
    which = value.WhichOneof("value")
    if which is None or which == "invalid":
        return None
    raw = getattr(value, which)
    fd = vd.Value.DESCRIPTOR.fields_by_name[which]
    if fd.type == FieldDescriptor.TYPE_ENUM:
        known = fd.enum_type.values_by_number.get(raw)
        return known.name if known is not None else int(raw)
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return _finite(float32_value(raw))
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return _finite(raw)
    if which == "location_value":
        return {"latitude": _finite(raw.latitude), "longitude": _finite(raw.longitude)}
    if which == "time_value":
        return f"{raw.hour:02d}:{raw.minute:02d}:{raw.second:02d}"
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(raw)
    return raw


def string_data(name: str, text: str) -> Any:
    """Numeric and boolean strings as numbers and booleans, free-text fields as they are."""
    import re

    from fleetgate.protocols.tesla.natural import TEXT_FIELDS

    if name in TEXT_FIELDS:
        return text
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[+-]?\d{1,15}", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    if not re.fullmatch(r"[0-9+\-.eE]+", text) or number != number or number in (
        float("inf"), float("-inf")
    ):
        return text
    return number


def v_data(message: vd.Payload) -> dict[str, Any]:
    """``Record.data`` of a (transformed) V payload."""
    data: dict[str, Any] = {}
    for datum in message.data:
        known = vd.Field.DESCRIPTOR.values_by_number.get(datum.key)
        name = known.name if known is not None else str(datum.key)
        if datum.value.WhichOneof("value") == "string_value":
            data[name] = string_data(name, datum.value.string_value)
        else:
            data[name] = value_data(datum.value)
    if message.is_resend:
        data["is_resend"] = True
    return data


# -- strategies ---------------------------------------------------------------------------

# Strings the transforms look at: locations (good and bad), scientific notation, plain.
transform_strings = st.one_of(
    st.sampled_from(
        [
            "",
            "(37.412374 S, 122.145867 E)",
            "(1 N, 2 W)",
            "(0 N, 0 E)",
            "(nan N, 1 E)",
            "not a location",
            "1.19e-05",
            "-2.5E+3",
            "1e5",
            "1.0e400",
            "(1.5e1 N, 2 E)",
            "75.3",
        ]
    ),
    st.text(max_size=12),
)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    kinds: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: transform_strings,
        FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
        FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
        FieldDescriptor.TYPE_DOUBLE: st.floats(),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
    }
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(0, len(fd.enum_type.values) + 2)  # includes unknown numbers
    return kinds[fd.type]


@st.composite
def values(draw: st.DrawFn) -> vd.Value:
    """Any Value: unset, or one member (message members with any subset of fields set)."""
    value = vd.Value()
    if draw(st.integers(0, 20)) == 0:
        return value
    fd = draw(
        st.one_of(
            st.sampled_from(_VALUE_FIELDS),
            st.just(vd.Value.DESCRIPTOR.fields_by_name["string_value"]),
            st.just(vd.Value.DESCRIPTOR.fields_by_name["double_value"]),
        )
    )
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        inner = getattr(value, fd.name)
        inner.SetInParent()
        for sub in fd.message_type.fields:
            if draw(st.booleans()):
                setattr(inner, sub.name, draw(_scalar(sub)))
    else:
        setattr(value, fd.name, draw(_scalar(fd)))
    return value


# Field numbers: Location (often, also repeated), its neighbours, known ones, unknown ones.
keys = st.one_of(
    st.just(int(vd.Location)),
    st.just(int(vd.OriginLocation)),
    st.integers(0, 300),
)


@st.composite
def v_payloads(draw: st.DrawFn) -> vd.Payload:
    message = vd.Payload(vin=draw(st.text(max_size=5)), is_resend=draw(st.booleans()))
    for key, value in draw(st.lists(st.tuples(keys, values()), max_size=8)):
        message.data.add(key=key, value=value)  # type: ignore[arg-type]
    return message


def typed(obj: Any) -> Any:
    """``obj`` with every leaf paired with its type, so ``1``, ``1.0`` and ``True`` differ."""
    if isinstance(obj, dict):
        return {key: typed(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [typed(item) for item in obj]
    return (type(obj).__name__, obj)
