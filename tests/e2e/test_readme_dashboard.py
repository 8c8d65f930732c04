"""The README's token, API and ``/stream`` commands, run literally against ``fleetgate serve``
on the embedded defaults (ports moved to free ones) with a simulated tracker sending."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.sync.client import connect

from tests.e2e.test_cli import free_port, wait_port

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
FLEETGATE = f"{sys.executable} -m fleetgate"
IMEI = "356307042441013"


def section(title: str) -> str:
    """The README text under ``title`` up to the next heading of the same or a higher level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n") + 1
    level = title.split(maxsplit=1)[0]
    pattern = rf"\n#{{1,{len(level)}}} "
    found = re.search(pattern, text[start + len(title) :])
    return text[start : start + len(title) + found.start()] if found else text[start:]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def localised(command: str, api_port: int) -> str:
    """The README's command with this test's ports and interpreter."""
    return command.replace(".venv/bin/fleetgate", FLEETGATE).replace(
        "localhost:8080", f"127.0.0.1:{api_port}"
    )


def run_lines(lines: list[str], api_port: int, env: dict[str, str], cwd: Path) -> list[str]:
    """Run ``lines`` as one bash script; return each line's output (split by markers)."""
    script = []
    for number, line in enumerate(lines):
        script.append(f"printf '\\n@@{number}\\n'")
        script.append(localised(line, api_port))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = re.split(r"^@@\d+\n", result.stdout, flags=re.MULTILINE)[1:]
    assert len(outputs) == len(lines)
    return [output.strip() for output in outputs]


def _wait_for_records(api_port: int, secret_file: Path, wanted: int = 10) -> None:
    """Until the tracker has stored ``wanted`` records (signed with the server's own key)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if secret_file.exists():
            now = int(time.time())
            token = jwt.encode(
                {"sub": "test", "exp": now + 60, "scope": "read"}, secret_file.read_text().strip()
            )
            response = httpx.get(
                f"http://127.0.0.1:{api_port}/api/v1/devices/{IMEI}",
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 200 and response.json()["record_count"] >= wanted:
                return
        time.sleep(0.1)
    raise AssertionError("the simulated tracker's records never reached the store")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, str], Path]]:
    """``fleetgate serve`` on the embedded defaults (generated key) and a tracker sending."""
    tmp_path = tmp_path_factory.mktemp("readme")
    tracker_port, api_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETGATE_")}
    env.update(
        {
            "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
            "FLEETGATE_TELTONIKA__PORT": str(tracker_port),
            "FLEETGATE_API__PORT": str(api_port),
            "FLEETGATE_TESLA_ENABLED": "false",
        }
    )
    server = subprocess.Popen(
        [*FLEETGATE.split(), "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    sim = None
    try:
        wait_port(api_port, server)
        sim = subprocess.Popen(
            [
                *FLEETGATE.split(),
                "sim",
                "teltonika",
                "--port",
                str(tracker_port),
                "--devices",
                "1",
                "--rate",
                "5",
                "--duration",
                "120",
            ],
            stdout=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        _wait_for_records(api_port, tmp_path / "data" / "api-secret.key")
        yield api_port, env, tmp_path
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(30)
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
        assert server.returncode == 0, log
        # The sign-in link is logged on the embedded defaults.
        assert re.search(
            rf"sign-in link \(valid 12 h\): http://127\.0\.0\.1:{api_port}/#token=ey", log
        )


def test_readme_token_commands(served: tuple[int, dict[str, str], Path]) -> None:
    # In the server's directory: fleetgate token finds the key the server generated there.
    api_port, env, cwd = served
    [block] = shell_blocks(section("### Tokens"))
    lines = [line for line in block.splitlines() if line.strip()]
    outputs = run_lines(lines, api_port, env, cwd)
    token_line, devices, records, track, stream = outputs
    assert token_line == ""
    assert IMEI in [d["id"] for d in json.loads(devices)["devices"]]
    page = json.loads(records)
    assert len(page["records"]) == 3 and page["next"]
    assert all(set(r["data"]) <= {"speed", "latitude", "longitude"} for r in page["records"])
    feature = json.loads(track)
    assert feature["type"] == "Feature" and feature["properties"]["count"] > 0
    printed = [json.loads(line) for line in stream.splitlines()]
    assert len(printed) == 5
    assert {record["device_id"] for record in printed} == {IMEI}


def test_readme_try_it_api_commands(served: tuple[int, dict[str, str], Path]) -> None:
    api_port, env, cwd = served
    block = shell_blocks(section("## Try it"))[0]
    lines = [
        line.split("  #")[0] for line in block.splitlines() if "TOKEN" in line or "curl" in line
    ]
    outputs = run_lines(lines, api_port, env, cwd)
    assert json.loads(outputs[1])["devices"]
    assert len(json.loads(outputs[2])["records"]) == 5
    assert json.loads(outputs[3])["device_id"] == IMEI
    assert json.loads(outputs[4])["status"] == "ok"


def test_readme_node_environment_example(tmp_path: Path) -> None:
    [block] = shell_blocks(section("### The Node telemetry server's environment"))
    port = free_port()
    command = localised(block.strip(), port).replace("PORT=3001", f"PORT={port}")
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETGATE_")}
    env.update({"FLEETGATE_TELTONIKA__ENABLED": "false", "FLEETGATE_TESLA_ENABLED": "false"})
    server = subprocess.Popen(["bash", "-c", command], env=env, cwd=tmp_path)
    try:
        wait_port(port, server)
        secret = re.search(r"JWT_SECRET=(\S+)", block)
        assert secret is not None
        now = int(time.time())
        token = jwt.encode({"userId": "test-client", "iat": now, "exp": now + 60}, secret.group(1))
        with connect(f"ws://127.0.0.1:{port}/stream?token={token}") as websocket:
            assert json.loads(websocket.recv(10))["type"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert not (tmp_path / "data" / "api-secret.key").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
