"""Hypothesis strategies for Teltonika values."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from fleetgate.protocols.teltonika.model import CODEC_8, CODEC_8E, CODEC_16, AvlRecord, GprsMessage

_WIDTH_MAX = (0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)


@st.composite
def avl_records(draw: Any, codec: int, io16_group: bool = False) -> AvlRecord:
    """A random record the codec can carry, with its exact IO layout in io_groups."""
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
        timestamp_ms=draw(st.integers(0, 2**64 - 1)),
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


@st.composite
def gprs_messages(draw: Any, codec: int) -> GprsMessage:
    timestamp = draw(st.integers(0, 2**32 - 1)) if codec in (0x0D, 0x0F) else None
    imei = draw(st.from_regex(r"[1-9][0-9]{14}", fullmatch=True)) if codec in (0x0E, 0x0F) else None
    return GprsMessage(
        codec, draw(st.integers(0, 255)), draw(st.binary(max_size=64)), timestamp, imei
    )


AVL_CASES = [(CODEC_8, False), (CODEC_8E, False), (CODEC_16, False), (CODEC_8, True)]
