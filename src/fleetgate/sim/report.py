"""Live progress lines shared by the device simulators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

# () -> (sent, acked, errors) so far
Counts = Callable[[], tuple[int, int, int]]


async def live_report(
    counts: Counts, started: float, interval: float, report: Callable[[str], None]
) -> None:
    """Every ``interval`` seconds: send and ack rates since the last line, and totals."""
    last_sent = last_acked = 0
    while True:
        await asyncio.sleep(interval)
        sent, acked, errors = counts()
        report(
            f"t={time.monotonic() - started:6.1f}s  sent {(sent - last_sent) / interval:9,.0f}/s  "
            f"acked {(acked - last_acked) / interval:9,.0f}/s  total sent={sent} acked={acked} "
            f"errors={errors}"
        )
        last_sent, last_acked = sent, acked


async def run_devices(
    devices: Sequence[Awaitable[None]],
    counts: Counts,
    interval: float,
    report: Callable[[str], None] | None,
) -> float:
    """Run every device to completion with live reports; returns the elapsed seconds."""
    started = time.monotonic()
    tasks = [asyncio.ensure_future(device) for device in devices]
    reporter = (
        asyncio.create_task(live_report(counts, started, interval, report))
        if report is not None
        else None
    )
    try:
        await asyncio.gather(*tasks)
    finally:
        if reporter is not None:
            reporter.cancel()
        for task in tasks:
            task.cancel()
    return time.monotonic() - started
