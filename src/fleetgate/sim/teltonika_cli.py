"""``fleetgate sim teltonika``: simulated trackers with a live summary and a final count."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from fleetgate.sim.failures import report_lines
from fleetgate.sim.teltonika import (
    CODECS,
    TRANSPORTS,
    SimulationResult,
    SimulationSettings,
    run_simulation,
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "teltonika",
        help="simulated Teltonika trackers over TCP or UDP (checks every ack, answers commands)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="fleetgate's tracker listener host")
    parser.add_argument("--port", type=int, default=5027, help="tracker listener port")
    parser.add_argument("--devices", type=int, default=10, help="number of trackers")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="records per second per tracker (0 = as fast as acks return)",
    )
    parser.add_argument(
        "--codec", choices=sorted(set(CODECS) - {"8e"}), default="8E",
        help="7 = GH3000; 8, 8E, 16 = FMB and older FM devices",
    )
    parser.add_argument(
        "--io16-group", action="store_true",
        help="add a 16-byte IO group to every record, as older FM devices do (not codec 7)",
    )
    parser.add_argument(
        "--transport", choices=TRANSPORTS, default="tcp", help="how trackers send their frames"
    )
    parser.add_argument(
        "--records-per-frame", type=int, default=1, help="AVL records in each frame"
    )
    parser.add_argument("--io-elements", type=int, default=8, help="IO elements per record")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (0 = no limit)")
    parser.add_argument("--frames", type=int, default=None, help="frames per tracker, then stop")
    parser.add_argument(
        "--linger", type=float, default=0.0,
        help="TCP: seconds to stay connected after the last frame, answering commands "
        "(Ctrl-C or SIGTERM ends the simulation early, with its report)",
    )
    parser.add_argument(
        "--first-imei", type=int, default=356307042441013,
        help="IMEI of the first tracker; the others count up from it",
    )
    parser.add_argument(
        "--server", action="append", default=[], type=_server, metavar="HOST:PORT",
        help="TCP failover (repeat): trackers spread over these servers and, when a "
        "connection is lost, connect to the next one and send the unacked frame again "
        "(instead of --host/--port)",
    )
    parser.set_defaults(handler=run)


def _server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    try:
        settings = SimulationSettings(
            host=args.host,
            port=args.port,
            devices=args.devices,
            rate=args.rate,
            codec=args.codec,
            records_per_frame=args.records_per_frame,
            io_elements=args.io_elements,
            duration_s=args.duration or None,
            frames_per_device=args.frames,
            first_imei=args.first_imei,
            transport=args.transport,
            io16_group=args.io16_group,
            linger_s=args.linger,
            servers=tuple(args.server),
        )
    except ValueError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(_simulate(settings))
    print(result.summary())
    for line in report_lines(result.failures, "fleetgate sim teltonika"):
        print(line, file=sys.stderr)
    return 0 if result.ok else 1


async def _simulate(settings: SimulationSettings) -> SimulationResult:
    """The simulation; Ctrl-C or SIGTERM ends it with the report of what was done (during
    ``--linger`` that is a clean end: everything sent was acked)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return await run_simulation(settings, report=print, stop=stop)
