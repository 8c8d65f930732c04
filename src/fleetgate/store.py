"""The embedded SQLite record store: written by the ``sqlite`` sink, read by the API.

One writer connection (used from one worker thread at a time by the sink) and one reader
connection (serialised by a lock) share a WAL-mode database, so API reads never block
ingest. Writes are batched: one transaction per sink batch, with per-device counters
folded in Python first so each batch costs one upsert per device, not per record.
A device's records are found through *spans* (:mod:`fleetgate.store_spans`: id ranges per
device with the device's own runs of ids, one span row upserted per device and commit)
instead of an index on every row.

With ``workers`` > 1 every worker process writes a file of its own (:func:`shard_path`),
so each file has exactly one writer; the process that serves the API reads them all.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from functools import cache
from operator import attrgetter, le
from pathlib import Path
from typing import Any

import orjson

from fleetgate.records import Record, data_json, format_rfc3339_ms
from fleetgate.store_spans import (
    SCHEMA as SPANS_SCHEMA,
)
from fleetgate.store_spans import (
    UPSERT_PREFIX,
    UPSERT_ROW,
    UPSERT_SUFFIX,
    UPSERT_WIDTH,
    DeviceRows,
    SpanIndex,
    SpanPlan,
    add_runs,
    catch_up,
    compact,
    has_runs,
    has_spans,
    lacks_runs,
    walk,
)

log = logging.getLogger("fleetgate.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    device_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    meta TEXT,
    seq INTEGER
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    record_count INTEGER NOT NULL
);
""" + SPANS_SCHEMA.format(schema="main")

_INSERT_PREFIX = (
    "INSERT INTO records (source, device_id, topic, created_at, received_at, data, meta, seq) "
    "VALUES "
)
# Every parameter is a str or an int: sqlite3 binds those directly. A bytes or None
# parameter goes through its adapter lookup first (two failed attribute lookups, each
# raising and clearing an AttributeError), which held the GIL for about half of the store
# thread's instructions per record. So data is bound as text (which is also what the
# column says and what the JSON functions read), "no meta" as '' and "no offset" as 0.
_ROW = "(?, ?, ?, ?, ?, ?, nullif(?, ''), nullif(?, 0))"
# A batch without meta (every Teltonika batch) binds one text fewer per row.
_ROW_NO_META = "(?, ?, ?, ?, ?, ?, NULL, nullif(?, 0))"
# A batch whose every record has an offset (every batch of the pipeline) binds it as it is:
# no SQL function call per row.
_ROWS_WITH_OFFSETS = {
    _ROW: "(?, ?, ?, ?, ?, ?, nullif(?, ''), ?)",
    _ROW_NO_META: "(?, ?, ?, ?, ?, ?, NULL, ?)",
}
# A batch whose records all have one source and one topic and no meta (every Teltonika
# batch) binds those two texts once per statement, as ?1 and ?2, not once per row: binding
# a text holds the GIL for ~850 instructions (SQLite allocates, copies and later frees it),
# an int for ~170, and the four texts per row were half the commit thread's instructions.
# Its rows carry (device, created, received, data, offset), numbered from ?3 ({} fields,
# see _multi_row).
_SHARED_ROW = "(?1, ?{}, ?2, ?{}, ?{}, ?{}, NULL, nullif(?{}, 0))"
_ROWS_WITH_OFFSETS[_SHARED_ROW] = "(?1, ?{}, ?2, ?{}, ?{}, ?{}, NULL, ?{})"
# The spool offset the rows of a transaction reach, committed with them: a replay after a
# restart starts after it, so a record is never stored (or counted) twice.
_SAVE_CURSOR = (
    "INSERT INTO cursors (consumer, seq) VALUES (?, ?) "
    "ON CONFLICT (consumer) DO UPDATE SET seq = max(seq, excluded.seq)"
)
STORE_CONSUMER = "sqlite"
# Rows per INSERT statement. The writer runs in a worker thread and sqlite3 releases the
# GIL around every statement step; one step per row makes the thread queue for the GIL
# behind the event loop thousands of times per batch (a convoy that halved ingest). A
# multi-row statement steps once per chunk. 8 columns x 256 rows stays well below
# SQLite's 32766 bound-parameter limit. A batch's last rows go in statements of 128, 64,
# ... 1 rows (its size in binary): a handful of statements, each prepared once and cached,
# where one statement of exactly the rest's size would mostly miss sqlite3's cache of 128.
ROWS_PER_INSERT = 256
# Opening a file another process is creating waits this long for its lock.
BUSY_TIMEOUT_MS = 5000
# The page size of a new store file (an existing one keeps its own: WAL mode cannot change
# it without a VACUUM). A commit writes each dirty page as a WAL frame and a checkpoint
# copies it page by page: 16 KiB pages (vs SQLite's 4 KiB) took the commit thread's kernel
# time from ~0.58 to ~0.30 us per record and the checkpointer's from ~0.69 to ~0.42
# (bench/store_writes.py, batches of 5,000 Teltonika records, --sync --threaded), the
# commit's instructions -5%, bytes written the same. Reads of one device (latest, pages)
# cost the same; a 5,000-point track ~+13% (3.3 -> 3.7 ms), 64 KiB pages +40% (rejected).
PAGE_SIZE = 16_384
CACHE_KIB = 16_384
WAL_AUTOCHECKPOINT_PAGES = 10_000
# The writer's own checkpoint (inside a commit, at this many WAL pages) is a backstop only:
# a checkpointer thread copies the WAL into the database after commits (see Checkpointer),
# so the writer checkpoints only when the WAL was not restarted for this long (it then
# copies what the checkpointer has not yet, little, and the next write restarts the WAL).
WRITER_AUTOCHECKPOINT_PAGES = 2 * WAL_AUTOCHECKPOINT_PAGES
# A checkpointer round (WAL sync, then checkpoint) at most this often while commits come:
# what the spool keeps for the store beyond its commits is about this much newer data.
CHECKPOINT_INTERVAL_S = 0.5
_DEVICE_PREFIX = (
    "INSERT INTO devices (device_id, source, first_seen, last_seen, record_count) VALUES "
)
_DEVICE_SUFFIX = (
    " ON CONFLICT (device_id) DO UPDATE SET "
    "last_seen = max(last_seen, excluded.last_seen), "
    "record_count = record_count + excluded.record_count, source = excluded.source"
)
_DEVICE_ROW = "(?, ?, ?, ?, ?)"
_DEVICE_WIDTH = 5
_META = attrgetter("meta")
_NEXT_ID = "SELECT coalesce(max(id), 0) + 1 FROM records"
_SPAN_PREFIX = UPSERT_PREFIX.format(schema="main")


