"""Typed configuration: fleetgate's own sections plus every key of Tesla's ``config.json``.

Sources, later ones winning:

1. embedded defaults (no file at all is a working configuration);
2. a JSON or TOML file (``fleetgate serve --config FILE``);
3. environment variables ``FLEETGATE_<KEY>``, nested with a double underscore:
   ``FLEETGATE_TELTONIKA__PORT=6000``, ``FLEETGATE_API__HOST=0.0.0.0``. Values are parsed as
   JSON when they parse (numbers, booleans, objects), otherwise taken as strings.

Tesla's reference decodes its config with Go's ``encoding/json``: keys match
case-insensitively and unknown keys are ignored. fleetgate matches keys the same way but
warns about each unknown key by its dotted path, so a typo is visible. Invalid values raise
:class:`ConfigError` with one line that names the key; the CLI prints it and exits 2.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetgate.pipeline.ack import AckLevel

log = logging.getLogger("fleetgate.config")

ENV_PREFIX = "FLEETGATE_"

# Sinks that need a section of their own before a ``records`` list may name them. The
# reference fails start-up with "expected <Name> to be configured"; so do we.
SINKS_NEEDING_SECTION: dict[str, str] = {
    "kafka": "Kafka",
    "kinesis": "Kinesis",
    "pubsub": "Pubsub",
    "zmq": "ZMQ",
    "mqtt": "MQTT",
    "redis": "Redis",
    "nats": "NATS",
    "postgres": "Postgres",
}

TESLA_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


class ConfigError(Exception):
    """A configuration problem, described in one line that names the key."""


class Section(BaseModel):
    """Base of every config section: typed, and unknown keys already filtered out."""

    model_config = ConfigDict(extra="ignore", validate_default=True)


# -- fleetgate's own sections --------------------------------------------------------------
class TeltonikaConfig(Section):
    """Teltonika tracker listeners: TCP, and UDP on the same port number by default."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(5027, ge=0, le=65535)
    udp_enabled: bool = True
    # None: the TCP port number (5027 serves both, as trackers expect).
    udp_port: int | None = Field(None, ge=0, le=65535)
    # A frame whose data length exceeds this closes the connection (spec section 3.5).
    max_frame_bytes: int = Field(65_536, ge=64, le=16 * 1024 * 1024)
    # Close a connection that says nothing for this long (handshake or between frames).
    idle_timeout_s: float = Field(600.0, gt=0)
    handshake_timeout_s: float = Field(30.0, gt=0)
    # Allow-list of IMEIs; None accepts every syntactically valid IMEI.
    allowed_imeis: list[str] | None = None

    @property
    def udp_listen_port(self) -> int:
        return self.port if self.udp_port is None else self.udp_port


class ApiConfig(Section):
    """HTTP API, health and metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class StoreConfig(Section):
    """Embedded SQLite store: gets every record and backs the REST API."""

    enabled: bool = True
    path: str | None = None  # default: <data_dir>/fleetgate.db
    # Large batches make the per-device index cheap per row (its pages are written once per
    # batch, not once per record): 10,000 doubles sustained store writes over 2,000.
    max_batch: int = Field(10_000, ge=1)


class JsonlConfig(Section):
    """``jsonl`` sink: append each record's JSON form as one line."""

    path: str | None = None  # default: <data_dir>/records.jsonl
    fsync: bool = False


class SinkSettingsConfig(Section):
    """Queue and retry limits applied to every sink runner."""

    max_queue_records: int = Field(100_000, ge=1)
    max_batch: int = Field(1000, ge=1)
    max_linger_ms: float = Field(5.0, ge=0)
    retry_initial_ms: float = Field(100.0, gt=0)
    retry_max_ms: float = Field(5000.0, gt=0)


# -- Tesla config.json sections (see spec/tesla-fleet-telemetry.md section 12) -------------
class TlsConfig(Section):
    server_cert: str | None = None
    server_key: str | None = None
    ca_file: str | None = None


class RateLimitConfig(Section):
    enabled: bool = False
    message_limit: int = Field(0, ge=0)
    message_interval_time: int = Field(0, ge=0)
    # "fleetgate": message_limit per message_interval_time seconds, enforced.
    # "reference": what Tesla's server really does (counts, never limits).
    mode: Literal["fleetgate", "reference"] = "fleetgate"


class StatsdConfig(Section):
    host: str = ""
    prefix: str = ""
    flush_period: int = 100
    sample_rate: float | None = None


class MonitoringConfig(Section):
    prometheus_metrics_port: int = Field(0, ge=0, le=65535)
    prometheus_metrics_host: str = "127.0.0.1"
    profiler_port: int = Field(0, ge=0, le=65535)
    profiler_host: str = "127.0.0.1"
    profiling_path: str = ""
    statsd: StatsdConfig | None = None


