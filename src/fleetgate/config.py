"""Typed configuration: fleetgate's own sections plus every key of Tesla's ``config.json``.

Sources, later ones winning:

1. embedded defaults (no file at all is a working configuration);
2. a JSON or TOML file (``fleetgate serve --config FILE``);
3. environment variables ``FLEETGATE_<KEY>``, nested with a double underscore:
   ``FLEETGATE_TELTONIKA__PORT=6000``, ``FLEETGATE_API__HOST=0.0.0.0``. Values are read by
   the type of their key: text keys take the text as it is (``FLEETGATE_NAMESPACE=123`` is
   the namespace "123"), lists and objects are JSON (``FLEETGATE_RECORDS='{"*": ["jsonl"]}'``),
   numbers and booleans are parsed by the model.

Dispatcher sections (``kafka``, ``redis``, ``mqtt``...) are described by their sink modules
(see :mod:`fleetgate.sinks.registry`); this module reads them through the registry.

Tesla's reference decodes its config with Go's ``encoding/json``: keys match
case-insensitively and unknown keys are ignored. fleetgate matches keys the same way but
warns about each unknown key by its dotted path, so a typo is visible. Invalid values raise
:class:`ConfigError` with one line that names the key; the CLI prints it and exits 2.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetgate.mqtt_settings import MqttIngestConfig
from fleetgate.protocols.teltonika.io_names import io_table
from fleetgate.settings import (
    ConfigError,
    Section,
    TlsFiles,
    describe_validation_errors,
    validate_section,
)
from fleetgate.sinks.registry import known_sinks, section_models, sink_class

log = logging.getLogger("fleetgate.config")

ENV_PREFIX = "FLEETGATE_"

TESLA_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")

__all__ = ["AckLevel", "Config", "ConfigError", "Section", "TlsConfig", "build_config"]

# Tesla's ``tls`` block (the vehicle listener's server pair and extra client CAs).
TlsConfig = TlsFiles


class AckLevel(enum.StrEnum):
    """How durable records must be before a device sees an ack (see the README's table)."""

    RECEIVE = "receive"
    SPOOL = "spool"
    STORE = "store"
    SINKS = "sinks"
    RECEIPT = "receive"  # the earlier name of RECEIVE

    @classmethod
    def _missing_(cls, value: object) -> AckLevel | None:
        return cls.RECEIVE if value == "receipt" else None


# -- fleetgate's own sections --------------------------------------------------------------
class RedisAllowListConfig(Section):
    """The Teltonika allow-list kept in a Redis set (``SADD <key> <imei>``)."""

    url: str = "redis://127.0.0.1:6379/0"
    key: str = "fleetgate:teltonika:allowed_imeis"
    # How often the set is read again; a failed read keeps the last list it got.
    refresh_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)


