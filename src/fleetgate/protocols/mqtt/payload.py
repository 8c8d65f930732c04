"""Gateway message payloads: a bare value, or a JSON object with the value and its context.

Accepted forms (UTF-8, at most :data:`MAX_PAYLOAD_BYTES`):

* **bare value**: a JSON scalar or list (``3500``, ``87.5``, ``"D"``, ``["P0301"]``) or an
  unquoted word (``D``, ``connected``, ``P0301,P0420``). Leading/trailing whitespace is
  ignored.
* **JSON object** with ``value`` (required) and optionally ``ts`` (device time, integer
  epoch milliseconds), ``unit`` (text), ``seq`` (non-negative integer) and ``hmac`` (see
  :mod:`~fleetgate.protocols.mqtt.signing`). Other members are allowed, ignored, and
  covered by the HMAC.

:func:`parse_payload` raises only :class:`PayloadError`. :func:`format_payload` and
:func:`format_bare` are the encoders the gateway simulator (and tests) publish with;
``parse_payload(format_payload(...))`` gives the same fields back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fleetgate.protocols.mqtt.signing import HMAC_FIELD, sign

MAX_PAYLOAD_BYTES: Final = 4096
MAX_UNIT_CHARS: Final = 32
# Integers above this do not survive a trip through a JavaScript (or JCS) number.
MAX_SAFE_INTEGER: Final = 2**53 - 1


class PayloadError(ValueError):
    """A payload that is not one of the accepted forms."""


@dataclass(frozen=True, slots=True)
class Payload:
    """A parsed payload. ``fields`` is the JSON object as sent (None for a bare value)."""

    value: Any
    ts: int | None = None
    unit: str | None = None
    seq: int | None = None
    hmac: str | None = None
    fields: Mapping[str, Any] | None = None


def parse_payload(raw: bytes) -> Payload:
    """The value and context of one message, or :class:`PayloadError`."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(raw)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None
    if not text:
        raise PayloadError("payload is empty")
    if text[0] == "{":
        return _parse_object(text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        if text[0] in '["':
            raise PayloadError("payload looks like JSON but does not parse") from None
        return Payload(text)  # an unquoted word: D, connected, P0301
    return Payload(value)


def _parse_object(text: str) -> Payload:
    try:
        fields = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"JSON object does not parse: {exc}") from None
    if not isinstance(fields, dict):
        raise PayloadError("payload is not a JSON object")
    if "value" not in fields:
        raise PayloadError('JSON object has no "value"')
    ts = _optional_int(fields, "ts")
    seq = _optional_int(fields, "seq")
    unit = fields.get("unit")
    if unit is not None and not (isinstance(unit, str) and 0 < len(unit) <= MAX_UNIT_CHARS):
        raise PayloadError(f'"unit" must be text of 1 to {MAX_UNIT_CHARS} characters')
    mac = fields.get(HMAC_FIELD)
    if mac is not None and not isinstance(mac, str):
        raise PayloadError('"hmac" must be a hex string')
    return Payload(fields["value"], ts, unit, seq, mac, fields)


def _optional_int(fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
        raise PayloadError(f'"{name}" must be an integer from 0 to 2^53-1, got {value!r}')
    return value


# -- encoders (the gateway side) -------------------------------------------------------------
def format_payload(
    value: Any,
    *,
    topic: str,
    ts: int | None = None,
    unit: str | None = None,
    seq: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """A JSON object payload; with ``key``, signed for ``topic``."""
    fields: dict[str, Any] = {"value": value}
    if ts is not None:
        fields["ts"] = ts
    if unit is not None:
        fields["unit"] = unit
    if seq is not None:
        fields["seq"] = seq
    if key is not None:
        fields[HMAC_FIELD] = sign(key, topic, fields)
    return orjson.dumps(fields)


def format_bare(value: Any) -> bytes:
    """A bare-value payload: numbers and lists as JSON, words unquoted when that is safe."""
    if isinstance(value, str):
        if value and value == value.strip() and value[0] not in '{["':
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:
                return value.encode()  # parses back as the same word
        return orjson.dumps(value)
    return orjson.dumps(value)
