"""Decoded Teltonika values: what the codecs produce and the encoders consume.

Pure data, no I/O. IO values are kept exactly as transmitted: fixed-width elements as
unsigned integers, variable-length (NX) and 16-byte elements as ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Codec ids as they appear on the wire.
CODEC_8 = 0x08
CODEC_8E = 0x8E
CODEC_16 = 0x10
CODEC_12 = 0x0C
CODEC_13 = 0x0D
CODEC_14 = 0x0E
CODEC_15 = 0x0F
AVL_CODECS = frozenset({CODEC_8, CODEC_8E, CODEC_16})
GPRS_CODECS = frozenset({CODEC_12, CODEC_13, CODEC_14, CODEC_15})

CODEC_NAMES = {
    CODEC_8: "8",
    CODEC_8E: "8E",
    CODEC_16: "16",
    CODEC_12: "12",
    CODEC_13: "13",
    CODEC_14: "14",
    CODEC_15: "15",
    0x07: "7",
}


def codec_name(codec: int) -> str:
    """Label for logs and metrics: ``8``, ``8E``, ``16`` ... or ``0x..`` when unknown."""
    return CODEC_NAMES.get(codec, f"0x{codec:02x}")


@dataclass(frozen=True, slots=True)
class AvlRecord:
    """One AVL record of codec 8, 8E or 16 (spec section 5)."""

    timestamp_ms: int
    priority: int
    longitude: float
    latitude: float
    altitude: int
    angle: int
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


@dataclass(frozen=True, slots=True)
class GprsMessage:
    """A codec 12/13/14/15 message (command, response or one-way data; spec section 7)."""

    codec: int
    type: int
    payload: bytes
    timestamp_s: int | None = None  # codecs 13 and 15
    imei: str | None = None  # codecs 14 and 15
