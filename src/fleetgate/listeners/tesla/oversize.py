"""A vehicle WebSocket that answers binary messages over the size limit instead of closing.

The reference server reads a frame of any size and answers one over 1,000,000 bytes with
its error reply, keeping the socket; a server that closes instead (``websockets`` closes
with 1009) makes a car that resends the frame reconnect in a loop. Buffering any size is
no option either, so a binary message over ``max_size`` is **skipped**: its bytes are
discarded as they arrive and only its size is kept. Memory per connection stays at most
``max_size`` for a message being assembled (the listener uses the reference's limit,
1,000,000 bytes: nothing larger is ever looked at), plus one transport read (asyncio and
uvloop hand over at most 256 KiB at a time) while an oversize frame streams past; it does
not grow with the frame.

:class:`VehicleConnection` (``create_connection`` for ``websockets``' ``serve``) gives the
session :meth:`VehicleConnection.recv_message`: the next message, or an
:class:`OversizeMessage` with the size of a skipped one, in arrival order. Text messages
keep the library's behaviour (a text message over the limit closes with 1009; the
session ends on any text message anyway, as the reference does).

How: the connection's sans-I/O protocol gets a frame loop that peeks at each frame header
before ``websockets`` reads the frame; a data frame that would take its binary message
over the limit is consumed and dropped here, and one empty marker frame (carrying the
size) completes the message for the library's assembler. Everything else, control frames
and errors included, goes through ``websockets`` unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Generator, Iterable
from typing import Any, Final
from typing import Protocol as TypingProtocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame, Opcode
from websockets.protocol import OPEN, Event, Protocol
from websockets.server import ServerProtocol
from websockets.typing import Data, LoggerLike

try:  # what websockets' Frame.parse uses: its C helper, or the pure-Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

_FIN: Final = 0x80
_RSV: Final = 0x70
_MASK: Final = 0x80
_FIN_BINARY: Final = 0x82  # FIN, no RSV bits, opcode 2
_MAX_CONTROL_PAYLOAD: Final = 125  # RFC 6455 5.5


@dataclasses.dataclass(frozen=True, slots=True)
class OversizeMessage:
    """A binary message over the limit whose bytes were discarded."""

    size: int


@dataclasses.dataclass
class _SkippedMarker(Frame):
    """Completes a skipped message in the library's assembler (empty data, FIN set)."""

    size: int = 0


