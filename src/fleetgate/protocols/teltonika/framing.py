"""TCP stream framing: where does the next Teltonika frame end? (spec 3.2–3.5)

Pure functions over a buffer and an offset. :func:`next_frame` answers "need more bytes",
"a frame of this kind and length starts here", or raises :class:`TeltonikaDecodeError`
as soon as the bytes already seen prove the stream broken (bad IMEI length, non-zero
preamble, data length out of range): after a bad length nothing can resynchronise the
stream, so there is no point waiting for more.

Frames on a device → server TCP stream::

    ff                                  keep-alive, no reply
    LLLL <L ASCII digits>               IMEI frame, L in 1..32 (also mid-session: re-login)
    00000000 DL <DL bytes> 0000 CRC     data frame: codec byte .. N2, CRC-16/IBM of them
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.crc import crc16_ibm
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError

NEED_MORE: Final = 0
KEEPALIVE: Final = 1
IMEI: Final = 2
DATA: Final = 3

KEEPALIVE_BYTE: Final = 0xFF
IMEI_MAX_LENGTH: Final = 32
MIN_DATA_LENGTH: Final = 3  # codec, N1, N2
ENVELOPE: Final = 12  # preamble 4 + data length 4 + CRC 4
DEFAULT_MAX_FRAME_BYTES: Final = 65_536

_U32: Final = Struct(">I")


def next_frame(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    *,
    established: bool,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> tuple[int, int]:
    """``(kind, length)`` of the frame starting at ``buf[pos]`` (bytes up to ``end``).

    ``kind`` is NEED_MORE (length 0), KEEPALIVE, IMEI or DATA. Before the IMEI handshake
    (``established`` false) only keep-alives and IMEI frames are allowed.
    """
    avail = end - pos
    if avail <= 0:
        return NEED_MORE, 0
    first = buf[pos]
    if first == KEEPALIVE_BYTE:
        return KEEPALIVE, 1
    if first:
        # A non-zero high byte makes the IMEI length >= 256: no valid frame starts so.
        raise TeltonikaDecodeError(
            f"byte 0x{first:02x} cannot start a frame (IMEI length >= 256, not a preamble)"
        )
    if avail < 2:
        return NEED_MORE, 0
    length = buf[pos + 1]
    if length:
        if length > IMEI_MAX_LENGTH:
            raise TeltonikaDecodeError(f"IMEI length {length} outside 1..{IMEI_MAX_LENGTH}")
        total = 2 + length
        return (IMEI, total) if avail >= total else (NEED_MORE, 0)
    if not established:
        raise TeltonikaDecodeError(
            "expected the IMEI frame, got a zero length (data before the IMEI handshake?)"
        )
    for offset in (2, 3):
        if avail > offset and buf[pos + offset]:
            raise TeltonikaDecodeError("preamble is not 00000000")
    if avail < 8:
        return NEED_MORE, 0
    data_length = _U32.unpack_from(buf, pos + 4)[0]
    if data_length < MIN_DATA_LENGTH or data_length > max_frame_bytes:
        raise TeltonikaDecodeError(
            f"data length {data_length} outside {MIN_DATA_LENGTH}..{max_frame_bytes}"
        )
    total = data_length + ENVELOPE
    return (DATA, total) if avail >= total else (NEED_MORE, 0)


def parse_imei(frame: bytes | bytearray | memoryview) -> str:
    """Digits of a complete IMEI frame (``LLLL`` + L ASCII digits, nothing more)."""
    if len(frame) < 3:
        raise TeltonikaDecodeError(f"IMEI frame is {len(frame)} bytes; at least 3 needed")
    length = (frame[0] << 8) | frame[1]
    if not 1 <= length <= IMEI_MAX_LENGTH:
        raise TeltonikaDecodeError(f"IMEI length {length} outside 1..{IMEI_MAX_LENGTH}")
    if len(frame) != length + 2:
        raise TeltonikaDecodeError(
            f"IMEI frame is {len(frame)} bytes but its length field says {length} + 2"
        )
    digits = bytes(frame[2:])
    if not (digits.isdigit() and digits.isascii()):
        raise TeltonikaDecodeError(f"IMEI is not ASCII digits: {digits[:32].hex()}")
    return digits.decode("ascii")


def frame_crc(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(stored, computed)`` CRC of a complete data frame (stored is the whole u32)."""
    end = len(frame) - 4
    return _U32.unpack_from(frame, end)[0], crc16_ibm(memoryview(frame)[8:end])


def wrap_tcp(body: bytes) -> bytes:
    """Preamble, data length, ``body`` (codec .. N2), CRC: a complete TCP data frame."""
    return b"\x00\x00\x00\x00" + _U32.pack(len(body)) + body + _U32.pack(crc16_ibm(body))


def evidence(data: bytes | bytearray | memoryview, limit: int = 64) -> str:
    """Hex of at most ``limit`` bytes for logs, with a marker when cut."""
    head = bytes(data[:limit]).hex()
    return head if len(data) <= limit else f"{head}...(+{len(data) - limit} bytes)"
