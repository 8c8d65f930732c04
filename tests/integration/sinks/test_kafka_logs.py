"""An unreachable Kafka: librdkafka's repeated lines go through fleetgate's logger, limited.

Without a ``logger`` librdkafka prints its own ``%3|...|FAIL|...`` lines to stderr, one per
broker every few seconds, for as long as the broker is away.
"""

from __future__ import annotations

import logging
import time

import pytest

from fleetgate.observability import metrics
from fleetgate.records import Record
from fleetgate.sinks.base import SinkContext, TransientSinkError
from fleetgate.sinks.kafka import KafkaSink
from tests.integration.services import free_port

pytestmark = pytest.mark.integration


def suppressed() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_log_lines_suppressed_total", {"key": "kafka.librdkafka"}
    )
    return value or 0.0


async def test_unreachable_brokers_give_a_few_fleetgate_lines_not_raw_librdkafka_lines(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    closed = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    sink = KafkaSink(
        {
            "bootstrap.servers": closed,
            # librdkafka retries each broker every few milliseconds: many lines quickly.
            "reconnect.backoff.ms": 1,
            "reconnect.backoff.max.ms": 10,
            "fleetgate.publish_timeout_ms": 300,
        },
        SinkContext(namespace="logs"),
    )
    before = suppressed()
    with caplog.at_level(logging.WARNING, logger="fleetgate.sinks.kafka"):
        await sink.start()
        try:
            deadline = time.monotonic() + 20
            # librdkafka keeps failing while we keep trying to publish.
            while suppressed() < before + 3:
                assert time.monotonic() < deadline, "librdkafka never repeated itself"
                with pytest.raises(TransientSinkError):
                    await sink.publish([Record("teltonika", "1", "avl", 1, 2, {})])
        finally:
            await sink.close()
    lines = [r for r in caplog.records if r.getMessage().startswith("librdkafka: ")]
    assert 1 <= len(lines) <= 5
    assert all(r.levelno == logging.WARNING for r in lines)
    assert "FAIL" in lines[0].getMessage()
    # Nothing written by librdkafka itself.
    err = capfd.readouterr().err
    assert "|FAIL|" not in err
    assert "rdkafka#producer" not in err
