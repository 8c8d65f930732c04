"""Go ``encoding/json`` byte-for-byte, for the payloads Tesla's MQTT dispatcher publishes.

MQTT consumers written against the reference server may compare payloads as text, so the
details matter: map keys sorted, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as
``\\u003c`` …, ``\\b \\f \\n \\r \\t`` short escapes (Go ≥ 1.22) and ``\\u00XX`` for other
control characters, and floats in Go's format: shortest representation, plain notation
between 1e-6 and 1e21, otherwise exponent form with no leading exponent zero (``1e-7``,
``1e+21``). Values that were float32 in Go are wrapped in :class:`Float32` so they print
with float32's shortest representation (``0.1``, not ``0.10000000149011612``).

Also here: float32 helpers and RFC 3339 formatting shared by the JSON forms.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from fleetgate.records import rfc3339_seconds_text

_F32 = struct.Struct("<f")


class Float32(float):
    """A float that Go held as float32 (formatted with float32's shortest digits)."""

    __slots__ = ()


def to_float32(value: float) -> float:
    """Round a float64 to the nearest float32 (as a Python float)."""
    try:
        (out,) = _F32.unpack(_F32.pack(value))
    except OverflowError:
        return math.copysign(math.inf, value)
    return float(out)


def float32_repr(value: float) -> str:
    """Shortest decimal that reads back as the same float32 (Go's ``'g', -1, 32`` digits)."""
    if not math.isfinite(value):
        return repr(value)
    target = to_float32(value)
    # Round-tripping is monotonic in the digit count (more digits are never farther away),
    # so binary-search 1..9 significant digits; nine always round-trip for float32.
    low, high = 1, 9
    while low < high:
        mid = (low + high) // 2
        if to_float32(float(f"{target:.{mid - 1}e}")) == target:
            high = mid
        else:
            low = mid + 1
    return f"{target:.{low - 1}e}"


def float32_value(value: float) -> float:
    """A float64 whose shortest repr equals the float32's shortest repr (for JSON)."""
    if not math.isfinite(value):
        return value
    return float(float32_repr(value))


def go_float(value: float, bits: int = 64) -> str:
    """Go ``encoding/json`` float text (callers handle NaN/Inf, which Go refuses)."""
    digits = float32_repr(value) if bits == 32 else repr(float(value))
    dec = Decimal(digits).normalize()
    magnitude = abs(to_float32(value) if bits == 32 else value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        sign, coeff, exp = dec.as_tuple()
        assert isinstance(exp, int)
        mantissa = "".join(map(str, coeff))
        exponent = exp + len(mantissa) - 1
        body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        # Go writes at least two exponent digits, then trims "e-0X" to "e-X" (not "e+0X").
        exp_text = f"{abs(exponent):02d}"
        if exponent < 0 and exp_text.startswith("0"):
            exp_text = exp_text[1:]
        return ("-" if sign else "") + body + ("e-" if exponent < 0 else "e+") + exp_text
    return format(dec, "f")


_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def go_string(text: str) -> str:
    """A JSON string literal as Go writes it with HTML escaping on."""
    out = ['"']
    for ch in text:
        esc = _SHORT_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " " or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            out.append("\\ufffd")  # lone surrogate: Go replaces invalid UTF-8 the same way
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            out.append("null")  # Go would refuse the whole message; null is the kinder choice
        else:
            out.append(go_float(value, 32 if isinstance(value, Float32) else 64))
    elif isinstance(value, str):
        out.append(go_string(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value, key=str)):
            if i:
                out.append(",")
            out.append(go_string(str(key)))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as Go JSON")


def go_json_dumps(value: Any) -> bytes:
    """``json.Marshal(value)`` as Go produces it."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def rfc3339_seconds(seconds: int) -> str:
    """Go ``t.UTC().Format(time.RFC3339)``: ``2023-08-14T20:28:06Z`` (clamped to 1..9999)."""
    return rfc3339_seconds_text(seconds) + "Z"


def rfc3339_nanos(seconds: int, nanos: int) -> str:
    """protojson Timestamp text: 0, 3, 6 or 9 fractional digits, ``Z`` suffix."""
    base = rfc3339_seconds(seconds)[:-1]
    nanos = min(max(nanos, 0), 999_999_999)
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"
