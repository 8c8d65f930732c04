"""Every Prometheus metric fleetgate exports, defined once.

Metrics live in one module-level registry so any module can count without being handed a
registry, and so ``/metrics`` shows one consistent set. fleetgate's own metrics are
prefixed ``fleetgate_``; the Tesla listener also exports the reference server's unprefixed
names (``reliable_ack``, ``record_total``, ...) so existing dashboards keep working.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

# -- pipeline -----------------------------------------------------------------------------
RECORDS = Counter(
    "fleetgate_records_total", "Records accepted into the pipeline", ["source", "topic"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "fleetgate_queue_depth", "Records waiting in a bounded queue", ["queue"], registry=REGISTRY
)
ACKS = Counter(
    "fleetgate_acks_total", "Device acknowledgements by protocol and outcome",
    ["protocol", "result"], registry=REGISTRY,
)

# -- sinks --------------------------------------------------------------------------------
SINK_PUBLISHED = Counter(
    "fleetgate_sink_published_total", "Records a sink confirmed", ["sink"], registry=REGISTRY
)
SINK_FAILED = Counter(
    "fleetgate_sink_failed_total", "Records a sink refused permanently", ["sink"],
    registry=REGISTRY,
)
SINK_ERRORS = Counter(
    "fleetgate_sink_errors_total", "Failed publish attempts", ["sink"], registry=REGISTRY
)
SINK_RETRIES = Counter(
    "fleetgate_sink_retries_total", "Publish attempts retried after an error", ["sink"],
    registry=REGISTRY,
)
SINK_LATENCY = Histogram(
    "fleetgate_sink_publish_seconds", "Time for a sink to confirm one batch", ["sink"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

# -- connections --------------------------------------------------------------------------
OPEN_CONNECTIONS = Gauge(
    "fleetgate_open_connections", "Open device connections", ["protocol"], registry=REGISTRY
)

# -- Teltonika ----------------------------------------------------------------------------
TELTONIKA_HANDSHAKES = Counter(
    "fleetgate_teltonika_handshakes_total", "IMEI handshakes by result", ["result"],
    registry=REGISTRY,
)
TELTONIKA_FRAMES = Counter(
    "fleetgate_teltonika_frames_total", "Teltonika frames by codec and result",
    ["codec", "result"], registry=REGISTRY,
)


def render() -> bytes:
    """Prometheus text exposition of the registry."""
    return generate_latest(REGISTRY)
