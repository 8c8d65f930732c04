"""Sans-I/O Teltonika TCP connection: bytes in, events out, reply bytes on request.

The asyncio session around it does three things only::

    events = conn.receive_data(chunk)          # never raises on peer input
    for event in events:
        ImeiReceived   -> decide, write conn.accept_imei(ok); stop if not ok
        AvlFrame       -> hand records to the pipeline; once accepted write conn.ack(n)
        GprsFrame      -> record it; no reply
        KeepAlive      -> nothing
        CrcMismatch    -> count it; no reply (the device resends)
        FrameRefused   -> count it, log the reason; no reply (an impossible value)
        ProtocolViolation -> log reason + evidence, close the socket

States: awaiting IMEI → established (after the IMEI frame) → closed (protocol violation,
or ``accept_imei(False)``). A device that does not wait for the ``01`` may pipeline data
frames behind its IMEI frame; they are parsed in order and returned after the
``ImeiReceived`` in the same list, so the session must handle events sequentially (and
drop the rest if it rejects the IMEI). After a violation the connection is closed and
``receive_data`` returns ``[]``.

Buffering is linear whatever the read pattern (one byte at a time or many frames per
read): bytes are appended to one bytearray, frames are cut at a moving offset and the
consumed prefix is dropped once per call. A frame declaring more than
``max_frame_bytes`` is refused before its bytes arrive, which bounds the buffer.

Every AVL codec (7, 8, 8E, 16) arrives as an ``AvlFrame``; 16-byte IO groups are
detected per frame by the AVL decoder (``io16_group=True`` forces them for callers that
know their devices). :func:`decode_data_frame` is the one place a complete data frame is
turned into an event; :func:`~fleetgate.protocols.teltonika.decode_frame` uses it too.
"""

from __future__ import annotations

from typing import Final

from fleetgate.protocols.teltonika.avl import decode_avl_span
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    FrameRefused,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.framing import (
    DATA,
    DEFAULT_MAX_FRAME_BYTES,
    IMEI,
    KEEPALIVE,
    NEED_MORE,
    evidence,
    frame_crc,
    next_frame,
    parse_imei,
)
from fleetgate.protocols.teltonika.gprs import decode_gprs_span
from fleetgate.protocols.teltonika.layouts import decode_learned, learn
from fleetgate.protocols.teltonika.model import AVL_CODECS, GPRS_CODECS, codec_name

_KEEPALIVE: Final = KeepAlive()
_ACCEPT: Final = b"\x01"
_REJECT: Final = b"\x00"


class TcpConnection:
    """One device's TCP byte stream, decoded. Not thread-safe; one per socket."""

    def __init__(
        self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, io16_group: bool = False
    ) -> None:
        """``io16_group`` forces the 16-byte IO group; by default it is detected."""
        self._max_frame_bytes = max_frame_bytes
        self._io16_group = io16_group
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes in _buf
        self._established = False
        self._closed = False
        self._imei: str | None = None

    @property
    def imei(self) -> str | None:
        """IMEI of the last IMEI frame (set before the session accepted it)."""
        return self._imei

    @property
    def closed(self) -> bool:
        """True after a protocol violation or a rejected IMEI: drop the socket."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> list[TcpEvent]:
        """Feed bytes read from the socket; get the events of every frame they complete."""
        if self._closed:
            return []
        buf = self._buf
        buf += data
        events: list[TcpEvent] = []
        end = len(buf)
        pos = self._pos
        while pos < end:
            try:
                kind, length = next_frame(
                    buf, pos, end,
                    established=self._established,
                    max_frame_bytes=self._max_frame_bytes,
                )
            except TeltonikaDecodeError as exc:
                events.append(ProtocolViolation(exc.reason, evidence(buf[pos : pos + 64])))
                self._close()
                return events
            if kind == NEED_MORE:
                break
            if kind == KEEPALIVE:
                events.append(_KEEPALIVE)
                pos += 1
                continue
            frame = bytes(buf[pos : pos + length])
            pos += length
            event: TcpEvent
            if kind == IMEI:
                event = self._imei_frame(frame)
            else:
                assert kind == DATA
                event = self._data_frame(frame)
            events.append(event)
            if isinstance(event, ProtocolViolation):
                self._close()
                return events
        # Drop the consumed prefix once per call: what stays is at most one partial frame,
        # and each byte is moved at most once before its frame completes.
        if pos == end:
            buf.clear()
            pos = 0
        elif pos:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return events

    def _imei_frame(self, frame: bytes) -> ImeiReceived | ProtocolViolation:
        try:
            imei = parse_imei(frame)
        except TeltonikaDecodeError as exc:
            return ProtocolViolation(exc.reason, evidence(frame))
        self._imei = imei
        self._established = True
        return ImeiReceived(imei)

    def _data_frame(self, frame: bytes) -> TcpEvent:
        codec = frame[8]
        stored, computed = frame_crc(frame)
        if stored != computed:
            return CrcMismatch(codec, stored, computed, frame)
        try:
            return decode_data_frame(frame, self._io16_group)
        except ImpossibleValueError as exc:
            return FrameRefused(codec, exc.reason, frame)
        except TeltonikaDecodeError as exc:
            return ProtocolViolation(exc.reason, evidence(frame), codec)

    def accept_imei(self, accepted: bool) -> bytes:
        """The one-byte handshake reply; rejecting closes the connection."""
        if accepted:
            return _ACCEPT
        self._close()
        return _REJECT

    def ack(self, count: int) -> bytes:
        """The AVL acknowledgement: the accepted record count as a big-endian u32."""
        if not 0 <= count <= 0xFFFF_FFFF:
            raise ValueError(f"ack count {count} outside 0..2**32-1")
        return count.to_bytes(4, "big")

    def _close(self) -> None:
        self._closed = True
        self._buf.clear()
        self._pos = 0


def decode_data_frame(frame: bytes, io16_group: bool = False) -> AvlFrame | GprsFrame:
    """The event of one complete data frame (preamble .. CRC) whose length is checked.

    The CRC is not looked at here (the caller decides what a mismatch means). Raises
    :class:`TeltonikaDecodeError` (:class:`ImpossibleValueError` for impossible values)
    for an unknown codec or a body that does not decode.
    """
    codec = frame[8]
    end = len(frame) - 4
    if codec in AVL_CODECS:
        if not io16_group:
            learned = decode_learned(frame, 8, end)
            if learned is not None:
                return AvlFrame.from_learned(codec, learned, frame)
            records = decode_avl_span(frame, 8, end)
            learn(frame, 8, end, records)
            return AvlFrame(codec, records, frame)
        return AvlFrame(codec, decode_avl_span(frame, 8, end, io16_group), frame)
    if codec in GPRS_CODECS:
        return GprsFrame(decode_gprs_span(frame, 8, end), frame)
    raise TeltonikaDecodeError(f"unknown codec {codec_name(codec)}")
