"""The kinesis sink against moto_server (memory-only), plus Tesla's stream naming rules.

moto forgets streams and records on restart, so the harness recreates the test's streams
after every restart and the durable restart tests are replaced by :mod:`volatile`'s check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fleetgate.forms import wire_payload
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError
from fleetgate.sinks.kinesis import KinesisSink
from fleetgate.sinks.registry import sink_class
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, free_port, moto_server
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    wire_record,
)
from tests.integration.sinks.volatile import kill_and_restart_under_live_sink

pytestmark = pytest.mark.integration

TOPICS = ("avl", "can", "V")


@pytest.fixture(scope="session")
def moto(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(moto_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any credentials; botocore needs some. No real AWS is ever contacted:
    # every client here gets the moto endpoint.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL", "KINESIS_STREAM_V"):
        monkeypatch.delenv(name, raising=False)


def kinesis_client(endpoint: str) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def read_stream(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every record of ``stream``, shard by shard from TRIM_HORIZON."""
    records: list[dict[str, Any]] = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            if not page["Records"]:
                break
            records += page["Records"]
            iterator = page.get("NextShardIterator")
    return records


class KinesisHarness(SinkHarness):
    name = "kinesis"
    supports_keys = True  # PartitionKey
    durable = False  # moto is memory-only: see volatile.py for the restart check

    def __init__(self, server: ManagedProcess) -> None:
        super().__init__(server)
        self.endpoint = server.info["endpoint"]
        self.streams: list[str] = []

    def _create_streams(self) -> None:
        if self.server is None or not self.server.running:
            return  # a test stopped it; start_server() creates them
        client = kinesis_client(self.endpoint)
        for stream in self.streams:
            with contextlib.suppress(client.exceptions.ResourceInUseException):
                client.create_stream(StreamName=stream, ShardCount=2)

    async def make_sink(self, ctx: SinkContext) -> Sink:
        self.streams = [f"{ctx.namespace}_{topic}" for topic in TOPICS]
        await asyncio.to_thread(self._create_streams)
        # No SDK retries: the runner retries, and its 2 s close-while-down bound in the
        # suite leaves no room for botocore's backoff on top (default max_retries is 1).
        return KinesisSink({"override_host": self.endpoint, "max_retries": 0}, ctx)

    async def start_server(self) -> None:
        await super().start_server()
        await asyncio.to_thread(self._create_streams)  # moto came back empty

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while True:
            delivered = await asyncio.to_thread(self._read_all)
            if len(delivered) >= expected or time.monotonic() >= deadline:
                return delivered
            await asyncio.sleep(0.1)

    def _read_all(self) -> list[Delivered]:
        client = kinesis_client(self.endpoint)
        delivered: list[Delivered] = []
        for stream in self.streams:
            try:
                records = read_stream(client, stream)
            except Exception:
                continue  # restarting, or the stream is being recreated
            delivered += [
                Delivered(stream, r["PartitionKey"].encode(), {}, r["Data"]) for r in records
            ]
        return delivered

    async def cleanup(self) -> None:
        def delete() -> None:
            client = kinesis_client(self.endpoint)
            for stream in self.streams:
                with contextlib.suppress(Exception):
                    client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)

        await asyncio.to_thread(delete)


class TestKinesisConformance(SinkConformance):
    harness_class = KinesisHarness

    @pytest.fixture
    def harness_factory(self, moto: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: KinesisHarness(moto)

    async def test_moto_killed_under_live_sink_then_back(
        self, harness: SinkHarness, ctx: SinkContext
    ) -> None:
        await kill_and_restart_under_live_sink(harness, ctx)


# -- Tesla's naming and start-up rules -----------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert sink_class("kinesis") is KinesisSink


def test_stream_name_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = KinesisSink({"streams": {"V": "from_config", "alerts": "alerts_cfg"}}, SinkContext("ns"))
    assert sink.stream_for("V") == "from_config"
    assert sink.stream_for("errors") == "ns_errors"
    monkeypatch.setenv("KINESIS_STREAM_V", "from_env")
    assert sink.stream_for("V") == "from_env"  # env beats config
    assert sink.stream_for("alerts") == "alerts_cfg"


def test_region_and_endpoint_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:1")
    sink = KinesisSink({}, SinkContext())
    assert sink.region == "us-east-1"
    assert sink.endpoint == "http://127.0.0.1:1"
    assert sink.describe() == "kinesis http://127.0.0.1:1"
    assert KinesisSink({"override_host": "http://h:2"}, SinkContext()).endpoint == "http://h:2"


async def test_start_fails_when_list_streams_fails() -> None:
    sink = KinesisSink({"override_host": f"http://127.0.0.1:{free_port()}"}, SinkContext("ns"))
    with pytest.raises(TransientSinkError, match="ListStreams"):
        await asyncio.wait_for(sink.start(), 20)
    await sink.close()


async def test_env_endpoint_and_stream_override_reach_moto(
    moto: ManagedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not moto.running:
        moto.start()
    stream = f"fgt_env_{time.monotonic_ns()}"
    client = kinesis_client(moto.info["endpoint"])
    client.create_stream(StreamName=stream, ShardCount=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", moto.info["endpoint"])
    monkeypatch.setenv("KINESIS_STREAM_V", stream)
    records = [wire_record("5YJ3E1EA7KF000009", seq) for seq in range(3)]
    sink = KinesisSink({}, SinkContext(namespace="unused"))
    try:
        await sink.start()
        await sink.publish(records)
    finally:
        await sink.close()
        got = read_stream(client, stream)
        client.delete_stream(StreamName=stream)
    assert [r["Data"] for r in got] == [wire_payload(r) for r in records]
    assert {r["PartitionKey"] for r in got} == {"5YJ3E1EA7KF000009"}


async def test_more_than_500_records_split_into_calls(moto: ManagedProcess) -> None:
    if not moto.running:
        moto.start()
    harness = KinesisHarness(moto)
    ctx = SinkContext(namespace=f"fgt{harness.token}")
    sink = await harness.make_sink(ctx)
    records = make_records(1234)
    calls: list[int] = []
    try:
        await sink.start()
        client = sink._client  # count PutRecords entries per call
        original = client.put_records

        async def counting(**kwargs: Any) -> Any:
            calls.append(len(kwargs["Records"]))
            return await original(**kwargs)

        client.put_records = counting
        await sink.publish(records)
        delivered = await harness.read_back(len(records), 10)
    finally:
        await sink.close()
        await harness.cleanup()
    assert max(calls) <= 500
    assert sum(calls) == len(records)
    assert sorted(d.payload for d in delivered) == sorted(wire_payload(r) for r in records)