class _OversizeSkipping(Protocol):
    """``Protocol.parse`` with oversize binary messages skipped (see module docstring).

    :class:`_VehicleServerProtocol` runs it after ``ServerProtocol.parse`` has read the
    HTTP handshake.
    """

    # Bytes of the message being skipped so far; None when not skipping.
    _skipped: int | None = None
    # Whether the skipped message's first fragments already went to the assembler.
    _skipped_continues: bool = False
    # Opcode of the fragmented message in progress (TEXT or BINARY).
    _message_opcode: Opcode | None = None

    def parse(self) -> Generator[None]:
        # The frame loop of websockets' Protocol.parse (17.x), with the same error
        # handling, plus _skip_oversize before any frame that might go over the limit.
        reader = self.reader
        limit = self.max_message_size
        try:
            while True:
                # reader.at_eof(), inline: an idle vehicle's parser waits here, and a
                # generator of its own would be one more frame kept per vehicle.
                while not reader.buffer:
                    if reader.eof:
                        raise EOFError("unexpected end of stream")
                    yield
                allowed = None if limit is None else limit - (self.current_size or 0)
                skipping = self._skipped is not None
                buffer = reader.buffer
                if buffer[0] == _FIN_BINARY and not skipping and self.current_size is None:
                    # The usual frame, whole in the buffer: read here, without Frame.parse's
                    # generator round trips (see _whole_binary_frame).
                    frame = self._whole_binary_frame(buffer, allowed)
                    if frame is not None:
                        self._message_opcode = None
                        self.recv_frame(frame)
                        # Not kept while the loop waits for the next bytes (up to 1 MB).
                        del frame
                        continue
                # The cheap test first, inline: a frame whose length code says at most
                # 65,535 bytes cannot go over a limit that leaves more (most frames); the
                # generator below costs about as much as parsing a small frame.
                surely_fits = not skipping and (
                    allowed is None
                    or (len(buffer) >= 2 and buffer[1] & 0x7F != 127 and allowed >= 0xFFFF)
                )
                if not surely_fits and (yield from self._skip_oversize()):
                    continue
                if skipping:
                    allowed = _MAX_CONTROL_PAYLOAD  # only control frames between fragments
                frame = yield from Frame.parse(
                    reader.read_exact, mask=True, max_size=allowed, extensions=self.extensions
                )
                if frame.opcode is TEXT or frame.opcode is BINARY:
                    self._message_opcode = None if frame.fin else frame.opcode
                self.recv_frame(frame)
                del frame
        except ProtocolError as exc:
            self.fail(CloseCode.PROTOCOL_ERROR, str(exc))
            self.parser_exc = exc
        except EOFError as exc:
            self.fail(CloseCode.ABNORMAL_CLOSURE, str(exc))
            self.parser_exc = exc
        except UnicodeDecodeError as exc:
            self.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self.parser_exc = exc
        except PayloadTooBig as exc:
            exc.set_current_size(self.current_size)
            self.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))
            self.parser_exc = exc
        except Exception as exc:
            self.logger.error("parser failed", exc_info=True)
            self.fail(CloseCode.INTERNAL_ERROR)
            self.parser_exc = exc
        yield
        raise AssertionError("parse() shouldn't step after error")

    def _whole_binary_frame(self, buffer: bytearray, allowed: int | None) -> Frame | None:
        """The masked, unfragmented binary frame at the start of ``buffer``, taken out of it,
        when it is there whole and within ``allowed``; None to leave it to ``Frame.parse``.

        Returns exactly the frame ``Frame.parse`` would: RSV bits clear and FIN set (the
        first byte was checked by the caller), masked (as a client must), no extensions
        (the listener negotiates none), so ``frame.check()`` has nothing to refuse.
        """
        size = len(buffer)
        if size < 6 or self.extensions:
            return None
        length = buffer[1]
        if length < _MASK:
            return None  # unmasked: Frame.parse refuses it
        length &= 0x7F
        if length < 126:
            start = 6
        elif length == 126 and size >= 8:
            length = buffer[2] << 8 | buffer[3]
            start = 8
        else:
            return None
        end = start + length
        if end > size or (allowed is not None and length > allowed):
            return None
        data = apply_mask(buffer[start:end], buffer[start - 4 : start])
        del buffer[:end]
        return Frame(BINARY, data, True)

    def _peek_header(self) -> Generator[None, None, tuple[int, int, int]]:
        """(first header byte, payload length, header size) of the next frame, unread."""
        reader = self.reader
        while True:
            buffer = reader.buffer
            if len(buffer) >= 2:
                head1, head2 = buffer[0], buffer[1]
                length = head2 & 0x7F
                size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
                size += 4 if head2 & _MASK else 0
                if len(buffer) >= size:
                    if length >= 126:
                        length = int.from_bytes(buffer[2 : 4 if length == 126 else 10], "big")
                    return head1, length, size
            if reader.eof:
                raise EOFError("unexpected end of stream")
            yield

    def _skip_oversize(self) -> Generator[None, None, bool]:
        """Consume the next frame if it belongs to an oversize binary message."""
        limit = self.max_message_size
        if limit is None:
            return False
        head1, length, header_size = yield from self._peek_header()
        opcode = head1 & 0x0F
        if head1 & _RSV or not self.reader.buffer[1] & _MASK:
            return False  # not a frame to skip: the library refuses it as usual
        if self._skipped is None:
            # A binary message: its first frame, or a continuation of one in progress.
            # Anything else out of place is left to the library to refuse.
            in_message = self.current_size is not None
            binary = (opcode == BINARY.value and not in_message) or (
                opcode == CONT.value and in_message and self._message_opcode is BINARY
            )
            if not binary or length <= limit - (self.current_size or 0):
                return False
            self._skipped_continues = self.current_size is not None
            self._skipped = self.current_size or 0
            if opcode == BINARY.value:
                self._message_opcode = BINARY
        elif opcode != CONT.value:
            return False  # a control frame between fragments, or a protocol error
        del self.reader.buffer[:header_size]
        yield from self._discard(length)
        self._skipped += length
        # Until the last fragment the library must see a fragmented message in progress
        # (it then refuses a new data frame, or a close, as a protocol error).
        self.current_size = self._skipped
        if head1 & _FIN:
            self._finish_skipped()
        return True

    def _discard(self, length: int) -> Generator[None]:
        reader = self.reader
        while length:
            buffer = reader.buffer
            if not buffer:
                if reader.eof:
                    raise EOFError("unexpected end of stream")
                yield
                continue
            taken = min(len(buffer), length)
            del buffer[:taken]
            length -= taken

    def _finish_skipped(self) -> None:
        # A message already partly handed to the assembler is completed by a final
        # continuation frame; one skipped from its first frame by a binary frame.
        opcode = CONT if self._skipped_continues else BINARY
        self.events.append(_SkippedMarker(opcode, b"", True, size=self._skipped or 0))
        self._skipped = None
        self._message_opcode = None
        self.current_size = None


