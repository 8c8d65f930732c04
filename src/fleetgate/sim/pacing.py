"""The send schedule every simulated device shares: a steady rate, or as fast as allowed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator


async def paced(
    interval_s: float, limit: int | None, deadline: float | None, rng: random.Random
) -> AsyncIterator[int]:
    """Yield 0, 1, 2, ... one every ``interval_s`` (0: no wait), until ``limit`` items or
    the monotonic ``deadline``. The first comes after a random part of one interval, so
    devices started together do not all send at once."""
    next_send = time.monotonic() + (rng.uniform(0, interval_s) if interval_s else 0.0)
    count = 0
    while limit is None or count < limit:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if interval_s and next_send > now:
            await asyncio.sleep(next_send - now)
        next_send += interval_s
        yield count
        count += 1
