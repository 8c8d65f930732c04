"""The CLI as a new user runs it: serve, sim, decode, bad config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetgate.sim.embedded_broker import mosquitto_binary
from fleetgate.sim.load.procstats import tree_pids
from tests.e2e.test_supervisor_kill import running as process_running
from tests.ports import free_port
from tests.teltonika_vectors import vectors
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.e2e

FLEETGATE = [sys.executable, "-m", "fleetgate"]


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


def loopback_env(data_dir: Path, tracker_port: int, api_port: int) -> dict[str, str]:
    """The embedded defaults, moved to loopback and free ports by environment variables."""
    return {
        **os.environ,
        "FLEETGATE_DATA_DIR": str(data_dir),
        "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
        "FLEETGATE_TELTONIKA__PORT": str(tracker_port),
        "FLEETGATE_API__PORT": str(api_port),
        "FLEETGATE_TESLA_ENABLED": "false",
        "FLEETGATE_API__AUTH__SECRET": TEST_SECRET,
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``fleetgate serve`` on the embedded defaults, ports moved by environment variables."""
    tracker_port, api_port = free_port(), free_port()
    env = loopback_env(tmp_path / "data", tracker_port, api_port)
    process = subprocess.Popen([*FLEETGATE, "serve"], env=env, cwd=tmp_path)
    try:
        wait_port(tracker_port, process)
        wait_port(api_port, process)
        yield tracker_port, api_port
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_serve_then_sim_then_api(served: tuple[int, int]) -> None:
    tracker_port, api_port = served
    sim = subprocess.run(
        [*FLEETGATE, "sim", "teltonika", "--port", str(tracker_port), "--devices", "3",
         "--rate", "0", "--frames", "4", "--records-per-frame", "2", "--codec", "16"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert "records sent=24 acked=24" in sim.stdout
    devices = httpx.get(
        f"http://127.0.0.1:{api_port}/api/v1/devices", headers=bearer(make_token())
    ).json()["devices"]
    assert sorted(d["record_count"] for d in devices) == [8, 8, 8]
    health = httpx.get(f"http://127.0.0.1:{api_port}/health").json()
    assert health["status"] == "ok"
    metrics = httpx.get(f"http://127.0.0.1:{api_port}/metrics").text
    assert 'fleetgate_teltonika_handshakes_total{device="known",result="accepted"} 3.0' in metrics


def test_a_lingering_simulation_ends_on_sigterm_with_its_report(
    served: tuple[int, int],
) -> None:
    tracker_port, _api_port = served
    sim = subprocess.Popen(
        [*FLEETGATE, "sim", "teltonika", "--port", str(tracker_port), "--devices", "2",
         "--rate", "0", "--frames", "3", "--records-per-frame", "2", "--linger", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert sim.stdout is not None
        for line in sim.stdout:  # live progress lines until everything is acked
            if "total sent=12 acked=12" in line:
                break
        else:
            raise AssertionError(f"the simulation ended early: {sim.communicate()}")
        sim.send_signal(signal.SIGTERM)  # an hour of linger left
        out, err = sim.communicate(timeout=30)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert sim.returncode == 0, out + err
    assert "records sent=12 acked=12" in out
    assert "Traceback" not in err


def test_decode_prints_the_frame_as_json() -> None:
    vector = vectors()["doc-c8e-tcp-example"]
    result = subprocess.run(
        [*FLEETGATE, "decode", "teltonika", vector["hex"]],
        capture_output=True, text=True, timeout=60, check=True,
    )
    body = json.loads(result.stdout)
    assert body["codec"] == "8E"
    assert body["record_count"] == 1
    assert body["reply"] == "00000001"
    [record] = body["records"]
    assert record["time"] == "2019-06-10T11:36:32.000Z"
    assert record["io"]["16"] == 22949000


def test_decode_refuses_a_bad_crc_with_a_reason() -> None:
    frame = vectors()["doc-c8-tcp-example1"]["hex"]
    broken = frame[:-2] + ("00" if frame[-2:] != "00" else "11")
    result = subprocess.run(
        [*FLEETGATE, "decode", "teltonika", broken],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "crc mismatch" in result.stderr
    assert json.loads(result.stdout)["crc"]["ok"] is False


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"teltonika": {"port": -1}}, "teltonika.port"),
        ({"records": {"V": ["nosuchsink"]}}, "nosuchsink"),
    ],
)
def test_bad_config_is_one_line_and_exit_code_2(
    tmp_path: Path, config: dict[str, object], needle: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [*FLEETGATE, "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_decode_tesla_applies_the_servers_transforms() -> None:
    from fleetgate.protocols.tesla.envelope import build_stream_envelope
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

    payload = vd.Payload()
    datum = payload.data.add()
    datum.key = vd.Location
    datum.value.string_value = "(37.412374 S, 122.145867 E)"
    frame = build_stream_envelope(txid=b"t1", topic=b"V", payload=payload.SerializeToString())
    result = subprocess.run(
        [*FLEETGATE, "decode", "tesla", "--vin", "device-1", frame.hex()],
        capture_output=True, text=True, timeout=60, check=True,
    )
    body = json.loads(result.stdout)
    assert body["topic"] == "V"
    assert body["payload"]["vin"] == "device-1"
    assert body["data"]["Location"] == {"latitude": -37.412374, "longitude": 122.145867}


def test_demo_serves_and_the_api_shows_every_kind_of_device_at_once(tmp_path: Path) -> None:
    tracker_port, api_port, vehicle_port = free_port(), free_port(), free_port()
    env = loopback_env(tmp_path / "data", tracker_port, api_port)
    env.update({"FLEETGATE_TESLA_ENABLED": "true", "FLEETGATE_HOST": "127.0.0.1",
                "FLEETGATE_PORT": str(vehicle_port)})
    process = subprocess.Popen(
        [*FLEETGATE, "demo", "--devices", "3", "--rate", "5", "--vehicles", "2",
         "--gateways", "2"],
        env=env, cwd=tmp_path,
    )
    wanted = {"teltonika": 3, "tesla": 2, "mqtt": 2}
    try:
        wait_port(api_port, process)
        deadline = time.monotonic() + 30
        kinds: dict[str, list[dict[str, object]]] = {}
        while time.monotonic() < deadline:
            devices = httpx.get(
                f"http://127.0.0.1:{api_port}/api/v1/devices", headers=bearer(make_token())
            ).json()["devices"]
            kinds = {}
            for device in devices:
                if int(str(device["record_count"])) > 0:
                    kinds.setdefault(str(device["source"]), []).append(device)
            if {kind: len(found) for kind, found in kinds.items()} == wanted:
                break
            time.sleep(0.2)
        assert {kind: len(found) for kind, found in kinds.items()} == wanted
        imei = kinds["teltonika"][0]["id"]
        latest = httpx.get(
            f"http://127.0.0.1:{api_port}/api/v1/devices/{imei}/latest",
            headers=bearer(make_token()),
        ).json()
        assert latest["source"] == "teltonika"
        assert -90 <= latest["data"]["latitude"] <= 90
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_a_taken_port_is_one_line_and_exit_code_1(
    served: tuple[int, int], tmp_path: Path
) -> None:
    tracker_port, _api_port = served
    env = loopback_env(tmp_path / "second", tracker_port, free_port())
    result = subprocess.run(
        [*FLEETGATE, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_server_on_the_same_data_dir_is_refused_even_after_a_kill_9(
    tmp_path: Path,
) -> None:
    def serve() -> tuple[subprocess.Popen[bytes], int]:
        tracker_port, api_port = free_port(), free_port()
        env = loopback_env(tmp_path / "data", tracker_port, api_port)
        process = subprocess.Popen([*FLEETGATE, "serve"], env=env, cwd=tmp_path)
        wait_port(api_port, process)
        return process, tracker_port

    first, _port = serve()
    try:
        env = loopback_env(tmp_path / "data", free_port(), free_port())
        second = subprocess.run(
            [*FLEETGATE, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )
        assert second.returncode == 1
        assert f"is in use by another fleetgate process (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first server keeps running"
        first.send_signal(signal.SIGKILL)  # the kernel drops its lock: none is left stale
        first.wait(10)
        again, tracker_port = serve()
        try:
            sim = subprocess.run(
                [*FLEETGATE, "sim", "teltonika", "--port", str(tracker_port), "--devices", "1",
                 "--rate", "0", "--frames", "1"],
                capture_output=True, text=True, timeout=60, check=False,
            )
            assert sim.returncode == 0, sim.stdout + sim.stderr
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


def test_the_demo_broker_goes_with_a_demo_killed_with_sigkill(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (make install installs it)")
    tracker_port, api_port = free_port(), free_port()
    env = loopback_env(tmp_path / "data", tracker_port, api_port)
    process = subprocess.Popen(
        [*FLEETGATE, "demo", "--devices", "1", "--vehicles", "0", "--gateways", "1"],
        env=env, cwd=tmp_path,
    )
    brokers: list[int] = []
    try:
        wait_port(api_port, process)
        brokers = [pid for pid in tree_pids(process.pid)
                   if b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(brokers) == 1, "the demo runs its own mosquitto"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        # The kernel signals the broker when the demo dies (PR_SET_PDEATHSIG); bounded wait.
        deadline = time.monotonic() + 30
        while process_running(brokers[0]):
            assert time.monotonic() < deadline, "the broker outlived the demo"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in brokers:  # never leave an orphan behind, even when the test fails
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
