"""The live hub fed from the shared log (``api.stream.source``), not from this process.

In a scale-out layout a node's own pipeline sees only the devices connected to it. With
``api.stream.source`` set to ``kafka`` or ``nats``, the node's ``/stream`` and dashboard
are fed from the log every node writes to instead, so they show every node's devices. The
feed reads alone (no consumer group: every dashboard node wants every record) from the
log's end, and publishes each batch to the hub (:meth:`fleetgate.pipeline.hub.LiveHub.
publish`), which never blocks. It runs in the background: a log that cannot be reached
at start is retried with backoff and reported by ``/health`` (status ``degraded``), while
the node keeps taking devices.

It is started and stopped like a device listener (:class:`fleetgate.runtime.Listener`),
named ``stream-source``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from fleetgate.recordlog.follow import LogFollower
from fleetgate.recordlog.reader import LogReader, LogUnavailableError
from fleetgate.records import Record

log = logging.getLogger("fleetgate.recordlog.live")

RETRY_INITIAL_S: Final = 0.5
RETRY_MAX_S: Final = 10.0


class LiveFeed:
    """Reads the log from its end and hands every batch to ``publish``."""

    name = "stream-source"

    def __init__(
        self, open_reader: Callable[[], LogReader], publish: Callable[[Sequence[Record]], None]
    ) -> None:
        self._open_reader = open_reader
        self._publish = publish
        self._task: asyncio.Task[None] | None = None
        self._follower: LogFollower | None = None
        self._where = ""
        self._error: str | None = "not started"

    async def start(self) -> None:
        reader = self._open_reader()
        self._where = reader.describe()
        self._task = asyncio.create_task(self._run(reader), name="stream-source")

    async def _handle(self, records: Sequence[Record]) -> None:
        self._publish(records)

    async def _run(self, reader: LogReader) -> None:
        retry_s = RETRY_INITIAL_S
        while True:
            try:
                await reader.start()
            except LogUnavailableError as exc:
                self._error = str(exc)
                log.warning("stream source: %s; retrying in %.1f s", exc, retry_s)
                await reader.close()
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
                reader = self._open_reader()
                continue
            self._error = None
            log.info("stream source: /stream reads %s", self._where)
            self._follower = LogFollower(reader, self._handle)
            try:
                await self._follower.run()
            finally:
                await reader.close()
            return

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._follower is not None:
            self._follower.stop()  # ends after the read in progress (<= its poll time)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": "ok" if self._error is None else "degraded",
            "address": self._where,
        }
        if self._error is not None:
            report["error"] = self._error
        if self._follower is not None:
            report["records"] = self._follower.handled
        return report
