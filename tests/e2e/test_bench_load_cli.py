"""``fleetgate bench load`` as a user runs it: against the ceiling server (``--json``), with
bad options, and the README's load-testing commands literally against ``fleetgate serve``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.pki import init_pki
from tests.integration.services import free_port
from tests.readme import readme_workdir, sh_lines

# Fixed ports: such tests take turns (tests/conftest.py), so the wait counts in the timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.fixed_ports, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
FLEETGATE = [sys.executable, "-m", "fleetgate"]
README_PORTS = (5027, 4443, 8080)  # what the README's serve listens on
TIMEOUT_S = 120


class Ceiling:
    def __init__(self, process: subprocess.Popen[str], pki: Path, telt: int, tesla: int) -> None:
        self.process, self.pki, self.teltonika_port, self.tesla_port = process, pki, telt, tesla


@pytest.fixture
def ceiling(tmp_path: Path) -> Iterator[Ceiling]:
    pki = init_pki(tmp_path / "pki", vins=["5YJ3E1EA7KF000201"]).directory
    telt, tesla = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "ceiling_server.py"),
            "--pki",
            str(pki),
            "--teltonika-port",
            str(telt),
            "--tesla-port",
            str(tesla),
            "--tesla-impl",
            "picows",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().endswith("ready\n")
        yield Ceiling(process, pki, telt, tesla)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_json_report_against_the_ceiling_server(ceiling: Ceiling) -> None:
    done = subprocess.run(
        [
            *FLEETGATE,
            "bench",
            "load",
            "--teltonika",
            "4",
            "--tesla",
            "2",
            "--rate",
            "50",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--processes",
            "2",
            "--records-per-frame",
            "7",
            "--teltonika-port",
            str(ceiling.teltonika_port),
            "--tesla-url",
            f"wss://127.0.0.1:{ceiling.tesla_port}/",
            "--pki",
            str(ceiling.pki),
            "--server-pid",
            str(ceiling.process.pid),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # Not a terminal: one progress line per second, appended.
    assert re.search(r"^t=\s+\d+s\s+teltonika\s+[\d,]+ rec/s\s+tesla", done.stderr, re.M)
    assert report["errors"] == 0 and report["generator"]["processes"] == 2
    telt, tesla = report["protocols"]["teltonika"], report["protocols"]["tesla"]
    assert (telt["connected"], tesla["connected"]) == (4, 2)
    # The ceiling server acks each frame with the count from its header, and each Tesla
    # frame with the ack of its own txid: every frame sent was acked, none twice.
    for protocol in (telt, tesla):
        totals = protocol["totals"]
        assert totals["acked_frames"] == totals["sent_frames"] > 0
        assert protocol["latency_ms"]["count"] > 0
        latency = protocol["latency_ms"]
        assert latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
        assert protocol["stored"] is None
    assert telt["totals"]["acked_records"] == 7 * telt["totals"]["acked_frames"]
    assert telt["unit"] == "records" and tesla["unit"] == "frames"
    # 50 frames/s per device over a 1 s window.
    assert 0 < tesla["acked_per_s"] <= 2 * 50 * 1.2
    assert report["server"]["pid"] == ceiling.process.pid and report["server"]["rss_mib"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no devices"),
        (["--tesla", "1"], "Tesla vehicles need certificates"),
        (["--teltonika", "1", "--codec", "9"], "--codec must be one of"),
        (["--gateways", "1", "--broker", "http://x"], "--broker: url must start with mqtt://"),
        (["--teltonika", "1", "--server-pid", "999999999"], "no such process"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*FLEETGATE, "bench", "load", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_readme_load_test_as_written(tmp_path: Path) -> None:
    readme_workdir(tmp_path, README_PORTS)
    lines = sh_lines("### Load testing")
    assert any(line.startswith(".venv/bin/fleetgate bench load ") for line in lines)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETGATE_")}
    # One shell, as a user types them (the server started with & is killed by the last line).
    script = "set -e\n" + "\n".join(lines) + "\nwait $SERVER || true\n"
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the script is left
    assert process.returncode == 0, f"{out}\n{err}"
    figures = re.search(r"teltonika\s+200/200\s+([\d,]+) records/s", out)
    assert figures is not None and int(figures[1].replace(",", "")) > 0, out
    assert re.search(r"tesla\s+10/10\s+[\d,]+ frames/s", out), out
    stored = re.search(
        r"stored \(API, caught up after [\d.]+ s\): teltonika ([\d,]+) of ([\d,]+) acked; "
        r"tesla ([\d,]+) of ([\d,]+) acked",
        out,
    )
    assert stored is not None, out
    assert stored[1] == stored[2] and stored[3] == stored[4]
    assert re.search(r"server pid \d+ \(1 process\(es\)\): [\d.]+ CPU-s per s, RSS \d+ MiB", out)
