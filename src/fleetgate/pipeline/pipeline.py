"""Routes records to sink runners and answers the one question sessions ask before an ack.

A session hands the pipeline the records of one frame. :meth:`Pipeline.append` gives them
offsets in the ledger, appends them to the durable spool (when there is one) and queues
them for every sink their topic routes to; it waits only while the spool is at its disk
budget (or, without a spool, while a sink's queue is full). :meth:`Pipeline.settled`
then says whether the frame is safe by the ack policy (which names, per source and topic,
the consumers whose watermark must pass the frame). :meth:`Pipeline.accept` is both in
one call: ``True`` means acknowledge. Everything
between (routing, bounded queues, which sinks must confirm) happens here, so ack levels
can change without touching protocol code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline.ack import SPOOL_CONSUMER, AckPolicy
from fleetgate.pipeline.deadletter import DeadLetters
from fleetgate.pipeline.ledger import Answer, Consumer, Ledger, Requirement, requirement_of
from fleetgate.pipeline.router import Router
from fleetgate.pipeline.runner import SinkRunner
from fleetgate.pipeline.spool import Spool
from fleetgate.pipeline.spool_format import UnspoolableRecordError, encode_payload
from fleetgate.records import Record, set_offsets
from fleetgate.sinks.base import Health

log = logging.getLogger("fleetgate.pipeline")
# A device repeating an unstorable frame must not flood the log.
_REFUSED = LimitedLog(log, "pipeline.refused")

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
        *,
        spool: Spool | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        missing = router.sink_names - set(runners)
        if missing:
            raise ValueError(f"records name sinks that are not configured: {sorted(missing)}")
        self.runners = dict(runners)
        self.router = router
        self.ack_policy = ack_policy
        # The spool recovered the ledger's head from disk: share its ledger.
        self.ledger = spool.ledger if spool is not None else Ledger(ack_timeout_s)
        self.ledger.timeout_s = ack_timeout_s
        self.spool = spool
        self._consumers: dict[str, Consumer] = dict(self.runners)
        if spool is not None:
            self._consumers[SPOOL_CONSUMER] = spool
        for name, runner in self.runners.items():
            runner.bind(self.ledger, spool, self._router_for(name), dead_letters)
            if spool is not None:
                spool.register(runner)
        self._observers: list[RecordObserver] = []
        self._targets: dict[str, tuple[SinkRunner, ...]] = {}
        self._requirements: dict[tuple[str, str], Requirement] = {}

    def _router_for(self, name: str) -> Callable[[str], bool]:
        router = self.router
        return lambda topic: name in router.targets(topic)

    @property
    def ack_timeout_s(self) -> float:
        return self.ledger.timeout_s

    def add_observer(self, observer: RecordObserver) -> None:
        """Call ``observer`` with the records of every frame appended (live stream, tests).

        Observers run synchronously on the ingest path: they must not block.
        """
        self._observers.append(observer)

    async def start(self) -> None:
        """Start the spool and every sink runner, each after its cursor."""
        if self.spool is not None:
            self.spool.start()
        for runner in self.runners.values():
            if self.spool is not None:
                cursor = runner.sink.committed_offset()
                if cursor is None:
                    cursor = self.spool.recovered_cursor(runner.name)
                if cursor is not None:
                    runner.resume_after(cursor)
            await runner.start()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close every sink runner (within ``timeout_s``), then the spool; acks
        still waiting are refused (with the spool, nothing unconfirmed is lost)."""
        await asyncio.gather(*(runner.close(timeout_s) for runner in self.runners.values()))
        if self.spool is not None:
            await self.spool.close()
        self.ledger.close()

    # -- routing and policy, cached per topic -------------------------------------------
    def _targets_of(self, topic: str) -> tuple[SinkRunner, ...]:
        targets = self._targets.get(topic)
        if targets is None:
            targets = tuple(self.runners[name] for name in self.router.targets(topic))
            if len(self._targets) < _MAX_CACHED_TOPICS:
                self._targets[topic] = targets
        return targets

    def requirement(self, topic: str, source: str = "") -> Requirement:
        """The consumers an ack for records of ``source``/``topic`` waits for."""
        key = (source, topic)
        cached = self._requirements.get(key)
        if cached is None:
            names = self.ack_policy.required_sinks(topic, source)
            cached = requirement_of([self._consumers[name] for name in names])
            if len(self._requirements) < _MAX_CACHED_TOPICS:
                self._requirements[key] = cached
        return cached

    def requirement_for(self, records: Sequence[Record]) -> Requirement:
        """The consumers an ack for ``records`` (one frame) waits for."""
        first = records[0]
        topic, source = first.topic, first.source
        if all(record.topic == topic and record.source == source for record in records):
            return self.requirement(topic, source)
        keys = {(record.topic, record.source) for record in records}
        return requirement_of([c for key in keys for c in self.requirement(*key)])

    # -- the ingest path -------------------------------------------------------------------
    async def append(self, records: Sequence[Record]) -> int:
        """Queue ``records`` (one frame) for their sinks; returns the frame's last offset.

        Waits while a sink's queue is full (backpressure).
        """
        if not records:
            return self.ledger.head
        return await self._append(records, _uniform(records))

    async def _append(self, records: Sequence[Record], uniform: bool) -> int:
        """:meth:`append`; ``uniform``: the records share one topic and one source."""
        routed, single_topic = self._route(records, uniform)
        spool = self.spool
        payload = b""
        if spool is not None:
            # Encoded first: a record no store could keep is refused before it takes an
            # offset (UnspoolableRecordError: the frame gets no ack).
            payload = encode_payload(records)
            if spool.over_budget:
                await spool.wait_for_room()
        for runner, batch in routed:
            if not runner.has_room(len(batch)):
                await runner.wait_for_room(len(batch))
        return self._enqueue(records, routed, single_topic, payload)

    def _route(
        self, records: Sequence[Record], uniform: bool
    ) -> tuple[Sequence[tuple[SinkRunner, Sequence[Record]]], bool]:
        """The records each runner takes, and whether they all share one topic."""
        topic = records[0].topic
        single_topic = uniform or all(record.topic == topic for record in records)
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
        return routed, single_topic

    def _enqueue(
        self,
        records: Sequence[Record],
        routed: Sequence[tuple[SinkRunner, Sequence[Record]]],
        single_topic: bool,
        payload: bytes,
    ) -> int:
        """Offsets, the spool and every runner, in order, with no wait (there is room)."""
        spool = self.spool
        first = self.ledger.assign(len(records))
        last = self.ledger.head
        set_offsets(records, first)
        if spool is not None:
            spool.append(first, records, payload)
        for runner, batch in routed:
            runner.push(first, last, batch)
        if single_topic:
            metrics.labelled_adder(metrics.RECORDS, records[0].source, records[0].topic)(
                len(records)
            )
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
        # One look at the records serves routing and the requirement (a frame's records
        # nearly always share their topic and source).
        uniform = _uniform(records)
        try:
            offset = await self._append(records, uniform)
        except UnspoolableRecordError as exc:
            self.refuse(records, exc)
            return False
        requirement = self._requirement_of(records, uniform)
        return await self.ledger.wait(offset, requirement)

    async def accept_then(self, records: Sequence[Record], answer: Answer) -> None:
        """:meth:`accept`, its answer given as ``answer(safe)``: called straight from the
        ledger when the records settle (the spool's commit reaching the loop), not when
        a task waiting for them is resumed, a loop step later behind every frame read
        meanwhile. Returns once the records are appended (``answer`` may have been called).
        """
        if self.accept_now(records, answer):
            return
        uniform = _uniform(records)
        try:
            offset = await self._append(records, uniform)
        except UnspoolableRecordError as exc:
            self.refuse(records, exc)
            answer(False)
            return
        requirement = self._requirement_of(records, uniform)
        self.ledger.then(offset, requirement, answer)

    def accept_now(self, records: Sequence[Record], answer: Answer) -> bool:
        """:meth:`accept_then` from a plain callback (no task): False, with nothing done,
        when the records would have to wait for room (the disk budget, a full sink queue);
        the caller then goes the asynchronous way."""
        if not records:
            answer(True)
            return True
        uniform = _uniform(records)
        routed, single_topic = self._route(records, uniform)
        spool = self.spool
        # Room first: a frame that must wait goes the asynchronous way unencoded.
        if spool is not None and spool.over_budget:
            return False
        for runner, batch in routed:
            if not runner.has_room(len(batch)):
                return False
        payload = b""
        if spool is not None:
            try:
                payload = encode_payload(records)
            except UnspoolableRecordError as exc:
                self.refuse(records, exc)
                answer(False)
                return True
        offset = self._enqueue(records, routed, single_topic, payload)
        requirement = self._requirement_of(records, uniform)
        self.ledger.then(offset, requirement, answer)
        return True

    def _requirement_of(self, records: Sequence[Record], uniform: bool) -> Requirement:
        """What the records' ack waits for; ``uniform``: they share one topic and source."""
        first = records[0]
        if uniform:
            return self.requirement(first.topic, first.source)
        return self.requirement_for(records)

    def refuse(self, records: Sequence[Record], error: Exception) -> None:
        """Count and log a frame the pipeline would not take (no ack for it)."""
        metrics.labelled(metrics.RECORDS_REFUSED, records[0].source).inc(len(records))
        _REFUSED.warning(
            "records refused: the spool cannot write them (%s); no ack",
            error,
            extra=fields(source=records[0].source, device_id=records[0].device_id),
        )

    async def submit(self, records: Sequence[Record]) -> None:
        """Queue ``records`` that nobody acknowledges (connectivity records, ...)."""
        await self.append(records)

    def health(self) -> dict[str, dict[str, object]]:
        """Per-sink health for ``/health`` (and the spool's, when there is one)."""
        report: dict[str, dict[str, object]] = {
            name: {
                "status": runner.health.value,
                "queued": runner.queued,
                **({"behind": True} if runner.behind else {}),
                **({"error": runner.last_error} if runner.health is not Health.OK else {}),
            }
            for name, runner in self.runners.items()
        }
        if self.spool is not None:
            report[SPOOL_CONSUMER] = self.spool.health()
        return report


def _uniform(records: Sequence[Record]) -> bool:
    """True when ``records`` share one topic and one source."""
    first = records[0]
    topic, source = first.topic, first.source
    for record in records:  # noqa: SIM110 - no generator per frame
        if record.topic != topic or record.source != source:
            return False
    return True
