"""The README's "Quick start for a Tesla owner or fleet", run literally as a new user would.

certs init writes config.json with the tls section alone; ``serve`` runs on that config
(embedded store, default ports); simulated vehicles send frames and must see every one
acked; ``curl`` on the API then lists both VINs. A server that acked the frames but kept
them nowhere (the Tesla listener once dispatched only the topics ``records`` named) fails
here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.readme import port_open, readme_workdir, sh_lines

# Fixed ports: such tests take turns (tests/conftest.py), so the wait counts in the timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.fixed_ports, pytest.mark.timeout(300)]

VINS = ("5YJ3E1EA7KF000001", "5YJ3E1EA7KF000002")
PORTS = (8080, 4443)  # the API and the vehicle port the README's commands use
TIMEOUT_S = 60


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory laid out as the README assumes: ``.venv/bin/fleetgate`` at hand."""
    return readme_workdir(tmp_path / "work", PORTS)


def test_setting_up_vehicles_as_the_readme_says(scratch: Path) -> None:
    heading = "### Quick start for a Tesla owner or fleet"
    lines = [line for line in sh_lines(heading) if " tesla config " not in line]
    assert [line.split()[0] for line in lines] == [
        ".venv/bin/fleetgate", ".venv/bin/fleetgate", ".venv/bin/fleetgate", "TOKEN=$(.venv/bin/fleetgate",
        "curl",
    ]
    # The token line sets a shell variable the curl line uses: one shell runs both.
    lines = [*lines[:3], "\n".join(lines[3:])]
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("FLEETGATE_CONFIG", None)
    server: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    try:
        for line in lines:
            if line.endswith("&"):
                server = subprocess.Popen(
                    ["bash", "-c", line.removesuffix("&").strip()], cwd=scratch, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    start_new_session=True,
                )
                deadline = time.monotonic() + TIMEOUT_S
                while not all(port_open(port) for port in PORTS):
                    assert server.poll() is None, server.communicate()[0]
                    assert time.monotonic() < deadline, "serve did not open its ports"
                    time.sleep(0.1)
                continue
            done = subprocess.run(
                ["bash", "-c", line], cwd=scratch, env=env, capture_output=True, text=True,
                timeout=TIMEOUT_S, check=False,
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            log = server.communicate(timeout=TIMEOUT_S)[0]
            assert server.returncode == 0, log
    config = json.loads((scratch / "config.json").read_text())
    assert set(config) == {"tls"}
    summary = re.search(r"frames sent=(\d+) acked=(\d+) missing acks=0", outputs[1])
    assert summary is not None, outputs[1]
    sent, acked = int(summary[1]), int(summary[2])
    assert sent == acked > 0
    devices = {device["id"]: device for device in json.loads(outputs[2])["devices"]}
    assert set(VINS) <= set(devices)
    # Every acked V frame is stored, plus a connectivity record per connect (and one per
    # disconnect, which may land just after curl asked).
    stored = sum(devices[vin]["record_count"] for vin in VINS)
    assert acked + len(VINS) <= stored <= acked + 2 * len(VINS)
    assert all(devices[vin]["source"] == "tesla" for vin in VINS)
