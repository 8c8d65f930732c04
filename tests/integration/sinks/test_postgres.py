"""The postgres sink: conformance against a private cluster, plus schema and migration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from fleetgate.records import Record
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.sinks.postgres import MIGRATIONS, PostgresSink
from fleetgate.sinks.registry import sink_class
from tests.integration.services import ManagedProcess
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    teltonika_record,
)

pytestmark = pytest.mark.integration

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical(
    source: str,
    device_id: str,
    topic: str,
    created_ms: int,
    received_ms: int,
    data: Any,
    raw: bytes,
    meta: Any,
) -> bytes:
    """One comparable form of a row: jsonb keeps values, not key order or spacing."""
    return orjson.dumps(
        {
            "source": source,
            "device_id": device_id,
            "topic": topic,
            "created_at": created_ms,
            "received_at": received_ms,
            "data": data,
            "raw": raw.hex(),
            "meta": meta,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def _ms(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(milliseconds=1)


class PostgresHarness(SinkHarness):
    name = "postgres"
    supports_keys = True  # the device_id column
    supports_headers = False  # metadata is derivable from the columns; not stored twice

    def __init__(self, server: ManagedProcess | None, dsn: str | None = None) -> None:
        super().__init__(server)
        self.dsn = dsn if dsn is not None else server.info["dsn"]  # type: ignore[union-attr]
        self.table = f"fgt{self.token}"

    async def make_sink(self, ctx: SinkContext) -> Sink:
        return PostgresSink({"dsn": self.dsn, "table": self.table, "connect_timeout_ms": 2000}, ctx)

    def expected_destination(self, sink: Sink, record: Record) -> str:
        return self.table

    def expected_payload(self, record: Record, ctx: SinkContext) -> bytes:
        meta = dict(record.meta) if record.meta is not None else None
        return canonical(
            record.source,
            record.device_id,
            record.topic,
            record.created_at,
            record.received_at,
            record.data,
            record.raw,
            meta,
        )

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        return await self.poll(self._read_all, expected, timeout)

    async def _read_all(self) -> list[Delivered]:
        query = sql.SQL(
            "SELECT source, device_id, topic, created_at, received_at, data, raw, meta"
            " FROM {} ORDER BY id"
        ).format(sql.Identifier(self.table))
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2) as conn:
                rows = await (await conn.execute(query)).fetchall()
        except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
            return []
        return [
            Delivered(
                destination=self.table,
                key=device.encode(),
                headers={},
                payload=canonical(
                    source, device, topic, _ms(created), _ms(received), data, raw, meta
                ),
            )
            for source, device, topic, created, received, data, raw, meta in rows
        ]

    async def cleanup(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=2
            ) as conn:
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table))
                )
                await conn.execute(
                    "DELETE FROM fleetgate_schema_version WHERE table_name = %s", (self.table,)
                )
        except psycopg.Error:
            pass


class TestPostgresConformance(SinkConformance):
    harness_class = PostgresHarness

    @pytest.fixture
    def harness_factory(self, private_postgres: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: PostgresHarness(private_postgres)


async def _columns(dsn: str, table: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            (table,),
        )
        return dict(await cur.fetchall())


async def test_creates_table_and_records_schema_version(private_postgres: ManagedProcess) -> None:
    if not private_postgres.running:
        private_postgres.start()
    harness = PostgresHarness(private_postgres)
    sink = await harness.make_sink(SinkContext())
    try:
        await sink.start()
        columns = await _columns(harness.dsn, harness.table)
        async with await psycopg.AsyncConnection.connect(harness.dsn) as conn:
            cur = await conn.execute(
                "SELECT version FROM fleetgate_schema_version WHERE table_name = %s",
                (harness.table,),
            )
            version = await cur.fetchone()
        # A second sink on the same table migrates nothing and works.
        again = await harness.make_sink(SinkContext())
        await again.start()
        await again.publish([teltonika_record("356307042441013", 1)])
        await again.close()
    finally:
        await sink.close()
        await harness.cleanup()
    assert columns == {
        "id": "bigint",
        "source": "text",
        "device_id": "text",
        "topic": "text",
        "created_at": "timestamp with time zone",
        "received_at": "timestamp with time zone",
        "data": "jsonb",
        "raw": "bytea",
        "meta": "jsonb",
    }
    assert version == (MIGRATIONS[-1][0],)


async def test_table_dropped_while_running_is_recreated(private_postgres: ManagedProcess) -> None:
    if not private_postgres.running:
        private_postgres.start()
    harness = PostgresHarness(private_postgres)
    sink = await harness.make_sink(SinkContext())
    records = make_records(4)
    try:
        await sink.start()
        async with await psycopg.AsyncConnection.connect(harness.dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(harness.table)))
        with pytest.raises(Exception, match="table missing"):
            await sink.publish(records[:2])
        await sink.publish(records)  # the runner's retry: migrates again, then writes
        delivered = await harness.read_back(4, 0)
    finally:
        await sink.close()
        await harness.cleanup()
    assert len(delivered) == 4


async def test_nul_in_json_strings_is_stored_as_replacement(
    private_postgres: ManagedProcess,
) -> None:
    if not private_postgres.running:
        private_postgres.start()
    harness = PostgresHarness(private_postgres)
    sink = await harness.make_sink(SinkContext())
    record = Record("mqtt", "gw", "can", 1, 2, {"text": "a\x00b", "path": "c:\\u0000"})
    try:
        await sink.start()
        await sink.publish([record])
        async with await psycopg.AsyncConnection.connect(harness.dsn) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT data FROM {}").format(sql.Identifier(harness.table))
            )
            stored = await cur.fetchone()
    finally:
        await sink.close()
        await harness.cleanup()
    assert stored == ({"text": "a\ufffdb", "path": "c:\\u0000"},)


def test_table_name_is_validated() -> None:
    with pytest.raises(Exception, match=r"schema\.\]table"):
        PostgresSink({"table": "a..b"}, SinkContext())
    assert sink_class("postgres") is PostgresSink


async def test_shared_postgres_round_trip(shared_postgres: int) -> None:
    """One quick round trip against the always-running server (unique table, dropped)."""
    harness = PostgresHarness(None, f"postgresql://postgres@127.0.0.1:{shared_postgres}/postgres")
    records = make_records(30)
    ctx = SinkContext()
    sink = await harness.make_sink(ctx)
    try:
        await sink.start()
        await sink.publish(records)
        delivered = await harness.read_back(len(records), 0)
    finally:
        await sink.close()
        await harness.cleanup()
    assert [d.payload for d in delivered] == [harness.expected_payload(r, ctx) for r in records]
