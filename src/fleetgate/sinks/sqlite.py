"""``sqlite``: the embedded store (WAL, one transaction per batch); it backs the REST API.

Confirmation = the transaction committed. The pipeline always routes every record here
when the store is enabled, and the default ack level waits for this confirmation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.records import Record
from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.store import RecordStore


class SqliteSettings(Section):
    """Where the store file is (the ``store`` section's ``path``)."""

    path: str | None = None  # default: <data_dir>/fleetgate.db


class SqliteSink(Sink):
    name: ClassVar[str] = "sqlite"
    Settings: ClassVar[type[Section]] = SqliteSettings
    settings: SqliteSettings

    def __init__(
        self,
        settings: Section | Mapping[str, Any],
        context: SinkContext,
        store: RecordStore | None = None,
    ) -> None:
        super().__init__(settings, context)
        path = self.settings.path or f"{context.data_dir}/fleetgate.db"
        self.store = store or RecordStore(path)

    async def publish(self, batch: Sequence[Record]) -> None:
        # sqlite3 releases the GIL while it works; a thread keeps the event loop free.
        await asyncio.to_thread(self.store.write, batch)

    async def close(self) -> None:
        self.store.close()

    def describe(self) -> str:
        return f"sqlite {self.store.path}"
