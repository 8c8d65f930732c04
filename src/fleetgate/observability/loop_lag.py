"""How late the event loop runs what is due: ``fleetgate_event_loop_lag_seconds``.

Every ack waits for the event loop: a frame's read, its hand-off to the spool and its ack
write are all callbacks. Whatever holds the loop (a long callback, a garbage collection,
another thread holding the GIL, a core taken by other processes) delays every ack due
meanwhile, and the ack latency alone does not say which it was. A timer re-armed every
:data:`PROBE_INTERVAL_S` records how late it ran: a histogram per worker (summed over the
workers in ``/metrics``) that shows how often the loop was held and for how long.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from prometheus_client import Histogram

from fleetgate.observability.metrics import REGISTRY

# Ten timers a second: negligible work, and a hold of the loop longer than this is seen.
PROBE_INTERVAL_S: Final = 0.1

LOOP_LAG = Histogram(
    "fleetgate_event_loop_lag_seconds",
    "How late a timer due on the event loop ran (the loop was held by other work)",
    # uvloop's timers have millisecond resolution: finer buckets would only show that.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)


class LoopLagProbe:
    """Arms a timer every ``interval_s`` and records how late it ran in :data:`LOOP_LAG`."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._observe = LOOP_LAG.observe
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        # The due time on the monotonic clock, not the loop's: uvloop's loop.time() is the
        # time its iteration began, which would hide a hold inside the iteration.
        self._due = time.monotonic() + self.interval_s
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        # A timer may fire a fraction of a millisecond early (millisecond resolution).
        self._observe(max(0.0, time.monotonic() - self._due))
        self._arm()
