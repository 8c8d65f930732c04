"""Start-up checks that need more than the config's types: files, libraries, refusals.

Run after the configuration is read and before any port is bound, so a server never half
starts: every file a configuration names (TLS certificates and keys, CA bundles, key files,
the VIN allow-list) is read and parsed, every sink named in ``records`` has its client
library (its install extra), and keys fleetgate refuses are named. Each problem is one
line naming the key; all of them are reported together (:class:`ConfigError`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fleetgate.config import Config
from fleetgate.listeners.tesla.allowlist import VIN_ALLOWED, AllowListError, read_allow_list
from fleetgate.listeners.tesla.tls import server_ssl_context
from fleetgate.settings import ConfigError, TlsFiles
from fleetgate.sinks.registry import missing_extra

log = logging.getLogger("fleetgate.config")

# Reference data connectors fleetgate does not have: refused, never silently skipped (an
# allow-list that is not applied admits every vehicle).
UNSUPPORTED_CONNECTORS = ("redis", "http", "grpc", "nats")


def check(config: Config) -> None:
    """Raise :class:`ConfigError` with every problem :func:`problems` finds."""
    found = problems(config)
    if found:
        raise ConfigError.of(found)


def problems(config: Config) -> list[str]:
    """Every start-up problem of ``config``, one line each (empty: ready to bind)."""
    found: list[str] = []
    found += _tesla_files(config)
    found += _api_files(config)
    found += _mqtt_ingest_files(config)
    found += _sink_files(config)
    found += _connectors(config)
    found += _monitoring(config)
    found += _sink_extras(config)
    found += _scale_out(config)
    return found


# -- files ------------------------------------------------------------------------------------
def _readable(key: str, path: str) -> str | None:
    try:
        with Path(path).open("rb"):
            return None
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror or exc}"


def _cert_pair(where: str, cert: str | None, key: str | None) -> list[str]:
    """A certificate (chain) and its private key: both readable, PEM, and a pair."""
    if not cert and not key:
        return []
    if not cert or not key:
        missing = "cert" if not cert else "key"
        return [f"{where}: a {missing} file is needed with the other one"]
    unreadable = [p for p in (_readable(where, cert), _readable(where, key)) if p]
    if unreadable:
        return unreadable
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        return [f"{where}: {cert} and {key} are not a PEM certificate and its key ({exc.reason})"]
    return []


def _ca_file(key: str, path: str | None) -> list[str]:
    if not path:
        return []
    unreadable = _readable(key, path)
    if unreadable:
        return [unreadable]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        return [f"{key}: {path} holds no PEM certificate ({exc.reason})"]
    return []


def _tesla_files(config: Config) -> list[str]:
    if not config.tesla_enabled or config.tls is None:
        return []  # without tls a development CA is generated at start
    try:
        server_ssl_context(config.tls, config.use_default_eng_ca)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _api_files(config: Config) -> list[str]:
    api = config.api
    if not api.enabled:
        return []
    found = _cert_pair("api.tls_cert/tls_key", api.tls_cert, api.tls_key)
    auth = api.auth
    if auth.secret_file and not Path(auth.secret_file).exists():
        pass  # created on first start, like the generated secret
    elif auth.secret_file:
        found += [p for p in (_readable("api.auth.secret_file", auth.secret_file),) if p]
    for key, path, load in (
        ("api.auth.public_key_file", auth.public_key_file, _public_key),
        ("api.auth.private_key_file", auth.private_key_file, _private_key),
    ):
        if path:
            problem = _readable(key, path) or load(key, path)
            if problem:
                found.append(problem)
    return found


# cryptography is loaded only when a key file is configured (it is ~10 MB of a server's
# memory, and the embedded defaults need none at start).
def _public_key(key: str, path: str) -> str | None:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError:
        return f"{key}: {path} is not a PEM public key"
    return None


def _private_key(key: str, path: str) -> str | None:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError):
        return f"{key}: {path} is not an unencrypted PEM private key"
    return None


def _mqtt_ingest_files(config: Config) -> list[str]:
    ingest = config.mqtt_ingest
    if ingest is None or ingest.tls is None:
        return []
    tls = ingest.tls
    return _ca_file("mqtt_ingest.tls.ca_file", tls.ca_file) + _cert_pair(
        "mqtt_ingest.tls.cert/key", tls.cert, tls.key
    )


def _sink_files(config: Config) -> list[str]:
    """Files in the sections of the sinks ``records`` uses: TLS blocks, key files, and
    librdkafka's ``*.location`` properties."""
    used = {sink for sinks in config.records.values() for sink in sinks}
    found: list[str] = []
    for name, section in config.sink_sections.items():
        if name not in used:
            continue
        for key, value in _walk(section, name):
            if isinstance(value, TlsFiles):
                found += _ca_file(f"{key}.ca_file", value.ca_file)
                found += _cert_pair(
                    f"{key}.server_cert/server_key", value.server_cert, value.server_key
                )
            elif isinstance(value, str) and value and _names_a_file(key):
                problem = _readable(key, value)
                if problem:
                    found.append(problem)
    return found


