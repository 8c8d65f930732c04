"""One scale-out node measured: per-core throughput and per-connection memory.

Starts a Kafka-protocol broker (Tansu, memory-only) and one ``fleetgate serve`` node
configured as in ``docs/scale-out.md``, then drives it with ``fleetgate bench load`` and
prints what the capacity plan needs, as JSON lines:

* ``--mode throughput``: devices sending as fast as acks allow; acked records (frames)
  per second and the node's CPU seconds per second, so µs of node CPU per record;
* ``--mode idle``: many devices connected and nearly silent (one frame every
  ``--idle-interval`` s); the node's RSS before and with them, so bytes per connection;
* ``--mode connect``: devices that connect and stay quiet; the node's CPU
  seconds for the whole run per device (vehicles: the mutual-TLS handshake dominates), what
  a reconnect storm costs when a node goes away.

Profiles (``--profile``):

* ``stateless``: no spool, no store; a device is acked once Kafka has its records
  (``ack_policy`` ``["kafka"]``, ``acks=all``): the layout where a node can die at any time;
* ``spool``: acked once the local spool has the frame (fsync), Kafka fed from the spool.

Run: ``.venv/bin/python bench/scale_node.py --teltonika 1000 --seconds 15``
     ``.venv/bin/python bench/scale_node.py --mode idle --teltonika 10000``
     ``.venv/bin/python bench/scale_node.py --tesla 200 --seconds 15``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procstats import cpu_seconds, free_port, rss_mb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.services import tansu_server, wait_port  # noqa: E402

FLEETGATE = [sys.executable, "-m", "fleetgate"]
VIN = "5YJ3E1EA7KF000301"


def node_config(
    work: Path, profile: str, bootstrap: str, telt_port: int, tesla_port: int, api_port: int,
    tesla: bool, workers: int,
) -> Path:
    config: dict[str, Any] = {}
    path = work / "node.json"
    if tesla:
        # A development CA, the server certificate, one vehicle certificate (reused by every
        # simulated vehicle), and the tls section of the config.
        subprocess.run(
            [*FLEETGATE, "certs", "init", "--out", str(work / "pki"), "--vin", VIN,
             "--config", str(path)],
            check=True, capture_output=True,
        )
        config = json.loads(path.read_text())
        config.update({"host": "127.0.0.1", "port": tesla_port})
    config.update({
        "data_dir": str(work / "data"),
        "log_level": "warn",
        "workers": workers,
        "namespace": "bench",
        # Above the default cap (half the file descriptors) so 10,000 trackers fit.
        "teltonika": {"host": "127.0.0.1", "port": telt_port, "udp_enabled": False,
                      "max_connections": 15000},
        "records": {"*": ["kafka"]},
        "kafka": {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5},
        "api": {"host": "127.0.0.1", "port": api_port},
        "store": {"enabled": False},
    })
    if profile == "stateless":
        config.update({
            "ack_level": "receive",
            "ack_policy": {"teltonika": ["kafka"], "tesla": ["kafka"]},
            "spool": {"enabled": False},
        })
    path.write_text(json.dumps(config))
    return path


def load(args: argparse.Namespace, work: Path, telt: int, tesla: int, pid: int) -> dict[str, Any]:
    rate = 0.0
    if args.mode == "idle":
        rate = 1 / args.idle_interval
    elif args.mode == "connect":
        rate = 1 / 3600  # the first frame falls somewhere in the first hour: quiet
    argv = [
        *FLEETGATE, "bench", "load", "--json", "--server-pid", str(pid),
        "--teltonika", str(args.teltonika), "--tesla", str(args.tesla),
        "--rate", str(rate), "--duration", str(args.seconds), "--warmup", "2",
        "--processes", str(args.processes), "--teltonika-port", str(telt),
        "--records-per-frame", str(args.records_per_frame), "--connect-timeout", "120",
    ]
    if args.tesla:
        argv += ["--tesla-url", f"wss://127.0.0.1:{tesla}/", "--pki", str(work / "pki")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if not done.stdout.strip().startswith("{"):
        raise SystemExit(f"bench load failed:\n{done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("throughput", "idle", "connect"), default="throughput")
    parser.add_argument("--profile", choices=("stateless", "spool"), default="stateless")
    parser.add_argument("--teltonika", type=int, default=0)
    parser.add_argument("--tesla", type=int, default=0)
    parser.add_argument("--records-per-frame", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--idle-interval", type=float, default=60.0,
                        help="idle mode: seconds between a device's frames")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgate-scale-") as tmp:
        work = Path(tmp)
        broker = tansu_server(work).start()
        telt, tesla, api = free_port(), free_port(), free_port()
        config = node_config(work, args.profile, broker.info["bootstrap"], telt, tesla, api,
                             bool(args.tesla), args.workers)
        node = subprocess.Popen([*FLEETGATE, "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(api, timeout=60)
            if args.tesla:
                wait_port(tesla, timeout=60)
            time.sleep(1.0)
            idle_rss = rss_mb(node.pid)
            assert broker.proc is not None
            broker_cpu, started = cpu_seconds(broker.proc.pid), time.monotonic()
            node_cpu = cpu_seconds(node.pid)
            report = load(args, work, telt, tesla, node.pid)
            broker_cpu_per_s = (cpu_seconds(broker.proc.pid) - broker_cpu) / (
                time.monotonic() - started
            )
            node_cpu = cpu_seconds(node.pid) - node_cpu
            server = report["server"] or {}
            devices = args.teltonika + args.tesla
            result: dict[str, Any] = {
                "mode": args.mode, "profile": args.profile, "workers": args.workers,
                "idle_rss_mib": round(idle_rss, 1), "rss_mib": server.get("rss_mib"),
                "cpu_per_s": server.get("cpu_per_s"),
                "generator_cpu_per_s": report["generator"]["cpu_per_s"],
                # The broker runs on the same cores (whole run, connect and drain included).
                "broker_cpu_per_s": round(broker_cpu_per_s, 3),
            }
            for name, protocol in report["protocols"].items():
                acked = protocol["acked_per_s"]
                result[name] = {
                    "devices": protocol["devices"], "connected": protocol["connected"],
                    "acked_per_s": acked, "unit": protocol["unit"],
                    "latency_ms": protocol["latency_ms"], "errors": protocol["errors"],
                }
            cpu = server.get("cpu_per_s") or 0.0
            total = sum(p["acked_per_s"] for p in report["protocols"].values())
            if args.mode == "throughput" and total:
                result["node_cpu_us_per_unit"] = round(cpu / total * 1e6, 1)
            if args.mode == "idle" and devices and server.get("rss_mib"):
                result["bytes_per_connection"] = round(
                    (server["rss_mib"] - idle_rss) * 1024 * 1024 / devices
                )
            if args.mode == "connect" and devices:
                result["node_cpu_ms_per_connection"] = round(node_cpu / devices * 1000, 2)
            print(json.dumps(result))
        finally:
            node.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(30)
            if node.poll() is None:
                node.kill()
            broker.destroy()


if __name__ == "__main__":
    main()
