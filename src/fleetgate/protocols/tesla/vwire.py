"""``Record.data`` of a ``V`` payload read from its protobuf bytes, for the usual payloads.

Reading each datum through upb's Python objects (``datum.key``, ``datum.value``,
``WhichOneof``, the member) costs more than the rest of a frame's decoding: every access
makes or finds a wrapper object. A vehicle's ``Payload`` is a flat list of small, regular
datums, and reading their bytes directly is cheaper. :func:`read_vehicle_data` does that
for payloads upb has already parsed (so the bytes are valid protobuf) and gives up
(``None``) on anything but the usual shape, leaving it to the upb path
(:func:`~fleetgate.protocols.tesla.natural.transform_vehicle_data_natural`):

* a datum is its ``key`` then its ``value``, each at most once (a datum without a value
  is allowed: it renders as ``null``, as ``WhichOneof`` gives None);
* a value holds exactly one member, of a scalar, enum, or ``location_value`` kind (doors,
  tire locations and times are left to upb), whose location holds each coordinate at
  most once, latitude first;
* no string needs a transform (a first ``Location`` datum spelled as text, a number in
  scientific notation): this reader never changes the payload, so the message upb
  parsed needs only its ``vin`` set before it is serialised again.

Everything else in a payload (``created_at``, ``vin``, ``is_resend``, unknown fields) is
skipped here and read from upb. A property test holds both paths equal on generated
payloads and on every one-byte change of real ones.

:func:`read_vehicle_payload` goes further for a payload in upb's own encoding (what a
vehicle's protobuf library writes): it also reads ``created_at`` and ``is_resend`` and
splices the VIN into the bytes, so such a frame needs no upb parse and serialisation at
all; the same property tests hold its bytes equal to upb's.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor

from fleetgate.protocols.tesla.gojson import float32_value
from fleetgate.protocols.tesla.natural import natural_string
from fleetgate.protocols.tesla.transforms import (
    LOCATION_FIELD,
    parse_location,
    rewrite_scientific,
)
from fleetgate.protocols.tesla.values import FIELD_NAMES, VALUE_FIELDS

_DOUBLE: Final = struct.Struct("<d").unpack_from
_FLOAT: Final = struct.Struct("<f").unpack_from

# Value members by wire tag (field number << 3 | wire type) → how the member reads.
_STRING: Final = 1
_INT32: Final = 2  # int32 and enums: a varint, its low 32 bits signed
_INT64: Final = 3
_BOOL: Final = 4
_INVALID: Final = 5  # the varint kinds end here
_FLOAT_KIND: Final = 6
_DOUBLE_KIND: Final = 7
_LOCATION: Final = 8

_WIRE_VARINT: Final = 0
_WIRE_FIXED64: Final = 1
_WIRE_BYTES: Final = 2
_WIRE_FIXED32: Final = 5
_DOUBLE_TAG: Final = 5 << 3 | _WIRE_FIXED64  # double_value
# A datum of 13 bytes (field 1), its key (field 1, varint), a Value of 9 bytes (field 2)
# holding a double_value: (0a 0d 08, key, 12 09 29, double).
# Read as (the seven bytes around the double, the double): _DOUBLE_HEADS names the datum
# by those seven bytes, so one dict lookup checks its layout and finds its key's name.
_DOUBLE_DATUM: Final = struct.Struct("<7sd").unpack_from
_DOUBLE_HEAD: Final = b"\x0a\x0d\x08"
_DOUBLE_MIDDLE: Final = b"\x12\x09\x29"
# A datum of 24 bytes, its key, a Value of 20 bytes holding a location_value of 18 bytes:
# latitude (field 1, double), longitude (field 2, double).
# Read as (the nine bytes before latitude, latitude, longitude's tag, longitude); named by
# _LOCATION_HEADS as the double datums are.
_LOCATION_DATUM: Final = struct.Struct("<9sdsd").unpack_from
_LOCATION_HEAD: Final = b"\x0a\x18\x08"
_LOCATION_MIDDLE: Final = b"\x12\x14\x3a\x12\x09"
# A short datum after its (0a, size) head: (08, key, 12, Value length, the member's tag
# or its first byte, the next byte).
_SHORT_DATUM: Final = struct.Struct("<6B").unpack_from
_STRING_TAG: Final = 1 << 3 | _WIRE_BYTES  # string_value


def _enum_names(fd: FieldDescriptor) -> Callable[[int], Any]:
    enum = fd.enum_type
    assert enum is not None  # an enum field
    names = {number: value.name for number, value in enum.values_by_number.items()}

    def convert(raw: int) -> Any:
        name = names.get(raw)
        return name if name is not None else raw

    return convert


def _member_kinds() -> dict[int, tuple[int, Callable[[int], Any] | None]]:
    scalars = {  # field type: (wire type, kind)
        FieldDescriptor.TYPE_STRING: (_WIRE_BYTES, _STRING),
        FieldDescriptor.TYPE_INT32: (_WIRE_VARINT, _INT32),
        FieldDescriptor.TYPE_INT64: (_WIRE_VARINT, _INT64),
        FieldDescriptor.TYPE_BOOL: (_WIRE_VARINT, _BOOL),
        FieldDescriptor.TYPE_FLOAT: (_WIRE_FIXED32, _FLOAT_KIND),
        FieldDescriptor.TYPE_DOUBLE: (_WIRE_FIXED64, _DOUBLE_KIND),
    }
    kinds: dict[int, tuple[int, Callable[[int], Any] | None]] = {}
    for name, fd in VALUE_FIELDS.items():
        if name == "invalid":
            kinds[fd.number << 3 | _WIRE_VARINT] = (_INVALID, None)
        elif name == "location_value":
            kinds[fd.number << 3 | _WIRE_BYTES] = (_LOCATION, None)
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            kinds[fd.number << 3 | _WIRE_VARINT] = (_INT32, _enum_names(fd))
        elif fd.type in scalars:
            wire, kind = scalars[fd.type]
            kinds[fd.number << 3 | wire] = (kind, None)
        # Other message members (doors, tires, time): left to upb.
    return kinds


_KINDS: Final = _member_kinds()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at ``pos`` (valid: upb parsed these bytes)."""
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire: int) -> int | None:
    """Position after a field's data; None for groups (never in these messages)."""
    if wire == _WIRE_VARINT:
        while buf[pos] >= 0x80:
            pos += 1
        return pos + 1
    if wire == _WIRE_FIXED64:
        return pos + 8
    if wire == _WIRE_BYTES:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire == _WIRE_FIXED32:
        return pos + 4
    return None


