"""The reference's process metrics: ``uptime_sec``, ``num_connections``, memory, tasks.

Tesla's server reports these gauges every 60 s when ``monitoring`` is configured; fleetgate
always exports them (``/metrics``, the monitoring port, StatsD), refreshed every few
seconds: ``uptime_sec`` (seconds since start), ``num_connections`` (open device
connections, every protocol), ``memory_allocated_bytes`` (resident memory of the process:
Python has no Go heap figure) and ``num_goroutine`` (asyncio tasks, Python's nearest
equivalent of goroutines). With several workers they sum over the workers (the uptime is
the oldest's).
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

from prometheus_client import Gauge

from fleetgate.observability.metrics import OPEN_CONNECTIONS, REGISTRY

UPTIME = Gauge(
    "uptime_sec", "Seconds since the server started", registry=REGISTRY, multiprocess_mode="max"
)
NUM_CONNECTIONS = Gauge(
    "num_connections",
    "Open device connections (every protocol)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
MEMORY = Gauge(
    "memory_allocated_bytes",
    "Resident memory of the server process",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
TASKS = Gauge(
    "num_goroutine",
    "asyncio tasks of the server (the nearest thing to Go's goroutines)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

REFRESH_S = 5.0
_PAGE = resource.getpagesize()


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``; peak RSS elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_connections() -> float:
    return sum(sample.value for family in OPEN_CONNECTIONS.collect() for sample in family.samples)


def refresh(started_at: float) -> None:
    UPTIME.set(round(time.time() - started_at))
    NUM_CONNECTIONS.set(open_connections())
    MEMORY.set(resident_bytes())
    try:
        TASKS.set(len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop
        TASKS.set(0)


async def keep_fresh(started_at: float, every_s: float = REFRESH_S) -> None:
    """Refresh the gauges every ``every_s`` seconds until cancelled."""
    while True:
        refresh(started_at)
        await asyncio.sleep(every_s)
