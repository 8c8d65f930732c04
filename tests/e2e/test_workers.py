"""``fleetgate serve --workers 2``: two processes on one port, one store, summed metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.e2e

FLEETGATE = [sys.executable, "-m", "fleetgate"]
# SO_REUSEPORT spreads connections by a hash of the address pair: with 24 trackers the
# chance that all land on one of two workers is 2 x 2^-24.
DEVICES = 24


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log_path: Path
    tracker_port: int
    api_port: int

    def lines(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [entry for entry in self.lines() if predicate(entry)]
            if found:
                return found[-1]
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}")
            time.sleep(0.05)
        raise AssertionError("log line never appeared:\n" + self.log_path.read_text())

    def sim(self, devices: int, first_imei: int) -> str:
        result = subprocess.run(
            [*FLEETGATE, "sim", "teltonika", "--port", str(self.tracker_port),
             "--devices", str(devices), "--first-imei", str(first_imei), "--rate", "0",
             "--frames", "2", "--records-per-frame", "2"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


def env_for(tmp_path: Path, tracker_port: int, api_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
        "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
        "FLEETGATE_TELTONIKA__PORT": str(tracker_port),
        "FLEETGATE_API__PORT": str(api_port),
        "FLEETGATE_TESLA_ENABLED": "false",
        "FLEETGATE_JSON_LOG_ENABLE": "true",
        "FLEETGATE_API__AUTH__SECRET": TEST_SECRET,
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    tracker_port, api_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*FLEETGATE, "serve", "--workers", "2"],
            env=env_for(tmp_path, tracker_port, api_port), cwd=tmp_path,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = Served(process, log_path, tracker_port, api_port)
    try:
        server.wait_for(lambda entry: entry["msg"] == "2 workers ready")
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_two_workers_share_the_port_the_store_and_the_metrics(served: Served) -> None:
    output = served.sim(DEVICES, 356307042441013)
    assert f"records sent={DEVICES * 4} acked={DEVICES * 4}" in output

    # Both workers took connections: the kernel spread them over the two processes.
    connected = [entry for entry in served.lines() if entry["msg"] == "tracker connected"]
    assert len(connected) == DEVICES
    assert {entry["worker"] for entry in connected} == {0, 1}

    # The API (worker 0) lists the devices worker 1 wrote too: one shared store.
    api = f"http://127.0.0.1:{served.api_port}"
    devices = httpx.get(f"{api}/api/v1/devices", headers=bearer(make_token())).json()["devices"]
    assert len(devices) == DEVICES
    assert {device["record_count"] for device in devices} == {4}
    imeis_by_worker = {entry["imei"] for entry in connected if entry["worker"] == 1}
    assert imeis_by_worker <= {device["id"] for device in devices}

    health = httpx.get(f"{api}/health").json()
    assert health["status"] == "ok"
    assert health["workers"] == 2
    metrics = httpx.get(f"{api}/metrics").text
    assert (
        f'fleetgate_teltonika_handshakes_total{{device="known",result="accepted"}} {DEVICES}.0'
        in metrics
    )
    assert 'fleetgate_sink_published_total{sink="sqlite"} ' + f"{DEVICES * 4}.0" in metrics
    assert 'fleetgate_open_connections{protocol="teltonika"} 0.0' in metrics

    metrics_dir = served.wait_for(lambda entry: entry["msg"] == "starting 2 workers")[
        "metrics_dir"
    ]
    assert Path(metrics_dir).is_dir()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    stopped = [entry for entry in served.lines() if entry["msg"] == "shutting down"]
    assert sorted(entry["worker"] for entry in stopped) == [0, 1]
    assert not Path(metrics_dir).exists()


def ready_lines(served: Served, worker: int) -> list[dict[str, Any]]:
    return [
        entry for entry in served.lines()
        if entry["msg"].startswith("teltonika ready") and entry.get("worker") == worker
    ]


def test_a_worker_that_dies_is_restarted(served: Served) -> None:
    ready = served.wait_for(lambda entry: entry["msg"] == "2 workers ready")
    victim = ready["pids"][1]
    os.kill(victim, signal.SIGKILL)
    died = served.wait_for(lambda entry: entry["msg"].startswith("worker 1 exited unexpectedly"))
    assert died["pid"] == victim
    assert died["exit_code"] == -signal.SIGKILL
    restarted = served.wait_for(lambda entry: entry["msg"] == "restarted worker 1")
    assert restarted["pid"] != victim
    # The replacement is listening once it logs its own "ready" line (the second from a
    # worker 1).
    deadline = time.monotonic() + 60
    while len(ready_lines(served, worker=1)) < 2:
        assert time.monotonic() < deadline, served.log_path.read_text()
        time.sleep(0.05)
    output = served.sim(DEVICES, 356307042442013)
    assert f"records sent={DEVICES * 4} acked={DEVICES * 4}" in output
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0


def test_workers_need_fixed_device_ports(tmp_path: Path) -> None:
    env = env_for(tmp_path, 0, free_port())
    result = subprocess.run(
        [*FLEETGATE, "serve", "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "teltonika.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_0_in_the_config_runs_one_worker_per_core(tmp_path: Path) -> None:
    """``"workers": 0``: one worker per core the process may run on, each with its own
    spool and store file, one API that reads them all, one /metrics summing them."""
    cores = len(os.sched_getaffinity(0))
    tracker_port, api_port = free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"workers": 0}))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*FLEETGATE, "serve", "--config", str(config)],
            env=env_for(tmp_path, tracker_port, api_port), cwd=tmp_path,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    served = Served(process, log_path, tracker_port, api_port)
    try:
        if cores > 1:
            ready = served.wait_for(lambda entry: entry["msg"] == f"{cores} workers ready")
            assert len(ready["pids"]) == cores
        else:
            served.wait_for(lambda entry: entry["msg"].startswith("api ready"))
        output = served.sim(DEVICES, 356307042444013)
        assert f"records sent={DEVICES * 4} acked={DEVICES * 4}" in output

        connected = [entry for entry in served.lines() if entry["msg"] == "tracker connected"]
        assert {entry.get("worker", 0) for entry in connected} <= set(range(cores))
        data = tmp_path / "data"
        spools = sorted(path.name for path in data.iterdir() if path.name.startswith("spool"))
        stores = sorted(path.name for path in data.glob("fleetgate*.db"))
        assert spools == ["spool"] + [f"spool.w{index}" for index in range(1, cores)]
        assert stores == ["fleetgate.db"] + [f"fleetgate.w{index}.db" for index in range(1, cores)]

        api = f"http://127.0.0.1:{api_port}"
        devices = httpx.get(f"{api}/api/v1/devices", headers=bearer(make_token())).json()
        assert len(devices["devices"]) == DEVICES
        assert httpx.get(f"{api}/health").json()["workers"] == cores
        metrics = httpx.get(f"{api}/metrics").text
        assert 'fleetgate_sink_published_total{sink="sqlite"} ' + f"{DEVICES * 4}.0" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_command_reaches_a_tracker_held_by_another_worker_through_redis(
    tmp_path: Path,
) -> None:
    """With ``teltonika.command_routing`` the API (worker 0) reaches every worker's trackers."""
    from tests.e2e.test_scale_out import service
    from tests.integration.services import redis_server

    redis = service(lambda base: redis_server(base, durable=False), tmp_path)
    tracker_port, api_port = free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "teltonika": {"command_routing": {"url": f"redis://127.0.0.1:{redis.port}/0"}},
    }))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*FLEETGATE, "serve", "--workers", "2", "--config", str(config)],
            env=env_for(tmp_path, tracker_port, api_port), cwd=tmp_path,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    served = Served(process, log_path, tracker_port, api_port)
    sim: subprocess.Popen[str] | None = None
    try:
        served.wait_for(lambda entry: entry["msg"] == "2 workers ready")
        sim = subprocess.Popen(
            [*FLEETGATE, "sim", "teltonika", "--port", str(tracker_port), "--devices",
             str(DEVICES), "--first-imei", "356307042445013", "--frames", "1", "--rate", "0",
             "--linger", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        held = served.wait_for(
            lambda entry: entry["msg"] == "tracker connected" and entry.get("worker") == 1
        )
        token = make_token(scope="command read")
        result = subprocess.run(
            [*FLEETGATE, "command", held["imei"], "getinfo", "--url",
             f"http://127.0.0.1:{api_port}", "--token", token, "--json", "--timeout", "20"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        view = json.loads(result.stdout)
        assert view["status"] == "answered" and view["response"].startswith("INI:")
        answered = served.wait_for(lambda entry: entry["msg"] == "teltonika command answered")
        assert answered["worker"] == 1  # sent and answered by the worker holding the tracker
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if sim is not None:
            sim.kill()
            sim.communicate()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        redis.destroy()
