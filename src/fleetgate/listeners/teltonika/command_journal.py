"""Device commands on disk: one SQLite file, ``<data_dir>/commands.db``, one table.

Every command the API took is a row from the moment it is queued; each change of state
(sent, answered, nACK, timed out) updates it. So ``GET .../commands`` lists commands across
restarts, and commands still queued when the server stopped are delivered after the start.
A command that was *sent* when the server stopped may have run on the device; it is not
sent again but marked timed out (:meth:`CommandJournal.recover`).

The file is separate from the record store: commands are an operator's actions, few and
small, and never mix with the records tables or their shards. Not thread-safe: one
connection, used from the one thread the command center runs it on.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleetgate.records import format_rfc3339_ms

QUEUED: Final = "queued"
SENT: Final = "sent"
ANSWERED: Final = "answered"
NACK: Final = "nack"
TIMED_OUT: Final = "timed_out"
STATUSES: Final = (QUEUED, SENT, ANSWERED, NACK, TIMED_OUT)
FINAL: Final = frozenset({ANSWERED, NACK, TIMED_OUT})

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS teltonika_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    command TEXT NOT NULL,
    codec INTEGER NOT NULL,
    status TEXT NOT NULL,
    response TEXT,
    detail TEXT,
    created_at INTEGER NOT NULL,
    sent_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS teltonika_commands_device ON teltonika_commands (device_id, id);
CREATE INDEX IF NOT EXISTS teltonika_commands_open ON teltonika_commands (status)
    WHERE status IN ('queued', 'sent');
"""
_COLUMNS: Final = (
    "id, device_id, command, codec, status, response, detail, created_at, sent_at, finished_at"
)


@dataclass(slots=True)
class Command:
    """One command to one device and what became of it (times in epoch ms)."""

    id: int
    device_id: str
    command: str
    codec: int
    status: str
    created_at: int
    response: str | None = None
    detail: str | None = None
    sent_at: int | None = None
    finished_at: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "command": self.command,
            "codec": self.codec,
            "status": self.status,
            "response": self.response,
            "detail": self.detail,
            "created_at": format_rfc3339_ms(self.created_at),
            "sent_at": None if self.sent_at is None else format_rfc3339_ms(self.sent_at),
            "finished_at": (
                None if self.finished_at is None else format_rfc3339_ms(self.finished_at)
            ),
        }

    def row(self) -> tuple[Any, ...]:
        """Values in the order of ``_COLUMNS``."""
        return (
            self.id,
            self.device_id,
            self.command,
            self.codec,
            self.status,
            self.response,
            self.detail,
            self.created_at,
            self.sent_at,
            self.finished_at,
        )


def _command(row: tuple[Any, ...]) -> Command:
    return Command(
        id=row[0],
        device_id=row[1],
        command=row[2],
        codec=row[3],
        status=row[4],
        response=row[5],
        detail=row[6],
        created_at=row[7],
        sent_at=row[8],
        finished_at=row[9],
    )


class CommandJournal:
    """The ``teltonika_commands`` table of ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "open() first"
        return self._db

    def insert(self, command: Command) -> int:
        """Store a new command; its id."""
        cursor = self.db.execute(
            f"INSERT INTO teltonika_commands ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            command.row()[1:],
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update(self, row: tuple[Any, ...]) -> None:
        """Write a command's state (``Command.row()``, taken when it changed)."""
        self.db.execute(
            "UPDATE teltonika_commands SET status = ?, response = ?, detail = ?, sent_at = ?, "
            "finished_at = ? WHERE id = ?",
            (row[4], row[5], row[6], row[8], row[9], row[0]),
        )

    def recover(self, now_ms: int) -> tuple[list[Command], int]:
        """At start: the commands still queued (oldest first), and how many that were sent
        before the stop are now marked timed out (they may have run; never sent twice)."""
        lost = self.db.execute(
            "UPDATE teltonika_commands SET status = ?, detail = ?, finished_at = ? "
            "WHERE status = ?",
            (TIMED_OUT, "the server stopped before the device answered", now_ms, SENT),
        ).rowcount
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM teltonika_commands WHERE status = ? ORDER BY id",
            (QUEUED,),
        ).fetchall()
        return [_command(row) for row in rows], lost

    def history(self, device_id: str, limit: int) -> list[Command]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM teltonika_commands WHERE device_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        return [_command(row) for row in rows]

    def get(self, device_id: str, command_id: int) -> Command | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM teltonika_commands WHERE device_id = ? AND id = ?",
            (device_id, command_id),
        ).fetchone()
        return None if row is None else _command(row)
