"""Acks that wait for the pipeline without a task or a future per frame.

A session that keeps reading while earlier frames wait for their ack (Tesla's WebSocket, the
Teltonika UDP listener) puts each frame here: :meth:`AckQueue.put` appends the records to
the pipeline and queues ``(offset, item)``. One task per distinct ack requirement (usually
one or two per session) waits for the oldest offset and then answers every queued frame
the ledger has settled since, in order, through the ``answer(item, safe)`` callback.
Frames of topics with different requirements (a reliable-ack topic beside a plain one)
are answered independently, as the reference does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from fleetgate.pipeline.ledger import Requirement
from fleetgate.pipeline.pipeline import Pipeline
from fleetgate.pipeline.spool_format import UnspoolableRecordError
from fleetgate.records import Record

log = logging.getLogger("fleetgate.pipeline")

T = TypeVar("T")


class _Lane(Generic[T]):
    """Frames waiting on one requirement, oldest first, and the task that answers them."""

    def __init__(self) -> None:
        self.waiting: deque[tuple[int, T]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class AckQueue(Generic[T]):
    """Frames appended to the pipeline, answered in order once they are settled."""

    def __init__(
        self,
        pipeline: Pipeline,
        answer: Callable[[T, bool], None],
        max_waiting: int = 64,
        name: str = "acks",
    ) -> None:
        self.pipeline = pipeline
        self.answer = answer
        self.max_waiting = max_waiting
        self.name = name
        self._lanes: dict[Requirement, _Lane[T]] = {}
        self._waiting = 0
        self._room = asyncio.Event()
        self._closed = False
        self._finishing = False

    @property
    def waiting(self) -> int:
        """Frames appended but not yet answered."""
        return self._waiting

    async def put(self, records: Sequence[Record], item: T) -> None:
        """Append ``records`` to the pipeline; ``item`` is answered once they are settled.

        Waits while ``max_waiting`` frames are unanswered (the caller stops reading) and
        while the pipeline's queues are full.
        """
        while self._waiting >= self.max_waiting and not self._closed:
            self._room.clear()
            await self._room.wait()
        try:
            offset = await self.pipeline.append(records)
        except UnspoolableRecordError as exc:
            self.pipeline.refuse(records, exc)
            self.answer(item, False)
            return
        requirement = self.pipeline.requirement_for(records)
        lane = self._lanes.get(requirement)
        if lane is None:
            lane = self._lanes[requirement] = _Lane()
            lane.task = asyncio.create_task(
                self._answer(lane, requirement), name=f"{self.name}:{len(self._lanes)}"
            )
        lane.waiting.append((offset, item))
        self._waiting += 1
        lane.wakeup.set()

    async def _answer(self, lane: _Lane[T], requirement: Requirement) -> None:
        ledger = self.pipeline.ledger
        waiting = lane.waiting
        while True:
            if not waiting:
                if self._finishing:
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            offset, item = waiting[0]
            safe = await ledger.wait(offset, requirement)
            waiting.popleft()
            self._waiting -= 1
            self._room.set()
            try:
                self.answer(item, safe)
            except Exception:
                log.exception("%s: answering a frame failed", self.name)

    def pending_tasks(self) -> set[asyncio.Task[None]]:
        """Answering tasks still running (a listener waits for them a little on shutdown)."""
        return {
            lane.task
            for lane in self._lanes.values()
            if lane.task is not None and not lane.task.done()
        }

    async def drain(self, timeout_s: float) -> None:
        """Wait until every frame is answered, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._waiting:
                    self._room.clear()
                    await self._room.wait()

    def finish(self) -> None:
        """No more frames will come: answer the waiting ones, then let the tasks end."""
        self._finishing = True
        for lane in self._lanes.values():
            lane.wakeup.set()

    def close(self) -> None:
        """Stop answering: frames still waiting get no answer (no ack)."""
        self._closed = True
        self._room.set()
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
