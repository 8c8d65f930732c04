"""Credentials in sink settings never reach a log line or ``/health``.

A real ``fleetgate serve`` with sinks whose backends are down (closed ports), configured
the way users do it: a NATS URL with ``user:password@`` and one with a token, a Postgres
DSN with a password, a Redis and an MQTT password. The sinks fail, retry and report the
failure in ERROR lines and in the unauthenticated ``/health``; the secrets appear nowhere.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleetgate.protocols.teltonika.encoder import encode_imei
from tests.e2e.test_workers import free_port
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.e2e

SECRETS = ["S3cretNatsPass", "NatsT0kenXYZ", "PgPa55word", "R3disPa55", "MqttPa55"]


def test_passwords_are_in_no_log_line_and_not_in_health(tmp_path: Path) -> None:
    closed = [free_port() for _ in range(5)]
    api_port, tracker_port = free_port(), free_port()
    config = {
        "data_dir": str(tmp_path / "data"),
        "json_log_enable": True,
        "tesla_enabled": False,
        "ack_level": "receipt",
        "api": {"port": api_port},
        "teltonika": {"host": "127.0.0.1", "port": tracker_port, "udp_enabled": False},
        "records": {"*": ["nats", "postgres", "redis", "mqtt"]},
        "nats": {
            "servers": [
                f"nats://fleet:{SECRETS[0]}@127.0.0.1:{closed[0]}",
                f"nats://{SECRETS[1]}@127.0.0.1:{closed[1]}",
            ],
            "connect_timeout_ms": 200,
        },
        "postgres": {"dsn": f"postgresql://fleet:{SECRETS[2]}@127.0.0.1:{closed[2]}/telemetry"},
        "redis": {"addrs": [f"127.0.0.1:{closed[3]}"], "password": SECRETS[3], "streams": True},
        "mqtt": {
            "broker": f"127.0.0.1:{closed[4]}",
            "username": "fleet",
            "password": SECRETS[4],
            "connect_timeout_ms": 200,
        },
        "sink_settings": {"retry_initial_ms": 50, "retry_max_ms": 200},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "serve", "--config", str(tmp_path / "config.json")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        api = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                httpx.get(f"{api}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        # One record, so every sink has something to fail to publish.
        with socket.create_connection(("127.0.0.1", tracker_port), timeout=10) as tracker:
            tracker.sendall(encode_imei("356307042441013"))
            assert tracker.recv(1) == b"\x01"
            tracker.sendall(frame("doc-c8-tcp-example1"))
            assert tracker.recv(4) == b"\x00\x00\x00\x01"

        # Every sink down, with its error text, in /health.
        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(f"{api}/health", timeout=5)
            sinks = health.json()["sinks"]
            if all(sinks[name].get("error") for name in ("nats", "postgres", "redis", "mqtt")):
                break
            assert time.monotonic() < deadline, health.text
            time.sleep(0.2)
        body = health.text
        # The NATS error names its servers, masked.
        assert "fleet:***@127.0.0.1" in log_path.read_text() + body
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    logs = log_path.read_text()
    assert "nats" in logs and "unreachable or failing" in logs  # the failures were logged
    for secret in SECRETS:
        assert secret not in logs, f"{secret} in the log"
        assert secret not in body, f"{secret} in /health"