class LoggerConfig(Section):
    verbose: bool = False


class KinesisConfig(Section):
    max_retries: int = Field(1, ge=0)
    override_host: str = ""
    streams: dict[str, str] = Field(default_factory=dict)
    region: str | None = None


class PubsubConfig(Section):
    gcp_project_id: str = ""
    reliable_ack: bool | None = None  # documented by the reference, never read


class ZmqConfig(Section):
    addr: str = ""
    server_key_json_path: str = ""
    allowed_public_keys_json_path: str = ""
    verbose: bool = False
    # fleetgate addition: messages queued per subscriber before PUB drops (ZMQ_SNDHWM).
    send_hwm: int = Field(100_000, ge=0)


class MqttConfig(Section):
    broker: str = ""
    client_id: str = ""
    username: str = ""
    password: str = ""
    topic_base: str = ""
    qos: int = Field(0, ge=0, le=2)
    retained: bool = False
    connect_timeout_ms: int = Field(30_000, ge=0)
    publish_timeout_ms: int = Field(2_500, ge=0)
    disconnect_timeout_ms: int = Field(250, ge=0)
    connect_retry_interval_ms: int = Field(10_000, ge=0)
    keep_alive_seconds: int = Field(30, ge=0)
    tls: TlsConfig | None = None


class RedisPoolConfig(Section):
    pool_size: int | None = None
    min_idle_conns: int | None = None
    max_idle_conns: int | None = None
    max_active_conns: int | None = None
    read_timeout: int | None = None
    write_timeout: int | None = None
    pool_timeout: int | None = None
    conn_max_idle_time: int | None = None
    conn_max_lifetime: int | None = None


class RedisConfig(Section):
    addrs: list[str] = Field(default_factory=list)
    username: str = ""
    password: str = ""
    db: int = Field(0, ge=0)
    tls: TlsConfig | None = None
    override_tls_server_name: bool = False
    cluster_mode: bool = False
    publish_timeout: int = Field(5_000_000_000, ge=0)  # Go duration: nanoseconds
    publish_vin_topics: bool = False
    subscriber_set_prefix: str = ""
    pool: RedisPoolConfig | None = None
    # fleetgate additions: Redis Streams (XADD) next to the reference's pub/sub channels.
    streams: bool = False
    stream_maxlen: int = Field(100_000, ge=1)


class AirbrakeConfig(Section):
    host: str = ""
    project_id: int = 0
    project_key: str = ""
    environment: str = ""
    tls: TlsConfig | None = None


class NatsConfig(Section):
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    subject_prefix: str = ""
    stream: str = ""
    create_stream: bool = True
    publish_timeout_ms: int = Field(5_000, ge=1)
    # Publishes awaiting their JetStream ack at once (the sink's in-flight bound).
    max_in_flight: int = Field(1_000, ge=1)
    connect_timeout_ms: int = Field(2_000, ge=1)


class PostgresConfig(Section):
    dsn: str = "postgresql://127.0.0.1:5432/postgres"
    table: str = "fleetgate_records"
    connect_timeout_ms: int = Field(5_000, ge=1)


