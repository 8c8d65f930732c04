"""Events the sans-I/O Teltonika TCP connection returns to the session around it.

The asyncio session feeds bytes in, gets these out, and reacts: it never parses. Replies
(IMEI accept byte, record-count ack) are bytes the connection builds on request, so the
session writes them from exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.protocols.teltonika.model import AvlRecord, GprsMessage


@dataclass(frozen=True, slots=True)
class ImeiReceived:
    """The device identified itself. The session decides, then calls ``accept_imei``."""

    imei: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A single ``ff`` byte: no reply."""


@dataclass(frozen=True, slots=True)
class AvlFrame:
    """A valid AVL data packet, any codec (7, 8, 8E, 16): CRC good, N1 = N2, records
    fill the body exactly.

    ``raw`` is the whole frame, preamble to CRC. Ack with ``ack(len(records))`` only after
    the pipeline accepted the records.
    """

    codec: int
    records: tuple[AvlRecord, ...]
    raw: bytes


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
