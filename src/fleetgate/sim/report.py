"""Live progress lines shared by the device simulators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

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
    stop: asyncio.Event | None = None,
) -> float:
    """Run every device to completion with live reports; returns the elapsed seconds.

    ``stop`` set (Ctrl-C in the CLIs) ends every device where it is: the counts then
    describe what was done until then."""
    started = time.monotonic()
    tasks = [asyncio.ensure_future(device) for device in devices]
    reporter = (
        asyncio.create_task(live_report(counts, started, interval, report))
        if report is not None
        else None
    )
    everything: asyncio.Future[Any] = asyncio.gather(*tasks)
    stopped: asyncio.Future[Any] | None = (
        asyncio.ensure_future(stop.wait()) if stop is not None else None
    )
    try:
        if stopped is None:
            await everything
        else:
            await asyncio.wait({everything, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if everything.done():
                everything.result()  # a device's error, as without a stop
    finally:
        if reporter is not None:
            reporter.cancel()
        if stopped is not None:
            stopped.cancel()
        everything.cancel()  # and with it every device still running
        for task in tasks:
            task.cancel()
        # Devices close their connections in their own finally blocks.
        await asyncio.gather(*tasks, return_exceptions=True)
        if everything.done() and not everything.cancelled():
            everything.exception()  # retrieved: devices cancelled here are no error
    return time.monotonic() - started
