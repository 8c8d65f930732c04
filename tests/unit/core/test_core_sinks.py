from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from fleetgate.records import Record, record_json
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.jsonl import JsonlSink
from fleetgate.sinks.logger import LoggerSink
from fleetgate.sinks.registry import known_sinks, sink_class


def rec(i: int) -> Record:
    return Record("teltonika", "356307042441013", "position", i, i, {"i": i})


async def test_jsonl_appends_one_json_line_per_record(tmp_path: Path) -> None:
    sink = JsonlSink({"path": str(tmp_path / "out" / "r.jsonl")}, SinkContext())
    await sink.start()
    await sink.publish([rec(1), rec(2)])
    await sink.publish([rec(3)])
    await sink.close()
    lines = (tmp_path / "out" / "r.jsonl").read_bytes().splitlines()
    assert lines == [record_json(rec(i)) for i in (1, 2, 3)]


async def test_logger_writes_record_payload_lines(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggerSink({}, SinkContext())
    with caplog.at_level(logging.INFO, logger="fleetgate.records"):
        await sink.publish([rec(7)])
    [line] = caplog.records
    assert line.getMessage() == "record_payload"
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["vin"] == "356307042441013"
    assert fields["metadata"]["txtype"] == "position"
    assert fields["data"]["data"] == {"i": 7}
    orjson.dumps(fields)


def test_registry_knows_every_documented_sink() -> None:
    assert {"logger", "jsonl", "sqlite", "kafka", "kinesis", "pubsub", "mqtt", "zmq", "redis",
            "nats", "postgres"} <= set(known_sinks())
    assert sink_class("jsonl") is JsonlSink
    with pytest.raises(KeyError, match="unknown sink"):
        sink_class("carrier-pigeon")