@cache
def _multi_row(prefix: str, row: str, rows: int, suffix: str = "", first: int = 1) -> str:
    """``rows`` rows of ``row``; a ``row`` with ``{}`` fields has them numbered, row after
    row, from ``first`` (the parameters before it are bound once per statement)."""
    if "{}" not in row:
        return prefix + ",".join([row] * rows) + suffix
    width = _row_width(row)
    starts = range(first, first + rows * width, width)
    numbered = (row.format(*range(at, at + width)) for at in starts)
    return prefix + ",".join(numbered) + suffix


@cache
def _row_width(row: str) -> int:
    """The parameters each row of ``row``'s shape binds."""
    return row.count("{}") or row.count("?")


def _chunks(rows: int) -> list[int]:
    """Row counts of the statements for ``rows`` rows: full chunks, then the rest in
    powers of two (few distinct statements, so they stay prepared)."""
    sizes = [ROWS_PER_INSERT] * (rows // ROWS_PER_INSERT)
    rest = rows % ROWS_PER_INSERT
    bit = ROWS_PER_INSERT
    while rest:
        bit >>= 1
        if rest & bit:
            sizes.append(bit)
            rest -= bit
    return sizes


@dataclass(slots=True)
class PreparedBatch:
    """A batch's statement parameters, ready for :meth:`RecordStore.commit`."""

    # (placeholders of one row, with or without meta; the rows' parameters) per part.
    parts: list[tuple[str, list[Any]]]
    devices: list[Any]  # the device upsert's, row after row
    cursor: int
    # The rows' devices in insert order: each device's rows are consecutive.
    groups: list[DeviceRows] = field(default_factory=list)
    # Its spans, planned ahead of the commit (RecordStore.planning), if they were.
    spans: SpanPlan | None = None
    # Bound once per row statement before the rows' own (_SHARED_ROW: source, topic).
    head: list[Any] = field(default_factory=list)


_WIDTH_META = _ROW.count("?")
_WIDTH_NO_META = _ROW_NO_META.count("?")
_WIDTH_SHARED = _row_width(_SHARED_ROW)
# Devices summed up between two yields of BatchBuilder.finishing (~0.4 ms of work).
FINISH_DEVICES = 128


class BatchBuilder:
    """Builds a :class:`PreparedBatch` from consecutive slices of a batch, so that a caller
    on the event loop can let other work run between slices.

    Rows are grouped by device (each device's in batch order), so that a device's rows of
    one commit have consecutive ids: one span row per device and commit finds them.

    (A plain loop per record, not ``map`` over attribute getters column by column: on
    CPython 3.11 the loop's specialised slot reads cost less than the getters' calls, and
    the columns then still had to be grouped by a sort.)"""

    __slots__ = ("_cursor", "_metas", "_rows", "_shared", "_width")

    def __init__(self, shared: bool = True) -> None:
        """``shared``: start in the _SHARED_ROW layout (False: per row from the start, for
        a caller whose last batch mixed sources or topics and would only widen again)."""
        self._rows: dict[str, list[Any]] = {}
        self._width = _WIDTH_SHARED if shared else _WIDTH_NO_META
        self._metas = False
        self._cursor = 0
        # The source and topic of every record so far, while they are one each and no
        # record has meta (rows in the _SHARED_ROW layout); None once they are not.
        self._shared: tuple[str, str] | None = None

    def add(self, records: Sequence[Record]) -> None:
        """The next records of the batch, in offset order."""
        if not records:
            return
        if self._width == _WIDTH_SHARED:
            if self._shared is None:
                self._shared = (records[0].source, records[0].topic)
            rest = self._add_shared(records, *self._shared)
            if rest is None:
                self._cursor = records[-1].offset
                return
            self._widen_texts()
            records = records[rest:]
        rows = self._rows
        get = rows.get
        # A frame's records are consecutive and of one device: looked up once per frame.
        device: str | None = None
        params: list[Any] = []
        if self._metas or any(map(_META, records)):
            if not self._metas:
                self._widen()
            dumps = orjson.dumps
            for r in records:
                if r.device_id is not device:
                    device = r.device_id
                    params = get(device) or rows.setdefault(device, [])
                data = r._data_json
                if data is None:
                    data = data_json(r)
                meta = r.meta
                params += (
                    r.source, device, r.topic, r.created_at, r.received_at, data.decode(),
                    dumps(meta).decode() if meta else "", r.offset,
                )
        else:
            for r in records:
                if r.device_id is not device:
                    device = r.device_id
                    params = get(device) or rows.setdefault(device, [])
                # The spool serialised the data already (data_json caches it).
                data = r._data_json
                if data is None:
                    data = data_json(r)
                params += (
                    r.source, device, r.topic, r.created_at, r.received_at, data.decode(),
                    r.offset,
                )
        # Batches come in offset order: the last record's offset is the highest.
        self._cursor = records[-1].offset

    def _add_shared(self, records: Sequence[Record], source: str, topic: str) -> int | None:
        """Rows in the _SHARED_ROW layout, up to the first record with another source or
        topic, or with meta: its index (None: every record went in)."""
        rows = self._rows
        get = rows.get
        device: str | None = None
        params: list[Any] = []
        for r in records:
            if (
                ((text := r.source) is not source and text != source)
                or ((text := r.topic) is not topic and text != topic)
                or r.meta
            ):
                # Rare: found by identity (records may compare equal).
                return next(at for at, other in enumerate(records) if other is r)
            if r.device_id is not device:
                device = r.device_id
                params = get(device) or rows.setdefault(device, [])
            data = r._data_json
            if data is None:
                data = data_json(r)
            params += (device, r.created_at, r.received_at, data.decode(), r.offset)
        return None

    def _widen_texts(self) -> None:
        """A record of another source or topic, or with meta, came: every row so far gets
        the shared source and topic (the per-row layout without meta)."""
        source, topic = self._shared or ("", "")
        for device, params in self._rows.items():
            wide: list[Any] = []
            for start in range(0, len(params), _WIDTH_SHARED):
                wide += (source, params[start], topic, *params[start + 1 : start + 5])
            self._rows[device] = wide
        self._width = _WIDTH_NO_META
        self._shared = None

    def _widen(self) -> None:
        """A record with meta came: every row so far gets an empty meta."""
        for device, params in self._rows.items():
            wide: list[Any] = []
            for start in range(0, len(params), _WIDTH_NO_META):
                wide += params[start : start + 6]
                wide += ("", params[start + 6])
            self._rows[device] = wide
        self._width = _WIDTH_META
        self._metas = True

    def finish(self) -> PreparedBatch:
        steps = self.finishing()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                batch: PreparedBatch = done.value
                return batch

    def finishing(self) -> Generator[None, None, PreparedBatch]:
        """:meth:`finish` in steps of :data:`FINISH_DEVICES` devices (a caller on the event
        loop lets other work run at each ``yield``); returns the batch."""
        width = self._width
        shared = self._shared if width == _WIDTH_SHARED else None
        # Where a row's device time and receive time are (the shared layout has no source
        # and topic before them).
        created_at, received_at = (1, 2) if shared else (3, 4)
        devices: list[Any] = []
        groups: list[DeviceRows] = []
        new = tuple.__new__  # DeviceRows is a named tuple: made in C, not by its __new__
        offsets = 0
        # Every row's parameters, device after device (gathered here, step by step: all of
        # them at the end took ~2 ms for 10,000 rows in one piece).
        rows: list[Any] = []
        for number, (device, params) in enumerate(self._rows.items(), 1):
            rows += params
            created = params[created_at::width]
            received = params[received_at::width]
            count = len(created)
            # Device times in order (nearly always): the first and the last are the range.
            if count == 1 or all(map(le, created, created[1:])):
                groups.append(new(DeviceRows, (device, count, created[0], created[-1], True)))
            else:
                groups.append(
                    new(DeviceRows, (device, count, min(created), max(created), False))
                )
            # The device row as the per-record fold had it: the first record's source and
            # receive time (first_seen of a new device), the latest receive time, the count.
            source = shared[0] if shared else params[0]
            devices += (device, source, received[0], max(received), count)
            offsets += params[width - 1 :: width].count(0)
            if not number % FINISH_DEVICES:
                yield
        row = {_WIDTH_META: _ROW, _WIDTH_NO_META: _ROW_NO_META}.get(width, _SHARED_ROW)
        if not offsets:  # every record has its offset: bound as it is
            row = _ROWS_WITH_OFFSETS[row]
        return PreparedBatch(
            [(row, rows)] if rows else [], devices, self._cursor, groups,
            head=[*shared] if shared else [],
        )


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    device_id: str
    source: str
    first_seen: int
    last_seen: int
    record_count: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "source": self.source,
            "first_seen": format_rfc3339_ms(self.first_seen),
            "last_seen": format_rfc3339_ms(self.last_seen),
            "record_count": self.record_count,
        }


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # First, so that switching to WAL waits for a process still creating the database
    # instead of failing with "database is locked".
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Before WAL mode: it takes effect only while the file is still empty.
    connection.execute(f"PRAGMA page_size={PAGE_SIZE}")
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power loss
    # can undo the last transactions. The durable spool will own power-loss durability.
    connection.execute("PRAGMA synchronous=NORMAL")
    # (Measured with the per-record index that spans replaced.) The device index took
    # inserts at one leaf page per active device: with a thousand devices SQLite's default
    # 2 MB page cache could not hold those leaves and re-read them for every batch.
    # Checkpointing every 1,000 WAL pages (the default) copies and fsyncs
    # the same hot pages again and again; every 10,000 pages (~40 MB of WAL) does it a
    # tenth as often. Together about 1.8x the sustained write rate with 1,000 trackers.
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    connection.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    return connection


