"""``fleetgate bench load``: drive a server with trackers, vehicles and gateways at once and
report what it acknowledged, how fast, and what it cost the server."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, TextIO

from fleetgate.sim.load import LoadRunError, LoadSettings, LoadSettingsError, run_load
from fleetgate.sim.load.settings import pki_paths

EXIT_ERRORS = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="benchmarks against a running server"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser(
        "load",
        help="drive a server with Teltonika trackers, Tesla vehicles and CAN gateways at once",
        description=(
            "Runs the devices from --processes generator processes with pre-encoded frames "
            "and reports acknowledged throughput, ack latency (p50/p99/p99.9), errors and, "
            "with --server-pid, the server's CPU and memory. Trackers wait for each ack "
            "(stop-and-wait); vehicles and gateways keep a window of frames in flight. "
            "Gateways publish to the MQTT broker fleetgate subscribes to: their ack is the "
            "broker's PUBACK, and --api counts what fleetgate stored. Exit code 1 when any "
            "device saw an error, or the store did not catch up with what was acked."
        ),
    )
    devices = load.add_argument_group("devices and pacing")
    devices.add_argument("--teltonika", type=int, default=0, metavar="N", help="trackers")
    devices.add_argument("--tesla", type=int, default=0, metavar="M", help="vehicles")
    devices.add_argument("--gateways", type=int, default=0, metavar="K", help="CAN gateways")
    devices.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="R",
        help="frames (gateways: messages) per second per device; 0 = as fast as acks allow",
    )
    devices.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured s")
    devices.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="seconds sent before measuring"
    )
    devices.add_argument(
        "--processes", type=int, default=1, metavar="P", help="generator processes"
    )
    devices.add_argument("--codec", default="8E", help="Teltonika codec: 8, 8E, 16, 7")
    devices.add_argument("--records-per-frame", type=int, default=10, help="Teltonika")
    devices.add_argument("--io-elements", type=int, default=10, help="IO elements per record")
    devices.add_argument(
        "--tesla-window", type=int, default=16, help="frames in flight per vehicle"
    )
    devices.add_argument(
        "--gateway-window", type=int, default=16, help="QoS 1 messages in flight per gateway"
    )
    where = load.add_argument_group("the server")
    where.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    where.add_argument(
        "--teltonika-port", type=int, default=5027, help="the server's tracker port"
    )
    where.add_argument("--tesla-url", help="default wss://HOST:4443/")
    where.add_argument(
        "--pki", metavar="DIR", help="a `fleetgate certs init` directory (CA and vehicle certs)"
    )
    where.add_argument("--ca", metavar="FILE", help="CA that signed the server's certificate")
    where.add_argument(
        "--cert-dir", metavar="DIR", help="<VIN>.crt/<VIN>.key pairs, reused when fewer than M"
    )
    where.add_argument("--broker", metavar="URL", help="MQTT broker, default mqtt://HOST:1883")
    where.add_argument("--broker-ca", metavar="FILE", help="CA of an mqtts:// broker")
    where.add_argument("--topic-root", default="vehicles", help="gateway topic root")
    measure = load.add_argument_group("measuring")
    measure.add_argument(
        "--api", metavar="URL", help="fleetgate's API (http://HOST:8080): count stored records"
    )
    measure.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get("FLEETGATE_TOKEN"),
        help="bearer token for --api with the read scope (fleetgate token ...; "
        "default: $FLEETGATE_TOKEN)",
    )
    measure.add_argument(
        "--server-pid", type=int, metavar="PID", help="report this process tree's CPU and RSS"
    )
    measure.add_argument(
        "--drain", type=float, default=10.0, metavar="S", help="wait for acks in flight at the end"
    )
    measure.add_argument(
        "--settle", type=float, default=60.0, metavar="S", help="wait for the store to catch up"
    )
    measure.add_argument(
        "--connect-timeout", type=float, default=30.0, metavar="S",
        help="seconds a device may take to connect",
    )
    measure.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(handler=run_bench_load)


def settings_from_args(args: argparse.Namespace) -> LoadSettings:
    ca, cert_dir = args.ca, args.cert_dir
    if args.pki:
        pki_ca, pki_certs = pki_paths(args.pki)
        ca, cert_dir = ca or pki_ca, cert_dir or pki_certs
    return LoadSettings(
        teltonika=args.teltonika,
        tesla=args.tesla,
        gateways=args.gateways,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=args.processes,
        host=args.host,
        teltonika_port=args.teltonika_port,
        tesla_url=args.tesla_url,
        broker=args.broker,
        broker_ca=args.broker_ca,
        ca=ca,
        cert_dir=cert_dir,
        codec=args.codec,
        records_per_frame=args.records_per_frame,
        io_elements=args.io_elements,
        tesla_window=args.tesla_window,
        gateway_window=args.gateway_window,
        topic_root=args.topic_root,
        api=args.api,
        api_token=args.token,
        server_pid=args.server_pid,
        connect_timeout_s=args.connect_timeout,
        drain_s=args.drain,
        settle_s=args.settle,
    )


class LiveLine:
    """Progress lines: overwritten in place on a terminal, appended otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = False

    def __call__(self, line: str) -> None:
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def run_bench_load(args: argparse.Namespace) -> int:
    if args.tesla and importlib.util.find_spec("picows") is None:
        print(
            "fleetgate bench load: simulated vehicles need the bench extra: "
            "pip install 'fleetgate[bench]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = settings_from_args(args)
    live = LiveLine(sys.stderr)
    try:
        report = run_load(settings, live)
    except LoadSettingsError as exc:
        live.finish()
        print(f"fleetgate bench load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LoadRunError as exc:
        live.finish()
        print(f"fleetgate bench load: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    live.finish()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    failed = report.errors or report.stored_caught_up is False or report.stored_error
    return EXIT_ERRORS if failed else 0