def read_vehicle_data(buf: bytes) -> tuple[dict[str, Any], int] | None:
    """(``Record.data`` without ``is_resend``, datum count) of a parsed ``V`` payload, or
    None when it is not of the usual shape (see the module docstring)."""
    try:
        read = _read(buf)
    except (IndexError, struct.error, UnicodeDecodeError):  # pragma: no cover - upb parsed it
        return None
    return None if read is None else (read[0], read[1])


#: (data without is_resend, datum count, created_at as (seconds, nanos) or None,
#: is_resend, the payload with the VIN set)
VehiclePayload = tuple[dict[str, Any], int, "tuple[int, int] | None", bool, bytes]


def vin_field(vin: str) -> bytes:
    """The bytes of ``Payload.vin`` set to ``vin`` as upb writes them (nothing when empty)."""
    data = vin.encode()
    if not data:
        return b""
    size = len(data)
    length = bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return b"\x1a" + bytes(length) + data


def read_vehicle_payload(buf: bytes, vin: bytes) -> VehiclePayload | None:
    """What the upb path makes of a ``V`` payload, from its bytes alone (no upb parse and
    serialisation): the data as :func:`read_vehicle_data`, ``created_at``, ``is_resend``,
    and the payload with ``vin`` (:func:`vin_field`) in place of the one it carries.

    Only for payloads in upb's own encoding (*canonical*: fields in number order, no
    unknown fields, minimal varints, no field of a default value written out, and nothing
    upb would refuse), where ``Payload.FromString(buf)`` with its ``vin`` set serialises
    to ``buf`` with that one field replaced: a property test holds the bytes equal. None
    for anything else (or what :func:`read_vehicle_data` leaves to upb): the upb path.
    """
    try:
        read = _read(buf)
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if read is None:
        return None
    data, count, tail = read
    if tail is None:
        return None  # not canonical
    created, is_resend, vin_at, vin_end = tail
    return data, count, created, is_resend, b"".join((buf[:vin_at], vin, buf[vin_end:]))


