"""LoopLagProbe: a loop held by other work shows in ``fleetgate_event_loop_lag_seconds``."""

from __future__ import annotations

import asyncio
import time

from fleetgate.observability.loop_lag import LOOP_LAG, LoopLagProbe
from fleetgate.observability.metrics import REGISTRY

NAME = "fleetgate_event_loop_lag_seconds"


def observed(above: str | None = None) -> float:
    """Observations so far (``above``: only those over that bucket's bound)."""
    count = REGISTRY.get_sample_value(f"{NAME}_count") or 0.0
    if above is None:
        return count
    return count - (REGISTRY.get_sample_value(f"{NAME}_bucket", {"le": above}) or 0.0)


async def test_a_held_loop_is_observed_as_late_as_it_was_held() -> None:
    before, slow_before = observed(), observed(above="0.025")
    probe = LoopLagProbe(interval_s=0.01)
    probe.start()
    try:
        # Holds the loop for 100 ms from before the timer is due (10 ms after start): the
        # timer runs at least 90 ms late.
        asyncio.get_running_loop().call_soon(time.sleep, 0.1)
        await asyncio.sleep(0.15)
    finally:
        probe.stop()
    assert observed(above="0.025") - slow_before >= 1
    assert observed() - before >= 2  # re-armed after each tick


async def test_a_stopped_probe_observes_nothing_more() -> None:
    probe = LoopLagProbe(interval_s=0.01)
    probe.start()
    probe.stop()
    before = observed()
    await asyncio.sleep(0.05)
    assert observed() == before


def test_the_histogram_is_exported() -> None:
    assert LOOP_LAG._name == NAME
    assert f"{NAME}_bucket" in {
        sample.name for metric in REGISTRY.collect() for sample in metric.samples
    }
