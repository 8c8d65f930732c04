"""The API's config sections and the Node telemetry server's environment aliases."""

from __future__ import annotations

import logging

import pytest

from fleetgate.config import build_config


def test_node_server_variables_are_aliases() -> None:
    config = build_config(
        {},
        environ={
            "JWT_SECRET": "node-secret",
            "PORT": "3001",
            "CERT_PATH": "/etc/telemetry/cert.pem",
            "KEY_PATH": "/etc/telemetry/key.pem",
            "CA_PATH": "/etc/telemetry/ca.pem",
            "REQUEST_CLIENT_CERT": "true",
        },
    )
    assert config.api.auth.secret == "node-secret"
    assert config.api.port == 3001
    assert config.tls is not None
    assert (config.tls.server_cert, config.tls.server_key, config.tls.ca_file) == (
        "/etc/telemetry/cert.pem",
        "/etc/telemetry/key.pem",
        "/etc/telemetry/ca.pem",
    )
    assert (config.api.tls_cert, config.api.tls_key) == (
        "/etc/telemetry/cert.pem",
        "/etc/telemetry/key.pem",
    )


def test_fleetgate_variables_win_over_the_aliases_and_aliases_over_the_file() -> None:
    config = build_config(
        {"api": {"port": 9000, "auth": {"secret": "from-file"}}},
        environ={"PORT": "3001", "FLEETGATE_API__PORT": "7000", "JWT_SECRET": "from-env"},
    )
    assert config.api.port == 7000
    assert config.api.auth.secret == "from-env"


def test_a_bad_alias_value_names_the_key() -> None:
    from fleetgate.config import ConfigError

    with pytest.raises(ConfigError, match=r"api\.port"):
        build_config({}, environ={"PORT": "not-a-port"})


def test_request_client_cert_false_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleetgate.config"):
        build_config({}, environ={"REQUEST_CLIENT_CERT": "false"})
    assert "REQUEST_CLIENT_CERT=false ignored" in caplog.text


def test_api_defaults() -> None:
    api = build_config({}, environ={}).api
    assert api.auth.enabled and api.auth.algorithm == "HS256" and api.auth.secret is None
    assert api.auth.public_paths == ["/health", "/metrics"]
    assert api.auth.unscoped == ["stream"]
    assert api.stream.buffer_records == 10_000
    assert api.stream.compression is False
    assert api.dashboard.tile_url.startswith("https://tile.openstreetmap.org/")