class CommandRoutingConfig(Section):
    """Teltonika commands across worker processes and nodes, through Redis: the command
    reaches whichever process holds the device, the answer comes back to the asking one."""

    # The Redis every worker and node of the fleet uses (one server: the claim is a script).
    url: str = "redis://127.0.0.1:6379/0"
    # Every key and channel starts with this (nodes sharing one fleet share one prefix).
    key_prefix: str = "fleetgate:commands"
    # How long a command stays readable (GET .../commands/{id}, the device's list).
    keep_s: float = Field(30 * 86400.0, gt=0)
    # Connecting to Redis and each call: past it, a command is refused with 503.
    timeout_s: float = Field(5.0, gt=0)


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
    # Deadlines, not idle timers: bytes trickling in never extend them. Connect to an
    # accepted IMEI within handshake_timeout_s; after that, no silence longer than
    # idle_timeout_s, and a frame finished within idle_timeout_s of its first byte.
    idle_timeout_s: float = Field(600.0, gt=0)
    handshake_timeout_s: float = Field(30.0, gt=0)
    # Open connections: 0 = sized for the machine (fleetgate.listeners.limits).
    max_connections: int = Field(0, ge=0)
    # Per peer address; 0 = no cap (trackers often share a carrier's NAT address).
    max_connections_per_ip: int = Field(0, ge=0)
    # On stop: how long frames already received may wait for their answer.
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Device authority (fleetgate.listeners.teltonika.authority): a static allow-list, or a
    # Redis set refreshed periodically; neither: every syntactically valid IMEI is known.
    allowed_imeis: list[str] | None = None
    allowed_imeis_redis: RedisAllowListConfig | None = None
    # Refuse IMEIs not on the list (00 and close; over UDP no ack); false: accept them,
    # labelled device="unknown" on the handshake metric.
    strict_device_auth: bool = True
    # IO names: the default family (or model) and families by IMEI or IMEI prefix (longest
    # prefix wins), e.g. {"35209308": "fm6", "352093081452251": "GH3000"}.
    io_family: str = "fmb"
    io_families: dict[str, str] = Field(default_factory=dict)
    # Commands (codec 12/14): how long a device has to answer one once it is sent, and how
    # long a command for a device that is not connected waits for its next connection.
    command_timeout_s: float = Field(30.0, gt=0, le=3600)
    command_queue_ttl_s: float = Field(7 * 86400.0, gt=0)
    # Commands through Redis to whichever worker or node holds the device; none: only the
    # devices connected to the process serving the API.
    command_routing: CommandRoutingConfig | None = None

    @property
    def udp_listen_port(self) -> int:
        return self.port if self.udp_port is None else self.udp_port

    @field_validator("io_family")
    @classmethod
    def _known_io_family(cls, value: str) -> str:
        io_table(value)  # raises ValueError naming the families
        return value

    @field_validator("io_families")
    @classmethod
    def _known_io_families(cls, value: dict[str, str]) -> dict[str, str]:
        for prefix, family in value.items():
            if not (prefix.isdigit() and prefix.isascii()):
                raise ValueError(f"{prefix!r}: keys are IMEIs or IMEI prefixes (digits)")
            io_table(family)
        return value

    @model_validator(mode="after")
    def _one_allow_list(self) -> TeltonikaConfig:
        if self.allowed_imeis is not None and self.allowed_imeis_redis is not None:
            raise ValueError("allowed_imeis and allowed_imeis_redis: configure one of them")
        return self


class TeslaListenerConfig(Section):
    """fleetgate's own keys for the Tesla vehicle listener (the reference's are top level)."""

    # Connect to upgraded WebSocket: bounds the TLS handshake and the HTTP upgrade.
    handshake_timeout_s: float = Field(20.0, gt=0)
    # Open connections: 0 = sized for the machine (fleetgate.listeners.limits).
    max_connections: int = Field(0, ge=0)
    # Per peer address; 0 = no cap.
    max_connections_per_ip: int = Field(0, ge=0)
    # On stop: how long frames already received may wait for their answer.
    shutdown_timeout_s: float = Field(10.0, gt=0)


class ApiAuthConfig(Section):
    """JWT bearer tokens for the REST API and ``/stream`` (see :mod:`fleetgate.api.auth`)."""

    enabled: bool = True
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256"] = "HS256"
    # HS*: the shared secret (env alias JWT_SECRET). Neither set: <data_dir>/api-secret.key,
    # created on first start.
    secret: str | None = None
    secret_file: str | None = None
    # RS256 / ES256: PEM keys; the private key is needed only where tokens are issued.
    public_key_file: str | None = None
    private_key_file: str | None = None
    # When set, tokens must carry exactly this ``iss`` / an ``aud`` naming this audience.
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = Field(10.0, ge=0)
    require_exp: bool = True
    # Scopes of a token that names none (the Node telemetry server's tokens): stream only.
    unscoped: list[str] = Field(default_factory=lambda: ["stream"])
    # Paths served without a token.
    public_paths: list[str] = Field(default_factory=lambda: ["/health", "/metrics"])
    # With the generated key: log a sign-in link (a read+stream token) at every start.
    sign_in_link: bool = True
    sign_in_link_ttl_s: float = Field(12 * 3600, gt=0)


