"""Hypothesis strategies for Teltonika values."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st

from fleetgate.protocols.teltonika.gh3000 import ANGLE_STEP, GH_EPOCH_S, shortest_float32
from fleetgate.protocols.teltonika.model import (
    CODEC_7,
    CODEC_8,
    CODEC_8E,
    CODEC_13,
    CODEC_16,
    MAX_TIMESTAMP_MS,
    AvlRecord,
    Gh3000Record,
    GprsMessage,
)

_WIDTH_MAX = (0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
# The codec 13 layout choice reads a 4-byte time before 2000 as a possible 8-byte one
# (gprs module docstring); generated 4-byte times stay where that question never arises.
_FROM_2000_S = 946_684_800
_UNTIL_2100_MS = 4_102_444_800_000

imeis = st.from_regex(r"[1-9][0-9]{14}", fullmatch=True)


@st.composite
def avl_records(draw: Any, codec: int, io16_group: bool = False) -> AvlRecord:
    """A random record the codec can carry, with its exact IO layout in io_groups."""
    if codec == CODEC_7:
        return draw(gh3000_records())
    id_max = 0xFF if codec == CODEC_8 else 0xFFFF
    ids = draw(st.lists(st.integers(0, id_max), unique=True, max_size=24))
    kinds = [0, 1, 2, 3]
    if codec == CODEC_8E:
        kinds.append(4)
    if io16_group:
        kinds.append(5)
    groups: list[list[tuple[int, int | bytes]]] = [[] for _ in range(6)]
    for key in ids:
        kind = draw(st.sampled_from(kinds))
        value: int | bytes
        if kind < 4:
            value = draw(st.integers(0, _WIDTH_MAX[kind]))
        elif kind == 4:
            value = draw(st.binary(max_size=40))
        else:
            value = draw(st.binary(min_size=16, max_size=16))
        groups[kind].append((key, value))
    io = {key: value for group in groups for key, value in group}
    layout = tuple(len(g) for g in groups)
    return AvlRecord(
        timestamp_ms=draw(st.integers(0, MAX_TIMESTAMP_MS)),
        priority=draw(st.integers(0, 255)),
        longitude=draw(st.integers(-1_800_000_000, 1_800_000_000)) / 10_000_000,
        latitude=draw(st.integers(-900_000_000, 900_000_000)) / 10_000_000,
        altitude=draw(st.integers(-32768, 32767)),
        angle=draw(st.integers(0, 0xFFFF)),
        satellites=draw(st.integers(0, 255)),
        speed=draw(st.integers(0, 0xFFFF)),
        event_io_id=draw(st.integers(0, id_max)),
        io=io,
        generation_type=draw(st.integers(0, 255)) if codec == CODEC_16 else None,
        io_groups=layout,  # type: ignore[arg-type]
    )


def _float32(low: float, high: float) -> st.SearchStrategy[float]:
    """Coordinates as a GH3000 decoder returns them: the shortest form of a float32."""
    return st.floats(low, high, width=32).map(shortest_float32)


@st.composite
def gh3000_records(draw: Any) -> Gh3000Record:
    """A random codec 7 record: any mask combination, values that fit their fields."""
    global_mask = draw(st.integers(0, 0x0F))
    has_gps = bool(global_mask & 1)
    gps_mask = draw(st.integers(0, 0xFF)) if has_gps else 0
    bits = gps_mask

    def field(bit: int, strategy: st.SearchStrategy[Any], absent: Any) -> Any:
        return draw(strategy) if bits & bit else absent

    io: dict[int, int | bytes] = {}
    layout = [0, 0, 0, 0, 0, 0]
    ids = iter(draw(st.lists(st.integers(0, 0xFF), unique=True, max_size=24)))
    for width in range(3):
        if not global_mask & (2 << width):
            continue
        for key in ids:
            io[key] = draw(st.integers(0, _WIDTH_MAX[width]))
            layout[width] += 1
            if draw(st.booleans()):
                break
    cell = bits & 0x20
    return Gh3000Record(
        timestamp_ms=(GH_EPOCH_S + draw(st.integers(0, 0x3FFF_FFFF))) * 1000,
        priority=draw(st.integers(0, 3)),
        longitude=field(0x01, _float32(-180, 180), 0.0),
        latitude=field(0x01, _float32(-90, 90), 0.0),
        altitude=field(0x02, st.integers(0, 0xFFFF), 0),
        angle=field(0x04, st.integers(0, 255).map(lambda s: s * ANGLE_STEP), 0.0),
        satellites=field(0x10, st.integers(0, 255), 0),
        speed=field(0x08, st.integers(0, 255), 0),
        event_io_id=0,
        io=io,
        io_groups=tuple(layout),  # type: ignore[arg-type]
        global_mask=global_mask,
        gps_mask=gps_mask,
        lac=draw(st.integers(0, 0xFFFF)) if cell else None,
        cell_id=draw(st.integers(0, 0xFFFF)) if cell else None,
        signal_quality=field(0x40, st.integers(0, 255), None),
        operator=field(0x80, st.integers(0, 0xFFFF_FFFF), None),
    )


@st.composite
def gprs_messages(draw: Any, codec: int) -> GprsMessage:
    timestamp: int | None = None
    width = 4
    if codec in (0x0D, 0x0F):
        if codec == CODEC_13 and draw(st.booleans()):
            width = 8
            timestamp = draw(st.integers(_FROM_2000_S * 1000, _UNTIL_2100_MS - 1))
        else:
            timestamp = draw(st.integers(_FROM_2000_S, 2**32 - 1)) * 1000
    imei = draw(imeis) if codec in (0x0E, 0x0F) else None
    return GprsMessage(
        codec, draw(st.integers(0, 255)), draw(st.binary(max_size=64)), timestamp, imei, width
    )


AVL_CASES = [
    (CODEC_7, False), (CODEC_8, False), (CODEC_8E, False), (CODEC_16, False), (CODEC_8, True),
    (CODEC_8E, True), (CODEC_16, True),
]


def float32_bits(value: float) -> bytes:
    return struct.pack(">f", value)
