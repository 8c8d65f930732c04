"""``pip install fleetgate`` in a clean virtual environment: the slim server works.

The wheel is built by ``make wheel`` (the Dockerfile's install step) and must carry what the
server serves: the dashboard, its vendored JavaScript, the Tesla CA bundles. A fresh
environment gets it with ``pip install --no-index`` from a wheelhouse of the pinned core
dependencies (no sink backend): ``fleetgate serve`` then takes tracker frames into a JSON
lines sink and serves the dashboard's files, and a config routing records to Kafka stops
start-up with one line naming the extra to install.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

# Its tests share one wheel build in the source tree: one pytest-xdist worker runs them.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("slim_install")]

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
# The Teltonika protocol document's codec 8 example and its tracker's IMEI handshake.
IMEI_HANDSHAKE = bytes.fromhex("000f333536333037303432343431303133")
FRAME = bytes.fromhex(
    "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101"
    "425e0f01f10000601a014e0000000000000000010000c7cf"
)
SERVED_FILES = (
    "fleetgate/api/static/index.html",
    "fleetgate/api/static/app.js",
    "fleetgate/api/static/vendor/leaflet/leaflet.js",
    "fleetgate/api/static/vendor/uplot/uPlot.iife.min.js",
    "fleetgate/api/static/vendor/swagger-ui/swagger-ui-bundle.js",
    "fleetgate/listeners/tesla/ca/prod_ca.crt",
    "fleetgate/listeners/tesla/ca/eng_ca.crt",
    "fleetgate/py.typed",
)


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        command, capture_output=True, text=True, timeout=300, check=True, **kwargs
    )


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only ``pip install fleetgate`` (no extras)."""
    work = tmp_path_factory.mktemp("slim")
    dist = work / "dist"
    run(["make", "-s", "wheel", f"DIST={dist}", f"BIN={Path(sys.executable).parent}"], cwd=ROOT)
    (wheel,) = dist.glob("fleetgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [name for name in SERVED_FILES if name not in names] == []
    # The core dependencies, pinned to what this environment runs, as a local wheelhouse.
    constraints = work / "constraints.txt"
    frozen = run([*PIP, "freeze", "--exclude-editable"]).stdout
    constraints.write_text(frozen)
    wheelhouse = work / "wheelhouse"
    run([*PIP, "wheel", "-w", str(wheelhouse), "-c", str(constraints), str(wheel)])
    env = work / "env"
    venv.create(env, with_pip=True)
    run(
        [
            str(env / "bin" / "pip"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "fleetgate",
        ]
    )
    return env


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FLEETGATE_", "VIRTUAL"))}


def wait_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


def test_the_slim_install_has_no_backend_library(slim: Path) -> None:
    probe = (
        "import importlib.util as u; print([m for m in ('confluent_kafka', 'aiobotocore', "
        "'redis', 'nats', 'psycopg', 'zmq', 'aiomqtt') if u.find_spec(m)])"
    )
    assert run([str(slim / "bin" / "python"), "-c", probe]).stdout.strip() == "[]"


def test_serve_takes_frames_into_a_jsonl_sink_and_serves_the_dashboard(
    slim: Path, tmp_path: Path
) -> None:
    tracker, api = free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "teltonika": {"host": "127.0.0.1", "port": tracker, "udp_enabled": False},
                "api": {"port": api},
                "records": {"*": ["jsonl"]},
            }
        )
    )
    server = subprocess.Popen(
        [str(slim / "bin" / "fleetgate"), "serve", "--config", str(config)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(tracker, server)
        wait_port(api, server)
        with socket.create_connection(("127.0.0.1", tracker), timeout=10) as sock:
            sock.sendall(IMEI_HANDSHAKE)
            assert sock.recv(1) == b"\x01"
            sock.sendall(FRAME)
            assert sock.recv(4) == b"\x00\x00\x00\x01"
        leaflet = httpx.get(f"http://127.0.0.1:{api}/static/vendor/leaflet/leaflet.js")
        assert leaflet.status_code == 200 and "Leaflet" in leaflet.text[:500]
    finally:
        server.send_signal(signal.SIGTERM)
        log = server.communicate(timeout=60)[0]
    assert server.returncode == 0, log
    (line,) = (tmp_path / "data" / "records.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["source"], record["device_id"]) == ("teltonika", "356307042441013")


def test_a_kafka_sink_without_its_extra_stops_start_up_naming_it(
    slim: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "records": {"V": ["kafka"]},
                "kafka": {"bootstrap.servers": "127.0.0.1:9092"},
            }
        )
    )
    done = subprocess.run(
        [str(slim / "bin" / "fleetgate"), "serve", "--config", str(config)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fleetgate: config error: records.V: the kafka sink needs its extra: "
        "pip install 'fleetgate[kafka]' (confluent_kafka not installed)"
    ]
