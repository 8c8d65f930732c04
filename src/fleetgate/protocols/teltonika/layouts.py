"""Learned frame layouts: a tracker's repeated AVL frame decoded in two C calls.

A tracker sends the same frame shape over and over: the same codec, record count and, per
record, the same IO ids in the same groups (only the values change). The general decoder
(:mod:`.avl`) walks every group of every record in Python. Once it has decoded a frame,
:func:`learn` remembers the frame's *layout*, every byte that says how the frame is built
(the group counts, the IO ids, the NX lengths), keyed by (codec, body length); the next
frame of that key is read by :func:`decode_learned` in two steps over the whole body: its
layout bytes, masked out of the body read as one integer, must equal the learned ones
exactly; then one precompiled :class:`struct.Struct` reads only the values.

Equal layout bytes mean the general decoder would walk the frame the very same way, so the
result is the same values in the same places (tests compare the two on every frame they
have); anything else (another layout, a device time the decoders refuse) returns None and
the caller decodes the general way, which also raises the right error. What is learned:
codecs 8, 8E and 16 read the standard way (no 16-byte group), records without duplicate
IO ids; everything else always takes the general path.

A row is ``(layout, values)``: ``values`` are the record header fields in wire order
(time, priority, longitude and latitude as sent (1e-7 degrees), altitude, angle,
satellites, speed, event id, generation type for codec 16 only) followed by the IO values
in ``io`` order. :meth:`RecordLayout.record` turns a row into the :class:`AvlRecord` the
general decoder returns; :mod:`.records` builds fleetgate Records from rows directly, or,
once a frame plan is hot, from the plan's values in one compiled call for the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any, Final

from fleetgate.protocols.teltonika.model import (
    CODEC_8,
    CODEC_8E,
    CODEC_16,
    MAX_TIMESTAMP_MS,
    AvlRecord,
)

# Header formats without the IO total N (the decoders ignore it, so it is padding here):
# time, priority, longitude, latitude, altitude, angle, satellites, speed, event id
# [, generation type].
_HEADER_VALUES: Final = {
    CODEC_8: ">QBiihHBHBx",
    CODEC_8E: ">QBiihHBHH2x",
    CODEC_16: ">QBiihHBHHBx",
}
_HEADER_SIZE: Final = {codec: Struct(f).size for codec, f in _HEADER_VALUES.items()}
_ID_FORMAT: Final = {CODEC_8: "B", CODEC_8E: "H", CODEC_16: "H"}
_VALUE_FORMATS: Final = "BHIQ"  # 1-, 2-, 4-, 8-byte groups, in wire order
_VALUE_SIZES: Final = (1, 2, 4, 8)
_EMPTY_GROUPS: Final = (0, 0, 0, 0, 0, 0)

# Bounds: layouts are shared by every tracker that sends them; a fleet has a handful.
# Past these the caches start over (a device inventing layouts costs the general path).
# Devices of different families may send bodies of the same codec and length: each key
# keeps its last few plans, most recent first, so they do not evict each other.
_LAYOUTS_MAX: Final = 1024
_FRAME_PLANS_MAX: Final = 256
_PLANS_PER_KEY: Final = 4

Row = tuple["RecordLayout", tuple[Any, ...]]


class RecordLayout:
    """The shape of one AVL record: codec, group counts, IO ids, NX lengths.

    ``builders`` is a cache for :mod:`.records` (one compiled Record builder per IO table
    that names this layout); ``hits`` counts rows built before one was compiled.
    """

    __slots__ = (
        "builders", "codec", "groups", "hits", "io_start", "keys", "mask", "nx_lengths", "size",
        "values_format",
    )

    def __init__(
        self, codec: int, groups: tuple[int, ...], keys: tuple[int, ...],
        nx_lengths: tuple[int, ...],
    ) -> None:
        self.codec = codec
        self.groups = groups
        self.keys = keys
        self.nx_lengths = nx_lengths
        self.io_start = 10 if codec == CODEC_16 else 9
        self.builders: dict[Any, Any] = {}
        self.hits = 0
        id_format = _ID_FORMAT[codec]
        id_size = Struct(">" + id_format).size
        count_size = 2 if codec == CODEC_8E else 1
        header = _HEADER_SIZE[codec]
        # ``mask`` has 0xff over the layout bytes (counts, ids, NX lengths), 0 over values.
        layout, value = b"\xff", b"\x00"
        mask = [value * header]
        values = [_HEADER_VALUES[codec][1:]]
        for width, value_format, n in zip(_VALUE_SIZES, _VALUE_FORMATS, groups, strict=False):
            mask.append(layout * count_size + (layout * id_size + value * width) * n)
            values.append(f"{count_size}x" + (f"{id_size}x" + value_format) * n)
        if codec == CODEC_8E:
            mask.append(layout * 2 + b"".join(layout * 4 + value * n for n in nx_lengths))
            values.append("2x" + "".join(f"4x{length}s" for length in nx_lengths))
        self.mask = b"".join(mask)
        self.size = len(self.mask)
        self.values_format = "".join(values)

    def record(self, values: tuple[Any, ...]) -> AvlRecord:
        """The :class:`AvlRecord` the general decoder returns for this row."""
        start = self.io_start
        io = dict(zip(self.keys, values[start:], strict=True))
        return AvlRecord(
            values[0], values[1], values[2] / 10_000_000, values[3] / 10_000_000, values[4],
            values[5], values[6], values[7], values[8], io,
            values[9] if self.codec == CODEC_16 else None,
            self.groups if io else _EMPTY_GROUPS,  # type: ignore[arg-type]
        )


class FramePlan:
    """A whole frame body's layout: every record's, as a mask over the body's records
    (the layout bytes, compared as one integer) and one struct for their values."""

    __slots__ = ("bounds", "builders", "count", "expected", "hits", "mask", "times", "values")

    def __init__(self, layouts: tuple[RecordLayout, ...], records: bytes) -> None:
        """``records``: the bytes of a body of this layout from N1 (excluded) to N2."""
        self.count = len(layouts)
        self.mask = int.from_bytes(b"".join(layout.mask for layout in layouts), "big")
        self.expected = int.from_bytes(records, "big") & self.mask
        self.values = Struct(">" + "".join(layout.values_format for layout in layouts))
        bounds = []
        low = 0
        for layout in layouts:
            high = low + layout.io_start + len(layout.keys)
            bounds.append((layout, low, high))
            low = high
        self.bounds = tuple(bounds)
        # Where each record's device time is in the values (checked on every read).
        self.times = tuple(low for _, low, _ in bounds)
        # A cache for :mod:`.records`, like RecordLayout's: one compiled builder of the
        # whole frame's Records per IO table; ``hits`` counts frames read before one was.
        self.builders: dict[Any, Any] = {}
        self.hits = 0

    def rows(self, flat: tuple[Any, ...]) -> tuple[Row, ...]:
        """The rows (one per record) of ``flat``, the values this plan read from a body."""
        return tuple([(layout, flat[low:high]) for layout, low, high in self.bounds])


#: A body read by a learned plan: the plan and every value it read, in wire order.
Learned = tuple[FramePlan, tuple[Any, ...]]


_LAYOUTS: Final[dict[tuple[Any, ...], RecordLayout]] = {}
_PLANS: Final[dict[tuple[RecordLayout, ...], FramePlan]] = {}
_FRAME_PLANS: Final[dict[tuple[int, int], tuple[FramePlan, ...]]] = {}


def decode_learned(buf: bytes | bytearray | memoryview, start: int, end: int) -> Learned | None:
    """The plan and values of the AVL body at ``buf[start:end]`` if its layout was learned,
    else None (:meth:`FramePlan.rows` makes its rows).

    None also when any record's device time is one the decoders refuse: the general path
    then raises the error it always did.
    """
    plans = _FRAME_PLANS.get((buf[start], end - start))
    if plans is None:
        return None
    count = buf[start + 1]
    if buf[end - 1] != count:
        return None
    # The layout bytes of every record at once: one big integer, masked per plan.
    layout = int.from_bytes(buf[start + 2 : end - 1], "big")
    for plan in plans:
        if plan.count == count and layout & plan.mask == plan.expected:
            break
    else:
        return None
    flat = plan.values.unpack_from(buf, start + 2)
    max_ts = MAX_TIMESTAMP_MS
    for time in plan.times:
        if flat[time] > max_ts:
            return None
    return plan, flat


def learn(
    buf: bytes | bytearray | memoryview, start: int, end: int, records: Sequence[AvlRecord]
) -> None:
    """Remember the layout of the body at ``buf[start:end]``, which the general decoder
    read (standard layout) as ``records``; bodies it cannot describe are skipped."""
    codec = buf[start]
    if codec not in _ID_FORMAT or not records:
        return
    layouts = []
    for rec in records:
        layout = _layout_of(codec, rec)
        if layout is None:
            return
        layouts.append(layout)
    if 3 + sum(layout.size for layout in layouts) != end - start:
        return  # read with a 16-byte group of no elements: not the standard layout
    shapes = tuple(layouts)
    plan = _PLANS.get(shapes)
    if plan is None:
        if len(_PLANS) >= _FRAME_PLANS_MAX:
            _PLANS.clear()
            _FRAME_PLANS.clear()
        plan = _PLANS[shapes] = FramePlan(shapes, bytes(buf[start + 2 : end - 1]))
    key = (codec, end - start)
    others = tuple(p for p in _FRAME_PLANS.get(key, ()) if p is not plan)
    _FRAME_PLANS[key] = (plan, *others[: _PLANS_PER_KEY - 1])


def _layout_of(codec: int, rec: AvlRecord) -> RecordLayout | None:
    groups = rec.io_groups
    io = rec.io
    if groups is None or groups[5] or sum(groups) != len(io):
        return None  # a 16-byte group, or duplicate ids collapsed in ``io``
    keys = tuple(io)
    n_int = sum(groups[:4])
    nx_lengths = tuple(len(value) for value in list(io.values())[n_int:])  # type: ignore[arg-type]
    key = (codec, groups, keys, nx_lengths)
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            forget()
        layout = _LAYOUTS[key] = RecordLayout(codec, groups, keys, nx_lengths)
    return layout


def forget() -> None:
    """Drop every learned layout (tests: start from the general path)."""
    _LAYOUTS.clear()
    _PLANS.clear()
    _FRAME_PLANS.clear()
