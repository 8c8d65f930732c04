"""``postgres``: one row per record in a PostgreSQL table, written with COPY.

Library: psycopg 3 (async). It is the maintained PostgreSQL driver for Python, has native
asyncio, and exposes COPY FROM STDIN, which is several times faster than INSERTs for the
batch shapes the runner produces.

Table (``postgres.table``, ``schema.table`` allowed), created and migrated by the sink::

    id          bigint identity primary key   -- insertion order = per-device order
    source      text, device_id text, topic text
    created_at  timestamptz, received_at timestamptz
    data        jsonb                          -- the record's decoded data
    raw         bytea                          -- the bytes the device sent (may be empty)
    meta        jsonb                          -- protocol metadata (txid, ...), or NULL
    index (device_id, created_at)

Migrations are numbered; ``fleetgate_schema_version`` holds the version applied to each
table, and a transaction-scoped advisory lock keeps concurrent gateways from racing.

Confirmation = the batch's transaction committed. One connection, one COPY per batch, so
one batch in flight. Connection loss, shutdown and timeouts are transient (the connection
is dropped and reopened by the next publish); a missing table (dropped while running)
triggers the migration again; data the server rejects is permanent for the batch. jsonb
cannot hold NUL characters, so ``\\u0000`` inside strings is stored as U+FFFD.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

import orjson
from pydantic import Field, field_validator

from fleetgate.records import Record
from fleetgate.settings import Section
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

if TYPE_CHECKING:
    # psycopg is imported when the sink connects, not when the config is read.
    import psycopg

log = logging.getLogger("fleetgate.sinks.postgres")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MS: Final = -62_135_596_800_000  # 0001-01-01, as far as datetime goes
_MAX_MS: Final = 253_402_300_799_999  # 9999-12-31
_COLUMNS: Final = (
    "source",
    "device_id",
    "topic",
    "created_at",
    "received_at",
    "data",
    "raw",
    "meta",
)
# A JSON \u0000 escape not preceded by an escaped backslash.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")

# (version, statements); {table} and {index} are filled with quoted identifiers.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            "CREATE TABLE IF NOT EXISTS {table} ("
            " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " source text NOT NULL, device_id text NOT NULL, topic text NOT NULL,"
            " created_at timestamptz NOT NULL, received_at timestamptz NOT NULL,"
            " data jsonb NOT NULL, raw bytea NOT NULL DEFAULT '', meta jsonb)",
            "CREATE INDEX IF NOT EXISTS {index} ON {table} (device_id, created_at)",
        ),
    ),
)
_VERSION_TABLE: Final = "fleetgate_schema_version"


def _timestamp(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=min(max(ms, _MIN_MS), _MAX_MS))


def _json(value: Any) -> str:
    text = orjson.dumps(value)
    if b"\\u0000" in text:
        text = _JSON_NUL.sub(rb"\1\\ufffd", text)
    return text.decode()


def row(record: Record) -> tuple[Any, ...]:
    """The table row for ``record`` (column order: ``_COLUMNS``)."""
    return (
        record.source,
        record.device_id,
        record.topic,
        _timestamp(record.created_at),
        _timestamp(record.received_at),
        _json(record.data),
        record.raw,
        _json(dict(record.meta)) if record.meta is not None else None,
    )


class PostgresSettings(Section):
    """The ``postgres`` section (fleetgate's; the reference has no PostgreSQL dispatcher)."""

    dsn: str = "postgresql://127.0.0.1:5432/postgres"
    table: str = "fleetgate_records"
    connect_timeout_ms: int = Field(5_000, ge=1)

    @field_validator("table")
    @classmethod
    def _schema_and_table(cls, table: str) -> str:
        parts = table.split(".")
        if not all(parts) or len(parts) > 2:
            raise ValueError(f"{table!r} is not [schema.]table")
        return table


class PostgresSink(Sink):
    name: ClassVar[str] = "postgres"
    Settings: ClassVar[type[Section]] = PostgresSettings
    label: ClassVar[str | None] = "Postgres"
    settings: PostgresSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        from psycopg import sql

        parts = self.settings.table.split(".")
        self.table = sql.Identifier(*parts)
        self.index = sql.Identifier(f"{parts[-1]}_device_created_idx")
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.table, sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
        )
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._migrated = False

    def describe(self) -> str:
        import psycopg

        info = psycopg.conninfo.conninfo_to_dict(self.settings.dsn)
        host = info.get("host") or "localhost"
        port = info.get("port") or 5432
        return f"postgres {host}:{port}/{info.get('dbname', '')} table {self.settings.table}"

    async def start(self) -> None:
        await self._connection()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            await self._drop_connection()
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.dsn,
                    connect_timeout=max(1, round(self.settings.connect_timeout_ms / 1000)),
                    application_name="fleetgate",
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"{self.describe()}: {exc}") from exc
            self._conn = conn
        if not self._migrated:
            await self._guarded(self._migrate(conn))
            self._migrated = True
        return conn

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        from psycopg import sql

        versions = sql.Identifier(_VERSION_TABLE)
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("fleetgate-schema",))
            await cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY,"
                    " version int NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(versions)
            )
            await cur.execute(
                sql.SQL("SELECT version FROM {} WHERE table_name = %s").format(versions),
                (self.settings.table,),
            )
            found = await cur.fetchone()
            current = int(found[0]) if found else 0
            # A table dropped behind our back: start again from nothing.
            await cur.execute("SELECT to_regclass(%s)", (self.table.as_string(conn),))
            exists = await cur.fetchone()
            if exists is None or exists[0] is None:
                current = 0
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    await cur.execute(sql.SQL(statement).format(table=self.table, index=self.index))
                log.info("postgres: %s migrated to schema version %d", self.settings.table, version)
                current = version
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, version) VALUES (%s, %s) ON CONFLICT"
                    " (table_name) DO UPDATE SET version = excluded.version, updated_at = now()"
                ).format(versions),
                (self.settings.table, current),
            )

    async def publish(self, batch: Sequence[Record]) -> None:
        conn = await self._connection()
        await self._guarded(self._write(conn, batch))

    async def _write(self, conn: psycopg.AsyncConnection[Any], batch: Sequence[Record]) -> None:
        async with conn.transaction(), conn.cursor() as cur, cur.copy(self._copy) as copy:
            for record in batch:
                await copy.write_row(row(record))

    async def _guarded(self, operation: Any) -> None:
        """Run ``operation`` and sort its failure into transient or permanent."""
        import psycopg
        from psycopg import errors as pg_errors

        try:
            await operation
        except pg_errors.UndefinedTable as exc:
            self._migrated = False
            raise TransientSinkError(f"{self.describe()}: table missing, recreating") from exc
        except (psycopg.OperationalError, pg_errors.InsufficientPrivilege, OSError) as exc:
            await self._drop_connection()
            raise TransientSinkError(f"{self.describe()}: {exc}") from exc
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                await self._drop_connection()
                raise TransientSinkError(f"{self.describe()}: {exc}") from exc
            raise PermanentSinkError(f"{self.describe()}: {exc}") from exc

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception as exc:
                log.debug("postgres: close failed: %s", exc)

    async def close(self) -> None:
        # Every confirmed batch is committed; nothing is buffered here.
        await self._drop_connection()
