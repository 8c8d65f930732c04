"""Memory (issue 11): ``fleetgate serve`` on the embedded defaults loads no module it only
needs for a first vehicle, a first key operation or a first API request beyond the health
checks. Each of these costs the idle server megabytes (cryptography ~10, FastAPI ~8,
protobuf and the Tesla decoding ~5, importlib.metadata's imports ~2, uvicorn's command line
~1.5, prometheus_client's servers ~1.2); an import added back at module level fails here.

The server runs as ``fleetgate serve`` does (``fleetgate.cli.main``) in a child process that
prints the loaded modules it is asked about when ready and on SIGUSR1.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleetgate.pki import init_pki
from tests.integration.services import free_port

pytestmark = pytest.mark.integration

# Loaded on first use only: the first vehicle (Tesla frame processing), a certificate or
# key operation, the first API request other than /health and /metrics, or a sink or
# listener the config does not use.
HEAVY = (
    "cryptography",
    "jwt",
    "google.protobuf",
    "flatbuffers",
    "fastapi",
    "starlette",
    "paho",
    "fleetgate.protocols.tesla.core",
    "fleetgate.protocols.tesla.identity",
    "fleetgate.listeners.tesla.session",
    "fleetgate.forms.tesla_log",
    "fleetgate.forms.tesla_mqtt",
    "fleetgate.recordlog",
    "fleetgate.api.app",
    "fleetgate.sinks.kafka",
    "fleetgate.sinks.redis",
    "fleetgate.sinks.nats",
    "fleetgate.sinks.mqtt",
    "fleetgate.observability.profiler",
    # uvicorn's command line and supervisors (fleetgate.api.uvicorn_core): ~1.5 MiB.
    "uvicorn.main",
    "uvicorn.supervisors",
    "click",
    "multiprocessing",
    # prometheus_client's HTTP servers and push client (fleetgate.lean_imports): ~1.2 MiB.
    "prometheus_client.exposition",
    "http.server",
    "wsgiref",
    # Used only when configured: workers > 1, teltonika.command_routing.
    "fleetgate.supervisor",
    "fleetgate.listeners.teltonika.command_routing",
    # importlib.metadata's own imports (fleetgate.lean_imports: pydantic's plugin lookup,
    # websockets.version): ~2 MiB.
    "zipfile",
    "csv",
    "email.message",
    "importlib.resources",
    "tempfile",
    # logging.config's (fleetgate.lean_imports: uvicorn.config): ~0.4 MiB.
    "logging.handlers",
    "socketserver",
    "pickle",
    # bz2's and lzma's libraries (fleetgate.lean_imports: shutil): ~0.3 MiB.
    "_bz2",
    "_lzma",
    # The CAN-gateway protocol, when mqtt_ingest is not configured (fleetgate.mqtt_settings).
    "fleetgate.protocols.mqtt",
    "rfc8785",
)

HARNESS = """
import json, os, signal, sys, asyncio
import fleetgate.commands.serve as command
from fleetgate.cli import main

HEAVY = tuple(json.loads(sys.argv[1]))


def dump(api_port: int) -> None:
    loaded = sorted(
        name for name in sys.modules
        if any(name == heavy or name.startswith(heavy + ".") for heavy in HEAVY)
    )
    print("MODULES " + json.dumps({"api_port": api_port, "loaded": loaded}), flush=True)


def ready(server):
    command_announce(server)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump, server.api_port)
    dump(server.api_port)


command_announce = command.announce
command.announce = ready
sys.exit(main(["serve"]))
"""


def read_modules(process: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The next ``MODULES`` line of the child, as JSON."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("MODULES "):
                result: dict[str, Any] = json.loads(line[len("MODULES ") :])
                return result
    raise AssertionError(f"no module list from the server (exit code {process.poll()})")


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers["content-type"], response.read()


def test_plain_start_loads_no_first_use_module(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The development PKI of a server's second start (the first one makes it).
    init_pki(data / "tesla-dev-ca", host="localhost")
    env = {
        **os.environ,
        "FLEETGATE_DATA_DIR": str(data),
        "FLEETGATE_HOST": "127.0.0.1",
        "FLEETGATE_PORT": str(free_port()),
        "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
        "FLEETGATE_TELTONIKA__PORT": str(free_port()),
        "FLEETGATE_API__HOST": "127.0.0.1",
        "FLEETGATE_API__PORT": str(free_port()),
    }
    env.pop("FLEETGATE_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-c", HARNESS, json.dumps(HEAVY)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        started = read_modules(process)
        assert started["loaded"] == []
        api = f"http://127.0.0.1:{started['api_port']}"

        # Health checks and scrapes are answered without building the application...
        status, media_type, body = get(f"{api}/health")
        assert (status, media_type) == (200, "application/json")
        assert json.loads(body)["status"] == "ok"
        status, media_type, body = get(f"{api}/metrics")
        assert status == 200 and media_type.startswith("text/plain; version=0.0.4")
        assert b"fleetgate_open_connections" in body
        process.send_signal(signal.SIGUSR1)
        assert read_modules(process)["loaded"] == []

        # ...which the first other request builds, and which then answers everything.
        status, media_type, _ = get(f"{api}/")
        assert status == 200 and media_type.startswith("text/html")
        process.send_signal(signal.SIGUSR1)
        loaded = read_modules(process)["loaded"]
        assert "fastapi" in loaded and "fleetgate.api.app" in loaded
        status, _, body = get(f"{api}/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
