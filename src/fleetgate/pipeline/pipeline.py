"""Routes records to sink runners and answers the one question sessions ask before an ack.

Sessions call :meth:`Pipeline.accept` with the records of one frame and send the device an
ack only when it returns ``True``. Everything between (routing, bounded queues, which
sinks must confirm) happens here, so ack levels can change without touching protocol code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fleetgate.observability import metrics
from fleetgate.pipeline.ack import AckPolicy
from fleetgate.pipeline.router import Router
from fleetgate.pipeline.runner import SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import Health

log = logging.getLogger("fleetgate.pipeline")

RecordObserver = Callable[[Sequence[Record]], None]


@dataclass(slots=True)
class Submission:
    """Futures of one submission, by sink name; each resolves when that sink confirmed."""

    confirmations: dict[str, asyncio.Future[None]]

    async def wait(self, sinks: set[str], timeout_s: float) -> bool:
        """True once every named sink confirmed; False on failure or timeout."""
        futures = [self.confirmations[name] for name in sinks if name in self.confirmations]
        pending = [future for future in futures if not future.done()]
        if pending:
            # One waiter future and one timer per call: cheaper per frame than a
            # timeout context plus a shield per sink future (this runs for every frame).
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            remaining = len(pending)

            def settled(_: asyncio.Future[None]) -> None:
                nonlocal remaining
                remaining -= 1
                if remaining == 0 and not waiter.done():
                    waiter.set_result(None)

            def expire() -> None:
                if not waiter.done():
                    waiter.set_result(None)

            for future in pending:
                future.add_done_callback(settled)
            timer = loop.call_later(timeout_s, expire)
            try:
                await waiter
            finally:
                timer.cancel()
                for future in pending:
                    future.remove_done_callback(settled)
        return all(
            future.done() and not future.cancelled() and future.exception() is None
            for future in futures
        )


class Pipeline:
    """Router + one :class:`SinkRunner` per sink + the ack policy."""

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
        self.ack_timeout_s = ack_timeout_s
        self._observers: list[RecordObserver] = []

    def add_observer(self, observer: RecordObserver) -> None:
        """Call ``observer`` with every submitted batch (live stream, tests)."""
        self._observers.append(observer)

    async def start(self) -> None:
        """Start every sink runner."""
        for runner in self.runners.values():
            await runner.start()

    async def close(self) -> None:
        """Flush and close every sink runner."""
        await asyncio.gather(*(runner.close() for runner in self.runners.values()))

    async def submit(self, records: Sequence[Record]) -> Submission:
        """Hand ``records`` to every sink their topics route to (waits while queues are full)."""
        by_sink: dict[str, Sequence[Record]] = {}
        if not records:
            return Submission({})
        topic = records[0].topic
        if all(record.topic == topic for record in records):
            # The common case (one frame, one topic): every sink shares the same sequence;
            # runners only read it.
            for name in self.router.targets(topic):
                by_sink[name] = records
        else:
            grouped: dict[str, list[Record]] = {}
            for record in records:
                for name in self.router.targets(record.topic):
                    grouped.setdefault(name, []).append(record)
            by_sink.update(grouped)
        counts: dict[tuple[str, str], int] = {}
        for record in records:
            key = (record.source, record.topic)
            counts[key] = counts.get(key, 0) + 1
        for (source, topic), count in counts.items():
            metrics.labelled(metrics.RECORDS, source, topic).inc(count)
        for observer in self._observers:
            try:
                observer(records)
            except Exception:
                log.exception("record observer failed")
        confirmations = {
            name: await self.runners[name].submit(batch) for name, batch in by_sink.items()
        }
        return Submission(confirmations)

    async def accept(self, records: Sequence[Record]) -> bool:
        """Submit ``records`` and wait until the ack policy says they are safe.

        This is the single place a device ack is decided: ``True`` means acknowledge.
        """
        if not records:
            return True
        submission = await self.submit(records)
        required = self.ack_policy.required_for({record.topic for record in records})
        return await submission.wait(required, self.ack_timeout_s)

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
