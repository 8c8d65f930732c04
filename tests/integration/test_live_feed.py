"""The live hub fed from the shared log (``api.stream.source``), and a log reader that
loses its server: against real NATS JetStream servers the test starts and stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fleetgate.config import build_config
from fleetgate.pipeline.hub import LiveHub, StreamFilter
from fleetgate.recordlog import LogFollower, ReadOptions, open_reader
from fleetgate.recordlog.live import LiveFeed
from fleetgate.recordlog.nats import NatsLogReader
from fleetgate.records import Record, new_record, record_json, set_offset
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.nats import NatsSettings, NatsSink
from tests.integration.conftest import missing
from tests.integration.services import (
    NATS_BIN,
    ManagedProcess,
    ServiceUnavailableError,
    nats_server,
    require_binary,
)

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000


@pytest.fixture
def nats(services_dir: Path) -> Iterator[ManagedProcess]:
    try:
        require_binary(NATS_BIN)
    except ServiceUnavailableError as exc:
        missing(str(exc))
    proc = nats_server(services_dir)  # not started: the tests start it when they want
    try:
        yield proc
    finally:
        proc.destroy()


def records(first: int, count: int) -> list[Record]:
    made = []
    for offset in range(first, first + count):
        record = new_record("teltonika", f"dev{offset % 3}", "position", NOW + offset,
                            NOW + offset, {"n": offset})
        set_offset(record, offset)
        made.append(record)
    return made


async def write(url: str, batch: Sequence[Record]) -> None:
    sink = NatsSink(NatsSettings(servers=[url]), SinkContext("live", node_id="node-x"))
    await sink.start()
    try:
        await sink.publish(batch)
    finally:
        await sink.close()


async def until(check: object, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_the_hub_is_fed_from_the_log_once_it_can_be_reached(nats: ManagedProcess) -> None:
    url = f"nats://127.0.0.1:{nats.port}"
    config = build_config(
        {"namespace": "live", "nats": {"servers": [url]}, "api": {"stream": {"source": "nats"}}}
    )
    hub = LiveHub()
    subscription = hub.subscribe(StreamFilter())
    feed = LiveFeed(lambda: open_reader(config, "nats", ReadOptions()), hub.publish)
    await feed.start()
    try:
        # Nothing listens yet: the node runs on, /health says why its stream is empty.
        await until(lambda: "no servers" in feed.health().get("error", ""))
        assert feed.health()["status"] == "degraded"
        assert "nats 127.0.0.1" in feed.health()["address"]
        nats.start()
        await write(url, records(1, 1))  # the stream exists from the first record
        await until(lambda: feed.health()["status"] == "ok")
        await asyncio.sleep(0.5)
        await write(url, records(2, 6))
        got: list[Record] = []

        def taken() -> bool:
            batches, _ = subscription.take(100)
            got.extend(record for batch in batches for record in batch.records)
            return len(got) >= 6

        await until(taken)
        # From the log's end when the feed started reading: the first record is not there.
        assert [record_json(r) for r in got] == [record_json(r) for r in records(2, 6)]
        assert feed.health()["records"] == 6
    finally:
        await feed.stop()


async def test_a_reader_alone_resumes_after_its_last_record_when_the_server_comes_back(
    nats: ManagedProcess,
) -> None:
    nats.start()
    url = f"nats://127.0.0.1:{nats.port}"
    await write(url, records(1, 10))
    reader = NatsLogReader(NatsSettings(servers=[url]), "live", ReadOptions(from_beginning=True))
    got: list[Record] = []

    async def handle(batch: Sequence[Record]) -> None:
        got.extend(batch)

    # window 0: a record read twice would show.
    follower = LogFollower(reader, handle, window=0)
    await reader.start()
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: len(got) == 10)
        nats.kill()
        await asyncio.sleep(1.0)
        nats.start()  # JetStream kept the stream on disk
        await write(url, records(11, 5))
        await until(lambda: len(got) >= 15)
        await asyncio.sleep(0.5)
        assert [r.data["n"] for r in got] == list(range(1, 16))
    finally:
        follower.stop()
        await task
        await reader.close()
