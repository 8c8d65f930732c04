"""The reference server's per-dispatcher metrics, for dashboards built on Tesla's server.

Tesla's fleet-telemetry exports, per dispatcher and record type, what was published and
what failed (spec section 13): ``kafka_produce_total``, ``kafka_produce_ack_total``,
``kinesis_publish_total``, ``redis_publish_total_bytes``, ``mqtt_err``, ... fleetgate counts
the same names from the sink runner, after the backend confirmed, so a Grafana dashboard
made for the reference keeps working. The generic ``fleetgate_sink_*`` metrics carry the
same facts for every sink.

Names without a ``_total`` ending in the reference (``*_err``, ``*_bytes``) are Gauges that
only go up: prometheus_client would rename a Counter ``kafka_err`` to ``kafka_err_total``.
Counts are per record (the reference counts per MQTT message and per Redis channel publish;
those sinks fan one record out to several messages).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from prometheus_client import Counter, Gauge

from fleetgate.observability.metrics import REGISTRY
from fleetgate.records import Record

# dispatcher -> (published counter, published bytes, extra "ack" names for kafka)
_PUBLISH_NAME: Final = {
    "kafka": "kafka_produce",
    "kinesis": "kinesis_publish",
    "pubsub": "pubsub_publish",
    "zmq": "zmq_publish",
    "mqtt": "mqtt_publish",
    "redis": "redis_publish",
}
REFERENCE_DISPATCHERS: Final = frozenset(_PUBLISH_NAME)

_created: dict[str, Any] = {}


def _counter(name: str, documentation: str) -> Any:
    if name not in _created:
        _created[name] = Counter(name, documentation, ["record_type"], registry=REGISTRY)
    return _created[name]


def _rising_gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Any:
    if name not in _created:
        _created[name] = Gauge(
            name, documentation, list(labels), registry=REGISTRY, multiprocess_mode="sum"
        )
    return _created[name]


class DispatcherMetrics:
    """Counts one reference dispatcher's published records, bytes, errors, reliable acks."""

    def __init__(
        self,
        name: str,
        reliable_topics: frozenset[str],
        payload_sizes: Callable[[Sequence[Record]], list[int]],
    ) -> None:
        self.name = name
        self.reliable_topics = reliable_topics
        # The payload size of each record of a batch, in one call: a call per record cost
        # more than the sink's own work on the record.
        self.payload_sizes = payload_sizes
        base = _PUBLISH_NAME[name]
        self._published = _counter(f"{base}_total", f"Records published by {self.name}")
        self._bytes = _rising_gauge(
            f"{base}_total_bytes", f"Payload bytes published by {self.name}", ["record_type"]
        )
        self._errors = _rising_gauge(f"{self.name}_err", f"Failed {self.name} publishes")
        self._reliable = _counter(
            f"{self.name}_reliable_ack_total", f"Records {self.name} confirmed for a reliable ack"
        )
        # Kafka's reference counts enqueue and delivery separately; delivery is what the
        # sink confirms, so both move together here.
        self._acked = (
            (_counter("kafka_produce_ack_total", "Records Kafka confirmed"),
             _rising_gauge("kafka_produce_ack_total_bytes", "Payload bytes Kafka confirmed",
                           ["record_type"]))
            if self.name == "kafka"
            else None
        )

    def published(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        sizes = self.payload_sizes(batch)
        first = batch[0].topic
        counts: dict[str, list[int]] = {}
        for record in batch:
            if record.topic is not first and record.topic != first:
                for other, size in zip(batch, sizes, strict=True):
                    entry = counts.setdefault(other.topic, [0, 0])
                    entry[0] += 1
                    entry[1] += size
                break
        else:  # one topic (nearly every batch)
            counts[first] = [len(batch), sum(sizes)]
        for topic, (count, size) in counts.items():
            self._published.labels(topic).inc(count)
            self._bytes.labels(topic).inc(size)
            if self._acked is not None:
                self._acked[0].labels(topic).inc(count)
                self._acked[1].labels(topic).inc(size)
            if topic in self.reliable_topics:
                self._reliable.labels(topic).inc(count)

    def failed(self) -> None:
        self._errors.inc()


def dispatcher_metrics(
    sink: str,
    reliable_topics: Collection[str],
    payload_sizes: Callable[[Sequence[Record]], list[int]],
) -> DispatcherMetrics | None:
    """Metrics for ``sink`` if it is one of the reference's dispatchers, else None;
    ``payload_sizes(batch)``: each record's payload size."""
    if sink not in REFERENCE_DISPATCHERS:
        return None
    return DispatcherMetrics(sink, frozenset(reliable_topics), payload_sizes)
