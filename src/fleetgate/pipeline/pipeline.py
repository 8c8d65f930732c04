"""Routes records to sink runners and answers the one question sessions ask before an ack.

A session hands the pipeline the records of one frame. :meth:`Pipeline.append` gives them
offsets in the ledger and queues them for every sink their topic routes to; it waits only
while a queue is full. :meth:`Pipeline.settled` then says whether the frame is safe by the
ack policy (the policy names, per topic, the sinks whose watermark must pass the frame).
:meth:`Pipeline.accept` is both in one call: ``True`` means acknowledge. Everything
between (routing, bounded queues, which sinks must confirm) happens here, so ack levels
can change without touching protocol code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from fleetgate.observability import metrics
from fleetgate.pipeline.ack import AckPolicy
from fleetgate.pipeline.ledger import Ledger, Requirement, requirement_of
from fleetgate.pipeline.router import Router
from fleetgate.pipeline.runner import SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import Health

log = logging.getLogger("fleetgate.pipeline")

RecordObserver = Callable[[Sequence[Record]], None]
_MAX_CACHED_TOPICS = 1024  # topics come from devices; never cache without bound


class Pipeline:
    """Router + one :class:`SinkRunner` per sink + the ack policy, over one ledger."""

    def __init__(
        self,
        runners: Mapping[str, SinkRunner],
        router: Router,
        ack_policy: AckPolicy,
        ack_timeout_s: float = 30.0,
    ) -> None:
        missing = router.sink_names - set(runners)
        if missing:
            raise ValueError(f"records name sinks that are not configured: {sorted(missing)}")
        self.runners = dict(runners)
        self.router = router
        self.ack_policy = ack_policy
        self.ledger = Ledger(ack_timeout_s)
        for runner in self.runners.values():
            runner.bind(self.ledger)
        self._observers: list[RecordObserver] = []
        self._targets: dict[str, tuple[SinkRunner, ...]] = {}
        self._requirements: dict[str, Requirement] = {}

    @property
    def ack_timeout_s(self) -> float:
        return self.ledger.timeout_s

    def add_observer(self, observer: RecordObserver) -> None:
        """Call ``observer`` with the records of every frame appended (live stream, tests).

        Observers run synchronously on the ingest path: they must not block.
        """
        self._observers.append(observer)

    async def start(self) -> None:
        """Start every sink runner."""
        for runner in self.runners.values():
            await runner.start()

    async def close(self) -> None:
        """Flush and close every sink runner; acks still waiting are refused."""
        await asyncio.gather(*(runner.close() for runner in self.runners.values()))
        self.ledger.close()

    # -- routing and policy, cached per topic -------------------------------------------
    def _targets_of(self, topic: str) -> tuple[SinkRunner, ...]:
        targets = self._targets.get(topic)
        if targets is None:
            targets = tuple(self.runners[name] for name in self.router.targets(topic))
            if len(self._targets) < _MAX_CACHED_TOPICS:
                self._targets[topic] = targets
        return targets

    def requirement(self, topic: str) -> Requirement:
        """The consumers an ack for records of ``topic`` waits for."""
        cached = self._requirements.get(topic)
        if cached is None:
            cached = requirement_of(
                [self.runners[name] for name in self.ack_policy.required_sinks(topic)]
            )
            if len(self._requirements) < _MAX_CACHED_TOPICS:
                self._requirements[topic] = cached
        return cached

    def requirement_for(self, records: Sequence[Record]) -> Requirement:
        """The consumers an ack for ``records`` (one frame) waits for."""
        topic = records[0].topic
        if all(record.topic == topic for record in records):
            return self.requirement(topic)
        topics = {record.topic for record in records}
        return requirement_of([c for name in topics for c in self.requirement(name)])

    # -- the ingest path -------------------------------------------------------------------
    async def append(self, records: Sequence[Record]) -> int:
        """Queue ``records`` (one frame) for their sinks; returns the frame's last offset.

        Waits while a sink's queue is full (backpressure).
        """
        if not records:
            return self.ledger.head
        topic = records[0].topic
        single_topic = all(record.topic == topic for record in records)
        if single_topic:
            # The common case (one frame, one topic): every sink shares the same sequence;
            # runners only read it.
            routed: Sequence[tuple[SinkRunner, Sequence[Record]]] = [
                (runner, records) for runner in self._targets_of(topic)
            ]
        else:
            grouped: dict[SinkRunner, list[Record]] = {}
            for record in records:
                for runner in self._targets_of(record.topic):
                    grouped.setdefault(runner, []).append(record)
            routed = list(grouped.items())
        for runner, batch in routed:
            if not runner.has_room(len(batch)):
                await runner.wait_for_room(len(batch))
        # No await from here on: offsets reach every runner in the order they were given.
        first = self.ledger.assign(len(records))
        last = self.ledger.head
        for runner, batch in routed:
            runner.push(first, last, batch)
        if single_topic:
            metrics.labelled(metrics.RECORDS, records[0].source, topic).inc(len(records))
        else:
            for record in records:
                metrics.labelled(metrics.RECORDS, record.source, record.topic).inc()
        for observer in self._observers:
            try:
                observer(records)
            except Exception:
                log.exception("record observer failed")
        return last

    async def settled(self, offset: int, requirement: Requirement) -> bool:
        """True once the frame ending at ``offset`` is safe by ``requirement``."""
        return await self.ledger.wait(offset, requirement)

    async def accept(self, records: Sequence[Record]) -> bool:
        """Append ``records`` and wait until the ack policy says they are safe.

        This is the single place a device ack is decided: ``True`` means acknowledge.
        """
        if not records:
            return True
        offset = await self.append(records)
        return await self.ledger.wait(offset, self.requirement_for(records))

    async def submit(self, records: Sequence[Record]) -> None:
        """Queue ``records`` that nobody acknowledges (connectivity records, ...)."""
        await self.append(records)

    def health(self) -> dict[str, dict[str, object]]:
        """Per-sink health for ``/health``."""
        return {
            name: {
                "status": runner.health.value,
                "queued": runner.queued,
                **({"error": runner.last_error} if runner.health is not Health.OK else {}),
            }
            for name, runner in self.runners.items()
        }
