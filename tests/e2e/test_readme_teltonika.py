"""The README's Teltonika parts, as written: the quick start run literally, and the sample
record that is what the server makes of the sample frame (not an invented position)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.records import parse_rfc3339_ms, record_dict
from tests.readme import README, port_open, readme_workdir, sh_lines

# Fixed ports: such tests take turns (tests/conftest.py), so the wait counts in the timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.fixed_ports, pytest.mark.timeout(300)]

PORTS = (8080, 5027)  # the API and the tracker port the quick start uses
TIMEOUT_S = 60
SAMPLE_TRACKER = "356307042441013"


def test_the_sample_record_is_the_record_of_the_sample_frame() -> None:
    text = README.read_text()
    (hex_frame,) = re.findall(r"fleetgate decode teltonika ([0-9a-f]+)", text)
    records = text[text.index("\n## Records\n") :]
    start = records.index("```json") + len("```json")
    shown = json.loads(records[start : records.index("```", start)])
    raw = bytes.fromhex(hex_frame)
    decoded = decode_frame(raw)
    frame = AvlFrame(decoded.codec or 0, decoded.records, raw)
    received_at = parse_rfc3339_ms(shown["received_at"])
    (record,) = to_records(SAMPLE_TRACKER, frame, received_at)
    assert shown == json.loads(json.dumps(record_dict(record)))


def test_quick_start_for_a_teltonika_fleet_as_written(tmp_path: Path) -> None:
    readme_workdir(tmp_path, PORTS)
    lines = sh_lines("### Quick start for a Teltonika fleet")
    assert [line.split()[0] for line in lines] == [
        "echo",
        ".venv/bin/fleetgate",
        ".venv/bin/fleetgate",
        "TOKEN=$(.venv/bin/fleetgate",
        "curl",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    # The token line sets a variable the curl line uses: one shell runs both.
    steps = [lines[0], lines[1], lines[2], "\n".join(lines[3:])]
    outputs: list[str] = []
    server: subprocess.Popen[str] | None = None
    try:
        for step in steps:
            if step.endswith("&"):
                server = subprocess.Popen(
                    ["bash", "-c", step.removesuffix("&").strip()],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                deadline = time.monotonic() + TIMEOUT_S
                while not all(port_open(port) for port in PORTS):
                    assert server.poll() is None, server.communicate()[0]
                    assert time.monotonic() < deadline, "serve did not open its ports"
                    time.sleep(0.1)
                continue
            done = subprocess.run(
                ["bash", "-c", step],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            log = server.communicate(timeout=TIMEOUT_S)[0]
            assert server.returncode == 0, log
    assert "tesla ready" not in log  # a teltonika config opens no vehicle port
    assert re.search(r"records sent=(\d+) acked=\1 ", outputs[1]), outputs[1]
    latest = json.loads(outputs[2])
    assert (latest["source"], latest["device_id"], latest["topic"]) == (
        "teltonika",
        SAMPLE_TRACKER,
        "position",
    )
    assert {"latitude", "longitude", "io"} <= set(latest["data"])
