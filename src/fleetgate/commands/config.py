"""``fleetgate config``: check a configuration, or print the reference of every key.

``fleetgate config check --config FILE`` reads the file as ``serve`` would, runs every
start-up check (types, routing, files, extras) without binding anything, and says which
listeners it would open. ``fleetgate config reference`` prints ``docs/configuration.md``:
every key of the configuration model with its type, default and the comment the model
carries for it, so the reference cannot drift from the code (a test compares the two).
"""

from __future__ import annotations

import argparse
import ast
import enum
import inspect
import socket
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fleetgate.commands.serve import add_config_argument, load
from fleetgate.config import Config
from fleetgate.sinks.registry import SINK_EXTRAS, section_models, sink_class

HEADER = """\
# Configuration reference

Generated from the configuration model by `fleetgate config reference`; do not edit by
hand (`tests/unit/core/test_config_reference.py` fails when this file is out of date).

`fleetgate serve --config FILE` reads JSON (or TOML when the name ends in `.toml`). Keys
match case-insensitively, as in Tesla's `config.json`; an unknown key is named in a
warning. Environment variables `FLEETGATE_<KEY>` override the file, nested with `__`
(`FLEETGATE_TELTONIKA__PORT=6000`). `fleetgate config check --config FILE` runs every
start-up check without binding a port.

**Which listeners open.** With no configuration, every device listener opens (Teltonika
TCP and UDP on 5027, Tesla vehicles on 4443). A configuration that names a listener opens
only the listeners it names: the Tesla vehicle listener for any of `host`, `port`,
`status_port`, `tls`, `use_default_eng_ca`, `tesla_enabled`, `tesla`; the Teltonika listeners
(TCP, and UDP unless `teltonika.udp_enabled` is false) for a `teltonika` section; the
CAN-gateway subscriber for `mqtt_ingest`. A configuration that names none of them (only
sinks, the API...) keeps every listener of the defaults.
"""

# Sections whose keys are documented where they are read, not field by field.
FREE_FORM = {
    "kafka": "the librdkafka property map, as in Tesla's config (`bootstrap.servers`, "
    "`compression.type`...); JSON numbers become integers; `linger.ms` is 1 unless set "
    "(librdkafka's default is 5: each batch waits for its delivery reports). Two batches are "
    "in flight at once (the next is produced while the broker confirms the last), confirmed "
    "and the spool cursor moved strictly in order. Delivery is at-least-once: if a batch "
    "fails while the next was in flight, both are sent again in order, so records may "
    "appear twice; per device the last copy of each record is in order (`record_id` tells "
    "copies apart)"
}


