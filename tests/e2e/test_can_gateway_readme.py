"""README "Quick start for a gateway team", run as written.

Deviations, all mechanical: ``.venv/bin/fleetgate`` is this interpreter's ``-m fleetgate``;
fixed ports (8883, 5000, 8080) become free loopback ports; run as root, mosquitto gets
``user root`` (README says why). Until ``mqtt_ingest`` is wired into the server config,
step 3 (``fleetgate serve``) is played by the subscriber itself with the README's
``gateways.json``; the full path through ``serve`` and the REST API runs once
:class:`fleetgate.config.Config` has the section.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetgate.listeners.mqtt import MqttIngestConfig, MqttIngestListener
from tests.integration.mqtt.conftest import Ingest
from tests.integration.services import ManagedProcess, free_port

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
FLEETGATE = [sys.executable, "-m", "fleetgate"]


def section() -> str:
    text = README.read_text()
    start = text.index("### Quick start for a gateway team")
    return text[start : text.index("### Topic map", start)]


def quick_start() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", section(), re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def gateways_json() -> dict[str, Any]:
    block = re.search(r"```json\n(.*?)```", section(), re.S)
    assert block is not None
    parsed: dict[str, Any] = json.loads(block.group(1))
    return parsed


def argv(command: str, ports: dict[int, int]) -> list[str]:
    for fixed, free in ports.items():
        command = command.replace(f":{fixed}", f":{free}")
    words = shlex.split(command)
    if words[0] == ".venv/bin/fleetgate":
        return [*FLEETGATE, *words[1:]]
    return words


def test_the_commands_are_the_ones_this_test_runs() -> None:
    commands = quick_start()
    assert [shlex.split(c)[:3] for c in commands] == [
        [".venv/bin/fleetgate", "certs", "gateway"],
        ["mosquitto", "-c", "mosquitto.conf"],
        [".venv/bin/fleetgate", "serve", "--config"],
        [".venv/bin/fleetgate", "sim", "can-gateway"],
        ["curl", "-X", "POST"],
        ["TOKEN=$(.venv/bin/fleetgate", "token", "--config"],
        ["curl", "-s", "-H"],
    ]


class QuickStart:
    """Steps 1, 2 and 4 of the quick start in ``workdir``, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {8883: free_port(), 5000: free_port(), 8080: free_port()}
        self.commands = quick_start()
        self.broker: ManagedProcess | None = None
        self.sim: subprocess.Popen[str] | None = None

    def read_back(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Step 5's token and read-back lines, in one shell as the README has them."""
        script = "\n".join(self.commands[5:7])
        for fixed, free in self.ports.items():
            script = script.replace(f":{fixed}", f":{free}")
        bin_dir = self.workdir / ".venv" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        fleetgate = shutil.which("fleetgate", path=str(Path(sys.executable).parent))
        assert fleetgate is not None
        if not (bin_dir / "fleetgate").exists():
            (bin_dir / "fleetgate").symlink_to(fleetgate)
        return subprocess.run(
            ["bash", "-c", script], cwd=self.workdir, env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )

    def run(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv(command, self.ports),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **kwargs,
        )

    def certificates(self) -> None:
        result = self.run(self.commands[0])
        assert result.returncode == 0, result.stdout + result.stderr
        # The gateway's config file names the broker on 8883: moved like every fixed port.
        config = self.workdir / "certs/gateways/gw-001.json"
        config.write_text(config.read_text().replace(":8883", f":{self.ports[8883]}"))
        conf = self.workdir / "mosquitto.conf"
        text = conf.read_text().replace(" 8883 ", f" {self.ports[8883]} ")
        if os.geteuid() == 0:
            text = "user root\n" + text
        conf.write_text(text)

    def start_broker(self) -> None:
        self.broker = ManagedProcess(
            "mosquitto", argv(self.commands[1], self.ports), self.ports[8883], self.workdir
        ).start()

    def start_simulator(self) -> None:
        command = self.commands[3] + f" --api-port {self.ports[5000]}"
        self.sim = subprocess.Popen(
            argv(command, self.ports),
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.sim.stdout is not None
        line = self.sim.stdout.readline()
        assert line.startswith("REST API on"), line

    def publish(self) -> None:
        result = self.run(self.commands[4])
        assert result.returncode == 0, result.stderr
        published = json.loads(result.stdout)["published"]
        assert [p["topic"] for p in published] == [
            "vehicles/gw-001/engine/rpm",
            "vehicles/gw-001/vehicle/speed",
        ]

    def close(self) -> None:
        if self.sim is not None:
            self.sim.send_signal(signal.SIGINT)
            self.sim.wait(30)
        if self.broker is not None:
            self.broker.kill()


@pytest.fixture
def quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[QuickStart]:
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    steps = QuickStart(tmp_path)
    try:
        yield steps
    finally:
        steps.close()


async def test_quick_start_gateway_to_subscriber(quick: QuickStart, tmp_path: Path) -> None:
    quick.certificates()
    await asyncio.to_thread(quick.start_broker)
    raw = json.dumps(gateways_json()["mqtt_ingest"]).replace(":8883", f":{quick.ports[8883]}")
    settings = MqttIngestConfig.model_validate({**json.loads(raw), "client_id": "readme-test"})
    ingest = Ingest(tmp_path / "records.jsonl")
    await ingest.pipeline.start()
    listener = MqttIngestListener(settings, ingest.pipeline)  # step 3, until serve knows it
    await listener.start()
    try:
        assert listener.health()["connection"] == "connected", listener.health()
        await asyncio.to_thread(quick.start_simulator)
        await ingest.wait_for(15)  # the first snapshot of the tree
        await asyncio.to_thread(quick.publish)
        deadline = time.monotonic() + 20
        found: dict[str, Any] = {}
        while time.monotonic() < deadline and len(found) < 2:
            for record in ingest.records():
                data = record["data"]
                if (data["signal"], data["value"]) in (("rpm", 2000), ("speed", 80.0)):
                    found[data["signal"]] = record
            await asyncio.sleep(0.05)
        assert set(found) == {"rpm", "speed"}
        assert {r["device_id"] for r in found.values()} == {"gw-001"}
    finally:
        await listener.stop()
        await ingest.pipeline.close()


@pytest.mark.skipif(
    "mqtt_ingest" not in __import__("fleetgate.config").config.Config.model_fields,
    reason="mqtt_ingest is not wired into the server config yet",
)
def test_quick_start_through_fleetgate_serve(quick: QuickStart, tmp_path: Path) -> None:
    quick.certificates()
    quick.start_broker()
    config = tmp_path / "gateways.json"
    config.write_text(json.dumps(gateways_json()).replace(":8883", f":{quick.ports[8883]}"))
    env = {
        **os.environ,
        "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
        "FLEETGATE_API__PORT": str(quick.ports[8080]),
        "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
        "FLEETGATE_TELTONIKA__PORT": str(free_port()),
        "FLEETGATE_TESLA_ENABLED": "false",
    }
    serve = subprocess.Popen(argv(quick.commands[2], quick.ports), cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{quick.ports[8080]}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        quick.start_simulator()
        quick.publish()
        deadline = time.monotonic() + 20
        latest: dict[str, Any] = {}
        while time.monotonic() < deadline:
            result = quick.read_back(env)
            if result.returncode == 0 and result.stdout.startswith("{"):
                latest = json.loads(result.stdout)
                if latest.get("data", {}).get("signal") in ("rpm", "speed"):
                    break
            time.sleep(0.1)
        assert latest["device_id"] == "gw-001" and latest["source"] == "mqtt"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
