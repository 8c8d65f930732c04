"""``run_load`` against a real ``fleetgate serve`` on loopback, all three protocols at once.

fleetgate runs as its own process (default ack level: the spool; the store catches up),
its CAN-gateway subscriber on a private mosquitto. Two generator processes drive a few
trackers, vehicles (more vehicles than certificates: VINs are shared) and gateways at a
moderate rate. The report's counts must agree with each other and with what fleetgate
stored, read back through its API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.pki import DevPki, init_pki
from fleetgate.sim.load import LoadRunError, LoadSettings, run_load
from fleetgate.sim.load.stats import ERRORS
from tests.integration.services import (
    ManagedProcess,
    ServiceUnavailableError,
    free_port,
    wait_port,
)

pytestmark = pytest.mark.integration

VINS = ("5YJ3E1EA7KF000101", "5YJ3E1EA7KF000102")


class Served:
    def __init__(self, process: subprocess.Popen[bytes], ports: dict[str, int], root: str) -> None:
        self.process = process
        self.ports = ports
        self.root = root  # the gateways' topic root, this test's own


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return init_pki(tmp_path / "pki", host="localhost", vins=VINS)


@pytest.fixture
def served(tmp_path: Path, pki: DevPki, private_mosquitto: ManagedProcess) -> Iterator[Served]:
    ports = {"teltonika": free_port(), "tesla": free_port(), "api": free_port()}
    root = f"fgt-load-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "log_level": "warn",
                "teltonika": {
                    "host": "127.0.0.1",
                    "port": ports["teltonika"],
                    "udp_enabled": False,
                },
                "host": "127.0.0.1",
                "port": ports["tesla"],
                **pki.config_snippet(),
                # The stored counts are read through the API without a token here.
                "api": {"host": "127.0.0.1", "port": ports["api"], "auth": {"enabled": False}},
                "mqtt_ingest": {
                    "url": f"mqtt://127.0.0.1:{private_mosquitto.port}",
                    "client_id": f"{root}-ingest",
                    "topics": [f"{root}/+/#"],
                    "topic_root": root,
                },
            }
        )
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for port in ports.values():
            try:
                wait_port(port, process, timeout=60)
            except ServiceUnavailableError as exc:
                pytest.fail(f"fleetgate serve did not start: {exc}\n{log.read_text()}")
        ports["broker"] = private_mosquitto.port
        yield Served(process, ports, root)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def settings_for(served: Served, pki: DevPki, **overrides: object) -> LoadSettings:
    ports = served.ports
    settings = LoadSettings(
        teltonika=6,
        tesla=3,
        gateways=3,
        rate=20,
        duration_s=1.5,
        warmup_s=0.5,
        processes=2,
        teltonika_port=ports["teltonika"],
        tesla_url=f"wss://127.0.0.1:{ports['tesla']}/",
        broker=f"mqtt://127.0.0.1:{ports['broker']}",
        topic_root=served.root,
        ca=str(pki.ca_cert),
        cert_dir=str(pki.directory / "vehicles"),
        records_per_frame=5,
        tesla_window=4,
        gateway_window=4,
        api=f"http://127.0.0.1:{ports['api']}",
        server_pid=served.process.pid,
        settle_s=30,
        connect_timeout_s=20,
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


def test_all_three_protocols_acked_and_stored(served: Served, pki: DevPki) -> None:
    lines: list[str] = []
    report = run_load(settings_for(served, pki), lines.append)

    assert set(report.protocols) == {"teltonika", "tesla", "gateways"}
    for name, snap in report.protocols.items():
        totals, window = snap.totals, snap.window
        assert snap.connected == snap.devices, (name, snap.first_error)
        assert {error: totals[error] for error in ERRORS} == dict.fromkeys(ERRORS, 0), name
        assert 0 < totals["acked_frames"] <= totals["sent_frames"], name
        assert totals["acked_records"] <= totals["sent_records"], name
        # The drain waited for every frame in flight.
        assert totals["acked_frames"] == totals["sent_frames"], name
        assert 0 < window["acked_frames"] <= totals["acked_frames"], name
        histogram = snap.histogram()
        assert histogram.total >= window["acked_frames"] > 0
        assert 0 < histogram.value_at(50) <= histogram.value_at(99) <= histogram.value_at(99.9)
        assert histogram.value_at(99.9) <= histogram.max
    telt = report.protocols["teltonika"]
    assert telt.totals["acked_records"] == telt.totals["acked_frames"] * 5
    # At 20 frames/s per device for 1.5 s: no more than the schedule allows (plus one
    # interval of slack for the start spread and timer granularity).
    assert report.protocols["tesla"].window["sent_frames"] <= 3 * 20 * (1.5 + 0.1)

    # What fleetgate stored, through its API, equals what it acked (the gateways: what
    # the broker acked, all of which reached fleetgate at this rate).
    assert report.stored_caught_up is True, report.stored
    assert report.stored == {
        "teltonika": telt.totals["acked_records"],
        "tesla": report.protocols["tesla"].totals["acked_frames"],
        "gateways": report.protocols["gateways"].totals["acked_frames"],
    }
    assert report.server is not None and report.server.pid == served.process.pid
    assert report.server.cpu_per_s > 0 and report.server.rss_bytes > 10 * 1024 * 1024
    assert report.generator_processes == 2 and report.generator_cpu_per_s > 0
    assert any("teltonika" in line and "rec/s" in line for line in lines)
    as_json = report.to_json()
    assert as_json["protocols"]["tesla"]["stored"] == report.stored["tesla"]
    assert as_json["errors"] == 0


def test_a_server_that_is_not_there_stops_the_run_with_a_clear_error(pki: DevPki) -> None:
    settings = LoadSettings(teltonika=1, teltonika_port=free_port(), connect_timeout_s=0.5)
    with pytest.raises(LoadRunError, match=r"nothing accepts connections on 127\.0\.0\.1"):
        run_load(settings)
