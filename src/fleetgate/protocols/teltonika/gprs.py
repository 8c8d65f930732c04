"""GPRS message codecs 12, 13, 14 and 15 (spec section 7): decode bodies, build commands.

Body layout (codec byte through quantity 2), per message::

    codec 12:  type u8, size u32, payload[size]
    codec 13:  type u8, size u32, timestamp u32 (s), payload[size - 4]
               (older layout: timestamp u64 (ms), payload[size - 8]; see below)
    codec 14:  type u8, size u32, imei 8 bytes,      payload[size - 8]
    codec 15:  type u8, size u32, timestamp u32, imei 8 bytes, payload[size - 12]

Teltonika always sends quantity 1, but the decoder is strict: quantity 1 = quantity 2 and
the declared messages fill the body exactly (spec 8; vector
``traccar-hist-c12-n1-2-but-one-response`` is rejected).

Codec 13's two layouts (spec 7.2) carry nothing that says which one a frame uses, so the
decoder goes by what the bytes can mean: the current 4-byte seconds timestamp, unless it
reads as a time before 2000-01-01 while the first 8 bytes, read as milliseconds, are a
time from 2000-01-01 to 2100-01-01 (vector ``traccar-c13-L63``: 364 s vs 2019-07-29).
A device whose clock really is before 2000 and whose payload happens to complete such a
value is read the other way; that cannot be told apart from the bytes.

IMEIs in codecs 14/15 are 8 bytes of hex nibbles with a leading ``0`` nibble: the decoder
returns the hex text without that nibble (``0352093081452251`` → ``352093081452251``);
the full 16 nibbles when the first is not ``0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.framing import wrap_tcp
from fleetgate.protocols.teltonika.model import (
    CODEC_12,
    CODEC_13,
    CODEC_14,
    CODEC_15,
    GPRS_CODECS,
    GprsMessage,
    codec_name,
)

TYPE_COMMAND: Final = 0x05
TYPE_RESPONSE: Final = 0x06
TYPE_CAMERA: Final = 0x0D
TYPE_NACK: Final = 0x11
TYPE_CODEC15: Final = 0x0B

_TYPE_SIZE: Final = Struct(">BI")
_U32: Final = Struct(">I")
_U64: Final = Struct(">Q")
# Codec 13 layout choice (module docstring): plausible device times.
_PLAUSIBLE_FROM_S: Final = 946_684_800  # 2000-01-01T00:00:00Z
_PLAUSIBLE_FROM_MS: Final = _PLAUSIBLE_FROM_S * 1000
_PLAUSIBLE_UNTIL_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# Bytes inside "size" that precede the payload: timestamp and/or IMEI.
_PREFIX: Final = {CODEC_12: 0, CODEC_13: 4, CODEC_14: 8, CODEC_15: 12}


def decode_gprs_body(
    body: bytes | bytearray | memoryview, codec: int
) -> tuple[GprsMessage, ...]:
    """Messages of one codec 12–15 body (codec byte through quantity 2)."""
    if len(body) < 3:
        raise TeltonikaDecodeError(f"GPRS body is {len(body)} bytes; at least 3 needed")
    if body[0] != codec:
        raise TeltonikaDecodeError(
            f"body starts with codec 0x{body[0]:02x}, expected 0x{codec:02x}"
        )
    return decode_gprs_span(body, 0, len(body))


def decode_gprs_span(
    buf: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[GprsMessage, ...]:
    """Decode the body at ``buf[start:end]`` (codec byte through quantity 2) in place."""
    codec = buf[start]
    prefix = _PREFIX.get(codec)
    if prefix is None:
        raise TeltonikaDecodeError(f"codec {codec_name(codec)} is not a GPRS codec (12-15)")
    count = buf[start + 1]
    last = end - 1
    if buf[last] != count:
        raise TeltonikaDecodeError(f"quantity 1 ({count}) != quantity 2 ({buf[last]})")
    pos = start + 2
    messages = []
    for index in range(count):
        if pos + 5 > last:
            raise TeltonikaDecodeError(
                f"message {index + 1} of {count} does not fit the body (type and size)"
            )
        msg_type, size = _TYPE_SIZE.unpack_from(buf, pos)
        pos += 5
        stop = pos + size
        if stop > last:
            raise TeltonikaDecodeError(
                f"message {index + 1} of {count} declares {size} bytes; "
                f"only {last - pos} remain before quantity 2"
            )
        if size < prefix:
            raise TeltonikaDecodeError(
                f"codec {codec_name(codec)} message size {size} is shorter than its "
                f"{prefix}-byte timestamp/IMEI prefix"
            )
        timestamp: int | None = None
        imei: str | None = None
        width = 4
        skip = prefix
        if codec in (CODEC_13, CODEC_15):
            seconds = _U32.unpack_from(buf, pos)[0]
            timestamp = seconds * 1000
            if codec == CODEC_13 and seconds < _PLAUSIBLE_FROM_S and size >= 8:
                millis = _U64.unpack_from(buf, pos)[0]
                if _PLAUSIBLE_FROM_MS <= millis < _PLAUSIBLE_UNTIL_MS:
                    timestamp, width, skip = millis, 8, 8
        if codec in (CODEC_14, CODEC_15):
            at = pos + prefix - 8
            imei = unpack_imei(bytes(buf[at : at + 8]))
        messages.append(
            GprsMessage(
                codec, msg_type, bytes(buf[pos + skip : stop]), timestamp, imei, width
            )
        )
        pos = stop
    if pos != last:
        raise TeltonikaDecodeError(
            f"{count} message(s) end at body byte {pos - start} "
            f"but quantity 2 is at byte {last - start}"
        )
    return tuple(messages)


def pack_imei(imei: str) -> bytes:
    """IMEI digits → the 8-byte hex-nibble form of codecs 14/15 (left-padded with 0)."""
    if not imei.isdigit() or not imei.isascii() or len(imei) > 16:
        raise ValueError(f"IMEI must be at most 16 ASCII digits, got {imei!r}")
    return bytes.fromhex(imei.rjust(16, "0"))


def unpack_imei(field: bytes) -> str:
    """The 8-byte hex-nibble IMEI field → digits (the leading 0 nibble dropped)."""
    text = field.hex()
    return text[1:] if text.startswith("0") else text


def encode_gprs_body(messages: Sequence[GprsMessage]) -> bytes:
    """Body (codec byte through quantity 2) for ``messages``, which share one codec."""
    if not messages:
        raise ValueError("a GPRS frame carries at least one message")
    codec = messages[0].codec
    if codec not in GPRS_CODECS:
        raise ValueError(f"codec {codec_name(codec)} is not a GPRS codec (12-15)")
    if len(messages) > 255:
        raise ValueError("at most 255 messages per frame")
    out = bytearray((codec, len(messages)))
    for message in messages:
        if message.codec != codec:
            raise ValueError("all messages of one frame must use the same codec")
        prefix = _timestamp_field(message)
        if codec in (CODEC_14, CODEC_15):
            if message.imei is None:
                raise ValueError(f"codec {codec_name(codec)} messages need an IMEI")
            prefix += pack_imei(message.imei)
        out += _TYPE_SIZE.pack(message.type, len(prefix) + len(message.payload))
        out += prefix + message.payload
    out.append(len(messages))
    return bytes(out)


def _timestamp_field(message: GprsMessage) -> bytes:
    """The timestamp bytes of a codec 13/15 message (nothing for 12/14)."""
    codec = message.codec
    if codec not in (CODEC_13, CODEC_15):
        if message.timestamp_ms is not None:
            raise ValueError(f"codec {codec_name(codec)} messages carry no timestamp")
        return b""
    ms = message.timestamp_ms
    if ms is None:
        raise ValueError(f"codec {codec_name(codec)} messages need timestamp_ms")
    if message.timestamp_width == 8 and codec == CODEC_13:
        if not 0 <= ms <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"timestamp {ms} ms does not fit u64")
        return _U64.pack(ms)
    if message.timestamp_width != 4:
        raise ValueError("only codec 13 has the 8-byte millisecond timestamp layout")
    seconds, rest = divmod(ms, 1000)
    if rest or not 0 <= seconds <= 0xFFFF_FFFF:
        raise ValueError(f"timestamp {ms} ms is not whole u32 seconds")
    return _U32.pack(seconds)


def encode_gprs_frame(messages: Sequence[GprsMessage]) -> bytes:
    """A complete TCP frame carrying codec 12–15 ``messages``."""
    return wrap_tcp(encode_gprs_body(messages))


def encode_command(
    command: str | bytes, *, codec: int = CODEC_12, imei: str | None = None
) -> bytes:
    """A server → device command frame (spec 7.1 codec 12, 7.3 codec 14).

    Text is sent as ASCII exactly as given (no CR LF appended, as current Traccar);
    pass ``bytes`` for a binary command. Codec 14 needs the target ``imei``; the device
    runs the command only when it matches its own and otherwise answers nACK.
    """
    payload = command.encode("ascii") if isinstance(command, str) else bytes(command)
    if codec == CODEC_12:
        if imei is not None:
            raise ValueError("codec 12 commands carry no IMEI; use codec 14")
        message = GprsMessage(CODEC_12, TYPE_COMMAND, payload)
    elif codec == CODEC_14:
        if imei is None:
            raise ValueError("codec 14 commands need the target IMEI")
        message = GprsMessage(CODEC_14, TYPE_COMMAND, payload, imei=imei)
    else:
        raise ValueError(f"commands use codec 12 or 14, not {codec_name(codec)}")
    return encode_gprs_frame([message])


def encode_response(
    reply: str | bytes, *, codec: int = CODEC_12, imei: str | None = None, nack: bool = False
) -> bytes:
    """A device → server answer to a command (what a tracker sends; simulator and tests).

    Codec 12: a type 6 response. Codec 14: a type 6 ACK with the device's ``imei``, or,
    with ``nack``, the type 0x11 nACK (no payload) a device sends when the command's IMEI
    is not its own.
    """
    payload = reply.encode("ascii") if isinstance(reply, str) else bytes(reply)
    if codec == CODEC_12:
        if imei is not None or nack:
            raise ValueError("codec 12 responses carry no IMEI and have no nACK")
        return encode_gprs_frame([GprsMessage(CODEC_12, TYPE_RESPONSE, payload)])
    if codec == CODEC_14:
        if imei is None:
            raise ValueError("codec 14 responses carry the device IMEI")
        if nack:
            if payload:
                raise ValueError("a codec 14 nACK has no payload")
            return encode_gprs_frame([GprsMessage(CODEC_14, TYPE_NACK, b"", imei=imei)])
        return encode_gprs_frame([GprsMessage(CODEC_14, TYPE_RESPONSE, payload, imei=imei)])
    raise ValueError(f"responses use codec 12 or 14, not {codec_name(codec)}")
