"""README "Many machines", run as written: a node writing to Kafka on 127.0.0.1:9092 with
commands through the Redis on 127.0.0.1:6379, simulated trackers, and ``fleetgate consume``
reading every record back from the log.

The README assumes a Kafka and a Redis on their standard ports: this test starts a
Kafka-protocol broker (Tansu) on 9092 and uses the machine's shared Redis; the README's
fixed ports must be free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.services import (
    ManagedProcess,
    ServiceUnavailableError,
    shared_service,
    tansu_binary,
)
from tests.readme import README, readme_workdir, sh_lines

# Fixed ports: such tests take turns (tests/conftest.py), so the wait counts in the timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.fixed_ports, pytest.mark.timeout(300)]

HEADING = "### Many machines"
FIXED_PORTS = (5027, 8080, 9092)
TIMEOUT_S = 120


def node_json() -> dict[str, object]:
    text = README.read_text()
    start = text.index(f"\n{HEADING}\n")
    block = re.search(r"`node.json`:\n\n```json\n(.*?)```", text[start:], re.S)
    assert block is not None
    parsed: dict[str, object] = json.loads(block.group(1))
    return parsed


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def kafka_on_9092(tmp_path: Path) -> Iterator[ManagedProcess]:
    readme_workdir(tmp_path, FIXED_PORTS)
    try:
        shared_service("redis")
        url = "tcp://127.0.0.1:9092"
        broker = ManagedProcess(
            "tansu",
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            9092,
            tmp_path,
        ).start()
    except ServiceUnavailableError as exc:
        unavailable(str(exc))
    try:
        yield broker
    finally:
        broker.kill()


def test_the_readme_scale_out_commands_as_written(
    tmp_path: Path, kafka_on_9092: ManagedProcess
) -> None:
    lines = sh_lines(HEADING)
    assert any(line.startswith(".venv/bin/fleetgate consume ") for line in lines)
    (tmp_path / "node.json").write_text(json.dumps(node_json()))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETGATE_")}
    script = "set -e\n" + "\n".join(lines) + "\nwait $NODE || true\n"
    process = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"{out}\n{err}"
    assert "records sent=15 acked=15" in out, out + err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    times: dict[str, list[str]] = {}
    for record in records:
        assert record["source"] == "teltonika" and record["topic"] == "position"
        times.setdefault(record["device_id"], []).append(record["created_at"])
    assert sorted(times) == [str(356307042441013 + index) for index in range(5)]
    assert all(len(found) == 3 and found == sorted(found) for found in times.values())
    assert "fleetgate consume: 15 records, 0 repeats dropped" in err
