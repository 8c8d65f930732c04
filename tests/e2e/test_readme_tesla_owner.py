"""The README's owner commands (``fleetgate tesla config|configure|status``), run literally.

Each command is taken from README.md as written and run by a shell in a scratch directory
holding what the README assumes (``certs/ca.crt``, ``proxy/tls-cert.pem``,
``.venv/bin/fleetgate``), with ``TESLA_*`` pointing at the loopback Fleet API stand-in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.pki import init_pki
from tests.readme import sh_lines
from tests.tesla_fleet_api import KNOWN_VINS, TOKEN, FleetApiStandIn, fleet_api_stand_in

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
VIN = KNOWN_VINS[0]


def section_commands(heading: str) -> list[str]:
    """The ``.venv/bin/fleetgate tesla`` commands of the sh blocks under ``heading``."""
    return [line for line in sh_lines(heading) if line.startswith(".venv/bin/fleetgate tesla ")]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[Path, FleetApiStandIn]]:
    """A directory laid out as the README assumes, and the stand-in behind TESLA_*."""
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    fleetgate = shutil.which("fleetgate", path=str(Path(sys.executable).parent))
    assert fleetgate is not None, "the fleetgate console script next to this Python"
    (work / ".venv" / "bin" / "fleetgate").symlink_to(fleetgate)
    server = init_pki(tmp_path / "server-pki", host="telemetry.example.com")
    (work / "certs").mkdir()
    shutil.copy(server.ca_cert, work / "certs" / "ca.crt")
    with fleet_api_stand_in(tmp_path) as api:
        (work / "proxy").mkdir()
        shutil.copy(api.pki.ca_cert, work / "proxy" / "tls-cert.pem")
        yield work, api


def run(command: str, cwd: Path, api: FleetApiStandIn) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TESLA_API_BASE_URL": api.base_url,
        "TESLA_ACCESS_TOKEN": TOKEN,
        "TESLA_VIN": VIN,
    }
    return subprocess.run(
        ["sh", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_has_the_owner_commands() -> None:
    assert [c.split()[2] for c in section_commands("### Quick start for a Tesla owner or fleet")] == ["config"]
    assert [c.split()[2] for c in section_commands("### Configuring a car to stream here")] == [
        "configure",
        "status",
    ]


def test_readme_tesla_config_prints_the_body(scratch: tuple[Path, FleetApiStandIn]) -> None:
    work, api = scratch
    [command] = section_commands("### Quick start for a Tesla owner or fleet")
    result = run(command, work, api)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["vins"] == ["5YJ3E1EA7KF000001"]
    assert body["config"]["ca"] == (work / "certs" / "ca.crt").read_text()
    assert api.requests == []  # offline


def test_readme_configure_then_status(scratch: tuple[Path, FleetApiStandIn]) -> None:
    work, api = scratch
    configure, status = section_commands("### Configuring a car to stream here")
    result = run(configure, work, api)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"configured 1 of 1 vehicle(s) to stream to telemetry.example.com:443: {VIN}\n"
    )
    assert api.problems == []
    [request] = api.requests
    assert (request["method"], request["path"]) == (
        "POST",
        "/api/1/vehicles/fleet_telemetry_config",
    )
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert request["body"]["vins"] == [VIN]
    assert request["body"]["config"]["fields"] == {
        "VehicleSpeed": {"interval_seconds": 10},
        "Soc": {"interval_seconds": 60},
        "Location": {"interval_seconds": 30},
    }

    result = run(status, work, api)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        f"{VIN}: streams to telemetry.example.com:443, synced (the vehicle uses it)",
        "  fields: Location every 30 s, Soc every 60 s, VehicleSpeed every 10 s",
    ]
    assert TOKEN not in result.stdout + result.stderr
