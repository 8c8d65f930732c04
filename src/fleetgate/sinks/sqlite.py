"""``sqlite``: the embedded store (WAL, one transaction per batch); it backs the REST API.

Confirmation = the transaction committed. The pipeline always routes every record here
when the store is enabled, and the default ack level waits for this confirmation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.records import Record
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.store import RecordStore


class SqliteSink(Sink):
    name: ClassVar[str] = "sqlite"

    def __init__(
        self, config: Mapping[str, Any], context: SinkContext, store: RecordStore | None = None
    ) -> None:
        super().__init__(config, context)
        path = config.get("path") or f"{context.data_dir}/fleetgate.db"
        self.store = store or RecordStore(path)

    async def publish(self, batch: Sequence[Record]) -> None:
        # sqlite3 releases the GIL while it works; a thread keeps the event loop free.
        await asyncio.to_thread(self.store.write, batch)

    async def close(self) -> None:
        self.store.close()

    def describe(self) -> str:
        return f"sqlite {self.store.path}"