def shard_path(base: str | Path, index: int) -> Path:
    """The database worker ``index`` writes: worker 0 the configured file, worker 1
    ``fleetgate.w1.db`` beside it, and so on (one writer per file, no lock to share)."""
    base = Path(base)
    return base if index == 0 else base.with_name(f"{base.stem}.w{index}{base.suffix}")


def existing_shards(base: str | Path) -> list[Path]:
    """Shard files of ``base`` on disk (from this run's workers or an earlier run's)."""
    base = Path(base)
    pattern = re.compile(rf"{re.escape(base.stem)}\.w(\d+){re.escape(base.suffix)}$")
    found = [
        (int(match.group(1)), candidate)
        for candidate in base.parent.glob(f"{base.stem}.w*{base.suffix}")
        if (match := pattern.fullmatch(candidate.name))
    ]
    return [candidate for _, candidate in sorted(found)]


class RecordStore:
    """SQLite-backed record store.

    With ``read_shards`` the reader also sees the other workers' files (see
    :func:`shard_path`): every query runs over all of them, so the API answers for the whole
    server whichever worker a device talked to.
    """

    def __init__(self, path: str | Path, read_shards: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path)
        self._writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
        # A multi-row statement keeps the pages it changes in a statement journal (to undo
        # itself on an error); past 64 KiB SQLite spills that to a temporary file, ~0.4 KB
        # of write() per record when it touched a thousand devices' pages. In memory instead:
        # the journal lives for one statement and holds at most the pages it changes.
        self._writer.execute("PRAGMA temp_store=MEMORY")
        self._writer.executescript(_SCHEMA)
        columns = {row[1] for row in self._writer.execute("PRAGMA table_info(records)")}
        if "seq" not in columns:  # a store made before records carried their offset
            self._writer.execute("ALTER TABLE records ADD COLUMN seq INTEGER")
        # Spans for rows no span covers: every row of a store made before spans (and its
        # per-record index dropped), or rows an older version wrote into this file; and all
        # spans again when some have no runs (written before spans had them).
        add_runs(self._writer)
        self._spans = SpanIndex.load(self._writer)
        last = self._writer.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
        if last > self._spans.covered() or self._has_old_index() or lacks_runs(self._writer):
            catch_up(self._writer)
            self._spans = SpanIndex.load(self._writer)
        # The id the next batch's first row gets (None: not known, asked in the commit).
        self._next_row: int | None = last + 1
        # Readers: this file, and with ``read_shards`` every worker's file, ATTACHed to as
        # few connections as SQLite allows (at most 10 attached databases per connection).
        shards = [self.path, *(existing_shards(self.path) if read_shards else [])]
        self._groups: list[_ReadGroup] = []
        for first in range(0, len(shards), _SHARDS_PER_READER):
            self._groups.append(_ReadGroup(shards[first : first + _SHARDS_PER_READER], first))
        self._read_lock = threading.Lock()
        # The spool offset of the last commit; the checkpointer (started by the first
        # commit) makes commits durable and says up to which offset.
        self._committed = 0
        self._checkpointer: Checkpointer | None = None

    def _has_old_index(self) -> bool:
        row = self._writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'records_by_device_time'"
        ).fetchone()
        return row is not None

    def sync(self) -> None:
        """Make every committed transaction survive a power loss. With ``synchronous=NORMAL``
        a commit reaches the WAL file's page cache only; checkpoints sync what they copy into
        the database file, so syncing the WAL covers everything committed before this call."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: everything is in the database file, synced by its checkpoint
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def synced_cursor(self) -> int:
        """The highest spool offset of a commit the checkpointer has made power-loss
        durable (0: none yet in this run; :meth:`sync` makes everything so)."""
        return 0 if self._checkpointer is None else self._checkpointer.synced

    def committed_cursor(self) -> int:
        """The spool offset of this run's last commit (0: none)."""
        return self._committed

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._writer.close()
        for group in self._groups:
            group.connection.close()

    # -- writing (sink side) ---------------------------------------------------------------
    def write(self, records: Sequence[Record]) -> None:
        """Insert ``records``, update device counters and save the spool cursor (the
        highest offset written) in one transaction."""
        self.commit(self.prepare(records))

    @staticmethod
    def prepare(records: Sequence[Record]) -> PreparedBatch:
        """The statement parameters of a batch: pure Python work, done where the caller
        runs (the event loop), so that :meth:`commit` in a worker thread spends its time in
        SQLite (which releases the GIL) instead of competing with the loop for it. A caller
        that must not hold the loop that long builds it in slices (:class:`BatchBuilder`)."""
        builder = BatchBuilder()
        builder.add(records)
        return builder.finish()

    def planning(self, batch: PreparedBatch) -> Generator[None, None, None]:
        """Plan ``batch``'s spans ahead of its commit, in steps (see
        :meth:`SpanIndex.planning`): a caller on the event loop runs them between its other
        work, and the commit thread does not hold the GIL for them in one piece (~3 ms per
        1,000 devices). Meant for the time between two commits (the sink publishes one
        batch at a time); the commit plans again if the plan no longer fits."""
        if batch.groups and self._next_row is not None:
            batch.spans = yield from self._spans.planning(batch.groups, self._next_row)

    def commit(self, batch: PreparedBatch) -> None:
        """Write a prepared batch in one transaction (rows, spans, device counters, cursor)."""
        writer = self._writer
        writer.execute("BEGIN")
        try:
            plan = None
            last_id = None
            if batch.groups:
                first_id = writer.execute(_NEXT_ID).fetchone()[0]
                last_id = first_id - 1
                for row, params in batch.parts:
                    last_id = self._insert(
                        _INSERT_PREFIX, row, _row_width(row), params, head=batch.head
                    )
                rows = sum(group.rows for group in batch.groups)
                # SQLite gives a row without an id the table's highest plus one.
                if last_id != first_id + rows - 1:
                    raise sqlite3.IntegrityError(
                        f"rows got ids up to {last_id}, expected {first_id}..{first_id + rows - 1}"
                    )
                plan = batch.spans
                if plan is None or plan.first_id != first_id or plan.base != self._spans.version:
                    plan = self._spans.plan(batch.groups, first_id)
                self._insert(_SPAN_PREFIX, UPSERT_ROW, UPSERT_WIDTH, plan.rows, UPSERT_SUFFIX)
                for device in self._spans.crowded(plan):
                    plan.counts[device] = compact(writer, device)
            self._insert(_DEVICE_PREFIX, _DEVICE_ROW, _DEVICE_WIDTH, batch.devices, _DEVICE_SUFFIX)
            if batch.cursor:
                writer.execute(_SAVE_CURSOR, (STORE_CONSUMER, batch.cursor))
        except BaseException:
            writer.execute("ROLLBACK")
            # A plan made ahead is not used again (compacting changed its counts), and the
            # next id is asked again.
            batch.spans = None
            self._next_row = None
            raise
        writer.execute("COMMIT")
        if plan is not None:
            self._spans.apply(plan)
        if last_id is not None:
            self._next_row = last_id + 1
        if batch.cursor:
            self._committed = max(self._committed, batch.cursor)
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self)
        self._checkpointer.poke()

    def cursor(self) -> int | None:
        """The highest spool offset committed to this file, if any."""
        row = self._writer.execute(
            "SELECT seq FROM cursors WHERE consumer = ?", (STORE_CONSUMER,)
        ).fetchone()
        return int(row[0]) if row else None

    def _insert(
        self,
        prefix: str,
        row: str,
        width: int,
        params: list[Any],
        suffix: str = "",
        *,
        head: list[Any] | None = None,
    ) -> int:
        """``params`` (``width`` per row) in multi-row statements of :func:`_chunks` sizes,
        each statement binding ``head`` before its rows' parameters; the last inserted row's
        id."""
        start = 0
        last = 0
        head = head or []
        for rows in _chunks(len(params) // width):
            end = start + rows * width
            sql = _multi_row(prefix, row, rows, suffix, len(head) + 1)
            chunk = params[start:end]
            cursor = self._writer.execute(sql, head + chunk if head else chunk)
            last = cursor.lastrowid or last
            start = end
        return last

    # -- reading (API side) ----------------------------------------------------------------
    def _query(
        self, select: str, params: Sequence[Any], tail: str = "", tail_params: Sequence[Any] = ()
    ) -> list[Any]:
        """``select`` (``{schema}`` placeholders, ``params`` each) over every store file,
        ``tail`` applied per reader connection; the rows of all connections, concatenated."""
        rows: list[Any] = []
        with self._read_lock:
            for group in self._groups:
                sql = " UNION ALL ".join(select.format(schema=name) for name in group.schemas)
                bound = [*params] * len(group.schemas) + [*tail_params]
                rows += group.connection.execute(sql + tail, bound).fetchall()
        return rows

    def _device_rows(self, where: str = "", params: Sequence[Any] = ()) -> list[Any]:
        rows = self._query(
            "SELECT device_id, source, first_seen, last_seen, record_count "
            "FROM {schema}.devices" + where,
            params,
        )
        merged: dict[str, list[Any]] = {}
        for device_id, source, first_seen, last_seen, count in rows:
            entry = merged.get(device_id)
            if entry is None:
                merged[device_id] = [device_id, source, first_seen, last_seen, count]
            else:
                entry[1] = max(entry[1], source)
                entry[2] = min(entry[2], first_seen)
                entry[3] = max(entry[3], last_seen)
                entry[4] += count
        return sorted(merged.values(), key=lambda row: row[3], reverse=True)

    def devices(self) -> list[DeviceSummary]:
        return [DeviceSummary(*row) for row in self._device_rows()]

    def device(self, device_id: str) -> DeviceSummary | None:
        rows = self._device_rows(" WHERE device_id = ?", (device_id,))
        return DeviceSummary(*rows[0]) if rows else None

    def records(
        self,
        device_id: str,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """A device's records in JSON form, newest (device time) first."""
        rows = self._newest(
            self._walk_all(device_id, _RECORD_COLUMNS, since=since, until=until, limit=limit),
            limit,
            created=6,
            row_id=7,
        )
        return [_row_json(row) for row in rows]

    def _walk_all(
        self,
        device_id: str,
        columns: str,
        *,
        since: int | None = None,
        until: int | None = None,
        where: str = "",
        params: Sequence[Any] = (),
        limit: int,
    ) -> list[Any]:
        """Each store file's newest ``limit`` rows of the device (see :func:`walk`), the
        files' rows concatenated."""
        rows: list[Any] = []
        with self._read_lock:
            for group in self._groups:
                for _, schema in group.numbered():
                    rows += walk(
                        group.connection, schema, device_id, columns=columns, since=since,
                        until=until, where=where, params=params, limit=limit,
                        runs=group.runs(schema),
                    )
        return rows

    def count(self) -> int:
        rows = self._query("SELECT count(*) FROM {schema}.records", ())
        return sum(int(row[0]) for row in rows)

    @staticmethod
    def _newest(rows: list[Any], limit: int, created: int, row_id: int) -> list[Any]:
        """The ``limit`` newest rows by (created_at, id), newest first."""
        rows.sort(key=lambda row: (row[created], row[row_id]), reverse=True)
        return rows[:limit]

    # -- reading for the REST API: pages, positions, tracks ------------------------------------
    def records_page(
        self,
        device_id: str,
        *,
        since: int | None = None,
        until: int | None = None,
        topic: str | None = None,
        limit: int = 100,
        after: PageCursor | None = None,
    ) -> tuple[list[dict[str, Any]], PageCursor | None]:
        """A page of a device's records (JSON form), newest first, and the next page's cursor.

        Each store file is read through its spans (:func:`walk`), within the time range and
        past the cursor; rows are ordered by ``(created_at, file, id)``, so pages neither
        repeat nor skip a record while new ones arrive.
        """
        rows: list[Any] = []
        with self._read_lock:
            for group in self._groups:
                for shard, schema in group.numbered():
                    where, params = _page_filter(shard, topic, after)
                    # Nothing after the cursor is newer than it: spans newer are skipped.
                    newest = until
                    if after is not None and (until is None or after.created_at < until):
                        newest = after.created_at
                    before = None
                    if after is not None and after.shard == shard:
                        before = (after.created_at, after.row_id)
                    rows += [
                        (*row, shard)
                        for row in walk(
                            group.connection, schema, device_id, columns=_RECORD_COLUMNS,
                            since=since, until=newest, where=where, params=params,
                            before=before, limit=limit + 1, runs=group.runs(schema),
                        )
                    ]
        rows.sort(key=lambda row: (row[6], row[8], row[7]), reverse=True)
        rows = rows[: limit + 1]
        cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            cursor = PageCursor(created_at=last[6], shard=last[8], row_id=last[7])
        return [_row_json(row) for row in rows], cursor

    def positions(self, device_ids: Sequence[str]) -> dict[str, tuple[float, float, int]]:
        """Each device's newest position ``(latitude, longitude, created_at)``, if it has one
        among its newest :data:`POSITION_LOOKBACK` records (of each store file)."""
        found: dict[str, tuple[float, float, int]] = {}
        for device_id in device_ids:
            candidates: list[Any] = []
            with self._read_lock:
                for group in self._groups:
                    for _, schema in group.numbered():
                        rows = walk(
                            group.connection, schema, device_id, columns=_POSITION_COLUMNS,
                            limit=POSITION_LOOKBACK, runs=group.runs(schema),
                        )
                        # The newest record with a position: the walk stops there.
                        first = next(filter(_is_position, rows), None)
                        rows.close()
                        if first is not None:
                            candidates.append(first)
            newest = self._newest(candidates, 1, created=2, row_id=3)
            if newest:
                lat, lon, created, _id = newest[0]
                found[device_id] = (float(lat), float(lon), int(created))
        return found

    def track(
        self, device_id: str, since: int | None, until: int | None, limit: int
    ) -> list[tuple[float, float, int]]:
        """A device's positions ``(latitude, longitude, created_at)`` in the time range, oldest
        first: the newest ``limit`` of them."""
        rows = self._newest(
            self._walk_all(
                device_id, _POSITION_COLUMNS, since=since, until=until,
                where=f" AND {_HAS_POSITION}", limit=limit,
            ),
            limit,
            created=2,
            row_id=3,
        )
        return [(float(lat), float(lon), int(created)) for lat, lon, created, _id in reversed(rows)]


class Checkpointer:
    """Syncs the writer's WAL and copies it into the database file, in a thread of its own
    with a connection of its own, after commits.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold: the
    writer thread copied ~40 MB and waited for two fsyncs (WAL, database) while the store's
    queue filled and ingest waited for it (the store holds up new frames), and the sink's
    once-a-second ``fdatasync`` of the WAL sat in the commit thread too. Here a round first
    syncs the WAL (every commit before it is then power-loss durable: :attr:`synced`), then
    runs a PASSIVE checkpoint (``synchronous=NORMAL``: it syncs the WAL before copying and
    the database after), while the writer goes on committing. A checkpoint never blocks the
    writer; the WAL restarts at the writer's next transaction once it is all copied."""

    def __init__(self, store: RecordStore, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._store = store
        self._connection = _connect(store.path)
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.synced = 0
        self._thread = threading.Thread(
            target=self._run, name=f"store-checkpoint {store.path.name}", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: run a round (once the one under way, if any, is done)."""
        self._wake.set()

    def round(self) -> None:
        """Sync the WAL (commits so far are durable), then checkpoint it."""
        committed = self._store.committed_cursor()
        self._store.sync()
        self.synced = max(self.synced, committed)
        self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            started = time.monotonic()
            try:
                self.round()
            except (OSError, sqlite3.Error) as exc:
                # Nothing is lost: the spool keeps what is not synced, and the writer's
                # own checkpoint is the backstop. The next commit tries again.
                log.warning("store checkpoint failed: %s", exc)
            # Commits in the meantime wait for the next round (fewer, larger checkpoints).
            if self._stopping.wait(max(0.0, started + self._interval_s - time.monotonic())):
                return

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._connection.close()


# main + the most databases SQLite lets one connection attach (SQLITE_MAX_ATTACHED, 10).
_SHARDS_PER_READER = 1 + 10


class _ReadGroup:
    """One reader connection: the first of its files as ``main``, the others ATTACHed."""

    def __init__(self, paths: Sequence[Path], first_index: int) -> None:
        self.connection = _connect(paths[0])
        self.first_index = first_index
        self.schemas = ["main"]
        for number, path in enumerate(paths[1:], start=1):
            self.connection.execute(f"ATTACH DATABASE ? AS shard{number}", (str(path),))
            self.schemas.append(f"shard{number}")
        for schema in self.schemas:
            # A file no writer of this version opened yet (an earlier run's worker, with
            # more workers than now): its spans are built here, once.
            if not has_spans(self.connection, schema) and _has_records(self.connection, schema):
                catch_up(self.connection, schema)
        self._runs: set[str] = set()

    def runs(self, schema: str) -> bool:
        """Whether the file's spans have the ``runs`` column. A file a worker of an older
        version wrote has none (its spans are read by id range) until its writer, upgraded,
        adds them: looked up again until then (a column is never dropped)."""
        if (
            schema not in self._runs
            and has_spans(self.connection, schema)
            and has_runs(self.connection, schema)
        ):
            self._runs.add(schema)
        return schema in self._runs

    def numbered(self) -> list[tuple[int, str]]:
        """(shard index across all files, schema name) of this connection's files."""
        return [(self.first_index + n, schema) for n, schema in enumerate(self.schemas)]


# Positions in record data: Teltonika's top-level latitude/longitude, Tesla's Location.
# A Teltonika record without a GPS fix says 0, 0: not a position.
_LAT = "coalesce(json_extract(data, '$.latitude'), json_extract(data, '$.Location.latitude'))"
_LON = "coalesce(json_extract(data, '$.longitude'), json_extract(data, '$.Location.longitude'))"
_HAS_POSITION = (
    f"{_LAT} IS NOT NULL AND {_LON} IS NOT NULL AND NOT ({_LAT} = 0 AND {_LON} = 0)"
)
# How far back (records) the device list looks for a device's last position.
POSITION_LOOKBACK = 500
# The columns reads take (``walk`` adds created_at and id after them).
_RECORD_COLUMNS = "source, device_id, topic, created_at, received_at, data"
_POSITION_COLUMNS = f"{_LAT} AS lat, {_LON} AS lon"


def _has_records(connection: sqlite3.Connection, schema: str) -> bool:
    row = connection.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'records'"
    ).fetchone()
    return row is not None


def _is_position(row: Sequence[Any]) -> bool:
    lat, lon = row[0], row[1]
    return lat is not None and lon is not None and not (lat == 0 and lon == 0)


def _page_filter(
    shard: int, topic: str | None, after: PageCursor | None
) -> tuple[str, list[Any]]:
    """The ``AND ...`` condition of a page in file ``shard``: the topic, and rows after the
    cursor in ``(created_at, shard, id)`` descending order."""
    where = ""
    params: list[Any] = []
    if topic is not None:
        where += " AND topic = ?"
        params.append(topic)
    if after is not None:
        if shard < after.shard:
            where += " AND created_at <= ?"
            params.append(after.created_at)
        elif shard == after.shard:
            where += " AND (created_at, id) < (?, ?)"
            params += [after.created_at, after.row_id]
        else:
            where += " AND created_at < ?"
            params.append(after.created_at)
    return where, params


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where the next page of a device's records starts (opaque text in the API)."""

    created_at: int
    shard: int
    row_id: int

    def encode(self) -> str:
        text = f"{self.created_at}.{self.shard}.{self.row_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> PageCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            created_at, shard, row_id = (int(part) for part in raw.split("."))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"not a cursor from this API: {text!r}") from None
        return cls(created_at, shard, row_id)


def _row_json(row: Sequence[Any]) -> dict[str, Any]:
    source, device, topic, created, received, data = row[:6]
    return {
        "source": source,
        "device_id": device,
        "topic": topic,
        "created_at": format_rfc3339_ms(created),
        "received_at": format_rfc3339_ms(received),
        "data": orjson.loads(data),
    }
