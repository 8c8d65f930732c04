"""Ways a user gets the Tesla listener running: dev CA, a Tesla config.json, certs + sim."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleetgate.app import Server
from fleetgate.cli import main
from fleetgate.config import build_config, read_config_file
from fleetgate.pki import client_ssl_context, init_pki
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK
from fleetgate.sim.tesla import TeslaSimSettings, credentials_from_dir, run_simulation
from tests.integration.stores import stored
from tests.integration.tesla.helpers import (
    TIMEOUT,
    VIN,
    NeverSink,
    receive,
    start_server,
    stream_frame,
    tesla,
    url,
)

pytestmark = pytest.mark.integration

# Tesla's examples/server_config.json (the reference repository), kept byte for byte.
REFERENCE_EXAMPLE = """{
  "host": "0.0.0.0",
  "port": 443,
  "log_level": "info",
  "json_log_enable": true,
  "namespace": "tesla_telemetry",
  "reliable_ack": false,
  "monitoring": {
      "prometheus_metrics_port": 9090,
      "profiler_port": 4269,
      "profiling_path": "/tmp/trace.out"
  },
  "rate_limit": {
      "enabled": true,
      "message_interval_time": 30,
      "message_limit": 1000
  },
  "records": {
      "alerts": [
          "logger"
      ],
      "errors": [
          "logger"
      ],
      "V": [
          "logger"
      ]
  },
  "data_connectors": {
    "file": {
        "capabilities": ["vin_allowed"],
        "path": "examples/data.json"
    }
  },
  "tls": {
      "server_cert": "/etc/certs/server/tls.crt",
      "server_key": "/etc/certs/server/tls.key"
  }
}
"""


async def test_reference_example_config_loads_unchanged_and_serves(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    pki = init_pki(tmp_path / "pki", vins=[VIN])
    config_file = tmp_path / "config.json"
    config_file.write_text(REFERENCE_EXAMPLE)
    # The file stays as Tesla ships it; only deployment specifics come from the environment
    # (loopback and a free port instead of 0.0.0.0:443, our generated certificate files).
    environ = {
        "FLEETGATE_HOST": "127.0.0.1",
        "FLEETGATE_PORT": "0",
        "FLEETGATE_TLS__SERVER_CERT": str(pki.server_cert),
        "FLEETGATE_TLS__SERVER_KEY": str(pki.server_key),
        "FLEETGATE_TLS__CA_FILE": str(pki.ca_cert),
        "FLEETGATE_MONITORING__PROMETHEUS_METRICS_PORT": "0",
        "FLEETGATE_MONITORING__PROFILER_PORT": "0",
        "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
        "FLEETGATE_API__ENABLED": "false",
        "FLEETGATE_TELTONIKA__ENABLED": "false",
    }
    config = build_config(read_config_file(config_file), environ=environ)
    assert config.namespace == "tesla_telemetry"
    assert config.rate_limit is not None and config.rate_limit.message_limit == 1000
    server = Server(config)
    await server.start()
    try:
        cert, key = pki.vehicles[VIN]
        context = client_ssl_context(cert, key, pki.ca_cert)
        async with await connect(url(server), ssl=context, open_timeout=TIMEOUT) as ws:
            await ws.send(stream_frame())
            reply = await receive(ws)
        assert reply.message_type == MESSAGE_STREAM_ACK
        assert len(await stored(server.store, VIN, 1, topic="V")) == 1
    finally:
        await server.stop()


async def test_without_tls_a_development_ca_is_generated(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    server = await start_server(tmp_path, None)
    try:
        listener = tesla(server)
        assert listener.dev_pki_dir == tmp_path / "data" / "tesla-dev-ca"
        assert listener.health()["tls"] == "development"
        # A vehicle certificate issued by that development CA is accepted.
        pki = init_pki(listener.dev_pki_dir, vins=[VIN])
        cert, key = pki.vehicles[VIN]
        context = client_ssl_context(cert, key, pki.ca_cert)
        async with await connect(url(server), ssl=context, open_timeout=TIMEOUT) as ws:
            await ws.send(stream_frame())
            assert (await receive(ws)).message_type == MESSAGE_STREAM_ACK
    finally:
        await server.stop()


async def test_new_user_flow_certs_init_serve_sim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    vins = ["5YJ3E1EA7KF000001", "5YJ3E1EA7KF000002", "5YJ3E1EA7KF000003"]
    args = ["certs", "init", "--out", str(out), "--host", "localhost"]
    for vin in vins:
        args += ["--vin", vin]
    assert main(args) == 0
    printed = capsys.readouterr().out
    snippet = json.loads(printed[printed.index("{") : printed.index("}\n}") + 3])

    server = await start_server(tmp_path, None, tls=snippet["tls"])
    try:
        settings = TeslaSimSettings(
            url=url(server),
            ca=out / "ca.crt",
            credentials=credentials_from_dir(out / "vehicles"),
            vehicles=3,
            rate=0,
            duration_s=None,
            frames_per_vehicle=5,
            window=2,
            ack_timeout_s=TIMEOUT,
        )
        result = await run_simulation(settings)
        assert result.ok, result.summary()
        assert result.frames_acked == 15
        assert result.vins == set(vins)
        assert server.store is not None
        for vin in vins:
            assert len(await stored(server.store, vin, 5, topic="V")) == 5
    finally:
        await server.stop()


async def test_sim_reports_missing_acks(tmp_path: Path) -> None:
    """Against a server that never acks, the simulator's result is a failure."""
    pki = init_pki(tmp_path / "pki", vins=[VIN])
    NeverSink.release = asyncio.Event()
    server = await start_server(
        tmp_path,
        None,
        tls=pki.config_snippet()["tls"],
        records={"V": ["test-tesla-never"]},
        reliable_ack_sources={"V": "test-tesla-never"},
        ack_timeout_s=0.2,
    )
    try:
        settings = TeslaSimSettings(
            url=url(server),
            ca=pki.ca_cert,
            credentials=credentials_from_dir(pki.directory / "vehicles"),
            vehicles=1,
            rate=0,
            duration_s=None,
            frames_per_vehicle=2,
            window=2,
            ack_timeout_s=0.5,
        )
        result = await run_simulation(settings)
        assert not result.ok
        assert result.missing_acks == 2
    finally:
        NeverSink.release.set()
        await server.stop()
