"""Waiting for the embedded store: an ack means "spooled"; the store commits a moment later."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetgate.store import RecordStore

TIMEOUT_S = 10.0


async def stored(
    store: RecordStore | None, device_id: str, count: int, topic: str | None = None
) -> list[dict[str, Any]]:
    """The device's records (of ``topic``), once at least ``count`` are in the store."""
    assert store is not None, "the embedded store is enabled"
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            rows = [r for r in store.records(device_id) if topic is None or r["topic"] == topic]
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.01)
