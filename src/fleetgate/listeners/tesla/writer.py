"""The one place a vehicle's WebSocket is written: a bounded queue drained in batches.

Replies (acks, error frames) are queued with :meth:`FrameWriter.send` and written by
:meth:`FrameWriter.run`, one task per vehicle. Acks come in bursts (a sink confirms a whole
batch at once), so whatever is queued when the writer wakes goes out as one write under
one timeout. A batch stays small next to the transport's high-water mark, so a drain waits
about as long as it does after a single frame.

A vehicle that stops reading cannot make the server hold replies without bound: at most
``WRITE_QUEUE_FRAMES`` frames wait (the reference's per-socket queue depth; the frames of
the batch being written count too), and a write that fails or takes longer than
``WRITE_TIMEOUT_S`` ends the writer. Either way ``on_fail(reason)`` is called once and the
session ends (``socket_err_total``), as in the reference.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN, SERVER, Protocol

WRITE_QUEUE_FRAMES = 1000  # the reference's per-socket response queue depth
WRITE_TIMEOUT_S = 10.0
WRITE_BATCH_FRAMES = 64  # queued frames written together (~6 KB of acks)


_BINARY_FIN: Final = 0x82
_HEAD_16: Final = struct.Struct("!BBH")
_HEAD_64: Final = struct.Struct("!BBQ")


def server_binary_frame(data: bytes) -> bytes:
    """The bytes of one unmasked, unfragmented binary frame from a server (RFC 6455 5.2):
    what websockets' ``Frame(BINARY, data).serialize(mask=False)`` writes, tested equal."""
    length = len(data)
    if length < 126:
        return bytes((_BINARY_FIN, length)) + data
    if length < 0x1_0000:
        return _HEAD_16.pack(_BINARY_FIN, 126, length) + data
    return _HEAD_64.pack(_BINARY_FIN, 127, length) + data


class FrameWriter:
    """Bounded, batched writes to one websockets connection.

    The queue is a deque and the writer task, when it has nothing to write, waits on one
    future that the next :meth:`send` completes: per reply an append, not an
    ``asyncio.Queue``'s put, get and ``task_done`` (their getter and ``join`` bookkeeping).
    """

    def __init__(self, ws: Any, on_fail: Callable[[str], None]) -> None:
        self.ws = ws
        self.on_fail = on_fail
        self.failed = False
        # Made with the first frame: an idle vehicle's connection holds no queue (memory).
        self._queue: deque[bytes] | None = None
        self._writing = 0  # frames of the batch being written, beyond the first
        self._unwritten = 0  # frames queued or being written (what flush() waits for)
        self._wakeup: asyncio.Future[None] | None = None  # the writer waiting for a frame
        self._flushed: asyncio.Event | None = None  # made by flush(), set at _unwritten 0
        # send_context is how websockets' asyncio connection (13+) wraps every send; should
        # a release drop it, frames go out one ws.send each.
        self._batch_writes = callable(getattr(ws, "send_context", None))
        # A websockets sans-I/O protocol underneath: frames can be serialised here.
        self._direct = isinstance(getattr(ws, "protocol", None), Protocol)

    @property
    def _out(self) -> deque[bytes]:
        if self._queue is None:
            self._queue = deque()
        return self._queue

    @property
    def waiting(self) -> int:
        """Frames queued or being written (what counts against the queue limit)."""
        return (len(self._queue) if self._queue is not None else 0) + self._writing

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; a full queue fails the writer (the vehicle stopped reading)."""
        if self.failed:
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        # As without batching: at most WRITE_QUEUE_FRAMES waiting plus the one being written.
        if len(queue) + self._writing >= WRITE_QUEUE_FRAMES:
            self._fail("write queue full")
            return
        queue.append(frame)
        self._unwritten += 1
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():  # done: cancelled with the writer task
                wakeup.set_result(None)

    async def run(self) -> None:
        """Write queued frames until cancelled or a write fails."""
        out = self._out
        loop = asyncio.get_running_loop()
        while True:
            if not out:
                wakeup = self._wakeup = loop.create_future()
                await wakeup
                continue
            popleft = out.popleft
            frames = [popleft() for _ in range(min(len(out), WRITE_BATCH_FRAMES))]
            self._writing = len(frames) - 1
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await self._write(frames)
            except (ConnectionClosed, TimeoutError, OSError) as exc:
                self._fail(repr(exc))
                self._discard()
                return
            finally:
                self._writing = 0
            self._unwritten -= len(frames)
            if not self._unwritten and self._flushed is not None:
                self._flushed.set()

    async def flush(self) -> None:
        """Wait until every frame queued so far is written (or the writer has failed)."""
        while not self.failed and self._unwritten:
            flushed = self._flushed
            if flushed is None:
                flushed = self._flushed = asyncio.Event()
            flushed.clear()
            await flushed.wait()

    def _discard(self) -> None:
        """After a failure nothing more is written: settle what flush() would wait for."""
        self._out.clear()
        self._unwritten = 0
        if self._flushed is not None:
            self._flushed.set()

    async def _write(self, frames: list[bytes]) -> None:
        ws = self.ws
        if len(frames) == 1 or not self._batch_writes:
            for frame in frames:
                await ws.send(frame)
            return
        # What ws.send does for one binary message, once for all of them: state check,
        # frames serialised, written, one drain (flow control).
        async with ws.send_context():
            protocol = ws.protocol
            if self._direct and _plain_server(protocol):
                # send_binary's checks hold for the whole batch (open, no fragmented
                # message, no extension, no debug log of each frame): the frames' bytes
                # go to the protocol's output at once.
                protocol.writes.append(b"".join([server_binary_frame(f) for f in frames]))
            else:
                for frame in frames:
                    protocol.send_binary(frame)

    def _fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            if self._flushed is not None:
                self._flushed.set()  # flush() waits no more
            self.on_fail(reason)


def _plain_server(protocol: Protocol) -> bool:
    """Whether ``send_binary`` would write nothing but the frame's own bytes."""
    return (
        protocol.side is SERVER
        and protocol.state is OPEN
        and not protocol.expect_continuation_frame
        and not protocol.extensions
        and not protocol.debug
    )