_MASK64: Final = 0xFFFF_FFFF_FFFF_FFFF
# The usual tail, a created_at of whole seconds alone: (12 06 08, five varint bytes).
_TIME_TAIL: Final = struct.Struct("<3s5B").unpack_from
_TIME_TAIL_HEAD: Final = b"\x12\x06\x08"

# The payload's fields after its data, as _read reports them when canonical:
# (created_at (seconds, nanos) or None, is_resend, start and end of the vin field).
_Tail = tuple["tuple[int, int] | None", bool, int, int]


def _tail(buf: bytes, pos: int, end: int) -> _Tail | None:
    """The fields after a canonical payload's data (``created_at``, ``vin``, ``is_resend``,
    each at most once and in that order, to the end), or None when they are not canonical."""
    if end - pos == 8:
        # The usual tail in one read: seconds of 2^28 to 2^35 (years 1978 to 3058), a
        # varint of five bytes, the last one not 0 (minimal); no nanos, vin or is_resend.
        head, b0, b1, b2, b3, b4 = _TIME_TAIL(buf, pos)
        if head == _TIME_TAIL_HEAD and b0 & b1 & b2 & b3 & 0x80 and 0 < b4 < 0x80:
            seconds = (
                (b0 & 0x7F) | (b1 & 0x7F) << 7 | (b2 & 0x7F) << 14 | (b3 & 0x7F) << 21 | b4 << 28
            )
            return (seconds, 0), False, end, end
    created = None
    if pos < end and buf[pos] == 0x12:  # created_at: a Timestamp of at most 22 bytes
        size = buf[pos + 1]
        stop = pos + 2 + size
        if size >= 0x80 or stop > end:
            return None
        pos += 2
        seconds = nanos = 0
        if pos < stop and buf[pos] == 0x08:  # seconds (int64), when not 0
            start = pos + 1
            raw, pos = _varint(buf, start)
            if not raw or (not buf[pos - 1] and pos - start > 1) or raw > _MASK64:
                return None
            seconds = raw - (1 << 64) if raw >> 63 else raw
        if pos < stop and buf[pos] == 0x10:  # nanos (int32), written when not 0
            start = pos + 1
            raw, pos = _varint(buf, start)
            nanos = raw & 0xFFFF_FFFF
            if nanos >= 0x8000_0000:
                nanos -= 0x1_0000_0000
            if not raw or (not buf[pos - 1] and pos - start > 1) or raw != nanos & _MASK64:
                return None
        if pos != stop:
            return None
        created = (seconds, nanos)
    vin_at = pos
    if pos < end and buf[pos] == 0x1A:  # vin: replaced, but upb refuses a non-UTF-8 one
        size, start = _varint(buf, pos + 1)
        pos = start + size
        if pos > end:
            return None
        buf[start:pos].decode("utf-8")
    vin_end = pos
    is_resend = False
    if pos < end and buf[pos] == 0x20:  # is_resend: written when true, as 1
        if pos + 2 > end or buf[pos + 1] != 1:
            return None
        is_resend = True
        pos += 2
    if pos != end:
        return None
    return created, is_resend, vin_at, vin_end


# Key names but that of 0: a key of 0 (which upb leaves out) is a miss, and the check
# for it costs the usual datum nothing.
_NONZERO_NAMES: Final = {key: name for key, name in FIELD_NAMES.items() if key}


def _other_name(key: int) -> str:
    name = FIELD_NAMES.get(key)
    return str(key) if name is None else name


def _heads(head: bytes, middle: bytes) -> dict[bytes, str]:
    """The layout bytes of a one-byte-key datum (``head``, key, ``middle``) → the key's
    name, for every key of 1 to 127 (upb leaves a key of 0 out: that is the general path's)."""
    return {head + bytes((key,)) + middle: _other_name(key) for key in range(1, 0x80)}


_DOUBLE_HEADS: Final = _heads(_DOUBLE_HEAD, _DOUBLE_MIDDLE)
_LOCATION_HEADS: Final = _heads(_LOCATION_HEAD, _LOCATION_MIDDLE)


