from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fleetgate.config import AckLevel, ConfigError, build_config, load_config
from fleetgate.sinks.kafka import KafkaSettings
from fleetgate.sinks.kinesis import KinesisSettings

# The example config of Tesla's README (fleet-telemetry), unchanged but for file paths.
TESLA_README_CONFIG = {
    "host": "",
    "port": 443,
    "status_port": 8080,
    "log_level": "info",
    "json_log_enable": True,
    "namespace": "tesla_telemetry",
    "reliable_ack": False,
    "monitoring": {
        "prometheus_metrics_port": 9090,
        "profiler_port": 4269,
        "profiling_path": "/tmp/trace.out",
        "statsd": {"host": "statsd:8125", "prefix": "fleet-telemetry", "sample_rate": 1,
                   "flush_period": 100},
    },
    "rate_limit": {"enabled": True, "message_interval_time": 30, "message_limit": 1000},
    "records": {
        "alerts": ["logger"],
        "errors": ["logger"],
        "V": ["logger", "kafka"],
        "connectivity": ["logger"],
    },
    "kafka": {
        "bootstrap.servers": "kafka:9092",
        "queue.buffering.max.messages": 1000000.0,
    },
    "kinesis": {"max_retries": 3, "streams": {"V": "custom_stream_name"}},
    "pubsub": {"gcp_project_id": "gcp-project-id"},
    "zmq": {"addr": "tcp://127.0.0.1:5288"},
    "redis": {"addrs": ["127.0.0.1:6379"], "publish_vin_topics": True},
    "mqtt": {"broker": "localhost:1883", "client_id": "client-1", "topic_base": "telemetry",
             "qos": 1, "retained": False},
    "tls": {"server_cert": "/etc/certs/server/server.crt",
            "server_key": "/etc/certs/server/server.key"},
    "vins_signal_tracking_enabled": ["device-1"],
}


def test_no_config_gives_embedded_defaults() -> None:
    config = build_config({}, environ={})
    assert (config.teltonika.host, config.teltonika.port) == ("0.0.0.0", 5027)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8080)
    assert config.store.enabled
    assert config.ack_level is AckLevel.SPOOL  # every source: durable before its ack
    assert config.spool.enabled and str(config.spool_path) == "data/spool"
    assert str(config.store_path) == "data/fleetgate.db"


def test_teslas_readme_config_parses_unchanged() -> None:
    config = build_config(TESLA_README_CONFIG, environ={})
    assert config.port == 443
    assert config.namespace == "tesla_telemetry"
    assert config.records["V"] == ["logger", "kafka"]
    kafka = config.sink_section("kafka")
    assert isinstance(kafka, KafkaSettings)
    assert kafka.properties == {"bootstrap.servers": "kafka:9092", "queue.buffering.max.messages": 1000000}
    kinesis = config.sink_section("kinesis")
    assert isinstance(kinesis, KinesisSettings) and kinesis.streams == {"V": "custom_stream_name"}
    assert config.rate_limit is not None and config.rate_limit.message_limit == 1000
    assert config.tls is not None and config.tls.server_key == "/etc/certs/server/server.key"


def test_keys_match_case_insensitively_like_go(caplog: pytest.LogCaptureFixture) -> None:
    config = build_config({"Port": 4443, "TLS": {"Server_Cert": "a.pem"}}, environ={})
    assert config.port == 4443
    assert config.tls is not None and config.tls.server_cert == "a.pem"


def test_unknown_keys_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fleetgate.config"):
        build_config({"teltonika": {"prot": 1}, "bogus": True}, environ={})
    messages = [record.getMessage() for record in caplog.records]
    assert any("'teltonika.prot'" in message for message in messages)
    assert any("'bogus'" in message for message in messages)


def test_environment_overrides_file_values() -> None:
    config = build_config(
        {"teltonika": {"port": 6000}},
        environ={"FLEETGATE_TELTONIKA__PORT": "7000", "FLEETGATE_LOG_LEVEL": "debug",
                 "FLEETGATE_RECORDS": '{"*": ["jsonl"]}'},
    )
    assert config.teltonika.port == 7000
    assert config.log_level == "debug"
    assert config.records == {"*": ["jsonl"]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"teltonika": {"port": 70000}}, "teltonika.port"),
        ({"api": {"port": "eighty"}}, "api.port"),
        ({"records": {"V": []}}, "records.V: empty dispatcher list"),
        ({"records": {"V": ["kafak"]}}, "unknown sink 'kafak'"),
        ({"records": {"V": ["kafka"]}}, "expected Kafka to be configured"),
        ({"records": {"V": ["logger"]}, "reliable_ack_sources": {"V": "logger"}}, "logger"),
        ({"records": {"connectivity": ["jsonl"]}, "reliable_ack_sources": {"connectivity": "jsonl"}},
         "connectivity"),
        ({"records": {"V": ["jsonl"]}, "reliable_ack_sources": {"V": "sqlite"}},
         "not a dispatcher of records.V"),
        ({"vins_signal_tracking_enabled": [f"VIN{n}" for n in range(21)]},
         "less than 20 unique vins"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_and_toml_files_load(tmp_path: Path) -> None:
    json_file = tmp_path / "config.json"
    json_file.write_text(json.dumps({"teltonika": {"port": 6001}}))
    toml_file = tmp_path / "config.toml"
    toml_file.write_text("[teltonika]\nport = 6002\n")
    assert load_config(json_file, environ={}).teltonika.port == 6001
    assert load_config(toml_file, environ={}).teltonika.port == 6002


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json", environ={})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(broken, environ={})


def test_environment_values_are_read_by_the_type_of_their_key() -> None:
    config = build_config(
        {"records": {"V": ["kafka"]}, "kafka": {"bootstrap.servers": "a:1"}},
        environ={
            "FLEETGATE_NAMESPACE": "123",  # a text key keeps the text, digits or not
            "FLEETGATE_TELTONIKA__ALLOWED_IMEIS": '["356307042441013"]',
            "FLEETGATE_API__ENABLED": "false",
            "FLEETGATE_KAFKA__LINGER.MS": "5",
        },
    )
    assert config.namespace == "123"
    assert config.teltonika.allowed_imeis == ["356307042441013"]
    assert config.api.enabled is False
    kafka = config.sink_section("kafka")
    assert isinstance(kafka, KafkaSettings)
    assert kafka.properties == {"bootstrap.servers": "a:1", "linger.ms": 5}


def test_a_sink_section_error_names_the_section_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"mqtt": {"broker": "host:notaport"}}, environ={})
    assert str(info.value).startswith("mqtt.broker: expected host:port")
