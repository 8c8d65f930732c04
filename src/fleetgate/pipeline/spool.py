"""The durable spool: the ledger on local disk, so nothing acknowledged is lost.

Every frame the pipeline takes is appended here as one checksummed entry
(:mod:`fleetgate.pipeline.spool_format`) before anything else happens to it. A commit
thread writes what has accumulated and syncs it to disk, then publishes the *durable*
watermark to the event loop: the ``spool`` ack level waits for it. Frames arriving while
one write is in progress go into the next one (group commit: many frames per
``fdatasync``, the added latency bounded by one write and sync).

Consumers (the sink runners and the store) are registered with the spool; the flusher
saves their cursors (what each has confirmed) in ``cursors.json`` now and then (the store
keeps its own in its database too, committed with its rows). After a restart every
consumer starts again after its cursor and reads what it had not confirmed from the
segments (:class:`SpoolReader`), so each sink gets every record at least once. A segment
is deleted once every consumer has confirmed all of it.

Files: ``<directory>/segment-<first offset>.log`` (rotated at ``segment_bytes``),
``cursors.json`` and ``next-segment.tmp`` (the next segment, written full of zeros ahead
of time when ``fsync`` is on; see :class:`_Writer`). On start-up the segments are checked
entry by entry; a torn or corrupt tail (a write cut short by ``kill -9`` or a power loss)
is cut off with a log line, and everything before it is kept; zeros after the last entry
are a pre-allocated segment's unused end, not a torn tail.

Disk budget: when the segments reach ``max_bytes`` the pipeline stops taking frames (so
devices get no ack and keep their data) until consumers confirm enough for segments to
be deleted. A write that fails (a full disk) is retried with backoff; acks wait meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import orjson

from fleetgate.observability import metrics
from fleetgate.pipeline.ledger import Ledger
from fleetgate.pipeline.spool_format import (
    HEADER,
    MAX_ENTRY_BYTES,
    Entry,
    TornEntry,
    check_entry,
    frame_entry,
    read_entry,
)
from fleetgate.records import Record

log = logging.getLogger("fleetgate.spool")

SEGMENT_PREFIX: Final = "segment-"
PREPARED_FILE: Final = "next-segment.tmp"  # the next segment, pre-allocated (zeros)
# The next segment's zeros are written and synced a quarter MiB at a time. The spool's own
# fdatasync waits behind whatever the disk is flushing: with 4 MiB flushes the slowest
# group commits took 25 ms and the ack p99 at 40k records/s was 11-13 ms; with 256 KiB,
# 5-10 ms and 1.8-2.8 ms (the prepare thread makes more, smaller syncs; same bytes).
_ZERO_CHUNK: Final = 256 * 1024
_PREPARE_STOP_S: Final = 5.0
_PREPARE_RETRY_S: Final = 30.0
SEGMENT_SUFFIX: Final = ".log"
CURSORS_FILE: Final = "cursors.json"
_CURSOR_PERSIST_S: Final = 0.2
_RETRY_INITIAL_S: Final = 0.05
_RETRY_MAX_S: Final = 2.0
_ZERO_HEADER: Final = bytes(HEADER.size)


class CursorHolder(Protocol):
    """A consumer of the spool, as far as the spool needs to know it."""

    name: str

    def cursor(self) -> int:
        """Everything up to this offset is confirmed by (or not meant for) the consumer."""


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """Where the spool lives and how it behaves."""

    directory: Path
    segment_bytes: int = 64 * 1024 * 1024
    max_bytes: int = 10 * 1024 * 1024 * 1024
    # fdatasync after each write: off means the spool survives a process crash but not an
    # operating-system crash or a power loss (see the README's ack table).
    fsync: bool = True
    # Records of the newest entries kept in memory for consumers that catch up.
    memory_records: int = 50_000


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :meth:`Spool.open` found on disk."""

    segments: int
    entries: int
    head: int
    cut_bytes: int


def segment_name(first: int) -> str:
    return f"{SEGMENT_PREFIX}{first:020d}{SEGMENT_SUFFIX}"


