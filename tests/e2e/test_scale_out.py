"""Scale-out on one machine: three fleetgate nodes, one log, commands through Redis.

Three ``fleetgate serve`` processes on their own ports share one record log, a
Kafka-protocol broker (Tansu) or NATS JetStream (acks wait for the log), and Redis for
command routing; /stream of node 1 reads the log. Simulated trackers are spread over the nodes with failover (as
trackers with backup servers, or behind a TCP load balancer). Node 3 is killed with
SIGKILL while they send: its trackers reconnect to another node and send the frame that
had no ack again. Then:

* every tracker's frames were acked, and ``fleetgate consume`` reads every record back
  from the log, each device's in the order it sent them (a frame resent after the kill may
  be there twice, right after itself: at least once, never out of order);
* node 1's /stream showed the records of devices held by the other nodes;
* a command through node 1's API reached a tracker held by node 2, and one through node
  2's API a tracker that moved from the killed node 3 to node 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.services import (
    ManagedProcess,
    ServiceUnavailableError,
    free_port,
    nats_server,
    redis_server,
    tansu_server,
)
from tests.tokens import TEST_SECRET, make_token

pytestmark = pytest.mark.e2e

FLEETGATE = [sys.executable, "-m", "fleetgate"]
NAMESPACE = "scale"
DEVICES = 12
FRAMES = 40
RATE = 8.0  # records per second per tracker: 5 s of sending
FIRST_IMEI = 356307042451000


def wait_stream_client(api_port: int, timeout: float = 60) -> None:
    """Until the node's /metrics counts a connected /stream client."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=10) as r:
            if b"\nfleetgate_stream_clients 1.0\n" in r.read():
                return
        time.sleep(0.05)
    raise AssertionError("the /stream client never connected")


@dataclass
class Node:
    name: str
    tracker_port: int
    api_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def entries(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(entry) for entry in self.entries()):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        # Where it is stuck: faulthandler prints every thread's stack on SIGABRT.
        self.process.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        raise AssertionError(f"{self.name}: never logged it:\n{self.log_path.read_text()}")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def service(factory: Callable[[Path], ManagedProcess], base: Path) -> ManagedProcess:
    try:
        return factory(base).start()
    except ServiceUnavailableError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(params=["kafka", "nats"])
def backends(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, ManagedProcess, ManagedProcess]]:
    kind: str = request.param
    log = service(tansu_server if kind == "kafka" else nats_server, tmp_path)
    redis = service(lambda base: redis_server(base, durable=False), tmp_path)
    try:
        yield kind, log, redis
    finally:
        log.destroy()
        redis.destroy()


def log_settings(kind: str, log: ManagedProcess) -> dict[str, Any]:
    """The node config's log: Kafka (acks=all) or NATS JetStream, acked once it has them."""
    if kind == "kafka":
        return {"kafka": {"bootstrap.servers": log.info["bootstrap"], "acks": "all",
                          "linger.ms": 2}}
    return {"nats": {"servers": [f"nats://127.0.0.1:{log.port}"]}}


def node_config(
    tmp_path: Path, index: int, kind: str, log: dict[str, Any], redis_url: str, prefix: str
) -> tuple[Path, int, int]:
    tracker_port, api_port = free_port(), free_port()
    config = {
        "data_dir": str(tmp_path / f"node{index}"),
        "node_id": f"node{index}",
        "json_log_enable": True,
        "namespace": NAMESPACE,
        "teltonika": {
            "host": "127.0.0.1",
            "port": tracker_port,
            "udp_enabled": False,
            "command_routing": {"url": redis_url, "key_prefix": prefix},
        },
        "records": {"*": [kind]},
        **log,
        # Stateless nodes: a tracker is acked once the log has its records.
        "ack_level": "receive",
        "ack_policy": {"teltonika": [kind]},
        "spool": {"enabled": False},
        "store": {"enabled": False},
        "api": {
            "host": "127.0.0.1",
            "port": api_port,
            "auth": {"secret": TEST_SECRET},
            "stream": {"source": kind},
        },
    }
    path = tmp_path / f"node{index}.json"
    path.write_text(json.dumps(config))
    return path, tracker_port, api_port


