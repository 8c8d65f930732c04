"""Ack latency and CPU per record, server configurations side by side, alternating.

Latency on a shared 2-core machine moves with the load, so one figure alone says little:
this runs ``fleetgate bench load`` (stop-and-wait trackers at a fixed rate) against each
*variant* in turn, round after round, with the ceiling server as the floor in the same
window, and prints every run with the machine's load average next to it.

A variant is ``ceiling`` (``bench/ceiling_server.py``), ``ceiling-durable`` (the same
server acking each frame only once a group commit has synced it to a file: the floor for
a durable ack on this disk) or ``NAME[@SRC]=JSON``: ``fleetgate
serve`` with ``JSON`` merged into a minimal config (Teltonika TCP only, API and Tesla off,
a fresh data_dir on the same disk as the checkout), its code from ``SRC`` (another tree's
``src``, for before/after runs; default this checkout). Examples::

    .venv/bin/python bench/ack_latency.py --trackers 1000 --rate 2 --duration 15 --rounds 2 \\
        --variant ceiling \\
        --variant 'receipt={"spool": {"enabled": false}, "store": {"enabled": false},
                            "ack_level": "receive"}' \\
        --variant 'spool-only={"store": {"enabled": false}}' \\
        --variant 'default={}' --variant 'before@/tmp/before/src={}'

``--json FILE`` also writes every run's figures. ``--load-nice 10`` runs the load generator
at a lower priority: on a 2-core machine it otherwise competes for the cores with the
server's event loop and its spool thread, whose waits for a core are part of every ack.

For fleetgate variants the last four columns come from the server's /metrics (scraped
from its monitoring port at the end of the run): from ``fleetgate_event_loop_lag_seconds``
the share of the loop's probe timers that ran more than 5 ms late and the bucket bound
under which 99 % of them ran (``-`` for a tree without the metric); from
``fleetgate_spool_commit_seconds`` how many group commits took over 10 ms (every ack
waiting on one waits that long) and the bucket bound of the slowest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procstats import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Variant:
    name: str
    source: Path | None  # another tree's src directory
    config: dict[str, Any] | None  # None: the ceiling server


def parse_variant(text: str) -> Variant:
    if text in ("ceiling", "ceiling-durable"):
        return Variant(text, None, None)
    name, _, config = text.partition("=")
    name, _, source = name.partition("@")
    return Variant(name, Path(source) if source else None, json.loads(config or "{}"))


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


LAG = "fleetgate_event_loop_lag_seconds"
COMMIT = "fleetgate_spool_commit_seconds"


def histograms(metrics_port: int, *names: str) -> dict[str, dict[float, float]]:
    """The cumulative buckets (bound -> count) of the named histograms on the server's
    /metrics; empty when it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found: dict[str, dict[float, float]] = {name: {} for name in names}
    for line in text.splitlines():
        name, _, rest = line.partition("_bucket{")
        if name in found:
            bound = rest.split('le="', 1)[1].split('"', 1)[0]
            found[name][float(bound)] = float(line.rsplit(" ", 1)[1])
    return found


def loop_lag(buckets: dict[float, float]) -> tuple[float, float] | None:
    """(share of probe timers over 5 ms late, the bucket bound of their 99th percentile)
    from ``fleetgate_event_loop_lag_seconds``; None without the metric."""
    count = buckets.get(float("inf"), 0.0)
    if not count:
        return None
    p99 = min(bound for bound, seen in buckets.items() if seen >= 0.99 * count)
    return (count - buckets.get(0.005, 0.0)) / count, p99


def slow_commits(buckets: dict[float, float]) -> tuple[int, float] | None:
    """(spool group commits over 10 ms, the bucket bound of the slowest) from
    ``fleetgate_spool_commit_seconds``: a slow commit holds every ack waiting on it."""
    count = buckets.get(float("inf"), 0.0)
    if not count:
        return None
    slowest = min(bound for bound, seen in buckets.items() if seen >= count)
    return int(count - buckets.get(0.01, 0.0)), slowest


