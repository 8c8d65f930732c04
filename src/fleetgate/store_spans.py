"""Where a device's records are in the store: spans of row ids instead of a per-record index.

The store inserts each batch grouped by device, so a device's rows of one commit have
consecutive ids. A *span* says "device D has rows between ids ``first_id`` and ``last_id``,
with device times between ``oldest`` and ``newest``"; other devices' rows may lie between
them (a span is extended over later commits). Every read walks the spans of its device that
overlap its time window, newest first, and reads their rows by rowid range.

A span also records its *runs*: each commit writes a device's rows contiguously, so the
device's ids in a span are a few runs (first id, last id), one per commit at most (a run
the next commit's rows follow directly is extended). They are stored varint-coded in the
span's ``runs`` blob, and reads look up only those ids, so a read touches its device's
rows only, however many other devices wrote in between. A span holds at most
:data:`MAX_RUNS` runs. A span without runs (written before spans had them) is read by its
whole id range; a writer opening such a file builds its spans again.

Why: a ``(device_id, created_at, id)`` index on every row took over half of the insert CPU
and touched an index leaf page per active device per commit (with 1,000 trackers most of
the bytes written per record). A commit now upserts one span row per device of its batch,
and the spans a commit extends are the few most recent rows of a small table.

Rules that keep spans few and reads short:

* a device's latest span is extended while it stays within :data:`SPAN_WIDTH_MS` of device
  time and :data:`SPAN_MAX_IDS` ids (the id bound keeps a read's scan short for a device
  whose clock stands still or a store written very fast);
* a device with :data:`MAX_SPANS_PER_DEVICE` spans has its older spans merged pairwise.

``ordered`` marks a span whose rows of its device have non-decreasing device times in id
order: its rows are then read in id order, newest first, and a read stops after the rows it
needs instead of sorting the span.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

# Extend a device's latest span while its device times stay within this width. Never
# lower: more spans made reads walk more of them.
SPAN_WIDTH_MS = 10 * 60 * 1000
# ... and while it covers at most this many row ids (every device's rows count).
SPAN_MAX_IDS = 131_072
# A device with this many spans has its older ones merged pairwise.
MAX_SPANS_PER_DEVICE = 8192

MIN_TIME = -(2**63)
MAX_TIME = 2**63 - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS {schema}.spans (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    oldest INTEGER NOT NULL,
    newest INTEGER NOT NULL,
    ordered INTEGER NOT NULL,
    runs BLOB
);
CREATE INDEX IF NOT EXISTS {schema}.spans_by_device ON spans (device_id, first_id);
"""
# The index the spans replace (stores made before them).
OLD_INDEX = "records_by_device_time"

UPSERT_PREFIX = (
    "INSERT INTO {schema}.spans (id, device_id, first_id, last_id, oldest, newest, ordered, runs) "
    "VALUES "
)
UPSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
UPSERT_WIDTH = 8
# Only the columns the index does not hold change: extending a span leaves the index alone.
UPSERT_SUFFIX = (
    " ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, oldest = excluded.oldest, "
    "newest = excluded.newest, ordered = excluded.ordered, runs = excluded.runs"
)
_CATCH_UP_ROWS = 256


def upsert_sql(rows: int, schema: str = "main") -> str:
    """One statement upserting ``rows`` spans."""
    return UPSERT_PREFIX.format(schema=schema) + ",".join([UPSERT_ROW] * rows) + UPSERT_SUFFIX


# A span holds at most this many runs (a run: consecutive ids of its device, one commit's
# rows or more); then the device's next rows start a new span. Keeps a span row (its
# ``runs`` blob, 2-4 bytes a run) small, so the upsert rewriting it per commit stays cheap.
MAX_RUNS = 64


def encode_runs(runs: Sequence[tuple[int, int]], first_id: int) -> bytes:
    """``runs`` (first id, last id; ascending, disjoint, the first starting at ``first_id``)
    as varints: per run, the ids skipped since the previous run's end (the first run: since
    ``first_id``), then its length minus one."""
    out = bytearray()
    end = first_id - 1
    for start, last in runs:
        _varint(out, start - end - 1)
        _varint(out, last - start)
        end = last
    return bytes(out)