def start_node(tmp_path: Path, index: int, config: Path, tracker: int, api: int) -> Node:
    log_path = tmp_path / f"node{index}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*FLEETGATE, "serve", "--config", str(config)],
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            # A node that hangs is made to print every thread's stack (wait_for).
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    return Node(f"node{index}", tracker, api, process, log_path)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETGATE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_three_nodes_one_log(
    tmp_path: Path, backends: tuple[str, ManagedProcess, ManagedProcess]
) -> None:
    kind, log, redis = backends
    settings = log_settings(kind, log)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    prefix = f"fleetgate-test:{uuid.uuid4().hex[:8]}"
    configs = [
        node_config(tmp_path, i, kind, settings, redis_url, prefix) for i in (1, 2, 3)
    ]
    nodes = [start_node(tmp_path, i, *configs[i - 1]) for i in (1, 2, 3)]
    stream: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[str] | None = None
    try:
        for node in nodes:
            node.wait_for(lambda entry: entry["msg"].startswith("api ready"))
        node1, node2, node3 = nodes
        token = make_token(scope="read stream command")

        # Node 1's /stream reads the log: it shows every node's trackers.
        # Into a file, followed until it shows the other nodes' trackers: a record count
        # could be reached by node 1's own trackers before a loaded node 3 sent any.
        streamed_path = tmp_path / "stream.jsonl"
        with streamed_path.open("wb") as streamed_file:
            stream = subprocess.Popen(
                [*FLEETGATE, "stream", "--url", f"ws://127.0.0.1:{node1.api_port}/stream",
                 "--token", token],
                stdout=streamed_file, stderr=subprocess.DEVNULL,
            )
        node1.wait_for(lambda entry: entry["msg"].startswith("stream source: /stream reads"))
        # Live records reach only a subscribed client: wait for it before any tracker sends
        # (its upgrade waits for the API application, built on the first such request).
        wait_stream_client(node1.api_port)

        servers = [arg for node in nodes for arg in ("--server", f"127.0.0.1:{node.tracker_port}")]
        sim = subprocess.Popen(
            [*FLEETGATE, "sim", "teltonika", *servers, "--devices", str(DEVICES),
             "--first-imei", str(FIRST_IMEI), "--frames", str(FRAMES), "--rate", str(RATE),
             "--duration", "0", "--linger", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # its progress lines as they come
        )
        # Tracker i starts on node (i % 3) + 1. Kill node 3 once its trackers are sending.
        node3.wait_for(lambda entry: entry["msg"] == "tracker connected")
        time.sleep(1.5)
        node3.process.send_signal(signal.SIGKILL)
        node3.process.wait(10)

        # Tracker 2 was on node 3; it moves to the next server, node 1.
        moved = str(FIRST_IMEI + 2)
        node1.wait_for(
            lambda entry: entry["msg"] == "tracker connected" and entry.get("imei") == moved
        )
        # A command through node 1 for tracker 1, held by node 2 all along.
        held_by_2 = str(FIRST_IMEI + 1)
        answer = run("command", held_by_2, "getinfo", "--url", node1.api, "--token", token,
                     "--json", "--timeout", "20")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        body = json.loads(answer.stdout)
        assert body["status"] == "answered"
        assert body["response"].startswith("INI:")
        # And through node 2 for the tracker that moved from the killed node to node 1.
        answer = run("command", moved, "getver", "--url", node2.api, "--token", token,
                     "--json", "--timeout", "20")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert json.loads(answer.stdout)["status"] == "answered"

        # The trackers stay (answering commands) until every frame is acked, then go.
        total = DEVICES * FRAMES
        assert sim.stdout is not None
        progress = ""
        for line in sim.stdout:
            progress += line
            if f"total sent={total} acked={total}" in line:
                break
        sim.send_signal(signal.SIGTERM)
        out, err = sim.communicate(timeout=60)
        out = progress + out
        assert f"records sent={total} acked={total}" in out, out + err
        assert "reconnects=" in out  # node 3's trackers moved
        assert sim.returncode == 0, out + err

        # Every acked record is in the log, each device's in the order it was sent.
        where = (
            ["--kafka", log.info["bootstrap"]] if kind == "kafka"
            else ["--nats", f"nats://127.0.0.1:{log.port}"]
        )
        consumed = run("consume", *where, "--namespace", NAMESPACE, "--from-beginning",
                       "--idle-exit", "3", timeout=90)
        assert consumed.returncode == 0, consumed.stderr
        by_device: dict[str, list[str]] = {}
        for line in consumed.stdout.splitlines():
            record = json.loads(line)
            if record["topic"] == "position":
                by_device.setdefault(record["device_id"], []).append(record["created_at"])
        assert sorted(by_device) == [str(FIRST_IMEI + i) for i in range(DEVICES)]
        for device, times in by_device.items():
            assert times == sorted(times), f"{device}: out of order"
            assert len(set(times)) == FRAMES, f"{device}: {len(set(times))} of {FRAMES}"

        # Node 1's /stream saw trackers held by nodes 2 and 3 (through the log).
        wanted = {str(FIRST_IMEI + 1), str(FIRST_IMEI + 2)}
        deadline = time.monotonic() + 60
        devices_seen: set[str] = set()
        while not wanted <= devices_seen and time.monotonic() < deadline:
            time.sleep(0.2)
            complete_lines = streamed_path.read_text().split("\n")[:-1]
            devices_seen = {json.loads(line)["device_id"] for line in complete_lines}
        assert wanted <= devices_seen, sorted(devices_seen)
    finally:
        for process in (sim, stream):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        for node in nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