def start(
    variant: Variant, port: int, work: Path, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if variant.config is None:
        command = [PYTHON, str(ROOT / "bench" / "ceiling_server.py"), "--teltonika-port",
                   str(port), "--tesla-port", "0"]
        if variant.name == "ceiling-durable":  # its file on the disk fleetgate's data uses
            command += ["--durable", str(work)]
    else:
        config = merged(
            {
                "data_dir": str(work / "data"),
                "teltonika": {"host": "127.0.0.1", "port": port, "udp_enabled": False},
                "api": {"enabled": False},
                "tesla_enabled": False,
                "monitoring": {"prometheus_metrics_port": metrics_port},
            },
            variant.config,
        )
        path = work / "c.json"
        path.write_text(json.dumps(config))
        command = [PYTHON, "-m", "fleetgate", "serve", "--config", str(path)]
        if variant.source is not None:
            env["PYTHONPATH"] = str(variant.source)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(work / "server.log", "wb"))  # noqa: SIM115
    wait_port(port)
    return process


def run_once(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="acklat-", dir=args.work_dir))
    port, metrics_port = free_port(), free_port()
    process = start(variant, port, work, metrics_port)
    try:
        time.sleep(0.5)
        load_before = os.getloadavg()[0]
        out = subprocess.run(
            ["nice", "-n", str(args.load_nice)] * bool(args.load_nice)
            + [PYTHON, "-m", "fleetgate", "bench", "load", "--teltonika", str(args.trackers),
             "--rate", str(args.rate), "--duration", str(args.duration), "--teltonika-port",
             str(port), "--server-pid", str(process.pid), "--json"],
            capture_output=True, check=False,
        )
        load_after = os.getloadavg()[0]
        found = (histograms(metrics_port, LAG, COMMIT) if variant.config is not None
                 else {})
        lag = loop_lag(found.get(LAG, {}))
        commits = slow_commits(found.get(COMMIT, {}))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = out.stdout.decode()
    report = json.loads(text[: text.rindex("}") + 1])
    teltonika = report["protocols"]["teltonika"]
    latency = teltonika["latency_ms"]
    acked = teltonika["acked_per_s"]
    cpu = report["server"]["cpu_per_s"]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "variant": variant.name,
        "p50": latency["p50"],
        "p90": latency["p90"],
        "p99": latency["p99"],
        "p999": latency["p999"],
        "acked_per_s": acked,
        "server_cpu": cpu,
        "us_per_record": 1e6 * cpu / acked if acked else None,
        "errors": report["errors"],
        "load": (round(load_before, 2), round(load_after, 2)),
        "loop_late_5ms": lag[0] if lag else None,
        "loop_lag_p99_ms": lag[1] * 1e3 if lag else None,
        "commits_over_10ms": commits[0] if commits else None,
        "slowest_commit_ms": commits[1] * 1e3 if commits else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--trackers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir", default=tempfile.gettempdir(),
                        help="data_dirs go here (the disk under test)")
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--load-nice", type=int, default=0, metavar="N",
                        help="run the load generator at this nice value (e.g. 10: it gets "
                             "the cores the server leaves instead of competing for them)")
    args = parser.parse_args()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'round':>5} {'variant':<16} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} "
          f"{'acked/s':>9} {'CPU':>5} {'us/rec':>7} {'load':>12} {'late>5ms':>8} "
          f"{'lag p99':>7} {'commits>10ms':>12} {'slowest':>8}", flush=True)
    for round_ in range(1, args.rounds + 1):
        for variant in args.variant:
            row = run_once(variant, args)
            row["round"] = round_
            rows.append(row)
            us = row["us_per_record"]
            print(f"{round_:>5} {row['variant']:<16} {row['p50']:>7.2f} {row['p90']:>7.2f} "
                  f"{row['p99']:>7.2f} {row['p999']:>7.2f} {row['acked_per_s']:>9.0f} "
                  f"{row['server_cpu']:>5.2f} {us if us is not None else 0:>7.1f} "
                  f"{row['load'][0]:>5.2f}-{row['load'][1]:<5.2f} "
                  + (f"{row['loop_late_5ms']:>7.1%} {row['loop_lag_p99_ms']:>5.1f}ms"
                     if row["loop_late_5ms"] is not None else f"{'-':>8} {'-':>7}")
                  + (f" {row['commits_over_10ms']:>12} {row['slowest_commit_ms']:>6.0f}ms"
                     if row["commits_over_10ms"] is not None else f" {'-':>12} {'-':>8}")
                  + (f" errors {row['errors']}" if row["errors"] else ""), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