def decode_runs(blob: bytes, first_id: int) -> list[tuple[int, int]]:
    """The runs :func:`encode_runs` encoded, ascending."""
    runs = []
    end = first_id - 1
    value = shift = 0
    pending: int | None = None
    for byte in blob:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        if pending is None:
            pending = end + 1 + value
        else:
            end = pending + value
            runs.append((pending, end))
            pending = None
        value = shift = 0
    return runs


def _varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# Not frozen (a frozen dataclass's __init__ costs a setattr call per field, and the writer
# makes one per device per commit), but never changed once made.
@dataclass(slots=True)
class Span:
    """A device's span. Its runs: ``closed`` (encoded, ``closed_count`` of them, the last
    ending at ``closed_end``; ``first_id - 1`` with none) and the open run, from
    ``open_first`` to ``last_id``, which the device's next rows extend when they follow it
    directly. ``closed`` None: a span written before spans had runs (read by id range)."""

    id: int
    device_id: str
    first_id: int
    last_id: int
    oldest: int
    newest: int
    ordered: bool
    closed: bytes | None = b""
    closed_count: int = 0
    closed_end: int = 0
    open_first: int = 0

    @classmethod
    def new(
        cls, span_id: int, device_id: str, first: int, last: int, *, oldest: int, newest: int,
        ordered: bool,
    ) -> Span:
        """A span of rows ``first..last`` (one run)."""
        return cls(
            span_id, device_id, first, last, oldest, newest, ordered, b"", 0, first - 1, first
        )

    @classmethod
    def stored(
        cls, span_id: int, device_id: str, first: int, last: int, *, oldest: int, newest: int,
        ordered: bool, runs: bytes | None,
    ) -> Span:
        """A span as its row says."""
        if runs is None:
            return cls(span_id, device_id, first, last, oldest, newest, ordered, None)
        decoded = decode_runs(runs, first)
        closed = decoded[:-1]
        end = closed[-1][1] if closed else first - 1
        return cls(
            span_id, device_id, first, last, oldest, newest, ordered,
            encode_runs(closed, first), len(closed), end, decoded[-1][0],
        )

    def runs(self) -> bytes | None:
        """The ``runs`` column: every run, the open one last."""
        if self.closed is None:
            return None
        gap = self.open_first - self.closed_end - 1
        return self.closed + _run(gap, self.last_id - self.open_first)

    def row(self) -> tuple[int, str, int, int, int, int, int, bytes | None]:
        return (
            self.id,
            self.device_id,
            self.first_id,
            self.last_id,
            self.oldest,
            self.newest,
            int(self.ordered),
            self.runs(),
        )

    def takes(self, first_id: int, last_id: int, oldest: int, newest: int) -> bool:
        """Whether rows ``first_id..last_id`` with these device times may extend this span."""
        return (
            self.closed is not None
            and max(self.newest, newest) - min(self.oldest, oldest) <= SPAN_WIDTH_MS
            and last_id - self.first_id < SPAN_MAX_IDS
            and (first_id == self.last_id + 1 or self.closed_count + 1 < MAX_RUNS)
        )

    def extended(
        self, first_id: int, last_id: int, oldest: int, newest: int, ordered: bool
    ) -> Span:
        """This span with rows ``first_id..last_id`` added (a new span: the writer's state
        changes only once the commit is done)."""
        ordered = self.ordered and ordered and oldest >= self.newest
        oldest = min(self.oldest, oldest)
        newest = max(self.newest, newest)
        closed = self.closed
        if first_id == self.last_id + 1 or closed is None:
            return Span(
                self.id, self.device_id, self.first_id, last_id, oldest, newest, ordered,
                closed, self.closed_count, self.closed_end, self.open_first,
            )
        closed += _run(self.open_first - self.closed_end - 1, self.last_id - self.open_first)
        return Span(
            self.id, self.device_id, self.first_id, last_id, oldest, newest, ordered,
            closed, self.closed_count + 1, self.last_id, first_id,
        )


def _run(gap: int, length: int) -> bytes:
    """One run's varints (:func:`encode_runs`)."""
    if length < 0x80:
        if gap < 0x80:
            return bytes((gap, length))
        if gap < 0x4000:
            return bytes((gap & 0x7F | 0x80, gap >> 7, length))
    out = bytearray()
    _varint(out, gap)
    _varint(out, length)
    return bytes(out)