class StreamConfig(Section):
    """``/stream``: per-client buffers and keepalive."""

    # Records waiting for one client; past it, records for that client are dropped (counted).
    buffer_records: int = Field(10_000, ge=1)
    # A client that has been dropping records this long without taking any is disconnected.
    stall_timeout_s: float = Field(10.0, gt=0)
    # Batching clients (``batch=1``): at most this many records per message, gathered for
    # up to ``batch_linger_ms``.
    batch_max_records: int = Field(1000, ge=1)
    batch_linger_ms: float = Field(50.0, ge=0)
    # A client without a token in its request must send one in its first message this soon.
    auth_timeout_s: float = Field(10.0, gt=0)
    ping_interval_s: float = Field(20.0, gt=0)
    ping_timeout_s: float = Field(20.0, gt=0)
    max_clients: int = Field(1000, ge=1)
    # permessage-deflate: less bandwidth, but every message is compressed once per client.
    compression: bool = False
    # Scale-out: feed /stream and the dashboard from the shared log (read with the kafka or
    # nats section), so they show every node's devices; none: this process's records.
    source: Literal["kafka", "nats"] | None = None


class DashboardConfig(Section):
    """The web dashboard at ``/``."""

    enabled: bool = True
    # Map tiles; empty: no tiles, positions on a plain background.
    tile_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tile_attribution: str = "&copy; OpenStreetMap contributors"


