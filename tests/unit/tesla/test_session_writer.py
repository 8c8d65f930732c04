"""A vehicle's writer: queued replies go out complete, in order, within the queue limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import BINARY, Frame
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fleetgate.listeners.tesla.writer import (
    WRITE_BATCH_FRAMES,
    WRITE_QUEUE_FRAMES,
    FrameWriter,
    server_binary_frame,
)


class FakeWebSocket:
    """What the writer uses of a websockets connection; writes wait for ``gate``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.writes: list[list[bytes]] = []  # one entry per write: the frames in it
        self.aborted = False
        self.protocol = self
        self.transport = self
        self._pending: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        await self.gate.wait()
        self.writes.append([frame])

    def send_binary(self, frame: bytes) -> None:
        self._pending.append(frame)

    @contextlib.asynccontextmanager
    async def send_context(self) -> AsyncIterator[None]:
        yield
        await self.gate.wait()  # the drain
        self.writes.append(self._pending)
        self._pending = []

    def abort(self) -> None:
        self.aborted = True


class Writer:
    """A FrameWriter on a fake socket, recording why it failed."""

    def __init__(self, ws: FakeWebSocket) -> None:
        self.failures: list[str] = []
        self.writer = FrameWriter(ws, self.failures.append)

    async def start(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self.writer.run())
        await asyncio.sleep(0)
        return task


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_queued_frames_are_written_in_order_in_bounded_batches() -> None:
    ws = FakeWebSocket()
    w = Writer(ws)
    frames = [f"frame-{n}".encode() for n in range(150)]
    for frame in frames:
        w.writer.send(frame)
    ws.gate.set()
    writer = await w.start()
    for _ in range(10):
        await asyncio.sleep(0)
    await stop(writer)
    assert [f for write in ws.writes for f in write] == frames
    assert [len(write) for write in ws.writes] == [WRITE_BATCH_FRAMES, WRITE_BATCH_FRAMES, 22]
    # a frame queued alone goes out alone
    w.writer.send(b"late")
    writer = await w.start()
    await asyncio.sleep(0)
    await stop(writer)
    assert ws.writes[-1] == [b"late"]
    assert w.failures == []


async def test_queue_limit_counts_the_batch_being_written() -> None:
    ws = FakeWebSocket()
    w = Writer(ws)
    for n in range(WRITE_BATCH_FRAMES):
        w.writer.send(b"%d" % n)
    writer = await w.start()  # takes the batch, then waits in the drain
    assert w.writer.waiting == WRITE_BATCH_FRAMES - 1
    # Without batching: the queue's frames plus the one being written.
    accepted = WRITE_BATCH_FRAMES
    while not w.failures:
        w.writer.send(b"more")
        accepted += 1
    w.writer.send(b"after")  # a failed writer takes nothing more and fails only once
    await stop(writer)
    assert accepted - 1 == WRITE_QUEUE_FRAMES + 1  # the last one was refused
    assert w.failures == ["write queue full"]


async def test_without_send_context_frames_go_out_one_send_each() -> None:
    ws = FakeWebSocket()
    ws.send_context = None  # type: ignore[assignment,method-assign]
    w = Writer(ws)
    frames = [b"a", b"b", b"c"]
    for frame in frames:
        w.writer.send(frame)
    ws.gate.set()
    writer = await w.start()
    for _ in range(5):
        await asyncio.sleep(0)
    await stop(writer)
    assert ws.writes == [[b"a"], [b"b"], [b"c"]]


async def test_an_idle_writer_holds_no_queue_and_flushes_at_once() -> None:
    # Thousands of idle vehicles: nothing is allocated for replies until the first one.
    ws = FakeWebSocket()
    w = Writer(ws)
    assert w.writer._queue is None
    assert w.writer.waiting == 0
    await asyncio.wait_for(w.writer.flush(), 1)
    w.writer.send(b"first")
    assert w.writer.waiting == 1


@given(st.binary(max_size=300))
def test_a_server_frame_is_the_bytes_websockets_writes(data: bytes) -> None:
    assert server_binary_frame(data) == Frame(BINARY, data).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("size", [0, 125, 126, 127, 0xFFFF, 0x1_0000, 0x1_0001])
def test_a_server_frame_of_every_length_encoding(size: int) -> None:
    data = bytes([size % 251]) * size
    assert server_binary_frame(data) == Frame(BINARY, data).serialize(mask=False, extensions=[])


class ProtocolWebSocket:
    """A connection over a real websockets protocol; what each send_context wrote."""

    def __init__(self, *, debug: bool = False) -> None:
        self.protocol = ServerProtocol(state=OPEN)
        self.protocol.debug = debug
        self.written: list[bytes] = []

    @contextlib.asynccontextmanager
    async def send_context(self) -> AsyncIterator[None]:
        yield
        self.written.append(b"".join(self.protocol.data_to_send()))


@pytest.mark.parametrize("debug", [False, True])
async def test_batched_frames_are_the_bytes_send_binary_writes(debug: bool) -> None:
    frames = [bytes([n]) * n * 50 for n in range(8)]  # lengths on both sides of 126
    expected = ServerProtocol(state=OPEN)
    for frame in frames:
        expected.send_binary(frame)
    ws = ProtocolWebSocket(debug=debug)  # with debug logging: through send_binary itself
    writer = FrameWriter(ws, lambda reason: None)
    for frame in frames:
        writer.send(frame)
    task = asyncio.create_task(writer.run())
    await writer.flush()
    await stop(task)
    assert b"".join(ws.written) == b"".join(expected.data_to_send())


async def test_flush_waits_for_the_frames_queued_and_ends_when_the_writer_fails() -> None:
    ws = FakeWebSocket()
    w = Writer(ws)
    for n in range(3):
        w.writer.send(b"%d" % n)
    writer = await w.start()
    flush = asyncio.create_task(w.writer.flush())
    await asyncio.sleep(0)
    assert not flush.done()  # the batch waits in the drain
    ws.gate.set()
    await asyncio.wait_for(flush, 1)
    assert [f for write in ws.writes for f in write] == [b"0", b"1", b"2"]
    # A vehicle that stops reading: the queue fills, the writer fails, flush() returns.
    ws.gate.clear()
    w.writer.send(b"stuck")
    await asyncio.sleep(0)
    flush = asyncio.create_task(w.writer.flush())
    await asyncio.sleep(0)
    assert not flush.done()
    while not w.failures:
        w.writer.send(b"more")
    await asyncio.wait_for(flush, 1)
    await stop(writer)
    assert w.failures == ["write queue full"]
