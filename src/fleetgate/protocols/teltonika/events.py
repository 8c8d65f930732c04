"""Events the sans-I/O Teltonika TCP connection returns to the session around it.

The asyncio session feeds bytes in, gets these out, and reacts: it never parses. Replies
(IMEI accept byte, record-count ack) are bytes the connection builds on request, so the
session writes them from exactly one place.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Final

from fleetgate.protocols.teltonika.layouts import Learned, Row
from fleetgate.protocols.teltonika.model import AvlRecord, GprsMessage


@dataclass(frozen=True, slots=True)
class ImeiReceived:
    """The device identified itself. The session decides, then calls ``accept_imei``."""

    imei: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A single ``ff`` byte: no reply."""


class AvlFrame:
    """A valid AVL data packet, any codec (7, 8, 8E, 16): CRC good, N1 = N2, records
    fill the body exactly.

    ``raw`` is the whole frame, preamble to CRC. Ack with ``ack(len(records))`` only after
    the pipeline accepted the records.

    A frame of a learned layout (:mod:`.layouts`) comes with ``learned`` (its plan and the
    values read) instead of records: :func:`~.records.to_records` builds Records from
    those directly; ``rows`` (one per record) and ``records`` (the same records the
    general decoder returns) are made from them the first time they are asked for.
    Immutable, compared and printed like the dataclass it was.
    """

    __slots__ = ("_records", "_rows", "codec", "learned", "raw")
    __match_args__ = ("codec", "records", "raw")

    codec: int
    raw: bytes
    learned: Learned | None
    _rows: tuple[Row, ...] | None
    _records: tuple[AvlRecord, ...] | None

    def __init__(self, codec: int, records: tuple[AvlRecord, ...], raw: bytes) -> None:
        _set_codec(self, codec)
        _set_records(self, records)
        _set_raw(self, raw)
        _set_rows(self, None)
        _set_learned(self, None)

    @classmethod
    def from_rows(cls, codec: int, rows: tuple[Row, ...], raw: bytes) -> AvlFrame:
        """A frame whose records are made from ``rows`` when first asked for."""
        frame: AvlFrame = _new(cls)
        _set_codec(frame, codec)
        _set_records(frame, None)
        _set_raw(frame, raw)
        _set_rows(frame, rows)
        _set_learned(frame, None)
        return frame

    @classmethod
    def from_learned(cls, codec: int, learned: Learned, raw: bytes) -> AvlFrame:
        """A frame whose rows and records are made from ``learned`` when first asked for."""
        frame: AvlFrame = _new(cls)
        _set_codec(frame, codec)
        _set_records(frame, None)
        _set_raw(frame, raw)
        _set_rows(frame, None)
        _set_learned(frame, learned)
        return frame

    @property
    def rows(self) -> tuple[Row, ...] | None:
        """One ``(layout, values)`` per record for a frame of a learned layout, else None."""
        rows = self._rows
        if rows is None and self.learned is not None:
            plan, flat = self.learned
            rows = plan.rows(flat)
            _set_rows(self, rows)
        return rows

    @property
    def records(self) -> tuple[AvlRecord, ...]:
        records = self._records
        if records is None:
            rows = self.rows
            assert rows is not None
            records = tuple(layout.record(values) for layout, values in rows)
            _set_records(self, records)
        return records

    @property
    def count(self) -> int:
        """How many records the frame holds (without making them from rows)."""
        learned = self.learned
        if learned is not None:
            return learned[0].count
        rows = self._rows
        return len(rows) if rows is not None else len(self.records)

    def _key(self) -> tuple[int, tuple[AvlRecord, ...], bytes]:
        return (self.codec, self.records, self.raw)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not AvlFrame:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"AvlFrame(codec={self.codec!r}, records={self.records!r}, raw={self.raw!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


_new: Final = object.__new__
_set_codec: Final = AvlFrame.__dict__["codec"].__set__
_set_records: Final = AvlFrame.__dict__["_records"].__set__
_set_raw: Final = AvlFrame.__dict__["raw"].__set__
_set_rows: Final = AvlFrame.__dict__["_rows"].__set__
_set_learned: Final = AvlFrame.__dict__["learned"].__set__


@dataclass(frozen=True, slots=True)
class GprsFrame:
    """A valid codec 12/13/14/15 frame from the device: logged and recorded, never acked."""

    messages: tuple[GprsMessage, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class CrcMismatch:
    """A complete frame whose CRC is wrong: discard, send nothing, keep the connection."""

    codec: int
    expected: int
    computed: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class FrameRefused:
    """A complete, well-framed packet that carries an impossible value (a device time past
    9999-12-31, non-finite GH3000 coordinates): discard, send nothing, keep the
    connection, count it and log ``reason``. Like a CRC mismatch, the device keeps the
    data; no sink ever sees a value it could not store.
    """

    codec: int
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The stream is broken (bad IMEI, preamble, length, N1 != N2, unknown codec, bad record
    structure): log ``reason`` with ``evidence`` (hex), count it, close the connection.

    ``codec`` is set when the violation was found inside a length-delimited frame.
    """

    reason: str
    evidence: str
    codec: int | None = None


TcpEvent = (
    ImeiReceived | KeepAlive | AvlFrame | GprsFrame | CrcMismatch | FrameRefused
    | ProtocolViolation
)