class ApiConfig(Section):
    """HTTP API, health and metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # HTTPS for the API (env aliases CERT_PATH / KEY_PATH); none: plain HTTP.
    tls_cert: str | None = None
    tls_key: str | None = None
    # A device heard from within this many seconds is shown as online.
    online_window_s: float = Field(600.0, gt=0)
    auth: ApiAuthConfig = Field(default_factory=ApiAuthConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)


class StoreConfig(Section):
    """Embedded SQLite store: gets every record and backs the REST API."""

    enabled: bool = True
    path: str | None = None  # default: <data_dir>/fleetgate.db
    # Large batches make the per-device bookkeeping cheap per row (one span row per device
    # and commit, fleetgate.store_spans, not an index entry per record).
    max_batch: int = Field(10_000, ge=1)
    # Under load a commit waits until this long after the previous one (or max_batch
    # records): larger commits update each device's span row once for more records (at 1.5M
    # rows, 2,000 records per commit wrote 378 B per record, 10,000 290 B). Longer commits
    # hold the cores longer while acks wait: at 20k records/s, 250 ms gave an ack p99 of
    # 5.7-7.2 ms, 100 ms 4.7-5.3 ms at the same CPU (peak ingest the same). The API sees a
    # record at most this much later. Not applied when an ack waits for the store.
    commit_interval_ms: float = Field(100.0, ge=0)


class SpoolConfig(Section):
    """The durable spool: every frame is written and synced here before its ``spool`` ack."""

    enabled: bool = True
    path: str | None = None  # default: <data_dir>/spool
    # Disk budget: at this size the pipeline stops taking frames (devices keep their data)
    # until sinks catch up and segments are deleted.
    max_bytes: int = Field(10 * 1024**3, ge=1024 * 1024)
    segment_bytes: int = Field(64 * 1024**2, ge=64 * 1024)
    # Sync each group commit (survives power loss); off: survives a process crash only.
    fsync: bool = True
    # Records of the newest frames kept in memory for sinks that catch up.
    memory_records: int = Field(20_000, ge=0)


class SinkSettingsConfig(Section):
    """Queue and retry limits applied to every sink runner."""

    max_queue_records: int = Field(100_000, ge=1)
    max_batch: int = Field(1000, ge=1)
    max_linger_ms: float = Field(5.0, ge=0)
    retry_initial_ms: float = Field(100.0, gt=0)
    retry_max_ms: float = Field(5000.0, gt=0)


# -- Tesla config.json sections (see spec/tesla-fleet-telemetry.md section 12) -------------
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


class AirbrakeConfig(Section):
    host: str = ""
    project_id: int = 0
    project_key: str = ""
    environment: str = ""
    tls: TlsConfig | None = None


class FileConnectorConfig(Section):
    """``data_connectors.file``: a JSON file ``{"allowed_vins": [...]}`` re-read on change."""

    path: str = ""
    capabilities: list[str] = Field(default_factory=list)


class DataConnectorsConfig(Section):
    """Tesla's ``data_connectors``: where the ``vin_allowed`` check gets its answer.

    Only the ``file`` connector exists here; the reference's ``redis``, ``http``, ``grpc``
    and ``nats`` connectors are refused at start-up (see :mod:`fleetgate.preflight`), never
    silently skipped: an allow-list that is not applied would admit every vehicle.
    """

    file: FileConnectorConfig | None = None
    redis: dict[str, Any] | None = None
    http: dict[str, Any] | None = None
    grpc: dict[str, Any] | None = None
    nats: dict[str, Any] | None = None


class Config(Section):
    """The whole configuration."""

    # fleetgate
    data_dir: str = "data"
    log_level: str = "info"
    json_log_enable: bool = False
    teltonika: TeltonikaConfig = Field(default_factory=TeltonikaConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    sink_settings: SinkSettingsConfig = Field(default_factory=SinkSettingsConfig)
    records: dict[str, list[str]] = Field(default_factory=dict)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    # The ack level of every source, unless ack_policy names one for it: a level, or the
    # list of sinks whose confirmation the ack waits for.
    ack_level: AckLevel = AckLevel.SPOOL
    ack_policy: dict[str, AckLevel | list[str]] = Field(default_factory=dict)
    ack_timeout_s: float = Field(30.0, gt=0)
    # This server's name in record ids (<node_id>-<offset>); empty: the host name.
    node_id: str = ""
    # Worker processes sharing the device ports (SO_REUSEPORT); 0 = one per CPU core.
    workers: int = Field(1, ge=0, le=256)

    # Tesla vehicle listener (config.json top level)
    tesla_enabled: bool = True
    tesla: TeslaListenerConfig = Field(default_factory=TeslaListenerConfig)
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
    airbrake: AirbrakeConfig | None = None
    # The VIN allow-list (vin_allowed capability) checked when a vehicle connects.
    data_connectors: DataConnectorsConfig | None = None
    # CAN gateways: the broker they publish to (Tesla's "mqtt" key is the dispatcher).
    mqtt_ingest: MqttIngestConfig | None = None

    # Dispatcher sections (``kafka``, ``logger``, ``jsonl``...), validated by the models
    # their sink modules declare; read them with :meth:`sink_section`.
    _sink_sections: dict[str, Section] = PrivateAttr(default_factory=dict)

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
    def spool_path(self) -> Path:
        return Path(self.spool.path) if self.spool.path else self.data_path / "spool"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_path / "fleetgate.db"

    def sink_section(self, name: str) -> Section | None:
        """The validated section of sink ``name`` (``None`` when the file has none)."""
        return self._sink_sections.get(name)

    @property
    def sink_sections(self) -> Mapping[str, Section]:
        """Every dispatcher section the configuration holds, by sink name."""
        return dict(self._sink_sections)


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


def _takes_text(annotation: Any) -> bool:
    """True when a key of this type takes an environment value as it is (text)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_takes_text(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    return annotation is str or (isinstance(annotation, type) and issubclass(annotation, str))


class _EnvText(str):
    """A value that came from an environment variable: text until its key's type is known."""

    __slots__ = ()


def _env_value(raw: _EnvText, annotation: Any) -> Any:
    """An environment value read by the type of its key (see the module docstring)."""
    if annotation is not None and _takes_text(annotation):
        return str(raw)
    try:
        return json.loads(raw)
    except ValueError:
        return str(raw)


def _normalise(
    data: Mapping[str, Any],
    model: type[BaseModel],
    path: str,
    warnings: list[str],
    extra_sections: Mapping[str, type[BaseModel]] | None = None,
) -> dict[str, Any]:
    """Match keys case-insensitively to ``model``'s fields; collect unknown keys.

    ``extra_sections`` are further sections the top level accepts (the sinks' sections). A
    model that allows extra keys (the librdkafka map) keeps every key as given.
    """
    fields = {name: info.annotation for name, info in model.model_fields.items()}
    # The sinks' models are imported only for the sections present (see section_models).
    extra = extra_sections or {}
    by_lower = {name.lower(): name for name in [*fields, *extra]}
    free_form = model.model_config.get("extra") == "allow"
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = by_lower.get(str(key).lower())
        dotted = f"{path}{key}"
        if name is None:
            if free_form:
                result[str(key)] = _env_value(value, None) if isinstance(value, _EnvText) else value
            else:
                warnings.append(dotted)
            continue
        annotation = fields[name] if name in fields else extra[name]
        if isinstance(value, _EnvText):
            value = _env_value(value, annotation)
        submodel = _model_of(annotation)
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
        target = overrides
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _EnvText(raw)
    return overrides


# The Node telemetry server's environment variables, read as aliases of fleetgate keys
# (FLEETGATE_* variables win over them): its dashboards' /stream port and token secret, and
# the certificate files of its one TLS server (here: the vehicle listener and the API).
NODE_ENV_ALIASES: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "JWT_SECRET": (("api", "auth", "secret"),),
    "PORT": (("api", "port"),),
    "CERT_PATH": (("tls", "server_cert"), ("api", "tls_cert")),
    "KEY_PATH": (("tls", "server_key"), ("api", "tls_key")),
    "CA_PATH": (("tls", "ca_file"),),
}