def _read(buf: bytes) -> tuple[dict[str, Any], int, _Tail | None] | None:
    """(data, datum count, the tail when the payload is canonical else None), or None
    when the payload is not of the usual shape. Checks bounds itself (for
    :func:`read_vehicle_payload`, which no upb parse precedes)."""
    names = _NONZERO_NAMES
    double_heads = _DOUBLE_HEADS
    kinds = _KINDS
    isfinite = math.isfinite
    data: dict[str, Any] = {}
    count = 0
    canonical = True  # in upb's encoding so far (see read_vehicle_payload)
    tail: _Tail | None = None
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos >= 15:
            # The usual datum in one read: a one-byte key and a double (15 bytes).
            head, raw = _DOUBLE_DATUM(buf, pos)
            name = double_heads.get(head)
            if name is not None:
                data[name] = raw if isfinite(raw) else None
                count += 1
                pos += 15
                continue
            if buf[pos + 1] == 0x18 and end - pos >= 26:
                # A location_value with both coordinates (26 bytes).
                head, latitude, between, longitude = _LOCATION_DATUM(buf, pos)
                name = _LOCATION_HEADS.get(head)
                if name is not None and between == b"\x11":
                    if not latitude or not longitude:
                        canonical = False  # upb leaves a 0 out
                    data[name] = {
                        "latitude": latitude if isfinite(latitude) else None,
                        "longitude": longitude if isfinite(longitude) else None,
                    }
                    count += 1
                    pos += 26
                    continue
        if buf[pos] == 0x0A and 6 <= buf[pos + 1] < 0x80:
            # A short datum: a one-byte key, then a Value of one member in one read;
            # strings, and varints and floats of one-byte or two-byte member tags.
            size = buf[pos + 1]
            datum_end = pos + 2 + size
            b2, key, b4, length, member, b7 = _SHORT_DATUM(buf, pos + 2)
            if (
                b2 == 0x08
                and b4 == 0x12
                and length == size - 4
                and 0 < key < 0x80
                and datum_end <= end
            ):
                name = names.get(key)
                if name is None:
                    name = _other_name(key)
                if member == _STRING_TAG:
                    if b7 == length - 2:
                        text = buf[pos + 8 : datum_end].decode("utf-8")
                        if text:
                            if key == LOCATION_FIELD and name not in data and parse_location(text):
                                return None  # a location_value (as below): upb's path
                            scientific = "e" in text or "E" in text
                            if scientific and rewrite_scientific(text) is not None:
                                return None  # rewritten in the payload: upb's path
                            data[name] = natural_string(name, text)
                        else:
                            data[name] = text
                        count += 1
                        pos = datum_end
                        continue
                else:
                    at = pos + 7  # the member's data, after a one-byte tag
                    if member >= 0x80:  # a two-byte tag (a member numbered 16 or more)
                        member = (member & 0x7F) | b7 << 7 if 0 < b7 < 0x80 else 0
                        at = pos + 8
                    kind_convert = kinds.get(member)
                    if kind_convert is not None:
                        kind, convert = kind_convert
                        if kind < _INVALID and kind != _STRING and at + 1 == datum_end:
                            raw = buf[at]
                            if raw < 0x80 and (kind != _BOOL or raw < 2):
                                # One varint byte: int32, int64 and enum read it as is.
                                if kind == _BOOL:
                                    data[name] = raw == 1
                                else:
                                    data[name] = raw if convert is None else convert(raw)
                                count += 1
                                pos = datum_end
                                continue
                        elif kind == _FLOAT_KIND and at + 4 == datum_end:
                            raw = float32_value(_FLOAT(buf, at)[0])
                            data[name] = raw if isfinite(raw) else None
                            count += 1
                            pos = datum_end
                            continue
        tag_at = pos
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint(buf, pos - 1)
        if tag != 0x0A:  # not a datum (field 1, bytes): skip it
            if canonical:
                # The fields after the data, to the end: read as a whole, once.
                tail = _tail(buf, tag_at, end)
                if tail is not None:
                    break
                canonical = False
            if tag & 7 == _WIRE_BYTES and buf[pos] < 0x80:  # created_at, vin
                pos += 1 + buf[pos]
                continue
            after = _skip(buf, pos, tag & 7)
            if after is None:
                return None
            pos = after
            continue
        length = buf[pos]
        pos += 1
        if length >= 0x80:
            length, pos = _varint(buf, pos - 1)
            if not buf[pos - 1]:
                canonical = False  # a varint longer than it needs to be
        datum_end = pos + length
        if datum_end > end:
            return None
        # key: field 1, varint (an enum: int32)
        if pos >= datum_end or buf[pos] != 0x08:
            return None
        key = buf[pos + 1]
        pos += 2
        if key >= 0x80:
            raw, pos = _varint(buf, pos - 1)
            key = raw & 0xFFFF_FFFF
            if key >= 0x8000_0000:
                key -= 0x1_0000_0000
            if not buf[pos - 1] or raw != key & _MASK64:
                canonical = False
        name = names.get(key)
        if name is None:
            name = _other_name(key)
            if not key:
                canonical = False  # upb leaves a key of 0 out
        count += 1
        if pos == datum_end:  # no value
            data[name] = None
            continue
        # value: field 2, bytes, then the end of the datum
        if buf[pos] != 0x12:
            return None
        length = buf[pos + 1]
        pos += 2
        if length >= 0x80:
            length, pos = _varint(buf, pos - 1)
            if not buf[pos - 1]:
                canonical = False
        if pos + length != datum_end:
            return None
        if not length:  # an empty Value: no member set
            data[name] = None
            continue
        member = buf[pos]
        pos += 1
        if member == _DOUBLE_TAG and pos + 8 == datum_end:  # the usual datum, first
            raw = _DOUBLE(buf, pos)[0]
            data[name] = raw if isfinite(raw) else None
            pos = datum_end
            continue
        if member >= 0x80:
            member, pos = _varint(buf, pos - 1)
            if not buf[pos - 1]:
                canonical = False
        kind_convert = kinds.get(member)
        if kind_convert is None:
            return None
        kind, convert = kind_convert
        if kind == _DOUBLE_KIND:
            return None  # a double whose datum holds more than it
        if kind == _STRING:
            size = buf[pos]
            pos += 1
            if size >= 0x80:
                size, pos = _varint(buf, pos - 1)
                if not buf[pos - 1]:
                    canonical = False
            if pos + size != datum_end:
                return None
            text = buf[pos:datum_end].decode("utf-8")
            if text:
                if key == LOCATION_FIELD and name not in data and parse_location(text):
                    return None  # becomes a location_value: upb's path rewrites it
                if ("e" in text or "E" in text) and rewrite_scientific(text) is not None:
                    return None  # rewritten in the payload: upb's path
                data[name] = natural_string(name, text)
            else:
                data[name] = text
        elif kind <= _INVALID:  # a varint
            start = pos
            raw, pos = _varint(buf, pos)
            if pos != datum_end:
                return None
            if not buf[pos - 1] and pos - start > 1:
                canonical = False
            if kind == _INT32:
                number = raw & 0xFFFF_FFFF
                if number >= 0x8000_0000:
                    number -= 0x1_0000_0000
                data[name] = number if convert is None else convert(number)
                if raw != number & _MASK64:
                    canonical = False  # upb writes a negative int32 in 10 bytes
            elif kind == _INT64:
                number = raw & _MASK64
                if number >= 0x8000_0000_0000_0000:
                    number -= 0x1_0000_0000_0000_0000
                data[name] = number
                if raw != number & _MASK64:
                    canonical = False
            elif kind == _BOOL:
                data[name] = raw != 0
                if raw > 1:
                    canonical = False  # upb writes true as 1
            else:
                data[name] = None  # invalid
                if raw > 1:
                    canonical = False
        elif kind == _FLOAT_KIND:
            if pos + 4 != datum_end:
                return None
            raw = float32_value(_FLOAT(buf, pos)[0])
            data[name] = raw if isfinite(raw) else None
        else:  # location
            size = buf[pos]
            pos += 1
            if size >= 0x80:
                size, pos = _varint(buf, pos - 1)
                if not buf[pos - 1]:
                    canonical = False
            if pos + size != datum_end:
                return None
            latitude = longitude = 0.0
            if pos < datum_end and buf[pos] == 0x09:
                latitude = _DOUBLE(buf, pos + 1)[0]
                pos += 9
                if not latitude:
                    canonical = False  # upb leaves a 0 out
            if pos < datum_end and buf[pos] == 0x11:
                longitude = _DOUBLE(buf, pos + 1)[0]
                pos += 9
                if not longitude:
                    canonical = False
            if pos != datum_end:
                return None
            data[name] = {
                "latitude": latitude if isfinite(latitude) else None,
                "longitude": longitude if isfinite(longitude) else None,
            }
        pos = datum_end
    if canonical and tail is None:
        tail = (None, False, end, end)  # data alone
    return data, count, tail if canonical else None

