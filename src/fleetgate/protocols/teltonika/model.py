"""Decoded Teltonika values: what the codecs produce and the encoders consume.

Pure data, no I/O. IO values are kept exactly as transmitted: fixed-width elements as
unsigned integers, variable-length (NX) and 16-byte elements as ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Codec ids as they appear on the wire.
CODEC_7: Final = 0x07  # GH3000 ("codec 7")
CODEC_8: Final = 0x08
CODEC_8E: Final = 0x8E
CODEC_16: Final = 0x10
CODEC_12: Final = 0x0C
CODEC_13: Final = 0x0D
CODEC_14: Final = 0x0E
CODEC_15: Final = 0x0F
AVL_CODECS: Final = frozenset({CODEC_7, CODEC_8, CODEC_8E, CODEC_16})
GPRS_CODECS: Final = frozenset({CODEC_12, CODEC_13, CODEC_14, CODEC_15})

CODEC_NAMES: Final = {
    CODEC_7: "7",
    CODEC_8: "8",
    CODEC_8E: "8E",
    CODEC_16: "16",
    CODEC_12: "12",
    CODEC_13: "13",
    CODEC_14: "14",
    CODEC_15: "15",
}

# The largest device time any decoder accepts: 9999-12-31T23:59:59.999Z (RFC 3339 has no
# year 10000). Larger values, up to the u64 maximum, are refused (ImpossibleValueError).
MAX_TIMESTAMP_MS: Final = 253_402_300_799_999


def codec_name(codec: int) -> str:
    """Label for logs and metrics: ``8``, ``8E``, ``16`` ... or ``0x..`` when unknown."""
    # Not ``.get(codec, f"...")``: that formats the default on every call (once per frame).
    name = CODEC_NAMES.get(codec)
    return name if name is not None else f"0x{codec:02x}"


@dataclass(frozen=True, slots=True)
class AvlRecord:
    """One AVL record of codec 8, 8E or 16 (spec section 5); codec 7 uses :class:`Gh3000Record`."""

    timestamp_ms: int
    priority: int
    longitude: float
    latitude: float
    altitude: int
    # Whole degrees in codecs 8/8E/16; GH3000 (codec 7) sends 360/256-degree steps.
    angle: float
    satellites: int
    speed: int
    event_io_id: int
    io: dict[int, int | bytes] = field(default_factory=dict)
    # Codec 16 only; None for 8 and 8E.
    generation_type: int | None = None
    # How many elements of ``io`` (in insertion order) came from each IO group on the wire:
    # (1-byte, 2-byte, 4-byte, 8-byte, NX variable-length, 16-byte). Decoders always fill
    # it; it lets the IO-name table check an element's real size and lets the encoder
    # reproduce the exact layout. None (hand-built records) = the encoder picks the
    # smallest width that fits each value. Not part of equality: the values are the record.
    io_groups: tuple[int, int, int, int, int, int] | None = field(default=None, compare=False)


# GH3000 masks (spec section 6).
GH_GLOBAL_GPS: Final = 0x01  # the GPS element is present
GH_GLOBAL_IO: Final = (0x02, 0x04, 0x08)  # 1-, 2- and 4-byte IO groups present
GH_GPS_LATLON: Final = 0x01
GH_GPS_ALTITUDE: Final = 0x02
GH_GPS_ANGLE: Final = 0x04
GH_GPS_SPEED: Final = 0x08
GH_GPS_SATELLITES: Final = 0x10
GH_GPS_CELL: Final = 0x20  # LAC + cell id
GH_GPS_SIGNAL: Final = 0x40
GH_GPS_OPERATOR: Final = 0x80


@dataclass(frozen=True, slots=True)
class Gh3000Record(AvlRecord):
    """One codec 7 (GH3000) record: an AVL record plus what only GH3000 sends.

    The masks say which parts were on the wire (so the encoder reproduces a frame byte for
    byte); fields whose bit is clear hold 0 (position) or None (cell data). Without the
    GPS element (``global_mask`` bit 0 clear) the record has a time and IO but no location.
    """

    global_mask: int = GH_GLOBAL_GPS | 0x0E
    gps_mask: int = (
        GH_GPS_LATLON | GH_GPS_ALTITUDE | GH_GPS_ANGLE | GH_GPS_SPEED | GH_GPS_SATELLITES
    )
    lac: int | None = None
    cell_id: int | None = None
    signal_quality: int | None = None
    operator: int | None = None

    @property
    def location_present(self) -> bool:
        """Whether the record carries latitude and longitude at all."""
        return bool(self.global_mask & GH_GLOBAL_GPS and self.gps_mask & GH_GPS_LATLON)


@dataclass(frozen=True, slots=True)
class GprsMessage:
    """A codec 12/13/14/15 message (command, response or one-way data; spec section 7)."""

    codec: int
    type: int
    payload: bytes
    # Codecs 13 and 15: the message time. On the wire u32 seconds, or (an older codec 13
    # layout, ``timestamp_width`` 8) u64 milliseconds.
    timestamp_ms: int | None = None
    imei: str | None = None  # codecs 14 and 15
    timestamp_width: int = 4
