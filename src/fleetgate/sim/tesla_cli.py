"""``fleetgate sim tesla``: simulated vehicles over mTLS WebSocket, every ack checked."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from fleetgate.sim.failures import report_lines
from fleetgate.sim.tesla import (
    TeslaSimSettings,
    VehicleCredentials,
    credentials_from_cert,
    credentials_from_dir,
    run_simulation,
)

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tesla",
        help="simulated Tesla vehicles over mTLS WebSocket (checks every ack)",
        description=(
            "Each vehicle presents a client certificate (VIN = certificate CN). Use "
            "--cert-dir with <VIN>.crt/<VIN>.key pairs (fleetgate certs init --vin ... writes "
            "them) for distinct vehicles, or --cert/--key to let every simulated vehicle "
            "share one certificate (one VIN, many connections)."
        ),
    )
    parser.add_argument(
        "--url", default="wss://127.0.0.1:4443/", help="fleetgate's vehicle listener (wss://)"
    )
    parser.add_argument("--ca", help="CA file that issued the server certificate")
    parser.add_argument("--cert", help="client certificate (PEM) shared by all vehicles")
    parser.add_argument("--key", help="key of --cert")
    parser.add_argument("--cert-dir", help="directory of <VIN>.crt / <VIN>.key pairs")
    parser.add_argument("--vehicles", type=int, default=1, help="number of simulated vehicles")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="frames per second per vehicle (0 = as fast as acks return)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (0 = no limit)")
    parser.add_argument("--count", type=int, default=None, help="frames per vehicle, then stop")
    parser.add_argument("--window", type=int, default=1, help="frames in flight per vehicle")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for acks")
    parser.add_argument(
        "--network-interface", default="wifi",
        help="the X-Network-Interface header vehicles send (wifi, cellular)",
    )
    parser.set_defaults(handler=run)


def _credentials(args: argparse.Namespace) -> list[VehicleCredentials] | str:
    if args.cert_dir:
        found = credentials_from_dir(args.cert_dir)
        return found or f"no <name>.crt/<name>.key pairs in {args.cert_dir}"
    if args.cert and args.key:
        return [credentials_from_cert(args.cert, args.key)]
    return "give --cert-dir, or --cert and --key"


def run(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    if isinstance(credentials, str):
        print(f"fleetgate sim tesla: {credentials}", file=sys.stderr)
        return EXIT_USAGE
    settings = TeslaSimSettings(
        url=args.url,
        ca=args.ca,
        credentials=credentials,
        vehicles=args.vehicles,
        rate=args.rate,
        duration_s=args.duration or None,
        frames_per_vehicle=args.count,
        window=args.window,
        ack_timeout_s=args.ack_timeout,
        network_interface=args.network_interface,
    )
    result = asyncio.run(run_simulation(settings, report=print))
    print(result.summary())
    for line in report_lines(result.failures, "fleetgate sim tesla"):
        print(line, file=sys.stderr)
    return 0 if result.ok else 1