class DeviceRows(NamedTuple):
    """A device's rows in one batch: ``rows`` consecutive ids, their device times' range,
    and whether those times are non-decreasing in id order. (A named tuple: the store
    makes one per device and batch, in C.)"""

    device_id: str
    rows: int
    oldest: int
    newest: int
    ordered: bool


@dataclass(slots=True)
class SpanPlan:
    """What one commit changes: span rows to upsert, devices to compact, and the writer's
    view after the commit (applied only once it committed). ``first_id`` and ``base``: the
    batch's first row id and the :class:`SpanIndex` version it was planned on (a plan made
    ahead of its commit is used only when both still hold)."""

    rows: list[Any] = field(default_factory=list)
    latest: dict[str, Span] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    next_id: int = 1
    first_id: int = 0
    base: int = -1


# Devices planned between two yields of SpanIndex.planning (~0.2-0.4 ms of work).
PLAN_DEVICES = 128
_versions = itertools.count()


class SpanIndex:
    """The writer's view of its spans: each device's latest span and span count.
    ``version`` changes whenever the view does."""

    __slots__ = ("counts", "latest", "next_id", "version")

    def __init__(self) -> None:
        self.latest: dict[str, Span] = {}
        self.counts: dict[str, int] = {}
        self.next_id = 1
        self.version = next(_versions)

    @classmethod
    def load(cls, connection: sqlite3.Connection, schema: str = "main") -> SpanIndex:
        index = cls()
        # SQLite's bare columns with max(): the row of each device's highest first_id.
        for span_id, device, first, last, oldest, newest, ordered, runs, _, count in (
            connection.execute(
                "SELECT id, device_id, first_id, last_id, oldest, newest, ordered, runs, "
                f"max(first_id), count(*) FROM {schema}.spans GROUP BY device_id"
            )
        ):
            index.latest[device] = Span.stored(
                span_id, device, first, last, oldest=oldest, newest=newest,
                ordered=bool(ordered), runs=runs,
            )
            index.counts[device] = count
        row = connection.execute(f"SELECT coalesce(max(id), 0) FROM {schema}.spans").fetchone()
        index.next_id = int(row[0]) + 1
        return index

    def covered(self) -> int:
        """The highest row id a span covers (0: none)."""
        return max((span.last_id for span in self.latest.values()), default=0)

    def plan(self, groups: Iterable[DeviceRows], first_id: int) -> SpanPlan:
        """The span rows for a batch whose rows start at ``first_id``, in ``groups`` order."""
        steps = self.planning(groups, first_id)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                plan: SpanPlan = done.value
                return plan

    def planning(
        self, groups: Iterable[DeviceRows], first_id: int
    ) -> Generator[None, None, SpanPlan]:
        """:meth:`plan` in steps of :data:`PLAN_DEVICES` devices (a caller on the event loop
        lets other work run at each ``yield``); returns the plan.

        :meth:`Span.takes` and :meth:`Span.extended` written out (the same rules): this runs
        once per device and commit, holding the GIL (tests check the two agree)."""
        plan = SpanPlan(next_id=self.next_id, first_id=first_id, base=self.version)
        touched: dict[str, Span] = {}
        latest = self.latest
        known = self.counts
        counts = plan.counts
        row_id = first_id
        width, most_ids, most_runs = SPAN_WIDTH_MS, SPAN_MAX_IDS, MAX_RUNS
        for number, (device, count, oldest, newest, ordered) in enumerate(groups, 1):
            if not number % PLAN_DEVICES:
                yield
            last_id = row_id + count - 1
            span = touched.get(device) or latest.get(device)
            if span is not None and (closed := span.closed) is not None:
                low = span.oldest
                high = span.newest
                still = span.ordered and ordered and oldest >= high
                # Comparisons, not min()/max(): two builtin calls fewer per device.
                if oldest < low:  # noqa: PLR1730
                    low = oldest
                if newest > high:  # noqa: PLR1730
                    high = newest
                follows = row_id == span.last_id + 1
                if (
                    high - low <= width
                    and last_id - span.first_id < most_ids
                    and (follows or span.closed_count + 1 < most_runs)
                ):
                    if follows:
                        touched[device] = Span(
                            span.id, device, span.first_id, last_id, low, high, still,
                            closed, span.closed_count, span.closed_end, span.open_first,
                        )
                    else:
                        end = span.last_id
                        gap = span.open_first - span.closed_end - 1
                        length = end - span.open_first
                        closed += (
                            bytes((gap, length))
                            if gap < 0x80 and length < 0x80
                            else _run(gap, length)
                        )
                        touched[device] = Span(
                            span.id, device, span.first_id, last_id, low, high, still,
                            closed, span.closed_count + 1, end, row_id,
                        )
                    row_id = last_id + 1
                    continue
            touched[device] = Span(
                plan.next_id, device, row_id, last_id, oldest, newest, ordered,
                b"", 0, row_id - 1, row_id,
            )
            plan.next_id += 1
            counts[device] = counts.get(device, known.get(device, 0)) + 1
            row_id = last_id + 1
        rows = plan.rows
        for number, span in enumerate(touched.values(), 1):
            if not number % PLAN_DEVICES:
                yield
            closed = span.closed
            runs: bytearray | None = None
            if closed is not None:
                gap = span.open_first - span.closed_end - 1
                length = span.last_id - span.open_first
                # A bytearray: sqlite3 binds it as the same blob directly, where bytes go
                # through its adapter lookup first (two failed attribute lookups, ~3.3k
                # instructions with the GIL held in the commit thread, per span row).
                runs = bytearray(closed)
                runs += (
                    bytes((gap, length)) if gap < 0x80 and length < 0x80 else _run(gap, length)
                )
            rows += (
                span.id, span.device_id, span.first_id, span.last_id, span.oldest,
                span.newest, 1 if span.ordered else 0, runs,
            )
        plan.latest = touched
        return plan

    def apply(self, plan: SpanPlan) -> None:
        """The plan committed: its spans are the devices' latest."""
        self.latest.update(plan.latest)
        self.counts.update(plan.counts)
        self.next_id = plan.next_id
        self.version = next(_versions)

    def crowded(self, plan: SpanPlan) -> list[str]:
        """Devices the plan leaves with too many spans."""
        return [device for device, count in plan.counts.items() if count >= MAX_SPANS_PER_DEVICE]


