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
from fleetgate.store import BatchBuilder, PreparedBatch, RecordStore

# Records prepared between two yields to the event loop (about 0.3 ms of work).
PREPARE_SLICE = 512
# After a batch that could not keep the store's shared-texts layout, the next batches are
# built per row; one in this many tries the shared layout again (a fleet that mixed only
# for a while gets it back).
SHARED_RETRY = 64


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
        # What an earlier run committed may still sit in the page cache (a killed process).
        self.store.sync()
        self._synced = self.store.cursor() or 0
        # Whether the next batch starts in the store's shared-texts layout (see publish).
        self._shared_layout = True
        self._batches = 0

    def committed_offset(self) -> int | None:
        # The store commits the spool offset with its rows: replay resumes exactly there.
        return self.store.cursor()

    def synced_offset(self) -> int | None:
        # synchronous=NORMAL: a commit survives a crash of the process, not of the machine,
        # until the WAL is synced; the spool must keep those records until then. The store's
        # checkpointer thread syncs after commits (store.Checkpointer), off the commit path.
        return max(self._synced, self.store.synced_cursor())

    async def publish(self, batch: Sequence[Record]) -> None:
        # The parameters and the spans are made here, on the loop; the thread spends its
        # time in SQLite, which releases the GIL, instead of competing with the loop for it.
        # In steps (records, then devices), with the loop's other work (reads, acks) let in
        # between: a 10,000-record batch from 1,000 devices in one go held the loop for
        # ~10 ms, and its spans the commit thread (and with it the GIL) for 3-8 ms.
        builder = BatchBuilder(shared=self._shared_layout)
        for start in range(0, len(batch), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            builder.add(batch[start : start + PREPARE_SLICE])
        finishing = builder.finishing()
        while True:
            await asyncio.sleep(0)
            try:
                next(finishing)
            except StopIteration as done:
                prepared: PreparedBatch = done.value
                break
        # A batch that mixed sources or topics (or had meta) turned its rows per-row in one
        # loop step; the next starts per-row, and every SHARED_RETRY-th tries again.
        self._batches += 1
        self._shared_layout = bool(prepared.head) or not self._batches % SHARED_RETRY
        for _ in self.store.planning(prepared):
            await asyncio.sleep(0)
        try:
            await asyncio.to_thread(self.store.commit, prepared)
        except sqlite3.OperationalError as exc:
            # A full disk, an I/O error, a lock: the same rows may go in later.
            raise TransientSinkError(f"sqlite: {exc}") from exc
        # Anything else (a value SQLite refuses, DataError, OverflowError) is about these
        # rows: the runner finds the refused ones and sets them aside.

    async def close(self) -> None:
        # The runner saves its final cursor (everything confirmed) as the spool's.
        self.store.sync()
        self._synced = max(self._synced, self.store.committed_cursor())
        self.store.close()

    def describe(self) -> str:
        return f"sqlite {self.store.path}"