def _node_env_aliases(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for variable, targets in NODE_ENV_ALIASES.items():
        raw = environ.get(variable, "")
        if not raw:
            continue
        for *sections, key in targets:
            target = overrides
            for section in sections:
                target = target.setdefault(section, {})
            target[key] = _EnvText(raw)
    request = environ.get("REQUEST_CLIENT_CERT", "").strip().lower()
    if request in ("false", "0", "no"):
        log.warning(
            "REQUEST_CLIENT_CERT=%s ignored: the vehicle listener always requires and verifies "
            "client certificates (the VIN comes from them)",
            request,
        )
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
        if file.suffix.lower() == ".toml":
            import tomllib  # TOML files only

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is one
        raise ConfigError(f"config file {file} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold an object at the top level")
    return data


# Which top-level keys configure which device listener. A configuration that names at least
# one of them opens only the listeners it names (a Tesla config.json opens the vehicle port,
# not Teltonika's 5027); one that names none opens every listener, as the embedded defaults
# do. ``mqtt_ingest`` is only ever opened when configured.
TESLA_LISTENER_KEYS = frozenset(
    {"host", "port", "status_port", "tls", "use_default_eng_ca", "tesla_enabled", "tesla"}
)
TELTONIKA_LISTENER_KEYS = frozenset({"teltonika"})
LISTENER_KEYS = TESLA_LISTENER_KEYS | TELTONIKA_LISTENER_KEYS | {"mqtt_ingest"}


def _select_listeners(given: Mapping[str, Any], normalised: dict[str, Any]) -> None:
    """Turn off the listeners a configuration that names some listeners does not name."""
    keys = {str(key).lower() for key in given}
    if not keys & LISTENER_KEYS:
        return
    if not keys & TESLA_LISTENER_KEYS:
        normalised["tesla_enabled"] = False
    if not keys & TELTONIKA_LISTENER_KEYS:
        normalised["teltonika"] = {"enabled": False}


def build_config(
    data: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    warn: bool = True,
    routing: bool = True,
) -> Config:
    """Validate ``data`` (plus environment overrides) into a :class:`Config`.

    Every problem found is reported at once: :class:`ConfigError` carries one line each.
    ``routing=False`` leaves :func:`routing_problems` to the caller (who adds its own).
    """
    environ = os.environ if environ is None else environ
    overrides = _merge(_node_env_aliases(environ), _env_overrides(environ))
    merged = _merge(dict(data or {}), overrides)
    unknown: list[str] = []
    sections = section_models()
    normalised = _normalise(merged, Config, "", unknown, extra_sections=sections)
    _select_listeners(_merge(dict(data or {}), _env_overrides(environ)), normalised)
    if warn:
        for key in unknown:
            log.warning("config: unknown key %r ignored", key)
    raw_sections = {name: normalised.pop(name) for name in sections if name in normalised}
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(normalised)
    except ValidationError as exc:
        problems += describe_validation_errors(exc)
    validated: dict[str, Section] = {}
    for name, raw in raw_sections.items():
        if raw is None:
            continue
        try:
            validated[name] = validate_section(sections[name], raw, name)
        except ConfigError as exc:
            problems += exc.problems
    if config is None or problems:
        raise ConfigError.of(problems)
    config._sink_sections.update(validated)
    if routing:
        validate_routing(config)
    return config


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    routing: bool = True,
) -> Config:
    """Load the config file at ``path`` (or only defaults and environment)."""
    data = read_config_file(path) if path is not None else {}
    return build_config(data, environ, routing=routing)


