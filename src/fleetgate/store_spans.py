"""Where a device's records are in the store: spans of row ids instead of a per-record index.

The store inserts each batch grouped by device, so a device's rows of one commit have
consecutive ids. A *span* says "device D has rows between ids ``first_id`` and ``last_id``,
with device times between ``oldest`` and ``newest``"; other devices' rows may lie between
them (a span is extended over later commits). Every read walks the spans of its device that
overlap its time window, newest first, and reads their rows by rowid range.

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
import sqlite3
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
    ordered INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {schema}.spans_by_device ON spans (device_id, first_id);
"""
# The index the spans replace (stores made before them).
OLD_INDEX = "records_by_device_time"

UPSERT_PREFIX = (
    "INSERT INTO {schema}.spans (id, device_id, first_id, last_id, oldest, newest, ordered) VALUES "
)
UPSERT_ROW = "(?, ?, ?, ?, ?, ?, ?)"
UPSERT_WIDTH = 7
# Only the columns the index does not hold change: extending a span leaves the index alone.
UPSERT_SUFFIX = (
    " ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, oldest = excluded.oldest, "
    "newest = excluded.newest, ordered = excluded.ordered"
)
_CATCH_UP_ROWS = 256


def upsert_sql(rows: int, schema: str = "main") -> str:
    """One statement upserting ``rows`` spans."""
    return UPSERT_PREFIX.format(schema=schema) + ",".join([UPSERT_ROW] * rows) + UPSERT_SUFFIX


@dataclass(frozen=True, slots=True)
class Span:
    id: int
    device_id: str
    first_id: int
    last_id: int
    oldest: int
    newest: int
    ordered: bool

    def row(self) -> tuple[int, str, int, int, int, int, int]:
        return (
            self.id,
            self.device_id,
            self.first_id,
            self.last_id,
            self.oldest,
            self.newest,
            int(self.ordered),
        )

    def takes(self, last_id: int, oldest: int, newest: int) -> bool:
        """Whether rows up to ``last_id`` with these device times may extend this span."""
        return (
            max(self.newest, newest) - min(self.oldest, oldest) <= SPAN_WIDTH_MS
            and last_id - self.first_id < SPAN_MAX_IDS
        )

    def extended(self, last_id: int, oldest: int, newest: int, ordered: bool) -> Span:
        return replace(
            self,
            last_id=last_id,
            oldest=min(self.oldest, oldest),
            newest=max(self.newest, newest),
            ordered=self.ordered and ordered and oldest >= self.newest,
        )


@dataclass(frozen=True, slots=True)
class DeviceRows:
    """A device's rows in one batch: ``count`` consecutive ids, their device times' range,
    and whether those times are non-decreasing in id order."""

    device_id: str
    count: int
    oldest: int
    newest: int
    ordered: bool


@dataclass(slots=True)
class SpanPlan:
    """What one commit changes: span rows to upsert, devices to compact, and the writer's
    view after the commit (applied only once it committed)."""

    rows: list[Any] = field(default_factory=list)
    latest: dict[str, Span] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    next_id: int = 1


class SpanIndex:
    """The writer's view of its spans: each device's latest span and span count."""

    __slots__ = ("counts", "latest", "next_id")

    def __init__(self) -> None:
        self.latest: dict[str, Span] = {}
        self.counts: dict[str, int] = {}
        self.next_id = 1

    @classmethod
    def load(cls, connection: sqlite3.Connection, schema: str = "main") -> SpanIndex:
        index = cls()
        # SQLite's bare columns with max(): the row of each device's highest first_id.
        for span_id, device, first, last, oldest, newest, ordered, _, count in connection.execute(
            "SELECT id, device_id, first_id, last_id, oldest, newest, ordered, max(first_id), "
            f"count(*) FROM {schema}.spans GROUP BY device_id"
        ):
            index.latest[device] = Span(span_id, device, first, last, oldest, newest, bool(ordered))
            index.counts[device] = count
        row = connection.execute(f"SELECT coalesce(max(id), 0) FROM {schema}.spans").fetchone()
        index.next_id = int(row[0]) + 1
        return index

    def covered(self) -> int:
        """The highest row id a span covers (0: none)."""
        return max((span.last_id for span in self.latest.values()), default=0)

    def plan(self, groups: Iterable[DeviceRows], first_id: int) -> SpanPlan:
        """The span rows for a batch whose rows start at ``first_id``, in ``groups`` order."""
        plan = SpanPlan(next_id=self.next_id)
        touched: dict[str, Span] = {}
        row_id = first_id
        for group in groups:
            last_id = row_id + group.count - 1
            device = group.device_id
            span = touched.get(device) or self.latest.get(device)
            if span is not None and span.takes(last_id, group.oldest, group.newest):
                span = span.extended(last_id, group.oldest, group.newest, group.ordered)
            else:
                span = Span(
                    plan.next_id,
                    device,
                    row_id,
                    last_id,
                    group.oldest,
                    group.newest,
                    group.ordered,
                )
                plan.next_id += 1
                plan.counts[device] = plan.counts.get(device, self.counts.get(device, 0)) + 1
            touched[device] = span
            row_id = last_id + 1
        for span in touched.values():
            plan.rows.extend(span.row())
        plan.latest = touched
        return plan

    def apply(self, plan: SpanPlan) -> None:
        """The plan committed: its spans are the devices' latest."""
        self.latest.update(plan.latest)
        self.counts.update(plan.counts)
        self.next_id = plan.next_id

    def crowded(self, plan: SpanPlan) -> list[str]:
        """Devices the plan leaves with too many spans."""
        return [device for device, count in plan.counts.items() if count >= MAX_SPANS_PER_DEVICE]