class Config(Section):
    """The whole configuration."""

    # fleetgate
    data_dir: str = "data"
    log_level: str = "info"
    json_log_enable: bool = False
    teltonika: TeltonikaConfig = Field(default_factory=TeltonikaConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)
    sink_settings: SinkSettingsConfig = Field(default_factory=SinkSettingsConfig)
    records: dict[str, list[str]] = Field(default_factory=dict)
    ack_level: AckLevel = AckLevel.STORE
    ack_timeout_s: float = Field(30.0, gt=0)
    # Worker processes sharing the device ports (SO_REUSEPORT); 0 = one per CPU core.
    workers: int = Field(1, ge=0, le=256)

    # Tesla vehicle listener (config.json top level)
    tesla_enabled: bool = True
    host: str = ""
    port: int = Field(4443, ge=0, le=65535)
    status_port: int = Field(0, ge=0, le=65535)
    tls: TlsConfig | None = None
    use_default_eng_ca: bool = False
    namespace: str = ""
    reliable_ack: bool | None = None  # documented by the reference, never read
    reliable_ack_sources: dict[str, str] = Field(default_factory=dict)
    transmit_decoded_records: bool = False
    rate_limit: RateLimitConfig | None = None
    vins_signal_tracking_enabled: list[str] = Field(default_factory=list)
    monitoring: MonitoringConfig | None = None
    logger: LoggerConfig = Field(default_factory=LoggerConfig)

    # dispatcher sections
    kafka: dict[str, Any] | None = None
    kinesis: KinesisConfig | None = None
    pubsub: PubsubConfig | None = None
    zmq: ZmqConfig | None = None
    mqtt: MqttConfig | None = None
    redis: RedisConfig | None = None
    airbrake: AirbrakeConfig | None = None
    nats: NatsConfig | None = None
    postgres: PostgresConfig | None = None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in TESLA_LOG_LEVELS:
            # The reference logs and ignores an invalid level; a Tesla config must still load.
            log.warning("config: log_level %r is not a level; using info", value)
            return "info"
        return value.lower()

    @field_validator("vins_signal_tracking_enabled")
    @classmethod
    def _at_most_20_tracked_vins(cls, value: list[str]) -> list[str]:
        # The reference refuses to start with more (one metric series per VIN).
        if len(set(value)) > 20:
            raise ValueError(
                "set the value of `vins_signal_tracking_enabled` less than 20 unique vins"
            )
        return value

    @field_validator("kafka")
    @classmethod
    def _kafka_numbers_are_ints(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # The reference converts JSON numbers in the librdkafka map to integers.
        if value is None:
            return None
        return {
            key: int(item) if isinstance(item, float) else item for key, item in value.items()
        }

    @property
    def shares_ports(self) -> bool:
        """Several worker processes listen on the same ports (SO_REUSEPORT).

        Only then: a single process must fail loudly when its port is taken, instead of
        silently splitting the port with another server.
        """
        return self.workers != 1

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_path / "fleetgate.db"

    @property
    def jsonl_path(self) -> Path:
        return Path(self.jsonl.path) if self.jsonl.path else self.data_path / "records.jsonl"


# -- loading -------------------------------------------------------------------------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``annotation`` (``Model``, ``Model | None``), if any."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _normalise(
    data: Mapping[str, Any], model: type[BaseModel], path: str, warnings: list[str]
) -> dict[str, Any]:
    """Match keys case-insensitively to ``model``'s fields; collect unknown keys."""
    by_lower = {name.lower(): name for name in model.model_fields}
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = by_lower.get(str(key).lower())
        dotted = f"{path}{key}"
        if name is None:
            warnings.append(dotted)
            continue
        submodel = _model_of(model.model_fields[name].annotation)
        if submodel is not None and isinstance(value, Mapping):
            value = _normalise(value, submodel, f"{dotted}.", warnings)
        result[name] = value
    return result


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        parts = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if not parts:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = overrides
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return overrides


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        match = next((k for k in merged if k.lower() == key.lower()), key)
        if isinstance(value, Mapping) and isinstance(merged.get(match), Mapping):
            merged[match] = _merge(dict(merged[match]), value)
        else:
            merged[match] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON (or ``.toml``) config file into a dict, or raise :class:`ConfigError`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if file.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold an object at the top level")
    return data


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "config"
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{location}: {first['msg']}{shown}"


def build_config(
    data: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    warn: bool = True,
) -> Config:
    """Validate ``data`` (plus environment overrides) into a :class:`Config`."""
    merged = _merge(dict(data or {}), _env_overrides(os.environ if environ is None else environ))
    unknown: list[str] = []
    normalised = _normalise(merged, Config, "", unknown)
    if warn:
        for key in unknown:
            log.warning("config: unknown key %r ignored", key)
    try:
        config = Config.model_validate(normalised)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    validate_routing(config)
    return config


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file at ``path`` (or only defaults and environment)."""
    data = read_config_file(path) if path is not None else {}
    return build_config(data, environ)


def validate_routing(config: Config) -> None:
    """Start-up checks the reference makes on ``records`` and ``reliable_ack_sources``."""
    from fleetgate.sinks.base import known_sinks

    known = set(known_sinks())
    for topic, sinks in config.records.items():
        if not sinks:
            raise ConfigError(f"records.{topic}: empty dispatcher list (unknown_dispatch_rule)")
        for sink in sinks:
            if sink not in known:
                raise ConfigError(
                    f"records.{topic}: unknown sink {sink!r}; known: {', '.join(sorted(known))}"
                )
            label = SINKS_NEEDING_SECTION.get(sink)
            if label is not None and getattr(config, sink) is None:
                raise ConfigError(f"records.{topic}: expected {label} to be configured")
    for topic, sink in config.reliable_ack_sources.items():
        where = f"reliable_ack_sources.{topic}"
        if topic == "connectivity":
            raise ConfigError(f"{where}: reliable ack not needed for txType: connectivity")
        if sink == "logger":
            raise ConfigError(f"{where}: logger cannot be a reliable ack source")
        if topic not in config.records:
            raise ConfigError(f"{where}: {topic} is not a key of records")
        if sink not in config.records[topic]:
            raise ConfigError(f"{where}: {sink} is not a dispatcher of records.{topic}")
