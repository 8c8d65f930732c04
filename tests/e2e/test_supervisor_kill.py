"""``kill -9`` of the supervisor: its workers stop by themselves and free the ports."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_workers import DEVICES, FLEETGATE, Served, env_for, free_port

pytestmark = pytest.mark.e2e

# Bounded waits: a worker notices at once (PR_SET_PDEATHSIG) and drains in a few seconds.
GONE_WITHIN_S = 30.0


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaps yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state and "dead" not in state


def start(tmp_path: Path, tracker_port: int, api_port: int, name: str) -> Served:
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*FLEETGATE, "serve", "--workers", "2"],
            env=env_for(tmp_path, tracker_port, api_port),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Served(process, log_path, tracker_port, api_port)


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    tracker_port, api_port = free_port(), free_port()
    first = start(tmp_path, tracker_port, api_port, "first")
    second: Served | None = None
    workers: list[int] = []
    try:
        ready = first.wait_for(lambda entry: entry["msg"] == "2 workers ready")
        workers = ready["pids"]
        assert all(running(pid) for pid in workers)

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)

        deadline = time.monotonic() + GONE_WITHIN_S
        while any(running(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
        # They stopped as on SIGTERM: each drained and said so.
        stopped = [entry for entry in first.lines() if entry["msg"] == "shutting down"]
        assert sorted(entry["worker"] for entry in stopped) == [0, 1]

        # A new server takes the same device and API ports.
        second = start(tmp_path, tracker_port, api_port, "second")
        second.wait_for(lambda entry: entry["msg"] == "2 workers ready")
        output = second.sim(DEVICES, 356307042443013)
        assert f"records sent={DEVICES * 4} acked={DEVICES * 4}" in output
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(60) == 0
    finally:
        for served in (first, second):
            if served is not None and served.process.poll() is None:
                served.process.kill()
                served.process.wait(10)
        for pid in workers:  # never leave an orphan behind, even when the test fails
            if running(pid):
                os.kill(pid, signal.SIGKILL)
