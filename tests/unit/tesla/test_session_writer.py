"""The session's writer: queued replies go out complete, in order, within the queue limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fleetgate.listeners.tesla.session import (
    WRITE_BATCH_FRAMES,
    WRITE_QUEUE_FRAMES,
    SessionSettings,
    VehicleSession,
)
from fleetgate.observability import metrics
from fleetgate.protocols.tesla.ratelimit import METRICS_ONLY
from tests.unit.tesla.helpers import IDENTITY


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


def session(ws: FakeWebSocket) -> VehicleSession:
    settings = SessionSettings(None, frozenset({"V"}), {}, METRICS_ONLY)  # type: ignore[arg-type]
    return VehicleSession(settings, ws, IDENTITY, "sock-1")  # type: ignore[arg-type]


async def start_writer(s: VehicleSession) -> asyncio.Task[None]:
    task = asyncio.create_task(s._write_loop())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_queued_frames_are_written_in_order_in_bounded_batches() -> None:
    ws = FakeWebSocket()
    s = session(ws)
    frames = [f"frame-{n}".encode() for n in range(150)]
    for frame in frames:
        s._send(frame)
    ws.gate.set()
    writer = await start_writer(s)
    for _ in range(10):
        await asyncio.sleep(0)
    await stop(writer)
    assert [f for write in ws.writes for f in write] == frames
    assert [len(write) for write in ws.writes] == [WRITE_BATCH_FRAMES, WRITE_BATCH_FRAMES, 22]
    # a frame queued alone goes out alone
    s._send(b"late")
    writer = await start_writer(s)
    await asyncio.sleep(0)
    await stop(writer)
    assert ws.writes[-1] == [b"late"]
    assert not s.closed


async def test_queue_limit_counts_the_batch_being_written() -> None:
    ws = FakeWebSocket()
    s = session(ws)
    errors_before = metrics.REGISTRY.get_sample_value("socket_err_total") or 0.0
    for n in range(WRITE_BATCH_FRAMES):
        s._send(b"%d" % n)
    writer = await start_writer(s)  # takes the batch, then waits in the drain
    assert s._out.qsize() == 0
    # Without batching: the queue's frames plus the one being written.
    accepted = WRITE_BATCH_FRAMES
    while not s.closed:
        s._send(b"more")
        accepted += 1
    await stop(writer)
    assert accepted - 1 == WRITE_QUEUE_FRAMES + 1  # the last one was refused
    assert ws.aborted
    assert (metrics.REGISTRY.get_sample_value("socket_err_total") or 0.0) == errors_before + 1


async def test_without_send_context_frames_go_out_one_send_each() -> None:
    ws = FakeWebSocket()
    ws.send_context = None  # type: ignore[assignment,method-assign]
    s = session(ws)
    frames = [b"a", b"b", b"c"]
    for frame in frames:
        s._send(frame)
    ws.gate.set()
    writer = await start_writer(s)
    for _ in range(5):
        await asyncio.sleep(0)
    await stop(writer)
    assert ws.writes == [[b"a"], [b"b"], [b"c"]]
