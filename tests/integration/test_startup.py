"""Start-up as an operator meets it: which listeners a config opens, files checked before
any port is bound, and one line naming the listener and address for every taken port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate import preflight
from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.pki import init_pki
from fleetgate.runtime import StartupError
from fleetgate.settings import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_tcp() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def taken_udp() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def base(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "api": {"enabled": False},
        "store": {"enabled": False},
        "spool": {"enabled": False},
        "ack_level": "receive",
    }
    data.update(overrides)
    return data


async def start_failure(data: dict[str, Any]) -> str:
    server = Server(build_config(data, environ={}))
    try:
        with pytest.raises(StartupError) as info:
            await server.start()
    finally:
        await server.stop()
    return str(info.value)


# -- which listeners a configuration opens -----------------------------------------------------
async def test_a_tesla_config_opens_the_vehicle_port_and_no_teltonika_listener(
    tmp_path: Path,
) -> None:
    pki = init_pki(tmp_path / "pki", host="localhost")
    tesla_config = {"host": "127.0.0.1", "port": 0, "tls": pki.config_snippet()["tls"]}
    config = build_config(base(tmp_path, **tesla_config), environ={})
    server = Server(config)
    await server.start()
    try:
        assert [listener.name for listener in server.listeners] == ["tesla"]
    finally:
        await server.stop()


def test_no_config_opens_every_listener_and_a_teltonika_section_only_teltonika() -> None:
    defaults = build_config({}, environ={})
    assert defaults.tesla_enabled and defaults.teltonika.enabled and defaults.mqtt_ingest is None
    only_trackers = build_config({"teltonika": {"port": 6000}}, environ={})
    assert only_trackers.teltonika.enabled and not only_trackers.tesla_enabled
    # A file that names no listener at all (only sinks, the API...) keeps the defaults.
    sinks_only = build_config({"records": {"*": ["jsonl"]}}, environ={})
    assert sinks_only.tesla_enabled and sinks_only.teltonika.enabled
    gateways = build_config({"mqtt_ingest": {"url": "mqtt://127.0.0.1:1883"}}, environ={})
    assert not gateways.tesla_enabled and not gateways.teltonika.enabled


# -- files are checked before any port is bound ------------------------------------------------
def test_every_file_problem_is_reported_before_binding(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", host="localhost")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    config = build_config(
        base(
            tmp_path,
            port=0,
            tls={**pki.config_snippet()["tls"], "ca_file": str(not_pem)},
            api={"tls_cert": str(pki.server_cert), "tls_key": str(tmp_path / "absent.key")},
            mqtt_ingest={
                "url": "mqtts://127.0.0.1:8883",
                "tls": {"ca_file": str(not_pem)},
            },
            data_connectors={
                "file": {"capabilities": ["vin_allowed"], "path": str(tmp_path / "none.json")}
            },
        ),
        environ={},
    )
    found = preflight.problems(config)
    assert found == [
        f"custom ca not properly loaded: {not_pem}",
        f"api.tls_cert/tls_key: cannot read {tmp_path / 'absent.key'}: No such file or directory",
        f"mqtt_ingest.tls.ca_file: {not_pem} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)",
        f"data_connectors.file.path: cannot read {tmp_path / 'none.json'}: "
        "No such file or directory",
    ]
    with pytest.raises(ConfigError) as info:
        preflight.check(config)
    assert list(info.value.problems) == found


def test_refused_keys_are_named(tmp_path: Path) -> None:
    config = build_config(
        base(
            tmp_path,
            airbrake={"host": "https://errbit", "project_key": "k"},
            data_connectors={"redis": {"capabilities": ["vin_allowed"]}},
        ),
        environ={},
    )
    found = preflight.problems(config)
    assert [line.split(":", 1)[0] for line in found] == ["data_connectors.redis", "airbrake"]


# -- a taken port: one line naming the listener and the address --------------------------------
async def test_teltonika_tcp_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(tmp_path, teltonika={"host": "127.0.0.1", "port": taken_tcp, "udp_enabled": False})
    assert await start_failure(data) == (
        f"teltonika: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )


async def test_teltonika_udp_port_taken(tmp_path: Path, taken_udp: int) -> None:
    data = base(tmp_path, teltonika={"host": "127.0.0.1", "port": 0, "udp_port": taken_udp})
    assert await start_failure(data) == (
        f"teltonika-udp: cannot listen on 127.0.0.1:{taken_udp}: address already in use"
    )


async def test_tesla_vehicle_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(tmp_path, host="127.0.0.1", port=taken_tcp)
    assert await start_failure(data) == (
        f"tesla: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )


async def test_tesla_status_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(tmp_path, host="127.0.0.1", port=0, status_port=taken_tcp)
    assert await start_failure(data) == (
        f"tesla status: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )


async def test_api_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(
        tmp_path,
        teltonika={"enabled": False},
        tesla_enabled=False,
        api={"host": "127.0.0.1", "port": taken_tcp},
    )
    assert await start_failure(data) == (
        f"api: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )


async def test_metrics_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(
        tmp_path,
        teltonika={"enabled": False},
        tesla_enabled=False,
        monitoring={"prometheus_metrics_port": taken_tcp},
    )
    assert await start_failure(data) == (
        f"prometheus metrics: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )


async def test_profiler_port_taken(tmp_path: Path, taken_tcp: int) -> None:
    data = base(
        tmp_path,
        teltonika={"enabled": False},
        tesla_enabled=False,
        monitoring={"profiler_port": taken_tcp},
    )
    assert await start_failure(data) == (
        f"profiler: cannot listen on 127.0.0.1:{taken_tcp}: address already in use"
    )