# A merged span whose runs take more bytes than this is stored without them (read by id
# range): a span row stays within a page.
MAX_MERGED_RUNS_BYTES = 2048


def compact(connection: sqlite3.Connection, device_id: str, schema: str = "main") -> int:
    """Merge a device's older spans, adjacent ones in groups (pairs, or more when it has
    far too many), down to about half of :data:`MAX_SPANS_PER_DEVICE`; its latest span
    stays as it is (the writer extends it). The device's span count after."""
    spans = connection.execute(
        f"SELECT id, first_id, last_id, oldest, newest, ordered, runs FROM {schema}.spans "
        "WHERE device_id = ? ORDER BY first_id",
        (device_id,),
    ).fetchall()
    older = spans[:-1]
    group = max(2, -(-len(older) // max(1, MAX_SPANS_PER_DEVICE // 2)))
    kept: list[tuple[int, int, int, int, bytes | None, int]] = []
    gone: list[tuple[int]] = []
    for start in range(0, len(older), group):
        span_id, first, last, oldest, newest, ordered, blob = older[start]
        runs: list[tuple[int, int]] | None = None if blob is None else decode_runs(blob, first)
        for other in older[start + 1 : start + group]:
            _, o_first, o_last, o_oldest, o_newest, o_ordered, o_blob = other
            ordered = ordered and o_ordered and o_oldest >= newest
            last, oldest, newest = o_last, min(oldest, o_oldest), max(newest, o_newest)
            if runs is not None and o_blob is not None:
                for run in decode_runs(o_blob, o_first):
                    if runs and runs[-1][1] + 1 == run[0]:
                        runs[-1] = (runs[-1][0], run[1])
                    else:
                        runs.append(run)
            else:
                runs = None
            gone.append((other[0],))
        merged = None if runs is None else encode_runs(runs, first)
        if merged is not None and len(merged) > MAX_MERGED_RUNS_BYTES:
            merged = None
        kept.append((last, oldest, newest, int(ordered), merged, span_id))
    connection.executemany(
        f"UPDATE {schema}.spans SET last_id = ?, oldest = ?, newest = ?, ordered = ?, runs = ? "
        "WHERE id = ?",
        kept,
    )
    connection.executemany(f"DELETE FROM {schema}.spans WHERE id = ?", gone)
    return len(kept) + len(spans[-1:])


def has_spans(connection: sqlite3.Connection, schema: str = "main") -> bool:
    row = connection.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'spans'"
    ).fetchone()
    return row is not None


def has_runs(connection: sqlite3.Connection, schema: str = "main") -> bool:
    """Whether the file's spans table has the ``runs`` column (a file made by a version
    without it has spans read by id range)."""
    columns = {row[1] for row in connection.execute(f"PRAGMA {schema}.table_info(spans)")}
    return "runs" in columns


def add_runs(connection: sqlite3.Connection, schema: str = "main") -> None:
    """The ``runs`` column, to a spans table made without it (its spans stay without runs)."""
    if has_spans(connection, schema) and not has_runs(connection, schema):
        connection.execute(f"ALTER TABLE {schema}.spans ADD COLUMN runs BLOB")


def lacks_runs(connection: sqlite3.Connection, schema: str = "main") -> bool:
    """Whether some span has no runs (written by a version without them)."""
    found = connection.execute(
        f"SELECT 1 FROM {schema}.spans WHERE runs IS NULL LIMIT 1"
    ).fetchone()
    return found is not None


def catch_up(connection: sqlite3.Connection, schema: str = "main") -> int:
    """Spans for every row no span covers yet (all rows of a store made before spans), then
    the old per-record index dropped: in one transaction. Spans without runs (a file written
    before spans had them) are all built again, with runs. The rows it covered."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.format(schema=schema).split(";"):
            if statement.strip():
                connection.execute(statement)
        add_runs(connection, schema)
        if lacks_runs(connection, schema):
            connection.execute(f"DELETE FROM {schema}.spans")
        index = SpanIndex.load(connection, schema)
        covered = index.covered()
        rows = connection.execute(
            f"SELECT id, device_id, created_at FROM {schema}.records WHERE id > ? ORDER BY id",
            (covered,),
        )
        next_id = index.next_id
        # Per device: [id, device, first_id, last_id, oldest, newest, ordered, closed runs,
        # their count, their end, the open run's first id] (see Span), the span the device's
        # next row may extend (plain lists: this loop runs once per row).
        latest: dict[str, list[Any]] = {}
        for device, known in index.latest.items():
            closed = None if known.closed is None else bytearray(known.closed)
            latest[device] = [
                *known.row()[:7], closed, known.closed_count, known.closed_end, known.open_first
            ]
        counts = dict(index.counts)
        changed: dict[int, list[Any]] = {}
        done = 0
        width, most, most_runs = SPAN_WIDTH_MS, SPAN_MAX_IDS, MAX_RUNS
        for row_id, device, created in rows:
            done += 1
            span = latest.get(device)
            if (
                span is not None
                and span[7] is not None
                and max(span[5], created) - min(span[4], created) <= width
                and row_id - span[2] < most
                and (row_id == span[3] + 1 or span[8] + 1 < most_runs)
            ):
                if row_id != span[3] + 1:  # the open run ends: a new one starts here
                    _varint(span[7], span[10] - span[9] - 1)
                    _varint(span[7], span[3] - span[10])
                    span[8] += 1
                    span[9] = span[3]
                    span[10] = row_id
                span[3] = row_id
                if created < span[5]:
                    span[6] = 0
                    span[4] = min(span[4], created)
                else:
                    span[5] = created
            else:
                span = latest[device] = [
                    next_id, device, row_id, row_id, created, created, 1,
                    bytearray(), 0, row_id - 1, row_id,
                ]
                next_id += 1
                counts[device] = counts.get(device, 0) + 1
            changed[span[0]] = span
        params: list[Any] = []
        for span in changed.values():
            runs = span[7]
            if runs is not None:
                runs = bytearray(runs)
                _varint(runs, span[10] - span[9] - 1)
                _varint(runs, span[3] - span[10])
                runs = bytes(runs)
            params += (*span[:7], runs)
        step = _CATCH_UP_ROWS * UPSERT_WIDTH
        for start in range(0, len(params), step):
            chunk = params[start : start + step]
            connection.execute(upsert_sql(len(chunk) // UPSERT_WIDTH, schema), chunk)
        for device, count in counts.items():
            if count >= MAX_SPANS_PER_DEVICE:
                compact(connection, device, schema)
        connection.execute(f"DROP INDEX IF EXISTS {schema}.{OLD_INDEX}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return done


# -- reading -------------------------------------------------------------------------------
_SPANS = (
    "SELECT first_id, last_id, newest, ordered, {runs} FROM {schema}.spans "
    "WHERE device_id = ? AND newest >= ? AND oldest <= ?"
)
_ROWS = (
    "SELECT {columns}, created_at, id FROM {schema}.records "
    "WHERE id >= ? AND id <= ? AND device_id = ? AND created_at >= ? AND created_at <= ?"
    "{where} ORDER BY {order} LIMIT ?"
)
# Rows by id (a JSON array of ids): SQLite reads them through the sorted IN list, no sort.
_ID_ROWS = (
    "SELECT {columns}, created_at, id FROM {schema}.records "
    "WHERE id IN (SELECT value FROM json_each(?)) "
    "AND device_id = ? AND created_at >= ? AND created_at <= ?"
    "{where} ORDER BY id DESC LIMIT ?"
)
# A span's rows in its runs (a JSON array of [first id, last id]), by device time.
_RUN_ROWS = (
    "WITH r (lo, hi) AS (SELECT value ->> 0, value ->> 1 FROM json_each(?)) "
    "SELECT {columns}, created_at, id FROM r CROSS JOIN {schema}.records "
    "ON {schema}.records.id >= r.lo AND {schema}.records.id <= r.hi "
    "WHERE device_id = ? AND created_at >= ? AND created_at <= ?"
    "{where} ORDER BY created_at DESC, id DESC LIMIT ?"
)


def span_query(schema: str, runs: bool = True) -> str:
    """A device's spans overlapping a time window (device, low, high); ``runs``: whether
    the file's spans have runs (NULL instead when not)."""
    return _SPANS.format(schema=schema, runs="runs" if runs else "NULL")


def row_query(schema: str, columns: str, where: str, ordered: bool) -> str:
    """A device's rows in one span (first id, last id, device, low, high, ``where``'s
    parameters, limit), newest first: in id order for an ordered span."""
    order = "id DESC" if ordered else "created_at DESC, id DESC"
    return _ROWS.format(columns=columns, schema=schema, where=where, order=order)


def ids_query(schema: str, columns: str, where: str) -> str:
    """A device's rows by id (ids as JSON, device, low, high, ``where``'s parameters, limit),
    newest first by id."""
    return _ID_ROWS.format(columns=columns, schema=schema, where=where)


def runs_query(schema: str, columns: str, where: str) -> str:
    """A device's rows in a span's runs (runs as JSON, device, low, high, ``where``'s
    parameters, limit), newest first by device time."""
    return _RUN_ROWS.format(columns=columns, schema=schema, where=where)


# Rows are fetched lazily, a few first (a caller may need one), more as it reads on.
_FETCH_FIRST = 4
_FETCH_MOST = 1024
# Ids the first chunk of an ordered span's short runs holds (fewer for a smaller limit).
_CHUNK_FIRST = 64


def _is_row(
    connection: sqlite3.Connection, schema: str, device_id: str, row: tuple[int, int]
) -> bool:
    found = connection.execute(
        f"SELECT 1 FROM {schema}.records WHERE id = ? AND device_id = ? AND created_at = ?",
        (row[1], device_id, row[0]),
    ).fetchone()
    return found is not None


def _fetch(cursor: sqlite3.Cursor) -> Iterator[Any]:
    size = _FETCH_FIRST
    while True:
        chunk = cursor.fetchmany(size)
        yield from chunk
        if len(chunk) < size:
            return
        size = min(size * 2, _FETCH_MOST)


def walk(
    connection: sqlite3.Connection,
    schema: str,
    device_id: str,
    *,
    columns: str,
    since: int | None = None,
    until: int | None = None,
    where: str = "",
    params: Sequence[Any] = (),
    before: tuple[int, int] | None = None,
    limit: int,
    runs: bool = True,
) -> Generator[tuple[Any, ...], None, None]:
    """A device's rows in ``schema`` with device time in ``[since, until]`` (and ``where``,
    an ``AND ...`` condition with ``params``), newest first by ``(created_at, id)``: at most
    ``limit`` of them. Each row is ``columns`` then ``created_at`` and ``id``.

    The spans overlapping the window are read newest first; a span is opened only when its
    newest row could come before the rows already found, and merged with the spans opened
    before it (device times of spans may overlap).

    ``before``: ``(created_at, id)`` of a row the rows come after (a page's cursor in this
    file; ``where`` says so too): when it is a row of this device, an ordered span holding
    it is read below it only (the device's rows above it there are newer)."""
    low = MIN_TIME if since is None else since
    high = MAX_TIME if until is None else until
    if limit <= 0 or low > high:
        return
    spans = connection.execute(span_query(schema, runs), (device_id, low, high)).fetchall()
    if before is not None and _is_row(connection, schema, device_id, before):
        below = before[1] - 1
        spans = [
            (
                first,
                min(last, below) if ordered and first <= below < last else last,
                newest,
                ordered,
                blob,
            )
            for first, last, newest, ordered, blob in spans
        ]
    spans.sort(key=lambda span: (span[2], span[1]), reverse=True)
    by_id = row_query(schema, columns, where, ordered=True)
    by_time = row_query(schema, columns, where, ordered=False)
    by_runs = (by_id, ids_query(schema, columns, where))
    tail = (device_id, low, high, *params, limit)
    heap: list[tuple[int, int, int, tuple[Any, ...], Iterator[Any]]] = []
    cursors: list[sqlite3.Cursor] = []
    opened = 0
    given = 0
    try:
        while given < limit:
            while opened < len(spans):
                first, last, newest, ordered, blob = spans[opened]
                if heap and (newest, last) < (-heap[0][0], -heap[0][1]):
                    break  # this span's rows and all later spans' come after the heap's top
                if blob is None:  # a span without runs: every row of its id range
                    cursor = connection.execute(
                        by_id if ordered else by_time, (first, last, *tail)
                    )
                    cursors.append(cursor)
                    rows = _fetch(cursor)
                else:
                    span_runs = [
                        (start, min(end, last))
                        for start, end in decode_runs(blob, first)
                        if start <= last
                    ]
                    if ordered:  # run by run, newest first: stops after the rows needed
                        rows = _by_runs(connection, by_runs, span_runs, tail, cursors)
                    else:
                        cursor = connection.execute(
                            runs_query(schema, columns, where),
                            (orjson.dumps(span_runs).decode(), *tail),
                        )
                        cursors.append(cursor)
                        rows = _fetch(cursor)
                row = next(rows, None)
                if row is not None:
                    heapq.heappush(heap, (-row[-2], -row[-1], opened, row, rows))
                opened += 1
            if not heap:
                return
            _, _, number, row, rows = heapq.heappop(heap)
            yield row
            given += 1
            following = next(rows, None)
            if following is not None:
                heapq.heappush(heap, (-following[-2], -following[-1], number, following, rows))
    finally:
        for cursor in cursors:
            cursor.close()


def _by_runs(
    connection: sqlite3.Connection,
    queries: tuple[str, str],
    runs: Sequence[tuple[int, int]],
    tail: Sequence[Any],
    cursors: list[sqlite3.Cursor],
) -> Iterator[Any]:
    """The rows of ``runs`` (ascending) newest first by id, read lazily: the newest run
    first (a caller may need one row), then in chunks of about ``budget`` ids: a run as
    long goes by id range (``queries[0]``: first id, last id, then ``tail``); shorter
    neighbouring runs together by their ids (``queries[1]``: the ids as a JSON array, then
    ``tail``), one statement instead of one per run."""
    by_range, by_ids = queries
    budget = max(_FETCH_FIRST, min(int(tail[-1]), _CHUNK_FIRST))
    at = len(runs)
    while at > 0:
        first, last = runs[at - 1]
        if at == len(runs) or last - first + 1 >= budget:
            cursor = connection.execute(by_range, (first, last, *tail))
            at -= 1
        else:
            ids: list[int] = []
            while at > 0:
                first, last = runs[at - 1]
                if ids and len(ids) + last - first + 1 > budget:
                    break
                ids += range(first, last + 1)
                at -= 1
            cursor = connection.execute(by_ids, (orjson.dumps(ids).decode(), *tail))
        cursors.append(cursor)
        yield from _fetch(cursor)
        budget = min(budget * 2, _FETCH_MOST)
