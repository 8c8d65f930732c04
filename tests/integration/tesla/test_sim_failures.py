"""The simulators say why a connection failed: refused, timed out, a certificate the other
side does not trust (real sockets on loopback, real TLS)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from fleetgate.app import Server
from fleetgate.pki import DevPki, init_pki
from fleetgate.sim.teltonika import SimulationSettings
from fleetgate.sim.teltonika import run_simulation as run_trackers
from fleetgate.sim.tesla import TeslaSimSettings, credentials_from_cert, run_simulation
from tests.integration.tesla.helpers import VIN, url

pytestmark = pytest.mark.integration


def vehicles(server: Server, ca: Path | None, cert: Path, key: Path) -> TeslaSimSettings:
    return TeslaSimSettings(
        url=url(server),
        ca=ca,
        credentials=[credentials_from_cert(cert, key)],
        frames_per_vehicle=1,
        duration_s=5,
        ack_timeout_s=5,
    )


async def test_a_vehicle_certificate_from_an_unknown_ca(
    server: Server, pki: DevPki, tmp_path: Path
) -> None:
    stranger = init_pki(tmp_path / "other", host="localhost", vins=[VIN])
    cert, key = stranger.vehicles[VIN]
    result = await run_simulation(vehicles(server, pki.ca_cert, cert, key))
    assert result.connection_errors == 1
    (reason,) = result.failures
    assert "refused this client certificate" in reason and "CA is unknown" in reason


async def test_a_server_certificate_the_simulator_does_not_trust(
    server: Server, pki: DevPki, tmp_path: Path
) -> None:
    stranger = init_pki(tmp_path / "other", host="localhost")
    cert, key = pki.vehicles[VIN]
    result = await run_simulation(vehicles(server, stranger.ca_cert, cert, key))
    (reason,) = result.failures
    assert reason.startswith(f"TLS: the server certificate of {url(server)} is not trusted")
    assert "--ca" in reason


async def test_refused_and_timed_out_trackers() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    refused = await run_trackers(SimulationSettings(port=closed_port, devices=2, duration_s=1))
    assert refused.failures == {
        f"connection refused by 127.0.0.1:{closed_port} (is the server running, on that port?)": 2
    }
    # A server that accepts and never answers the IMEI handshake.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    async with silent:
        timed_out = await run_trackers(
            SimulationSettings(port=port, devices=1, duration_s=1, ack_timeout_s=0.3)
        )
    assert timed_out.failures == {f"no answer from 127.0.0.1:{port} in time (timeout)": 1}
