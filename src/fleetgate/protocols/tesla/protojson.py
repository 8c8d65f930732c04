"""Go protojson of Tesla payloads: what the reference sends to dispatchers when
``transmit_decoded_records`` is on (spec §9.4), and what ``fleetgate decode tesla`` prints.

lowerCamelCase names, every field emitted (``null`` for unset messages, ``[]``/``{}`` for
empty repeated/maps), enums by name (unknown numbers as numbers), 64-bit integers as
strings, Timestamps as RFC 3339 with 0/3/6/9 fractional digits, only the set member of a
oneof. Unknown topics give ``{}``.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Final

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fleetgate.protocols.tesla.gojson import float32_value, rfc3339_nanos
from fleetgate.protocols.tesla.values import decode_record_message, enum_name
from fleetgate.records import Record

_TIMESTAMP: Final = "google.protobuf.Timestamp"
_INT64_TYPES: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _pj_float(value: float, fd: Any) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float32_value(value) if fd.type == FieldDescriptor.TYPE_FLOAT else float(value)


def _pj_scalar(fd: Any, value: Any) -> Any:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _pj_message(value)
    if kind == FieldDescriptor.TYPE_ENUM:
        name = enum_name(fd, value)
        return name if name is not None else int(value)
    if kind in _INT64_TYPES:
        return str(value)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _pj_float(value, fd)
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


# Per message type, the fields in declaration order: ("field", fd, map_value_fd) or
# ("oneof", name, {member name: fd}) at the position of the oneof's first member, so each
# oneof costs one WhichOneof call instead of one per member.
_Plan = list[tuple[str, Any, Any]]
_plans: dict[str, _Plan] = {}


def _plan(desc: Any) -> _Plan:
    plan = _plans.get(desc.full_name)
    if plan is None:
        plan = []
        seen: set[str] = set()
        for fd in desc.fields:
            oneof = fd.containing_oneof
            if oneof is not None:
                if oneof.name not in seen:
                    seen.add(oneof.name)
                    plan.append(("oneof", oneof.name, {f.name: f for f in oneof.fields}))
                continue
            entry: Any = fd.message_type if fd.is_repeated else None
            is_map = entry is not None and entry.GetOptions().map_entry
            map_value = entry.fields_by_name["value"] if is_map else None
            plan.append(("field", fd, map_value))
        _plans[desc.full_name] = plan
    return plan


def _pj_field(message: Message, fd: Any, map_value: Any) -> Any:
    value = getattr(message, fd.name)
    if map_value is not None:
        return {str(k): _pj_scalar(map_value, value[k]) for k in sorted(value)}
    if fd.is_repeated:
        return [_pj_scalar(fd, item) for item in value]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _pj_message(value) if message.HasField(fd.name) else None
    return _pj_scalar(fd, value)


def _pj_message(message: Message) -> Any:
    desc = message.DESCRIPTOR
    if desc.full_name == _TIMESTAMP:
        return rfc3339_nanos(int(message.seconds), int(message.nanos))  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for kind, item, extra in _plan(desc):
        if kind == "field":
            out[item.json_name] = _pj_field(message, item, extra)
        else:
            which = message.WhichOneof(item)
            if which is not None:
                fd = extra[which]
                out[fd.json_name] = _pj_field(message, fd, None)
    return out


def protojson_dict(message: Message) -> dict[str, Any]:
    """Go protojson (``EmitUnpopulated``) of ``message`` as a dict."""
    result: dict[str, Any] = _pj_message(message)
    return result


def protojson_bytes(record: Record) -> bytes:
    """The ``transmit_decoded_records`` payload of a record (``{}`` for opaque topics)."""
    message = decode_record_message(record)
    if message is None:
        return b"{}"
    return orjson.dumps(protojson_dict(message))