class _HandshakeOnly(Protocol):
    """Ends ``ServerProtocol.parse`` once the handshake is read (it hands over through
    ``super().parse()``), so that the frame loop runs in a generator of its own."""

    def parse(self) -> Generator[None]:
        return
        yield


class _VehicleServerProtocol(ServerProtocol, _HandshakeOnly, _OversizeSkipping):
    """The server protocol with the oversize-skipping frame loop."""

    def parse(self) -> Generator[None]:
        # websockets' handshake parser, then the frame loop. Chained in the library, the
        # handshake's generator stays suspended under the frame loop for the connection's
        # life, holding the parsed request (a few KiB per idle vehicle); here it has ended.
        yield from ServerProtocol.parse(self)
        # The frame loop becomes the protocol's parser itself (as websockets swaps in its
        # discard() parser): delegating to it with ``yield from`` would keep this
        # generator suspended above it for the connection's life (~0.5 KB per vehicle).
        frames = _OversizeSkipping.parse(self)
        self.parser = frames
        next(frames)  # what the frame loop can do with the bytes already received
        yield


def skip_oversize_messages(protocol: ServerProtocol) -> None:
    """Give a fresh ``protocol`` (nothing received yet) the oversize-skipping frame loop."""
    # serve() builds a plain ServerProtocol: it takes the subclass (same attributes) and
    # restarts its parser, the handshake parser included.
    protocol.__class__ = _VehicleServerProtocol
    protocol.parser = protocol.parse()
    next(protocol.parser)


class _FrameList(list[Frame]):
    """The assembler's queue of received frames, as a list.

    websockets' ``SimpleQueue`` keeps a deque (an empty one is a 760-byte block) for every
    connection; a vehicle's queue is empty while it is idle and holds a few frames at most
    (reading pauses at ``max_queue``), so a list (56 bytes) does, with the deque methods
    the queue calls.
    """

    __slots__ = ()

    def popleft(self) -> Frame:
        return self.pop(0)

    def extendleft(self, items: Iterable[Frame]) -> None:
        # deque.extendleft puts each item first in turn (the queue passes them reversed).
        self[:0] = reversed(list(items))


class FrameTaker(TypingProtocol):
    """What takes whole binary messages straight from :meth:`VehicleConnection.data_received`."""

    def take_now(self, message: bytes) -> bool:
        """Take ``message`` now (True), or leave it and what follows to ``recv()`` (False,
        with nothing done)."""