def worker_count(config: Config) -> int:
    """``workers`` from the config, 0 meaning one per CPU core."""
    if config.workers > 0:
        return config.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def validate_routing(config: Config) -> None:
    """Start-up checks the reference makes on ``records`` and ``reliable_ack_sources``."""
    problems = routing_problems(config)
    if problems:
        raise ConfigError.of(problems)


def routing_problems(config: Config) -> list[str]:
    """Every problem of ``records``, the ack levels and ``reliable_ack_sources``."""
    problems: list[str] = []
    known = set(known_sinks())
    for topic, sinks in config.records.items():
        if not sinks:
            problems.append(f"records.{topic}: empty dispatcher list (unknown_dispatch_rule)")
        for sink in sinks:
            if sink not in known:
                problems.append(
                    f"records.{topic}: unknown sink {sink!r}; known: {', '.join(sorted(known))}"
                )
                continue
            label = sink_class(sink).label
            if label is not None and config.sink_section(sink) is None:
                problems.append(f"records.{topic}: expected {label} to be configured")
    problems += _ack_problems(config)
    for topic, sink in config.reliable_ack_sources.items():
        where = f"reliable_ack_sources.{topic}"
        if topic == "connectivity":
            problems.append(f"{where}: reliable ack not needed for txType: connectivity")
        elif sink == "logger":
            problems.append(f"{where}: logger cannot be a reliable ack source")
        elif topic not in config.records:
            problems.append(f"{where}: {topic} is not a key of records")
        elif sink not in config.records[topic]:
            problems.append(f"{where}: {sink} is not a dispatcher of records.{topic}")
    return problems


def _ack_problems(config: Config) -> list[str]:
    """The ack levels name what exists: a spool, a store, sinks that records feed."""
    problems: list[str] = []
    routed = {sink for sinks in config.records.values() for sink in sinks}
    levels = [("ack_level", config.ack_level)] + [
        (f"ack_policy.{source}", rule) for source, rule in config.ack_policy.items()
    ]
    for where, rule in levels:
        if isinstance(rule, list):
            unknown = [sink for sink in rule if sink not in routed and sink != "sqlite"]
            if unknown:
                problems.append(f"{where}: {', '.join(unknown)} not a sink of records")
        elif rule is AckLevel.SPOOL and not config.spool.enabled:
            problems.append(f"{where}: spool needs spool.enabled (or choose another level)")
        elif rule is AckLevel.STORE and not config.store.enabled:
            problems.append(f"{where}: store needs store.enabled (or choose another level)")
        elif rule is AckLevel.SINKS:
            problems.append(f"{where}: give the sinks to wait for as a list instead")
    return problems
