"""The README's "Sending a command to a tracker", run literally as a new user would.

``serve`` on the embedded defaults; 50 simulated trackers over UDP, every datagram acked;
one of them again over TCP, lingering to answer commands; a token with the command scope;
``fleetgate command ... getinfo`` prints the simulated device's answer; the ``POST`` and the
``GET`` show the commands answered. The lingering tracker may connect after
``fleetgate command`` has queued the command: the command then waits for it, as the README
says, so the order of the two background starts does not matter.
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

PORTS = (8080, 5027)  # the API and the tracker port the README's commands use
TIMEOUT_S = 90
IMEI = "356307042441013"
SPLIT = "----- next command -----"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory laid out as the README assumes: ``.venv/bin/fleetgate`` at hand."""
    return readme_workdir(tmp_path / "work", PORTS)


def background(line: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", line.removesuffix("&").strip()],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_sending_a_command_as_the_readme_says(scratch: Path) -> None:
    lines = sh_lines("### Sending a command to a tracker")
    assert [line.split()[:3] for line in lines] == [
        [".venv/bin/fleetgate", "serve", "&"],
        [".venv/bin/fleetgate", "sim", "teltonika"],
        [".venv/bin/fleetgate", "sim", "teltonika"],
        ["TOKEN=$(.venv/bin/fleetgate", "token", "--sub"],
        [".venv/bin/fleetgate", "command", IMEI],
        ["curl", "-s", "-H"],
        ["curl", "-s", "-H"],
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("FLEETGATE_CONFIG", None)
    started: list[subprocess.Popen[str]] = []
    try:
        server = background(lines[0], scratch, env)
        started.append(server)
        deadline = time.monotonic() + TIMEOUT_S
        while not all(port_open(port) for port in PORTS):
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "serve did not open its ports"
            time.sleep(0.1)
        udp = subprocess.run(
            ["bash", "-c", lines[1]],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert udp.returncode == 0, udp.stdout + udp.stderr
        summary = re.search(r"records sent=(\d+) acked=(\d+)", udp.stdout)
        assert summary is not None, udp.stdout
        assert int(summary[1]) == int(summary[2]) >= 50
        assert lines[2].endswith("&")
        started.append(background(lines[2], scratch, env))
        # The token sets a shell variable the next lines use: one shell runs them, with a
        # marker between their outputs.
        script = f"set -e\n{lines[3]}\n" + "".join(
            f"{line}\necho\necho '{SPLIT}'\n" for line in lines[4:]
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert server.poll() is None, "serve exited early:\n" + server.communicate()[0]
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for process in reversed(started):
            os.killpg(process.pid, signal.SIGTERM)
        logs = [process.communicate(timeout=TIMEOUT_S)[0] for process in started]
    assert started[0].returncode == 0, logs[0]

    answer, posted, listed, _ = done.stdout.split(f"\n{SPLIT}\n")
    assert answer.startswith("INI:"), done.stdout + done.stderr
    assert re.search(r"GPS:1 SAT:\d+", answer)
    getver = json.loads(posted)
    assert (getver["status"], getver["device_id"]) == ("answered", IMEI)
    assert getver["response"].startswith("Ver:") and f"IMEI:{IMEI}" in getver["response"]
    commands = json.loads(listed)["commands"]
    assert [(c["command"], c["status"]) for c in commands] == [
        ("getver", "answered"),
        ("getinfo", "answered"),
    ]
    assert commands[1]["response"] == answer.strip()
