"""``fleetgate consume`` against a real log: Kafka (Tansu) and NATS JetStream.

The log is written by fleetgate's own kafka and nats sinks, exactly as nodes write it
(payload forms, headers, record ids), with Teltonika records from a real frame and Tesla
records from the server's FrameProcessor. The command runs as a user runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.tesla.core import FrameProcessor
from fleetgate.recordlog import LogFollower, ReadOptions
from fleetgate.recordlog.kafka import KafkaLogReader
from fleetgate.records import Record, new_record, record_json, set_offset
from fleetgate.sim.tesla import VehicleModel, build_vehicle_frame
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.sinks.kafka import KafkaSink
from fleetgate.sinks.nats import NatsSettings, NatsSink
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, free_port, tansu_server
from tests.teltonika_vectors import frame
from tests.tokens import TEST_SECRET, bearer, make_token
from tests.unit.tesla.helpers import IDENTITY

pytestmark = pytest.mark.integration

FLEETGATE = [sys.executable, "-m", "fleetgate"]
NOW = 1_700_000_123_456


@pytest.fixture(scope="module")
def tansu(services_dir: Path) -> Iterator[ManagedProcess]:
    proc = start_private(tansu_server, services_dir)
    try:
        yield proc
    finally:
        proc.destroy()


def log_records(offset_base: int = 0) -> list[Record]:
    """Records of three devices: a real Teltonika frame, Tesla V frames, MQTT signals."""
    raw = frame("traccar-c8e-L18")
    decoded = decode_frame(raw)
    records = to_records("352093081452251", AvlFrame(decoded.codec or 0, decoded.records, raw), NOW)
    processor = FrameProcessor(IDENTITY, configured_topics=None, socket_id="s1")
    model = VehicleModel(IDENTITY.device_id, random.Random(3))
    for n in range(5):
        records += processor.process(build_vehicle_frame(model, f"tx{n}", 1_700_000_000 + n), NOW).records
    for n in range(6):
        records.append(
            new_record("mqtt", "gw-1", "engine", NOW + n, NOW + n, {"signal": "rpm", "value": n})
        )
    for index, record in enumerate(records, offset_base + 1):
        set_offset(record, index)
    return records


async def publish(sink: Sink, records: Sequence[Record]) -> None:
    await sink.start()
    try:
        await sink.publish(records)
    finally:
        await sink.close()


def consume(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETGATE, "consume", *args], capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def by_device(lines: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in lines.splitlines():
        found.setdefault(json.loads(line)["device_id"], []).append(line)
    return found


def expected_by_device(records: Sequence[Record]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in records:
        found.setdefault(record.device_id, []).append(record_json(record).decode())
    return found


async def test_consume_prints_every_record_of_the_kafka_log_once_in_device_order(
    tansu: ManagedProcess,
) -> None:
    namespace = f"c{uuid.uuid4().hex[:6]}"
    bootstrap = tansu.info["bootstrap"]
    records = log_records()
    sink = KafkaSink({"bootstrap.servers": bootstrap}, SinkContext(namespace, node_id="n1"))
    # The second batch repeats ten records (a replay after a lost delivery report).
    await publish(sink, [*records, *(dataclasses.replace(r) for r in records[:10])])

    printed = consume("--kafka", bootstrap, "--namespace", namespace, "--from-beginning",
                      "--idle-exit", "2")
    assert printed.returncode == 0, printed.stderr
    assert by_device(printed.stdout) == expected_by_device(records)
    assert f"{len(records)} records, 10 repeats dropped" in printed.stderr

    # --window 0 keeps the repeats; --topic narrows to one topic.
    repeated = consume("--kafka", bootstrap, "--namespace", namespace, "--from-beginning",
                       "--idle-exit", "2", "--window", "0", "--topic", "V")
    lines = repeated.stdout.splitlines()
    assert {json.loads(line)["topic"] for line in lines} == {"V"}
    in_v = [record for record in [*records, *records[:10]] if record.topic == "V"]
    assert len(lines) == len(in_v) > 5


async def test_a_consumer_group_resumes_after_what_it_handled(tansu: ManagedProcess) -> None:
    namespace = f"g{uuid.uuid4().hex[:6]}"
    bootstrap = tansu.info["bootstrap"]
    records = log_records()
    sink = KafkaSink({"bootstrap.servers": bootstrap}, SinkContext(namespace, node_id="n1"))
    await publish(sink, records)
    group = ["--kafka", bootstrap, "--namespace", namespace, "--group", "dash"]

    first = consume(*group, "--from-beginning", "--count", "5")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 5
    # A group's join takes seconds (session.timeout.ms 6 s: about 3 s here).
    rest = consume(*group, "--from-beginning", "--idle-exit", "8")
    assert rest.returncode == 0, rest.stderr
    # The group's offsets: the second run starts after the first's records (a batch may
    # span partitions, so per partition after what the first one printed).
    first_lines, rest_lines = set(first.stdout.splitlines()), rest.stdout.splitlines()
    assert not first_lines & set(rest_lines)
    assert len(first_lines) + len(rest_lines) == len(records)


async def test_a_reader_alone_reads_new_records_and_new_topics_from_their_start(
    tansu: ManagedProcess,
) -> None:
    namespace = f"n{uuid.uuid4().hex[:6]}"
    bootstrap = tansu.info["bootstrap"]
    old = log_records()
    sink = KafkaSink({"bootstrap.servers": bootstrap}, SinkContext(namespace, node_id="n1"))
    # One batch per record: Tansu answers a partition's end as its last batch's first
    # offset + 1 (a batch of five would leave four "new" records behind the end).
    for record in old:
        if record.topic == "V":
            await publish(sink, [record])
    reader = KafkaLogReader({"bootstrap.servers": bootstrap}, namespace, ReadOptions())
    got: list[Record] = []
    new = log_records(offset_base=1000)
    all_there = asyncio.Event()

    async def handle(batch: Sequence[Record]) -> None:
        got.extend(batch)
        if len(got) >= len(new):
            all_there.set()

    follower = LogFollower(reader, handle)
    await reader.start()
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.sleep(1.0)
        assert got == []  # what was there before the reader started is not read
        await publish(sink, new)  # V again, and topics the log did not have yet
        await asyncio.wait_for(all_there.wait(), 15)
        assert sorted(record_json(r) for r in got) == sorted(record_json(r) for r in new)
    finally:
        follower.stop()
        await task
        await reader.close()


def test_consume_reads_the_nats_log_alone_and_in_a_group(
    shared_nats: int, tmp_path: Path
) -> None:
    prefix = f"consume{uuid.uuid4().hex[:6]}"
    url = f"nats://127.0.0.1:{shared_nats}"
    settings = NatsSettings(servers=[url], subject_prefix=prefix)
    records = log_records()
    asyncio.run(publish(NatsSink(settings, SinkContext("ns", node_id="n1")), records))
    config = tmp_path / "nats.json"
    config.write_text(json.dumps({"nats": {"servers": [url], "subject_prefix": prefix}}))
    try:
        printed = consume("--nats", url, "--namespace", prefix, "--from-beginning",
                          "--idle-exit", "2")
        assert printed.returncode == 0, printed.stderr
        assert by_device(printed.stdout) == expected_by_device(records)
        # In a group (a durable consumer): the second run gets only what the first left.
        first = consume("--config", str(config), "--group", "dash", "--from-beginning",
                        "--count", "7")
        rest = consume("--config", str(config), "--group", "dash", "--idle-exit", "2")
        assert first.returncode == rest.returncode == 0, first.stderr + rest.stderr
        assert len(first.stdout.splitlines()) == 7
        assert first.stdout.splitlines() + rest.stdout.splitlines() == printed.stdout.splitlines()
    finally:
        asyncio.run(_delete_stream(url, prefix))


async def _delete_stream(url: str, name: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def test_a_dashboard_node_fed_from_the_log_stores_and_serves_every_device(
    tansu: ManagedProcess, tmp_path: Path
) -> None:
    namespace = f"d{uuid.uuid4().hex[:6]}"
    bootstrap = tansu.info["bootstrap"]
    records = log_records()
    sink = KafkaSink({"bootstrap.servers": bootstrap}, SinkContext(namespace, node_id="n1"))
    asyncio.run(publish(sink, records))
    api_port = free_port()
    config = tmp_path / "dashboard.json"
    config.write_text(json.dumps({
        "data_dir": str(tmp_path / "data"),
        "namespace": namespace,
        "kafka": {"bootstrap.servers": bootstrap},
        "api": {"host": "127.0.0.1", "port": api_port, "auth": {"secret": TEST_SECRET}},
        "json_log_enable": True,
    }))
    node = subprocess.Popen(
        [*FLEETGATE, "consume", "--config", str(config), "--feed", "--from-beginning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        api = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        devices: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{api}/api/v1/devices", headers=bearer(make_token()))
                devices = response.json()["devices"]
            except httpx.TransportError:
                devices = []
            if sum(device["record_count"] for device in devices) >= len(records):
                break
            time.sleep(0.2)
        counts = {device["id"]: device["record_count"] for device in devices}
        expected: dict[str, int] = {}
        for record in records:
            expected[record.device_id] = expected.get(record.device_id, 0) + 1
        assert counts == expected
        # No device port is open: the node is fed from the log only.
        health = httpx.get(f"{api}/health").json()
        assert set(health["listeners"]) == set()
    finally:
        node.terminate()
        output, _ = node.communicate(timeout=60)
    assert node.returncode == 0, output