# Meanings of keys whose model carries no comment (the model's comments win).
MEANINGS = {
    "data_dir": "store, spool, JSON lines, generated development certificates and keys",
    "log_level": "trace, debug, info, warn, error, fatal, panic (as in Tesla's config)",
    "json_log_enable": "one JSON object per log line",
    "records": 'topic → sink names; `"*"` matches every topic; the store gets everything',
    "ack_policy": "per source (`teltonika`, `tesla`, `mqtt`): a level, or sinks to wait for",
    "ack_timeout_s": "longer than this without confirmation: no ack",
    "tesla_enabled": "the Tesla vehicle listener",
    "host": "bind host of the vehicle listener (empty: all interfaces)",
    "port": "vehicle listener port (mTLS WebSocket)",
    "status_port": "plain-HTTP `/status` answering `ok` (0: off)",
    "tls": "the vehicle listener's server certificate and extra client CAs",
    "use_default_eng_ca": "trust Tesla's engineering CA bundle instead of production",
    "namespace": "prefix of topics, streams and channels: `<namespace>_<topic>`",
    "reliable_ack_sources": "topic → the sink whose confirmation the ack waits for",
    "transmit_decoded_records": "sinks get protojson instead of the vehicle's protobuf",
    "rate_limit": "per-connection frame limit of the vehicle listener",
    "vins_signal_tracking_enabled": "VINs with their own `vin_signal_count` series (≤ 20)",
    "monitoring": "Prometheus port, StatsD, profiler",
    "airbrake": "refused at start-up: Airbrake's Python notifier is not maintained",
    "teltonika.enabled": "the tracker listeners",
    "teltonika.host": "bind host of the tracker listeners",
    "teltonika.port": "tracker listener port (TCP)",
    "teltonika.udp_enabled": "also listen on UDP (each datagram acked once its records are safe)",
    "teltonika.handshake_timeout_s": "close a connection that sends no IMEI in this time",
    "api.enabled": "dashboard, REST API, `/stream`, `/health`, `/metrics`",
    "api.host": "bind host of the API",
    "api.port": "API port",
    "api.tls_key": "HTTPS key (with `tls_cert`)",
    "api.auth.enabled": "`false`: no tokens (a warning is logged)",
    "api.auth.algorithm": "JWT signing algorithm",
    "api.auth.secret_file": "file holding the HS* secret",
    "api.auth.private_key_file": "RS256/ES256 private key (only where tokens are issued)",
    "api.auth.audience": "tokens must name this audience",
    "api.auth.leeway_s": "clock skew allowed on `exp` and `nbf`",
    "api.auth.require_exp": "refuse tokens without `exp`",
    "api.auth.sign_in_link_ttl_s": "validity of the logged sign-in link",
    "api.stream.ping_interval_s": "WebSocket pings that find dead `/stream` clients",
    "api.stream.ping_timeout_s": "a client that does not answer a ping in this time is closed",
    "api.stream.max_clients": "more `/stream` clients are refused (1013)",
    "api.stream.batch_linger_ms": "how long a batching client's message gathers records",
    "api.dashboard.enabled": "the web dashboard at `/`",
    "api.dashboard.tile_attribution": "attribution shown with the map tiles",
    "store.enabled": "the embedded SQLite store (backs the REST API)",
    "spool.enabled": "the durable spool every sink and the store read from",
    "spool.segment_bytes": "size of one spool segment file",
    "sink_settings.max_queue_records": "records queued per sink before devices wait",
    "sink_settings.max_batch": "records per publish call",
    "sink_settings.max_linger_ms": "how long a batch waits to fill",
    "sink_settings.retry_initial_ms": "first retry delay after a sink error",
    "sink_settings.retry_max_ms": "longest retry delay (backoff doubles up to it)",
    "tls.server_cert": "PEM server certificate (full chain)",
    "tls.server_key": "PEM private key of the server certificate",
    "tls.ca_file": "PEM CAs of vehicle certificates, added to Tesla's bundle",
    "rate_limit.enabled": "enforce the limit (off: count only, 100 frames per 60 s)",
    "rate_limit.message_limit": "frames per interval per connection (0: not enforced)",
    "rate_limit.message_interval_time": "the interval, in seconds",
    "monitoring.prometheus_metrics_port": "`/metrics` on its own port (0: off)",
    "monitoring.prometheus_metrics_host": "bind host of that port",
    "monitoring.profiler_port": "profiling endpoints (`/debug/pprof/`, `/gc_stats`, "
    "`/live_profiler`; 0: off)",
    "monitoring.profiler_host": "bind host of the profiler",
    "monitoring.profiling_path": "where `/live_profiler?mode=off` writes the pstats file",
    "monitoring.statsd": "send every metric to StatsD (when no Prometheus port is set)",
    "monitoring.statsd.host": "`host:port` of the StatsD server (UDP)",
    "monitoring.statsd.prefix": "put before every metric name, as is",
    "monitoring.statsd.flush_period": "milliseconds between sends",
    "monitoring.statsd.sample_rate": "ignored with a warning: counts are sent summed",
    "data_connectors.file": "the VIN allow-list in a JSON file, re-read when it changes",
    "data_connectors.file.path": 'JSON file `{"allowed_vins": ["VIN", ...]}`',
    "data_connectors.file.capabilities": '`["vin_allowed"]` to apply the list',
    "data_connectors.redis": "refused at start-up (keep the list in a file)",
    "data_connectors.http": "refused at start-up (keep the list in a file)",
    "data_connectors.grpc": "refused at start-up (keep the list in a file)",
    "data_connectors.nats": "refused at start-up (keep the list in a file)",
    "mqtt_ingest.enabled": "the CAN-gateway subscriber",
    "mqtt_ingest.url": "`mqtt://` or `mqtts://host:port` of the gateways' broker",
    "mqtt_ingest.protocol": "`3.1.1` for brokers without MQTT 5",
    "mqtt_ingest.username": "broker user name",
    "mqtt_ingest.password": "broker password (never logged)",
    "mqtt_ingest.tls.ca_file": "CA of the broker's certificate",
    "mqtt_ingest.tls.cert": "fleetgate's client certificate (mutual TLS)",
    "mqtt_ingest.tls.key": "its private key",
    "jsonl.fsync": "sync the file after each batch",
    "kinesis.max_retries": "AWS SDK retries",
    "kinesis.override_host": "custom endpoint (an emulator)",
    "kinesis.streams": "topic → stream name (env `KINESIS_STREAM_<TOPIC>` wins)",
    "logger.verbose": "value-type tags in the logged records (V)",
    "mqtt.broker": "`host:port` of the broker",
    "mqtt.topic_base": "first topic level",
    "mqtt.qos": "publish QoS",
    "mqtt.retained": "retain flag",
    "nats.servers": "NATS server URLs",
    "nats.subject_prefix": "subjects are `<prefix>.<topic>.<device>`",
    "nats.stream": "the JetStream stream",
    "nats.create_stream": "create the stream when missing",
    "postgres.dsn": "connection string",
    "postgres.table": "table the sink creates, migrates and COPYs into",
    "pubsub.gcp_project_id": "Google Cloud project (`PUBSUB_EMULATOR_HOST` honoured)",
    "redis.addrs": "one or more `host:port`",
    "redis.password": "`REDIS_PASSWORD` wins",
    "redis.db": "database number",
    "redis.publish_vin_topics": "publish to `<namespace>_<topic>_{<VIN>}`",
    "redis.subscriber_set_prefix": "fan out to the channels of a sorted set",
    "redis.stream_maxlen": "cap of each stream (XADD MAXLEN ~)",
    "zmq.addr": "PUB socket bind address (`tcp://*:5284`)",
    "zmq.server_key_json_path": "CURVE server key pair (JSON)",
    "zmq.allowed_public_keys_json_path": "CURVE client public keys allowed (JSON array)",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check a configuration or list every key")
    commands = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = commands.add_parser(
        "check", help="run every start-up check on a configuration, binding nothing"
    )
    add_config_argument(check)
    check.set_defaults(handler=run_check)
    reference = commands.add_parser(
        "reference", help="print the reference of every configuration key (Markdown)"
    )
    reference.set_defaults(handler=run_reference)


def run_check(args: argparse.Namespace) -> int:
    config = load(args)
    listeners = [
        name
        for name, on in (
            ("teltonika (tcp)", config.teltonika.enabled),
            ("teltonika (udp)", config.teltonika.enabled and config.teltonika.udp_enabled),
            ("tesla", config.tesla_enabled),
            ("mqtt_ingest", config.mqtt_ingest is not None and config.mqtt_ingest.enabled),
        )
        if on
    ]
    print(f"config ok; listeners: {', '.join(listeners) or 'none'}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    print(reference(), end="")
    return 0


# -- the reference ------------------------------------------------------------------------
def reference() -> str:
    """``docs/configuration.md``: every section of the model, then every sink's section."""
    parts = [HEADER]
    parts += _section("Top level", "", Config)
    for name, model in sorted(section_models().items()):
        if not sink_class(name).__module__.startswith("fleetgate.sinks."):
            continue  # a plug-in registered at run time documents itself
        extra = SINK_EXTRAS.get(name)
        note = f" (install `fleetgate[{extra[0]}]`)" if extra else ""
        if name in FREE_FORM:
            parts.append(f"\n## `{name}` sink{note}\n\n{FREE_FORM[name]}.\n")
            continue
        parts += _section(f"`{name}` sink{note}", f"{name}.", model)
    return "\n".join(parts)


def _section(title: str, prefix: str, model: type[BaseModel]) -> list[str]:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    comments = _field_comments(model)
    for name, info in model.model_fields.items():
        sub = _model_in(info.annotation)
        if sub is not None:
            nested.append((f"{prefix}{name}", sub))
            default = "none" if _default(info) is None else "see below"
        else:
            default = _show_default(info)
        meaning = comments.get(name) or MEANINGS.get(f"{prefix}{name}", "")
        if not meaning and sub is not None:
            meaning = f"section `{prefix}{name}` below"
        rows.append(f"| `{prefix}{name}` | {_type(info.annotation)} | {default} | {meaning} |")
    doc = inspect.getdoc(model) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ") if model is not Config else ""
    out = [f"\n## {title}\n"]
    if summary:
        out.append(f"{summary}\n")
    out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows]
    for path, sub in nested:
        out += _section(f"`{path}`", f"{path}.", sub)
    return out


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment lines above each field (and the comment at its line's end), per class
    in the model's MRO, from the source: the model's own words for its keys."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        text_lines = source.splitlines()
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            words: list[str] = []
            row = node.lineno - 2
            while row >= 0 and text_lines[row].strip().startswith("#"):
                words.insert(0, text_lines[row].strip().lstrip("#").strip())
                row -= 1
            # A block after a blank line that is no sentence heads a group of keys.
            if words and (row < 0 or not text_lines[row].strip()) and not words[-1].endswith("."):
                words = []
            line = text_lines[node.lineno - 1]
            if "  # " in line:
                words.append(line.split("  # ", 1)[1].strip())
            if words:
                found[node.target.id] = " ".join(words).replace("|", "\\|")
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _type(annotation: Any) -> str:
    return f"`{_type_text(annotation)}`"


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_text(arg) for arg in args)
    if origin is Literal:
        return " \\| ".join(f'"{arg}"' for arg in args)
    if origin is not None:
        inner = ", ".join(_type_text(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f'"{member.value}"' for member in _members(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    if annotation is SecretStr:
        return "str (secret)"
    return getattr(annotation, "__name__", str(annotation))


def _members(kind: type[enum.Enum]) -> Iterator[enum.Enum]:
    seen: set[object] = set()
    for member in kind:
        if member.value not in seen:
            seen.add(member.value)
            yield member


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def _show_default(info: FieldInfo) -> str:
    value = _default(info)
    if info.is_required():
        return "required"
    if value is None:
        return "none"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        return "see below"
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    if isinstance(value, bool):
        text = "true" if value else "false"
    # Defaults computed from the machine (a client id with the host name) stay generic.
    text = text.replace(socket.gethostname(), "<hostname>")
    return f"`{text}`"