def compact(connection: sqlite3.Connection, device_id: str, schema: str = "main") -> int:
    """Merge a device's older spans, adjacent ones in groups (pairs, or more when it has
    far too many), down to about half of :data:`MAX_SPANS_PER_DEVICE`; its latest span
    stays as it is (the writer extends it). The device's span count after."""
    spans = [
        Span(span_id, device_id, first, last, oldest, newest, bool(ordered))
        for span_id, first, last, oldest, newest, ordered in connection.execute(
            f"SELECT id, first_id, last_id, oldest, newest, ordered FROM {schema}.spans "
            "WHERE device_id = ? ORDER BY first_id",
            (device_id,),
        )
    ]
    older = spans[:-1]
    group = max(2, -(-len(older) // max(1, MAX_SPANS_PER_DEVICE // 2)))
    kept: list[Span] = []
    gone: list[tuple[int]] = []
    for start in range(0, len(older), group):
        merged = older[start]
        for span in older[start + 1 : start + group]:
            merged = merged.extended(span.last_id, span.oldest, span.newest, span.ordered)
            gone.append((span.id,))
        kept.append(merged)
    connection.executemany(
        f"UPDATE {schema}.spans SET last_id = ?, oldest = ?, newest = ?, ordered = ? WHERE id = ?",
        [(s.last_id, s.oldest, s.newest, int(s.ordered), s.id) for s in kept],
    )
    connection.executemany(f"DELETE FROM {schema}.spans WHERE id = ?", gone)
    return len(kept) + len(spans[-1:])


def has_spans(connection: sqlite3.Connection, schema: str = "main") -> bool:
    row = connection.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'spans'"
    ).fetchone()
    return row is not None


def catch_up(connection: sqlite3.Connection, schema: str = "main") -> int:
    """Spans for every row no span covers yet (all rows of a store made before spans), then
    the old per-record index dropped: in one transaction. The rows it covered."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.format(schema=schema).split(";"):
            if statement.strip():
                connection.execute(statement)
        index = SpanIndex.load(connection, schema)
        covered = index.covered()
        rows = connection.execute(
            f"SELECT id, device_id, created_at FROM {schema}.records WHERE id > ? ORDER BY id",
            (covered,),
        )
        next_id = index.next_id
        # Per device: [id, device, first_id, last_id, oldest, newest, ordered], the span the
        # device's next row may extend (plain lists: this loop runs once per row).
        latest: dict[str, list[Any]] = {
            device: list(span.row()) for device, span in index.latest.items()
        }
        counts = dict(index.counts)
        changed: dict[int, list[Any]] = {}
        done = 0
        width, most = SPAN_WIDTH_MS, SPAN_MAX_IDS
        for row_id, device, created in rows:
            done += 1
            span = latest.get(device)
            if (
                span is not None
                and max(span[5], created) - min(span[4], created) <= width
                and row_id - span[2] < most
            ):
                span[3] = row_id
                if created < span[5]:
                    span[6] = 0
                    span[4] = min(span[4], created)
                else:
                    span[5] = created
            else:
                span = latest[device] = [next_id, device, row_id, row_id, created, created, 1]
                next_id += 1
                counts[device] = counts.get(device, 0) + 1
            changed[span[0]] = span
        params = [value for span in changed.values() for value in span]
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
    "SELECT first_id, last_id, newest, ordered FROM {schema}.spans "
    "WHERE device_id = ? AND newest >= ? AND oldest <= ?"
)
_ROWS = (
    "SELECT {columns}, created_at, id FROM {schema}.records "
    "WHERE id >= ? AND id <= ? AND device_id = ? AND created_at >= ? AND created_at <= ?"
    "{where} ORDER BY {order} LIMIT ?"
)


def span_query(schema: str) -> str:
    """A device's spans overlapping a time window (device, low, high)."""
    return _SPANS.format(schema=schema)


def row_query(schema: str, columns: str, where: str, ordered: bool) -> str:
    """A device's rows in one span (first id, last id, device, low, high, ``where``'s
    parameters, limit), newest first: in id order for an ordered span."""
    order = "id DESC" if ordered else "created_at DESC, id DESC"
    return _ROWS.format(columns=columns, schema=schema, where=where, order=order)


# Rows are fetched lazily, a few first (a caller may need one), more as it reads on.
_FETCH_FIRST = 4
_FETCH_MOST = 1024


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
    spans = connection.execute(span_query(schema), (device_id, low, high)).fetchall()
    if before is not None and _is_row(connection, schema, device_id, before):
        below = before[1] - 1
        spans = [
            (
                first,
                min(last, below) if ordered and first <= below < last else last,
                newest,
                ordered,
            )
            for first, last, newest, ordered in spans
        ]
    spans.sort(key=lambda span: (span[2], span[1]), reverse=True)
    by_id = row_query(schema, columns, where, ordered=True)
    by_time = row_query(schema, columns, where, ordered=False)
    heap: list[tuple[int, int, int, tuple[Any, ...], Iterator[Any]]] = []
    cursors: list[sqlite3.Cursor] = []
    opened = 0
    given = 0
    try:
        while given < limit:
            while opened < len(spans):
                first, last, newest, ordered = spans[opened]
                if heap and (newest, last) < (-heap[0][0], -heap[0][1]):
                    break  # this span's rows and all later spans' come after the heap's top
                cursor = connection.execute(
                    by_id if ordered else by_time,
                    (first, last, device_id, low, high, *params, limit),
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
