"""The ledger: offsets for records, confirmed watermarks per consumer, and ack waiters.

Every record entering the pipeline gets an offset, a number one higher than the record
before it. Each consumer of records (a sink runner, the store) publishes a *watermark*:
every offset at or below it is done for that consumer (confirmed by its backend, or never
routed to it). An ack that needs consumers C waits until the lowest watermark among C
reaches the frame's last offset. That is all an ack decision is; the durable spool makes
the same shape survive a restart.

Waiting costs per batch, not per frame: waiters that arrive while none of their consumers
has taken a batch yet share one *group* (one future, one deadline); a consumer taking a
batch closes the groups it is part of, so a group is confirmed by (usually) one publish.
Groups of the same consumers wake in offset order. One timer, set for the oldest
deadline, expires groups that waited longer than the ack timeout.

A waiter can also be a callback (:meth:`Ledger.then`): it is called from :meth:`advanced`
itself, so an ack goes out in the same loop step as the watermark's move rather than in
a later one, when the waiting task is resumed behind every frame read meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("fleetgate.pipeline")

Answer = Callable[[bool], None]

class Consumer(Protocol):
    """What the ledger needs from a consumer of records (see :class:`SinkRunner`)."""

    name: str

    @property
    def taken(self) -> int:
        """How many batches the consumer has taken so far (only ever grows)."""

    def watermark(self) -> int:
        """Every offset at or below this is done for this consumer."""

    def refused(self, offset: int) -> bool:
        """True when the record at ``offset`` was refused for good (no ack for it)."""


Requirement = tuple[Consumer, ...]


@dataclass(slots=True)
class _Group:
    """Waiters on the same consumers that joined before any of them took a batch."""

    threshold: int  # the highest offset any member waits for
    taken_mark: int  # sum of the consumers' ``taken`` when the group opened
    deadline: float
    future: asyncio.Future[bool]
    # Callback waiters (Ledger.then): each member's last offset and its answer.
    calls: list[tuple[int, Answer]] | None = None


class Ledger:
    """Assigns offsets and wakes ack waiters as consumer watermarks advance."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.head = 0  # offset of the newest record; the first record gets 1
        self._groups: dict[Requirement, deque[_Group]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def assign(self, count: int) -> int:
        """Reserve ``count`` offsets; returns the first (the last is the new head)."""
        first = self.head + 1
        self.head += count
        return first

    @staticmethod
    def settled(offset: int, requirement: Requirement) -> bool:
        """True once every consumer in ``requirement`` is done with ``offset``."""
        return all(consumer.watermark() >= offset for consumer in requirement)

    async def wait(self, offset: int, requirement: Requirement) -> bool:
        """True once every consumer in ``requirement`` confirmed ``offset``.

        False when one refused it, when it was not confirmed within the timeout, or when
        the ledger closed first.
        """
        if not requirement:
            return True
        # Loops, not all()/any() over generators: this runs once per frame.
        for consumer in requirement:
            if consumer.watermark() < offset:
                if self._closed:
                    return False
                if not await self._join(offset, requirement):
                    return False
                break
        for consumer in requirement:  # noqa: SIM110 - no generator per frame
            if consumer.refused(offset):
                return False
        return True

    def then(self, offset: int, requirement: Requirement, answer: Answer) -> None:
        """Call ``answer(safe)`` once ``offset`` is settled (what :meth:`wait` returns):
        now when it is, else straight from the call to :meth:`advanced` that settles it
        (or from the timeout, or :meth:`close`)."""
        for consumer in requirement:
            if consumer.watermark() < offset:
                if self._closed:
                    answer(False)
                    return
                group = self._group(offset, requirement)
                if group.calls is None:
                    group.calls = []
                group.calls.append((offset, answer))
                return
        answer(not _refused(offset, requirement))

    def _join(self, offset: int, requirement: Requirement) -> asyncio.Future[bool]:
        return self._group(offset, requirement).future

    def _group(self, offset: int, requirement: Requirement) -> _Group:
        groups = self._groups.get(requirement)
        if groups is None:
            groups = self._groups[requirement] = deque()
        taken = 0
        for consumer in requirement:
            taken += consumer.taken
        if groups:
            tail = groups[-1]
            if tail.taken_mark == taken and not tail.future.done():
                # Nothing of the group has been taken yet: it is confirmed as one.
                tail.threshold = max(tail.threshold, offset)
                return tail
        loop = asyncio.get_running_loop()
        group = _Group(offset, taken, loop.time() + self.timeout_s, loop.create_future())
        groups.append(group)
        if self._timer is None:
            self._timer = loop.call_at(group.deadline, self._expire)
        return group

    def advanced(self, consumer: Consumer) -> None:
        """``consumer``'s watermark moved: wake the groups it now settles, oldest first."""
        # A copy: an answer may make a new requirement's first group.
        for requirement, groups in list(self._groups.items()):
            if consumer not in requirement:
                continue
            if not groups:
                continue
            mark = min(member.watermark() for member in requirement)
            while groups and groups[0].threshold <= mark:
                group = groups.popleft()
                if not group.future.done():
                    group.future.set_result(True)
                if group.calls is not None:
                    _answer_all(group.calls, requirement)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest: float | None = None
        for groups in self._groups.values():
            while groups and groups[0].deadline <= now:
                group = groups.popleft()
                if not group.future.done():
                    group.future.set_result(False)
                if group.calls is not None:
                    _answer_all(group.calls, None)
            if groups and (earliest is None or groups[0].deadline < earliest):
                earliest = groups[0].deadline
        if earliest is not None:
            self._timer = loop.call_at(earliest, self._expire)

    def close(self) -> None:
        """Answer every waiter still waiting with False; later waits return False."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for groups in self._groups.values():
            for group in groups:
                if not group.future.done():
                    group.future.set_result(False)
                if group.calls is not None:
                    _answer_all(group.calls, None)
            groups.clear()

    def waiting_groups(self) -> int:
        """Groups not yet settled (for tests and health)."""
        return sum(len(groups) for groups in self._groups.values())


def _refused(offset: int, requirement: Requirement) -> bool:
    for consumer in requirement:  # noqa: SIM110 - no generator per frame
        if consumer.refused(offset):
            return True
    return False


def _answer_all(calls: list[tuple[int, Answer]], requirement: Requirement | None) -> None:
    """Answer a settled group's callbacks (``requirement`` None: all False, not settled);
    one failing answer does not keep the others from theirs."""
    for offset, answer in calls:
        try:
            answer(requirement is not None and not _refused(offset, requirement))
        except Exception:
            log.exception("ledger: answering a waiter failed")


def requirement_of(consumers: Sequence[Consumer]) -> Requirement:
    """A canonical requirement tuple (the same consumers always give the same key)."""
    return tuple(sorted(set(consumers), key=lambda consumer: consumer.name))
