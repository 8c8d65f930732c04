"""Following the record log: read, drop repeats, hand batches on, commit what was handled.

:class:`LogFollower` is the loop ``fleetgate consume`` and a node's live stream
(``api.stream.source``) share. Each batch read is de-duplicated by ``record_id`` within a
window (:class:`~fleetgate.recordlog.dedup.RecordIdWindow`), handed to ``handle`` (print
it, feed a pipeline, publish to the live hub) and, once ``handle`` returned, committed:
with a consumer group the log then remembers it, so a restart resumes after the last
handled batch and loses nothing (a batch handled but not committed is read again, and the
window drops what it already saw).

A read that fails (the broker away) is logged, rate-limited, and retried with backoff; the
follower runs until :meth:`LogFollower.stop`, ``count`` records or ``idle_exit_s`` seconds
without a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from fleetgate.observability import metrics
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.recordlog.dedup import DEFAULT_WINDOW, RecordIdWindow
from fleetgate.recordlog.reader import LogEntry, LogReader
from fleetgate.records import Record

log = logging.getLogger("fleetgate.recordlog")
_READ_FAILED = LimitedLog(log, "recordlog.read_failed")

DEFAULT_BATCH: Final = 1000
POLL_S: Final = 0.5
RETRY_INITIAL_S: Final = 0.2
RETRY_MAX_S: Final = 5.0

Handler = Callable[[Sequence[Record]], Awaitable[None]]


class LogFollower:
    """Reads ``reader`` until stopped and hands each de-duplicated batch to ``handle``."""

    def __init__(
        self,
        reader: LogReader,
        handle: Handler,
        *,
        window: int = DEFAULT_WINDOW,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.reader = reader
        self.handle = handle
        self.window = RecordIdWindow(window)
        self.batch = batch
        self.handled = 0
        self._stopping = asyncio.Event()

    @property
    def duplicates(self) -> int:
        return self.window.duplicates

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, count: int | None = None, idle_exit_s: float | None = None) -> int:
        """Follow until stopped, ``count`` records handed on, or ``idle_exit_s`` without
        one; the number of records handed on."""
        retry_s = RETRY_INITIAL_S
        last_record = time.monotonic()
        while not self._stopping.is_set():
            if count is not None and self.handled >= count:
                break
            if idle_exit_s is not None and time.monotonic() - last_record >= idle_exit_s:
                break
            wanted = self.batch if count is None else min(self.batch, count - self.handled)
            try:
                entries = await self.reader.read(wanted, POLL_S)
            except Exception as exc:
                _READ_FAILED.warning(
                    "%s: reading failed, retrying in %.1f s: %s",
                    self.reader.describe(), retry_s, exc,
                )
                await self._pause(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
                continue
            retry_s = RETRY_INITIAL_S
            if not entries:
                continue
            last_record = time.monotonic()
            records = self._fresh(entries)
            if records:
                await self.handle(records)
                self.handled += len(records)
            await self.reader.commit()
        return self.handled

    def _fresh(self, entries: Sequence[LogEntry]) -> list[Record]:
        seen = self.window.seen
        records = [entry.record for entry in entries if not seen(entry.record_id)]
        repeated = len(entries) - len(records)
        if repeated:
            metrics.labelled(metrics.LOG_READ, self.reader.name, "duplicate").inc(repeated)
        return records

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