def _segment_first(path: Path) -> int:
    return int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])


class _Segments:
    """The segment files on disk, by first offset; shared by the writer and the readers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.firsts: list[int] = []
        self.paths: list[Path] = []
        self.sizes: list[int] = []
        # sum(sizes), kept as they change: the loop reads it for every frame appended
        # (the disk budget) without taking the lock.
        self.total = 0

    def add(self, first: int, path: Path, size: int = 0) -> None:
        with self.lock:
            self.firsts.append(first)
            self.paths.append(path)
            self.sizes.append(size)
            self.total += size

    def set_last_size(self, size: int) -> None:
        """The last segment is now ``size`` bytes long (the writer appended to it)."""
        with self.lock:
            self.total += size - self.sizes[-1]
            self.sizes[-1] = size

    def pop_first(self) -> Path:
        """Forget the first segment (its file is deleted); its path. Under ``lock``."""
        self.firsts.pop(0)
        self.total -= self.sizes.pop(0)
        return self.paths.pop(0)

    def locate(self, offset: int) -> tuple[int, Path] | None:
        """The segment that holds ``offset`` (the last one starting at or before it)."""
        with self.lock:
            index = bisect_right(self.firsts, offset) - 1
            index = max(index, 0)
            if not self.paths:
                return None
            return self.firsts[index], self.paths[index]

    def after(self, first: int) -> tuple[int, Path] | None:
        """The segment following the one that starts at ``first``."""
        with self.lock:
            index = bisect_right(self.firsts, first)
            if index >= len(self.paths):
                return None
            return self.firsts[index], self.paths[index]


def scan_segment(path: Path) -> tuple[list[tuple[int, int]], int, int]:
    """Entries of a segment file as (first, last) offsets, the intact length, and where the
    segment's content ends (the file length, or the intact length when only the zeros of a
    pre-allocated segment follow the last entry).

    Stops at the first torn or corrupt entry: the intact length is where it starts.
    """
    data = path.read_bytes()
    entries: list[tuple[int, int]] = []
    position = 0
    while position < len(data):
        try:
            first, count, position_after = check_entry(data, position)
        except TornEntry:
            break
        entries.append((first, first + count - 1))
        position = position_after
    if data.count(0, position) == len(data) - position:
        return entries, position, position  # never written after the last entry
    return entries, position, len(data)


class SpoolReader:
    """A consumer's way through the segments, from one offset on (used from a thread).

    The current segment stays open between reads; a reader finding the end of a segment
    (its end of file, or the zeros of a pre-allocated tail) moves on to the next one once
    that exists. Reads are ``pread`` at the reader's position: a buffered file could keep
    the zeros it read ahead in a pre-allocated segment after the writer overwrote them.
    """

    def __init__(self, segments: _Segments, start: int) -> None:
        self._segments = segments
        self.next = start  # the first offset not read yet
        self._segment_first: int | None = None
        self._fd: int | None = None
        self._position = 0

    def read(self, limit_records: int, upto: int) -> list[Entry]:
        """Entries from :attr:`next` on, at most ``limit_records`` records (but at least one
        entry), none past offset ``upto`` (what is written)."""
        entries: list[Entry] = []
        count = 0
        while self.next <= upto and (not entries or count < limit_records):
            fd = self._fd_at(self.next)
            if fd is None:
                break
            header = os.pread(fd, HEADER.size, self._position)
            if len(header) < HEADER.size or header == _ZERO_HEADER:
                # The end of this segment: the next one, if any, continues.
                assert self._segment_first is not None
                following = self._segments.after(self._segment_first)
                if following is None or following[0] > upto:
                    break
                self._open(*following)
                continue
            length = HEADER.unpack(header)[0]
            if length > MAX_ENTRY_BYTES:
                break  # not an entry (yet): read it again later
            body = os.pread(fd, length, self._position + HEADER.size)
            try:
                entry, _ = read_entry(header + body, 0)
            except TornEntry:
                break  # not written completely yet: read it again later
            self._position += HEADER.size + length
            if entry.last < self.next:
                continue  # confirmed before; skip
            entries.append(entry)
            count += len(entry.records)
            self.next = entry.last + 1
        return entries

    def _fd_at(self, offset: int) -> int | None:
        if self._fd is not None:
            return self._fd
        located = self._segments.locate(offset)
        if located is None:
            return None
        return self._open(*located)

    def _open(self, first: int, path: Path) -> int:
        self.close()
        self._segment_first = first
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._position = 0
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_IOV_MAX: Final = 1024  # buffers one writev takes (Linux's IOV_MAX)


def _write_all(fd: int, parts: Sequence[bytes], offset: int) -> int:
    """Write ``parts`` in order from ``offset`` with as few system calls as the kernel
    allows; the size."""
    total = 0
    for start in range(0, len(parts), _IOV_MAX):
        chunk = parts[start : start + _IOV_MAX]
        want = sum(map(len, chunk))
        written = os.pwritev(fd, chunk, offset + total)
        if written < want:  # a short write (rare): the rest, one call at a time
            view = memoryview(b"".join(chunk))[written:]
            while view:
                done = os.pwrite(fd, view, offset + total + written)
                written += done
                view = view[done:]
        total += want
    return total


class _Writer:
    """Appends entries to the current segment and syncs them (runs in the commit thread).

    With ``fsync`` on, segments are pre-allocated: a helper thread writes the next one full
    of zeros (and syncs it) ahead of time, and rotating renames it into place. Writing over
    blocks that already exist changes no file-system metadata, so ``fdatasync`` flushes the
    data alone instead of committing the file system's journal, which would first wait for
    every other file's pending writes (the store's WAL and checkpoints, on the same disk).
    """

    def __init__(self, settings: SpoolSettings, segments: _Segments) -> None:
        self.settings = settings
        self.segments = segments
        self._fd: int | None = None
        self._size = 0
        self._preallocate = settings.fsync
        self._preparing: threading.Thread | None = None
        self._prepared: Path | None = None  # set by the preparing thread when complete
        self._prepare_after = 0.0  # after a failure (a full disk): not before this time
        self._closing = False
        # The current segment was not pre-allocated (the first, or one from before a
        # restart): left for a pre-allocated one as soon as that is ready.
        self._growing = False

    def reopen_last(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._size = size
        self._growing = os.fstat(self._fd).st_size <= size

    def write(self, first: int, parts: Sequence[bytes]) -> int:
        """Write one group (entries from offset ``first`` on) and sync it; its size."""
        if (
            self._fd is None
            or self._size >= self.settings.segment_bytes
            or (self._growing and self._prepared is not None)
        ):
            self._rotate(first)
        elif self._prepared is None:
            self.prepare_next()  # in case the last one was still finishing at the rotation
        fd = self._fd
        assert fd is not None
        start = self._size
        try:
            size = _write_all(fd, parts, start)
            if self.settings.fsync:
                os.fdatasync(fd)
        except OSError:
            # Cut what was half written, so the segment ends with a whole entry again.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._size = start + size
        self.segments.set_last_size(self._size)
        return size

    def _rotate(self, first: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self.settings.directory / segment_name(first)
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            os.rename(prepared, path)
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._growing = prepared is None
        self._size = 0
        if self.settings.fsync:
            # The new file's name must survive a crash too.
            directory = os.open(self.settings.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self.segments.add(first, path)
        self.prepare_next()

    def prepare_next(self) -> None:
        """Start writing the next segment's zeros, unless that is done or under way (never
        two at once: both would write the same file)."""
        if not self._preallocate or self._prepared is not None or self._closing:
            return
        if self._preparing is not None and self._preparing.is_alive():
            return
        if time.monotonic() < self._prepare_after:
            return
        self._preparing = threading.Thread(
            target=self._fill_zeros, name="spool-prepare", daemon=True
        )
        self._preparing.start()

    def _fill_zeros(self) -> None:
        path = self.settings.directory / PREPARED_FILE
        size = self.settings.segment_bytes
        zeros = bytes(min(_ZERO_CHUNK, size))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                written = 0
                while written < size:
                    if self._closing:
                        path.unlink()
                        return
                    written += os.write(fd, zeros[: size - written])
                    os.fdatasync(fd)  # a little at a time, not one long flush (see above)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # A full disk, say: the next segment grows as it is written instead.
            log.warning("spool: cannot pre-allocate the next segment (%s)", exc)
            with contextlib.suppress(OSError):
                path.unlink()
            self._prepare_after = time.monotonic() + _PREPARE_RETRY_S
            return
        self._prepared = path

    def close(self) -> None:
        """Close the segment; stop preparing the next one (what is half written is deleted
        here, or at the next start)."""
        self._closing = True
        if self._preparing is not None:
            self._preparing.join(_PREPARE_STOP_S)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


LOCK_FILE: Final = "LOCK"


class SpoolInUseError(RuntimeError):
    """Another process has this spool directory open."""


class _DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/LOCK`` for as long as the spool is open.

    Two servers on one spool would cut each other's "torn" tails and interleave offsets;
    the kernel drops the lock when its holder exits, ``kill -9`` included, so a crash
    never leaves a stale lock behind."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolInUseError(
                f"spool {self.path.parent} is in use by another fleetgate process "
                f"(pid {holder}); give each server its own data_dir (or spool.path)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _joined(thread: threading.Thread, timeout_s: float) -> bool:
    thread.join(timeout_s)
    return not thread.is_alive()


def _delete(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Spool:
    """The on-disk ledger; also the ledger consumer whose watermark is "durable"."""

    name = "spool"

    def __init__(self, settings: SpoolSettings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self._segments = _Segments()
        self._writer = _Writer(settings, self._segments)
        # Entries not written yet, shared with the commit thread (under ``_lock``): their
        # bytes, and the offsets of the first and the last record among them.
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_first = 0
        self._pending_last = 0
        self._pending_bytes = 0  # counted on the loop (the disk budget)
        self._work = threading.Event()  # wakes the commit thread
        self._sleeping = False  # the commit thread waits for ``_work``
        self._stopping = False  # the commit thread ends once nothing is pending
        self._abandon = False  # the commit thread ends now (shutdown timed out)
        self._thread: threading.Thread | None = None
        # What the commit thread reports to the loop (a commit, a failure), in order, not
        # yet handled there (under ``_lock``); see _report.
        self._reports: list[tuple[Callable[..., None], tuple[object, ...]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._recent: deque[Entry] = deque()
        self._recent_records = 0
        self.durable = 0
        self.written = 0
        self._taken = 0
        self._consumers: list[CursorHolder] = []
        self._cursors_saved: dict[str, int] = {}
        self._saving: asyncio.Future[bool] | None = None  # a save of the cursors under way
        self._cursors_at = 0.0
        self._flushed = asyncio.Event()
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failing: str = ""
        self._bytes_gauge = metrics.SPOOL_BYTES
        self._recovered_cursors: dict[str, int] = {}
        self._lock_file = _DirectoryLock(settings.directory)
        self._deletions: list[asyncio.Future[None]] = []

    # -- the ledger's view ---------------------------------------------------------------
    @property
    def taken(self) -> int:
        return self._taken

    def watermark(self) -> int:
        return self.durable

    def refused(self, offset: int) -> bool:
        return False

    # -- start-up ------------------------------------------------------------------------
    def open(self) -> Recovery:
        """Check the segments on disk, cut a torn tail, and find the head offset."""
        directory = self.settings.directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file.acquire()
        with contextlib.suppress(FileNotFoundError):
            (directory / PREPARED_FILE).unlink()  # perhaps half written: made again
        paths = sorted(directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"), key=_segment_first)
        head = 0
        entries = 0
        cut = 0
        last_path: Path | None = None
        last_size = 0
        for path in paths:
            found, intact, length = scan_segment(path)
            if intact < length:
                cut += length - intact
                log.warning(
                    "spool: cut a torn or corrupt tail off %s (%d bytes after offset %d); "
                    "everything before it is kept",
                    path.name,
                    length - intact,
                    found[-1][1] if found else _segment_first(path) - 1,
                )
                metrics.SPOOL_TORN.inc()
                with open(path, "r+b") as file:
                    file.truncate(intact)
                    file.flush()
                    os.fsync(file.fileno())
            if not found:
                path.unlink()
                continue
            entries += len(found)
            head = max(head, found[-1][1])
            self._segments.add(_segment_first(path), path, intact)
            last_path, last_size = path, intact
        cursors = self._load_cursors()
        head = max(head, *cursors.values(), self.ledger.head) if cursors else max(
            head, self.ledger.head
        )
        self.ledger.head = head
        self.durable = self.written = head
        self._recovered_cursors = cursors
        if last_path is not None and last_size < self.settings.segment_bytes:
            self._writer.reopen_last(last_path, last_size)
        self._update_gauge()
        return Recovery(len(self._segments.paths), entries, head, cut)

    def _load_cursors(self) -> dict[str, int]:
        path = self.settings.directory / CURSORS_FILE
        try:
            loaded = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.error("spool: %s unreadable (%s); consumers start at the head", path, exc)
            return {}
        if not isinstance(loaded, dict):
            return {}
        return {str(k): int(v) for k, v in loaded.items() if isinstance(v, int)}

    def recovered_cursor(self, name: str) -> int | None:
        """The confirmed offset ``name`` had persisted before the restart, if any."""
        return self._recovered_cursors.get(name)

    def register(self, consumer: CursorHolder) -> None:
        """``consumer`` reads the spool; its cursor keeps its records from being deleted."""
        self._consumers.append(consumer)

    # -- appending -----------------------------------------------------------------------
    @property
    def over_budget(self) -> bool:
        return self._segments.total + self._pending_bytes >= self.settings.max_bytes

    async def wait_for_room(self) -> None:
        """Wait while the spool is at its disk budget (the pipeline stops taking frames)."""
        while self.over_budget and not self._closing:
            metrics.SPOOL_FULL_WAITS.inc()
            self._room.clear()
            self._truncate()
            if not self.over_budget:
                return
            await self._room.wait()

    def append(self, first: int, records: Sequence[Record], payload: bytes) -> None:
        """Queue one frame's records (offsets ``first``...; ``payload`` from
        :func:`~fleetgate.pipeline.spool_format.encode_payload`) for the next commit."""
        if self._closing:
            raise RuntimeError("spool is closed")
        if self._reports:
            # A commit ended: its acks go now, not after the rest of the loop's pass.
            self._take_reports()
        data = frame_entry(first, len(records), payload)
        with self._lock:
            if not self._pending:
                self._pending_first = first
            self._pending.append(data)
            self._pending_last = first + len(records) - 1
            if self._sleeping:
                self._sleeping = False
                self._work.set()
        self._pending_bytes += len(data)
        entry = Entry(first, records)
        self._recent.append(entry)
        self._recent_records += len(records)
        while self._recent_records > self.settings.memory_records and len(self._recent) > 1:
            self._recent_records -= len(self._recent.popleft().records)

    # -- group commit ----------------------------------------------------------------------
    # One thread writes and syncs; the moment a sync ends it takes whatever accumulated
    # meanwhile and writes that, without a round trip through the event loop (which may be
    # busy for milliseconds), so a frame waits for at most the sync in progress and its
    # own. The loop only hears "durable up to here" and wakes acks: from a callback the
    # thread posts (call_soon_threadsafe), or sooner, from the next frame's append, when the
    # loop is in a long pass of frames (the posted callback waits for its end).
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        self._thread = threading.Thread(target=self._commit, name="spool-commit", daemon=True)
        self._writer.prepare_next()  # before the thread, the other caller, starts
        self._thread.start()
        self._task = asyncio.create_task(self._housekeeping(), name="spool")

    def _commit(self) -> None:
        """The commit thread: write and sync what is pending, group after group."""
        delay = _RETRY_INITIAL_S
        try:
            while not self._abandon:
                with self._lock:
                    group = self._pending
                    if not group:
                        if self._stopping:
                            return
                        self._sleeping = True
                        self._work.clear()
                    else:
                        first, last = self._pending_first, self._pending_last
                        self._pending = []
                        self._taken += 1
                if not group:
                    self._work.wait()
                    continue
                started = time.perf_counter()
                try:
                    size = self._writer.write(first, group)
                except OSError as exc:
                    # A full disk or an I/O error: keep the group, acks wait, try again.
                    with self._lock:
                        self._pending = group + self._pending
                        self._pending_first = first
                        if len(self._pending) == len(group):
                            self._pending_last = last
                        self._work.clear()
                    self._report(self._failed, exc)
                    self._work.wait(delay)  # close() cuts the wait short
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                delay = _RETRY_INITIAL_S
                self._report(self._committed, last, size, time.perf_counter() - started)
        finally:
            self._post(self._thread_ended)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed (a failed shutdown)
            self._loop.call_soon_threadsafe(callback, *args)

    def _report(self, callback: Callable[..., None], *args: object) -> None:
        """(Commit thread) queue ``callback(*args)`` for the loop, in order."""
        with self._lock:
            self._reports.append((callback, args))
        self._post(self._take_reports)

    def _take_reports(self) -> None:
        """On the loop: handle what the commit thread reported so far."""
        with self._lock:
            reports, self._reports = self._reports, []
        for callback, args in reports:
            callback(*args)

    def _committed(self, last: int, size: int, seconds: float) -> None:
        """On the loop: everything up to offset ``last`` is on disk."""
        if self.failing:
            log.info("spool: writing again")
            self.failing = ""
        metrics.SPOOL_SYNC_SECONDS.observe(seconds)
        metrics.SPOOL_RECORDS.inc(last - self.durable)
        self._pending_bytes -= size
        self.written = self.durable = last
        self._flushed.set()
        self.ledger.advanced(self)
        self._maybe_persist_cursors()
        self._update_gauge()

    def _failed(self, exc: OSError) -> None:
        metrics.SPOOL_ERRORS.inc()
        if not self.failing:
            log.error("spool: write failed (%s); acks wait until it succeeds", exc)
        self.failing = f"{type(exc).__name__}: {exc}"

    def _thread_ended(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _housekeeping(self) -> None:
        # Consumers confirm while nothing is appended too: their cursors are saved, and
        # free segments (and room under the disk budget), also when no commit happens.
        while True:
            await asyncio.sleep(_CURSOR_PERSIST_S)
            self._maybe_persist_cursors()

    # -- consumers' progress ---------------------------------------------------------------
    def cursors(self) -> dict[str, int]:
        """Each registered consumer's cursor now."""
        return {consumer.name: consumer.cursor() for consumer in self._consumers}

    def _maybe_persist_cursors(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._cursors_at < _CURSOR_PERSIST_S:
            return
        self._cursors_at = now
        if self._saving is not None:
            return  # a save is under way; the next tick takes the newer cursors
        snapshot = self.cursors()
        if snapshot == self._cursors_saved:
            self._truncate()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._persist_cursors()
            self._truncate()
            return
        # Off the loop: creating and renaming a file waits for the file system's journal,
        # which the store's syncs keep busy (up to 79 ms measured on a loaded disk), and
        # every ack due meanwhile would wait as long. Segments are deleted after the save.
        saving = self._saving = loop.run_in_executor(None, self._write_cursors, snapshot)
        saving.add_done_callback(lambda done: self._cursors_written(snapshot, done))

    def _cursors_written(self, snapshot: dict[str, int], done: asyncio.Future[bool]) -> None:
        """On the loop: the save of ``snapshot`` ended."""
        self._saving = None
        if self._closing or done.cancelled() or done.exception() is not None:
            return  # closing: close() saves the final cursors itself
        if not done.result():
            return
        self._cursors_saved = snapshot
        self._truncate()

    def _persist_cursors(self) -> None:
        snapshot = self.cursors()
        if snapshot != self._cursors_saved and self._write_cursors(snapshot):
            self._cursors_saved = snapshot

    def _write_cursors(self, snapshot: dict[str, int]) -> bool:
        """Replace ``cursors.json`` with ``snapshot`` (any thread); False if it failed."""
        path = self.settings.directory / CURSORS_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_bytes(orjson.dumps(snapshot))
            os.replace(temporary, path)
        except OSError as exc:
            log.error("spool: cannot save cursors (%s); a restart replays more", exc)
            return False
        return True

    def _truncate(self) -> None:
        """Delete segments every consumer has confirmed completely (never the newest)."""
        if not self._cursors_saved:
            return
        low = min(self._cursors_saved.values())
        segments = self._segments
        done: list[Path] = []
        while True:
            with segments.lock:
                if len(segments.paths) < 2 or segments.firsts[1] - 1 > low:
                    break
                done.append(segments.pop_first())
        if done:
            self._delete_soon(done)
        self._update_gauge()
        if not self.over_budget:
            self._room.set()

    def _delete_soon(self, paths: list[Path]) -> None:
        """Delete confirmed segments off the event loop: unlinking a large file can take
        tens of milliseconds, and every ack waiting on the loop would wait as long. They are
        out of the index already (a reader holding one open keeps reading it); one a crash
        leaves behind is confirmed, and the next start's truncation deletes it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _delete(paths)
            return
        self._deletions = [f for f in self._deletions if not f.done()]
        self._deletions.append(loop.run_in_executor(None, _delete, paths))

    def _update_gauge(self) -> None:
        self._bytes_gauge.set(self._segments.total + self._pending_bytes)

    # -- reading back ----------------------------------------------------------------------
    def reader(self, start: int) -> SpoolReader:
        """A reader from offset ``start`` on (for a consumer catching up)."""
        return SpoolReader(self._segments, start)

    def recent_from(self, offset: int, limit_records: int) -> list[Entry] | None:
        """Entries from ``offset`` on out of memory, or None when they are not all there.

        Everything from ``offset`` to the head is returned (up to the limit) when memory
        still holds ``offset``; the caller then needs no disk read.
        """
        recent = self._recent
        if not recent or recent[0].first > offset:
            return None
        out: list[Entry] = []
        count = 0
        for entry in recent:
            if entry.last < offset:
                continue
            out.append(entry)
            count += len(entry.records)
            if count >= limit_records:
                break
        return out

    @property
    def oldest_in_memory(self) -> int | None:
        return self._recent[0].first if self._recent else None

    async def flushed(self) -> None:
        """Wait for the next group commit."""
        self._flushed.clear()
        await self._flushed.wait()

    # -- shutdown --------------------------------------------------------------------------
    async def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending, save the cursors, close the files."""
        self._closing = True
        self._room.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        thread, self._thread = self._thread, None
        writer_free = True
        if thread is not None:
            with self._lock:
                self._stopping = True
            self._work.set()
            assert self._stopped is not None
            try:
                await asyncio.wait_for(asyncio.shield(self._stopped), timeout_s)
            except TimeoutError:
                log.error("spool: %d frames not written at shutdown", len(self._pending))
                self._abandon = True
                self._work.set()
                # A write stuck in the kernel keeps the thread (and the file) busy: then
                # the descriptor is left to the process's exit.
                writer_free = await asyncio.to_thread(_joined, thread, 1.0)
        if self._saving is not None:
            # The last save is written after it, never overwritten by it.
            await asyncio.wait([self._saving])
        self._persist_cursors()
        self._truncate()
        await asyncio.gather(*self._deletions)
        self._deletions.clear()
        if writer_free:
            await asyncio.to_thread(self._writer.close)
        self._lock_file.release()

    def health(self) -> dict[str, object]:
        return {
            "status": "degraded" if self.failing else "ok",
            "bytes": self._segments.total + self._pending_bytes,
            "max_bytes": self.settings.max_bytes,
            "durable_offset": self.durable,
            **({"error": self.failing} if self.failing else {}),
        }
