"""Every Prometheus metric fleetgate exports, defined once.

Metrics live in one module-level registry so any module can count without being handed a
registry, and so ``/metrics`` shows one consistent set. fleetgate's own metrics are
prefixed ``fleetgate_``; the Tesla listener also exports the reference server's unprefixed
names (``reliable_ack``, ``record_total``, ...) so existing dashboards keep working.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from fleetgate.observability.exposition import generate_latest

# -- several worker processes (``workers`` > 1) ------------------------------------------------
# The supervisor sets PROMETHEUS_MULTIPROC_DIR before the workers start, so prometheus_client
# keeps every value in per-process files there. Gauges below say how their per-worker values
# combine (``multiprocess_mode``; ignored in a single process); exposition then sums over the
# worker files instead of reading this process's registry alone.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _process_identifier() -> Callable[[], int]:
    """This process's pid, remembered (and renewed in a forked child).

    In multiprocess mode every increment asks prometheus_client's ``process_identifier``
    whether the process forked; its default, ``os.getpid``, is a system call (~0.26 µs of
    an increment's ~1 µs, several increments per frame). The answer changes only at a
    fork, which ``os.register_at_fork`` reports."""
    pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
    # A C-level call (no Python frame), unlike a lambda.
    return cast(Callable[[], int], functools.partial(operator.getitem, pid, 0))


if os.environ.get(MULTIPROC_ENV):
    # Before any metric below is made: each takes its value class from here.
    values.ValueClass = values.MultiProcessValue(_process_identifier())  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

# -- pipeline -----------------------------------------------------------------------------
RECORDS = Counter(
    "fleetgate_records_total", "Records accepted into the pipeline", ["source", "topic"],
    registry=REGISTRY,
)
RECORDS_REFUSED = Counter(
    "fleetgate_records_refused_total",
    "Records the pipeline refused (the spool cannot write them): no ack", ["source"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "fleetgate_queue_depth", "Records waiting in a bounded queue", ["queue"], registry=REGISTRY,
    multiprocess_mode="livesum",
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

# -- spool and dead letters ------------------------------------------------------------------
SPOOL_BYTES = Gauge(
    "fleetgate_spool_bytes", "Bytes in the durable spool (segments and unwritten frames)",
    registry=REGISTRY, multiprocess_mode="livesum",
)
SPOOL_RECORDS = Counter(
    "fleetgate_spool_records_total", "Records written durably to the spool", registry=REGISTRY
)
SPOOL_SYNC_SECONDS = Histogram(
    "fleetgate_spool_commit_seconds", "Time to write and sync one group commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
SPOOL_ERRORS = Counter(
    "fleetgate_spool_errors_total", "Spool writes that failed (retried)", registry=REGISTRY
)
SPOOL_TORN = Counter(
    "fleetgate_spool_torn_tails_total", "Torn or corrupt spool tails cut at start-up",
    registry=REGISTRY,
)
SPOOL_FULL_WAITS = Counter(
    "fleetgate_spool_full_waits_total", "Times the pipeline waited for the spool's disk budget",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "fleetgate_dead_letters_total", "Records a sink refused for good, set aside with the reason",
    ["sink"], registry=REGISTRY,
)

# -- connections --------------------------------------------------------------------------
OPEN_CONNECTIONS = Gauge(
    "fleetgate_open_connections", "Open device connections", ["protocol"], registry=REGISTRY,
    multiprocess_mode="livesum",
)

CONNECTIONS_REFUSED = Counter(
    "fleetgate_connections_refused_total",
    "Device connections refused or closed by a limit (caps, handshake and frame deadlines)",
    ["protocol", "reason"], registry=REGISTRY,
)

# -- logging ------------------------------------------------------------------------------
LOG_LINES_SUPPRESSED = Counter(
    "fleetgate_log_lines_suppressed_total",
    "Log lines a rate-limited call site did not write (summarised instead)", ["key"],
    registry=REGISTRY,
)

# -- live stream and API auth ------------------------------------------------------------------
STREAM_CLIENTS = Gauge(
    "fleetgate_stream_clients", "Connected /stream clients", registry=REGISTRY,
    multiprocess_mode="livesum",
)
STREAM_MESSAGES = Counter(
    "fleetgate_stream_messages_total", "WebSocket messages sent to /stream clients",
    registry=REGISTRY,
)
STREAM_RECORDS = Counter(
    "fleetgate_stream_records_total", "Records sent to /stream clients (one per client)",
    registry=REGISTRY,
)
STREAM_DROPPED = Counter(
    "fleetgate_stream_dropped_total",
    "Records dropped for /stream clients whose buffer was full", registry=REGISTRY,
)
STREAM_EVICTED = Counter(
    "fleetgate_stream_evicted_total",
    "/stream clients disconnected for taking nothing while their buffer overflowed",
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "fleetgate_api_auth_failures_total", "Refused API and /stream requests by reason",
    ["reason"], registry=REGISTRY,
)

# -- the shared record log, read back (fleetgate consume, api.stream.source) -------------------
LOG_READ = Counter(
    "fleetgate_log_read_total",
    "Records read back from the shared log (kafka, nats): record = read, duplicate = of "
    "those, dropped as a repeat of a record_id seen within the window",
    ["log", "result"], registry=REGISTRY,
)
LOG_UNREADABLE = Counter(
    "fleetgate_log_unreadable_total",
    "Log messages that are no record fleetgate wrote (skipped, logged)", ["log"],
    registry=REGISTRY,
)

# -- Teltonika ----------------------------------------------------------------------------
TELTONIKA_HANDSHAKES = Counter(
    "fleetgate_teltonika_handshakes_total",
    "IMEI handshakes by result and whether the device authority knows the IMEI "
    "(device: known, unknown; none for a malformed handshake)",
    ["result", "device"], registry=REGISTRY,
)
TELTONIKA_ALLOW_LIST_REFRESHES = Counter(
    "fleetgate_teltonika_allow_list_refreshes_total",
    "Reads of the Redis allow-list by result (ok, failed: the last list stays in use)",
    ["result"], registry=REGISTRY,
)
TELTONIKA_COMMANDS = Counter(
    "fleetgate_teltonika_commands_total",
    "Device commands by outcome (queued, sent, answered, nack, timed_out)",
    ["status"], registry=REGISTRY,
)
TELTONIKA_COMMANDS_ROUTED = Counter(
    "fleetgate_teltonika_commands_routed_total",
    "Commands handed between nodes through Redis (teltonika.command_routing) by event "
    "(queued: put on the shared queue, claimed: taken by the node holding the device, "
    "requeued: given back when the device left)",
    ["event"], registry=REGISTRY,
)
TELTONIKA_COMMAND_WRITES_WAITING = Gauge(
    "fleetgate_teltonika_command_writes_waiting",
    "Command routing writes (device presence, claims, states) that failed while Redis was "
    "away and run again once it answers",
    registry=REGISTRY, multiprocess_mode="livesum",
)
TELTONIKA_FRAMES = Counter(
    "fleetgate_teltonika_frames_total", "Teltonika frames by codec and result",
    ["codec", "result"], registry=REGISTRY,
)

TESLA_FRAMES_REFUSED = Counter(
    "fleetgate_tesla_frames_refused_total",
    "Tesla frames answered with the error reply, by reason (too_big, unreadable, sender, "
    "payload, impossible_time)",
    ["reason"], registry=REGISTRY,
)
# -- CAN gateways over MQTT (the mqtt_ingest subscriber) -----------------------------------
MQTT_MESSAGES = Counter(
    "fleetgate_mqtt_messages_total", "Messages received from the gateway broker, by QoS",
    ["qos"], registry=REGISTRY,
)
MQTT_REFUSED = Counter(
    "fleetgate_mqtt_refused_total",
    "Gateway messages dropped, by gateway and reason (unknown_topic, bad_payload, "
    "missing_hmac, bad_hmac, drift)",
    ["gateway", "reason"], registry=REGISTRY,
)
MQTT_CONNECTED = Gauge(
    "fleetgate_mqtt_broker_connected", "1 while the subscriber is connected to its broker",
    ["broker"], registry=REGISTRY, multiprocess_mode="livesum",
)
MQTT_CONNECTS = Counter(
    "fleetgate_mqtt_connects_total", "Connection attempts to the gateway broker, by result",
    ["result"], registry=REGISTRY,
)


# -- Tesla reference metrics ----------------------------------------------------------------
# Unprefixed names identical to the Go fleet-telemetry server (spec section 13), so existing
# dashboards keep working. Frame-processing counters are incremented by the Tesla session
# from what the sans-I/O core returns (FrameResult), never inside the core.
TESLA_RECORD_TOO_BIG = Counter(
    "record_too_big_total", "Tesla frames over 1,000,000 bytes", registry=REGISTRY
)
TESLA_UNKNOWN_MESSAGE_TYPE = Counter(
    "unknown_message_type_error_total", "Tesla frames whose envelope is not a stream message",
    ["msg_type"], registry=REGISTRY,
)
TESLA_DISPATCH = Counter(
    "dispatch_total", "Tesla frames processed, even with no sinks for the topic",
    ["record_type"], registry=REGISTRY,
)
TESLA_UNEXPECTED_RECORD_ERR = Counter(
    "unexpected_record_err_total", "Error replies sent to Tesla vehicles", registry=REGISTRY
)
TESLA_RECORD_SIZE_BYTES = Counter(
    "record_size_bytes_total", "Tesla payload bytes after transform", ["record_type"],
    registry=REGISTRY,
)
TESLA_RECORDS = Counter(
    "record_total", "Tesla records processed", ["record_type"], registry=REGISTRY
)
# Socket-side reference counters, incremented by the Tesla listener/session.
# reliable_ack / reliable_ack_miss are Gauges used as counters (only ever incremented):
# prometheus_client would export a Counter as ``reliable_ack_total``, while the reference
# exports the bare name dashboards query.
TESLA_RELIABLE_ACK = Gauge(
    "reliable_ack", "Reliable acks sent to a live Tesla socket", ["record_type", "dispatcher"],
    registry=REGISTRY, multiprocess_mode="sum",
)
TESLA_RELIABLE_ACK_MISS = Gauge(
    "reliable_ack_miss", "Reliable acks whose Tesla socket was gone",
    ["record_type", "dispatcher"], registry=REGISTRY, multiprocess_mode="sum",
)
# The reference adds signals (V data entries, alerts) of frames past the rate limiter.
TESLA_SIGNAL_COUNT = Gauge(
    "signal_count", "Signals in Tesla frames over the rate limiter", ["record_type"],
    registry=REGISTRY, multiprocess_mode="sum",
)
TESLA_VIN_SIGNAL_COUNT = Gauge(
    "vin_signal_count", "signal_count for the VINs in vins_signal_tracking_enabled",
    ["record_type", "vin"], registry=REGISTRY, multiprocess_mode="sum",
)
TESLA_RATE_LIMIT_EXCEEDED = Counter(
    "rate_limit_exceeded_total", "Tesla frames over the per-connection rate limit",
    ["device_id", "txtype"], registry=REGISTRY,
)
TESLA_SOCKET_ERR = Counter(
    "socket_err_total", "Failed writes to Tesla sockets", registry=REGISTRY
)
# Established TLS sessions ended by a TLS error (a refused client renegotiation, a record
# that does not decrypt): the connection is dropped, as uvloop's TLS does.
TLS_SESSION_ERRORS = Counter(
    "fleetgate_tls_session_errors_total",
    "Established TLS sessions ended by a TLS error, by listener and OpenSSL reason",
    ["listener", "reason"], registry=REGISTRY,
)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, cached: ``labels()`` costs ~2 µs, a cached child ~0.
    For hot paths whose label values come from a small fixed set (codecs, topics)."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def adder(child: Any) -> Callable[[float], None]:
    """The function that adds to ``child`` (a counter's or gauge's labelled child, or an
    unlabelled one), for per-frame paths: ``adder(child)(n)`` is ``child.inc(n)`` for
    ``n >= 0`` without ``inc``'s two checks (that the metric is not a labelled parent, and
    that ``n`` is not negative, both known here) and its two extra Python calls.

    It is the increment of the value object ``inc`` itself calls (``child._value``: a
    locked float, or the per-process file's value when several workers run), so exposition
    sees the same sum. prometheus_client has kept this layout since 0.4; a test fails
    should a release change it.
    """
    add: Callable[[float], None] = child._value.inc
    return add


_adders: dict[tuple[int, tuple[str, ...]], Callable[[float], None]] = {}


def labelled_adder(metric: Any, *values: str) -> Callable[[float], None]:
    """:func:`adder` of ``metric.labels(*values)``, cached like :func:`labelled`."""
    key = (id(metric), values)
    add = _adders.get(key)
    if add is None:
        add = _adders[key] = adder(labelled(metric, *values))
    return add


# -- exposition ---------------------------------------------------------------------------
_exposition: CollectorRegistry | None = None


def exposition_registry() -> CollectorRegistry:
    """The registry to serve: :data:`REGISTRY`, or all workers' values in multiprocess mode."""
    global _exposition
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    if _exposition is None:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        _exposition = registry
    return _exposition


def render() -> bytes:
    """Prometheus text exposition of the registry (of all workers when there are several)."""
    return generate_latest(exposition_registry())