class VehicleConnection(ServerConnection):
    """``ServerConnection`` whose oversize binary messages become :class:`OversizeMessage`."""

    # Slots, not __dict__ entries: see GatedConnection (gate.py).
    __slots__ = ("_completed", "_delivered", "_oversize", "taker")

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        skip_oversize_messages(protocol)
        super().__init__(protocol, *args, **kwargs)
        # websockets only appends, removes and iterates its drain waiters (at most one
        # sender per vehicle: the writer task); an empty deque is a 624-byte block, an empty
        # list 56 bytes, for every idle vehicle.
        self.drain_waiters = []  # type: ignore[assignment]
        self._completed = 0  # data messages completed by the protocol, in order
        self._delivered = 0  # messages handed out by recv_message
        self._oversize: dict[int, int] = {}  # message number -> size of a skipped message
        # Takes whole binary messages as they arrive while the reader waits in recv().
        self.taker: FrameTaker | None = None

    # websockets wraps the protocol's logger in a LoggerAdapter per connection (with a weak
    # proxy of it as ``extra["websocket"]``): ~0.4 KB per idle vehicle for lines that are
    # rare (errors) or off (its INFO and DEBUG go to a logger kept at WARNING). Here the
    # protocol logs to the plain logger, and the connection's adapter, with the same
    # ``websocket`` context, is made when a line is logged.
    @property  # type: ignore[override]
    def logger(self) -> LoggerLike:
        return logging.LoggerAdapter(self.protocol.logger, {"websocket": self})  # type: ignore[arg-type]

    @logger.setter
    def logger(self, adapter: LoggerLike) -> None:
        # Connection.__init__ sets the adapter it just gave the protocol: unwrapped there.
        if isinstance(adapter, logging.LoggerAdapter) and "websocket" in (adapter.extra or {}):
            adapter = adapter.logger
        self.protocol.logger = adapter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages.frames.queue = _FrameList()  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """websockets' ``data_received``, except that whole binary frames at the start of
        ``data`` go straight to :attr:`taker` while the reader is waiting in ``recv()``.

        What ``recv()`` would return for them, without the protocol's parser, a ``Frame``
        each, the assembler's queue and the reader's wake-up: only when nothing is queued
        or half-read before them (so the order holds), the connection is open, and each
        frame is one the frame loop would read the same way (FIN, no RSV bits, masked,
        within the limit, no extension). The first frame that is not, or that the taker
        leaves, and everything after it go through the library as before.
        """
        taker = self.taker
        if taker is not None and data and data[0] == _FIN_BINARY:
            protocol = self.protocol
            assembler = self.recv_messages
            if (
                assembler.get_in_progress
                and not assembler.frames.queue
                and not protocol.reader.buffer
                and protocol.state is OPEN
                and protocol.current_size is None
                and not protocol.extensions
                and getattr(protocol, "_skipped", None) is None
            ):
                data = self._take_frames(data, taker, protocol.max_message_size)
                if not data and protocol.state is OPEN:
                    return  # all taken (else a failure's close frame goes out below)
        super().data_received(data)

    def _take_frames(self, data: bytes, taker: FrameTaker, limit: int | None) -> bytes:
        """Hand ``taker`` the whole binary frames at the start of ``data``; the rest."""
        size = len(data)
        pos = 0
        while size - pos >= 6 and data[pos] == _FIN_BINARY:
            length = data[pos + 1]
            if length < _MASK:
                break  # unmasked: the library refuses it
            length &= 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126 and size - pos >= 8:
                length = data[pos + 2] << 8 | data[pos + 3]
                start = pos + 8
            else:
                break
            end = start + length
            if end > size or (limit is not None and length > limit):
                break
            try:
                taken = taker.take_now(apply_mask(data[start:end], data[start - 4 : start]))
            except Exception:
                # As websockets does when a connection's handler fails.
                self.protocol.logger.error("connection handler failed", exc_info=True)
                self.protocol.fail(CloseCode.INTERNAL_ERROR)
                return data[pos:]  # discarded by the failed protocol
            if not taken:
                break
            pos = end
        return data[pos:] if pos else data

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in (TEXT, BINARY, CONT):
            if isinstance(event, _SkippedMarker):
                self._oversize[self._completed] = event.size
            self._completed += 1

    def send_data(self) -> None:
        """Write what the protocol has to send, a batch of frames in one transport write.

        The library writes each frame on its own; behind TLS every write is a TLS record
        and a socket write, and :class:`~fleetgate.listeners.tesla.writer.FrameWriter`
        sends replies in batches (acks come in bursts), so joining them saves both.
        """
        data = self.protocol.data_to_send()
        if all(data):  # no end-of-stream marker: every case but closing
            if len(data) > 1:
                self.transport.write(b"".join(data))
            elif data:
                self.transport.write(data[0])
            return
        # Closing: websockets' own handling, chunk by chunk (half-close when possible).
        for chunk in data:
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                with contextlib.suppress(Exception):  # as the library: uvloop may raise
                    self.transport.write_eof()
            else:
                self.transport.close()

    def ready_message(self) -> bytes | OversizeMessage | None:
        """The next message if it is a binary one already complete in the queue, taken
        without awaiting; None otherwise (then ``await recv()`` and :meth:`delivered`).

        What ``recv()`` returns for such a message, minus its coroutine, the assembler's
        ``get`` and its queue's ``get`` (three awaits that do not wait): a vehicle sends
        frames back to back, so a read from the socket often completes several. The
        assembler's own steps for a whole binary message are kept: the frame taken from
        the head of its queue, flow control resumed below the low-water mark.
        """
        assembler = self.recv_messages
        queue = assembler.frames.queue
        if not queue or assembler.get_in_progress:
            return None
        frame = queue[0]
        if frame.opcode is not BINARY or not frame.fin:
            return None  # text, or a fragmented message: the library assembles it
        queue.popleft()
        if assembler.paused:
            assembler.maybe_resume()
        data = frame.data
        number = self._delivered
        self._delivered = number + 1
        if self._oversize:
            size = self._oversize.pop(number, None)
            if size is not None:
                return OversizeMessage(size)
        return data if data.__class__ is bytes else bytes(data)

    async def recv_message(self) -> Data | OversizeMessage:
        """The next message (``bytes`` or ``str``), or the size of a skipped one."""
        return self.delivered(await self.recv())

    def delivered(self, message: Data) -> Data | OversizeMessage:
        """What ``recv()``'s next ``message`` stands for: itself, or the size of a skipped
        one. (A caller that awaits ``recv()`` itself spares a coroutine frame per idle
        vehicle: :meth:`recv_message` stays suspended for as long as the vehicle is.)"""
        number = self._delivered
        self._delivered += 1
        size = self._oversize.pop(number, None)
        return message if size is None else OversizeMessage(size)
