"""``sqlite``: the embedded store (WAL, one transaction per batch); it backs the REST API.

Confirmation = the transaction committed; the transaction also saves the spool offset its
rows reach, so after a restart the store resumes exactly after what it holds. The pipeline
always routes every record here when the store is enabled.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.records import Record
from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError
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

    def committed_offset(self) -> int | None:
        # The store commits the spool offset with its rows: replay resumes exactly there.
        return self.store.cursor()

    async def publish(self, batch: Sequence[Record]) -> None:
        # The parameters are built here, on the loop; the thread spends its time in SQLite,
        # which releases the GIL, instead of competing with the loop for it.
        prepared = self.store.prepare(batch)
        try:
            await asyncio.to_thread(self.store.commit, prepared)
        except sqlite3.OperationalError as exc:
            # A full disk, an I/O error, a lock: the same rows may go in later.
            raise TransientSinkError(f"sqlite: {exc}") from exc
        # Anything else (a value SQLite refuses, DataError, OverflowError) is about these
        # rows: the runner finds the refused ones and sets them aside.

    async def close(self) -> None:
        self.store.close()

    def describe(self) -> str:
        return f"sqlite {self.store.path}"
