"""``fleetgate serve`` refusing to start, as an operator reads it on the terminal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

FLEETGATE = [sys.executable, "-m", "fleetgate"]


def serve(config: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), **config}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.run(
        [*FLEETGATE, "serve", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_api_port_taken_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = serve({"teltonika": {"enabled": False}, "api": {"port": port}}, tmp_path)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "cannot listen" in line]
    assert errors == [f"fleetgate: api: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in done.stderr


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    done = serve(
        {"port": "x", "teltonika": {"port": 99999}, "kinesis": {"max_retries": "many"}},
        tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fleetgate: config error: teltonika.port: Input should be less than or equal to "
        "65535 (got 99999)",
        "fleetgate: config error: port: Input should be a valid integer, unable to parse "
        "string as an integer (got 'x')",
        "fleetgate: config error: kinesis.max_retries: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many')",
    ]


def test_routing_and_file_problems_are_reported_together(tmp_path: Path) -> None:
    done = serve(
        {
            "port": 0,
            "records": {"V": ["nosuch"]},
            "tls": {"server_cert": "absent.crt", "server_key": "absent.key"},
            "airbrake": {"host": "https://errbit.example"},
        },
        tmp_path,
    )
    assert done.returncode == 2
    assert [line.split(": ")[2] for line in done.stderr.splitlines()] == [
        "records.V",
        "tls.server_cert",
        "airbrake",
    ]


def test_warnings_before_logging_is_configured_are_json_when_asked(tmp_path: Path) -> None:
    # An unknown key is warned about while the config is read, before logging is set up;
    # the refused airbrake key then stops the server (no port is bound).
    done = serve({"json_log_enable": True, "bogus": 1, "airbrake": {}}, tmp_path)
    assert done.returncode == 2
    warning = json.loads(done.stderr.splitlines()[0])
    assert warning["level"] == "warning"
    assert warning["msg"] == "config: unknown key 'bogus' ignored"


def test_config_check_names_the_listeners_a_tesla_config_opens(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"port": 4443, "namespace": "tesla_telemetry"}))
    done = subprocess.run(
        [*FLEETGATE, "config", "check", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "config ok; listeners: tesla\n")