def _names_a_file(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last.endswith(("_file", "_json_path")) or key.endswith(".location")


def _walk(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
    values: dict[str, Any] = dict(model.__dict__)
    values.update(model.model_extra or {})
    for name, value in values.items():
        key = f"{prefix}.{name}"
        yield key, value
        if isinstance(value, BaseModel) and not isinstance(value, TlsFiles):
            yield from _walk(value, key)


# -- data connectors, airbrake, monitoring ---------------------------------------------------
def _connectors(config: Config) -> list[str]:
    connectors = config.data_connectors
    if connectors is None:
        return []
    found: list[str] = []
    for name in UNSUPPORTED_CONNECTORS:
        section = getattr(connectors, name)
        if section is not None and section.get("capabilities"):
            found.append(
                f"data_connectors.{name}: not supported by fleetgate; keep the allowed VINs "
                "in a file (data_connectors.file)"
            )
    file = connectors.file
    if file is None:
        return found
    for capability in file.capabilities:
        if capability != VIN_ALLOWED:
            log.warning("data_connectors.file: unknown capability %s ignored", capability)
    if VIN_ALLOWED not in file.capabilities:
        log.warning("data_connectors.file has no vin_allowed capability: every VIN may connect")
        return found
    if not file.path:
        return [*found, "data_connectors.file.path: missing (the JSON file of allowed VINs)"]
    try:
        read_allow_list(Path(file.path))
    except AllowListError as exc:
        found.append(f"data_connectors.file.path: {exc}")
    return found


def _monitoring(config: Config) -> list[str]:
    found: list[str] = []
    if config.airbrake is not None:
        found.append(
            "airbrake: not supported: Airbrake's Python notifier (pybrake) has had no release "
            "since January 2023; remove the airbrake section (errors are logged and counted "
            "in /metrics)"
        )
    if config.reliable_ack is not None:
        log.warning(
            "config: reliable_ack is documented by the reference but never read; the ack "
            "waits for a sink only through reliable_ack_sources or ack_policy"
        )
    monitoring = config.monitoring
    if monitoring is None:
        return found
    statsd = monitoring.statsd
    if statsd is not None and statsd.host:
        host, _, port = statsd.host.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            found.append(f"monitoring.statsd.host: expected host:port (got {statsd.host!r})")
    if monitoring.profiling_path:
        parent = Path(monitoring.profiling_path).parent
        if not parent.is_dir():
            found.append(
                f"monitoring.profiling_path: directory {parent} does not exist "
                f"(for {monitoring.profiling_path})"
            )
    return found


# -- libraries ----------------------------------------------------------------------------
def _sink_extras(config: Config) -> list[str]:
    found: list[str] = []
    reported: set[str] = set()
    for topic, sinks in config.records.items():
        for sink in sinks:
            if sink in reported:
                continue
            problem = missing_extra(sink)
            if problem is not None:
                reported.add(sink)
                found.append(f"records.{topic}: {problem}")
    return found


def _scale_out(config: Config) -> list[str]:
    """The shared log ``api.stream.source`` reads, and the Redis of command routing."""
    found: list[str] = []
    source = config.api.stream.source if config.api.enabled else None
    if source is not None:
        if source == "kafka" and config.sink_section("kafka") is None:
            found.append(
                "api.stream.source: kafka reads the log with the kafka section; add it "
                '({"bootstrap.servers": ...})'
            )
        problem = missing_extra(source)
        if problem is not None:
            found.append(f"api.stream.source: {problem.replace(' sink ', ' log reader ')}")
    if config.teltonika.enabled and config.teltonika.command_routing is not None:
        problem = missing_extra("redis")
        if problem is not None:
            found.append(
                f"teltonika.command_routing: {problem.replace(' sink ', ' command routing ')}"
            )
    return found
