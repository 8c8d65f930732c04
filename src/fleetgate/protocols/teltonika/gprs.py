"""GPRS message codecs 12, 13, 14 and 15 (spec section 7): decode bodies, build commands.

Body layout (codec byte through quantity 2), per message::

    codec 12:  type u8, size u32, payload[size]
    codec 13:  type u8, size u32, timestamp u32 (s), payload[size - 4]
    codec 14:  type u8, size u32, imei 8 bytes,      payload[size - 8]
    codec 15:  type u8, size u32, timestamp u32, imei 8 bytes, payload[size - 12]

Teltonika always sends quantity 1, but the decoder is strict: quantity 1 = quantity 2 and
the declared messages fill the body exactly (spec 8; vector
``traccar-hist-c12-n1-2-but-one-response`` is rejected). Codec 13's size/timestamp
ambiguity (spec 7.2) is resolved as the current documentation says: a 4-byte seconds
timestamp inside ``size``.

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
        if codec in (CODEC_13, CODEC_15):
            timestamp = _U32.unpack_from(buf, pos)[0]
        if codec in (CODEC_14, CODEC_15):
            at = pos + prefix - 8
            imei = unpack_imei(bytes(buf[at : at + 8]))
        messages.append(
            GprsMessage(codec, msg_type, bytes(buf[pos + prefix : stop]), timestamp, imei)
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
        prefix = b""
        if codec in (CODEC_13, CODEC_15):
            if message.timestamp_s is None:
                raise ValueError(f"codec {codec_name(codec)} messages need timestamp_s")
            prefix += _U32.pack(message.timestamp_s)
        if codec in (CODEC_14, CODEC_15):
            if message.imei is None:
                raise ValueError(f"codec {codec_name(codec)} messages need an IMEI")
            prefix += pack_imei(message.imei)
        out += _TYPE_SIZE.pack(message.type, len(prefix) + len(message.payload))
        out += prefix + message.payload
    out.append(len(messages))
    return bytes(out)


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
