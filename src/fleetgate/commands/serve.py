"""``fleetgate serve`` and ``fleetgate demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from fleetgate.app import Server, announce, run_loop, serve
from fleetgate.config import Config, load_config
from fleetgate.observability.logging import setup_logging
from fleetgate.supervisor import Supervisor, worker_count

log = logging.getLogger("fleetgate")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the server (embedded defaults when no config is given)"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="worker processes sharing the device ports, 0 = one per CPU core "
        "(overrides the config key workers; default 1)",
    )
    parser.set_defaults(handler=run_serve)

    demo = subparsers.add_parser(
        "demo", help="serve on the embedded defaults and start simulated devices"
    )
    add_config_argument(demo)
    demo.add_argument("--devices", type=int, default=5, help="simulated Teltonika trackers")
    demo.add_argument("--rate", type=float, default=1.0, help="records per second per tracker")
    demo.set_defaults(handler=run_demo)


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError("must be between 0 and 256")
    return value


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-config",
        dest="config",
        default=os.environ.get("FLEETGATE_CONFIG"),
        help="JSON or TOML config file (Tesla's config.json works as is); "
        "FLEETGATE_* environment variables override it",
    )


def load(args: argparse.Namespace) -> Config:
    # Log set-up first, so config warnings are printed in the configured format.
    setup_logging()
    config = load_config(args.config)
    setup_logging(config.log_level, config.json_log_enable)
    return config


def run_serve(args: argparse.Namespace) -> int:
    config = load(args)
    if args.workers is not None:
        config = config.model_copy(update={"workers": args.workers})
    count = worker_count(config)
    if count > 1:
        return Supervisor(config, count).run()
    run_loop(serve(config, ready=announce))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from fleetgate.sim.teltonika import SimulationSettings, run_simulation

    config = load(args)

    async def main() -> None:
        sim_task: asyncio.Task[Any] | None = None

        def started(server: Server) -> None:
            nonlocal sim_task
            announce(server)
            listener = server.listener("teltonika")
            if listener is None:
                log.error("demo: the teltonika listener is disabled; nothing to simulate")
                return
            port = int(listener.health()["address"].rsplit(":", 1)[1])
            settings = SimulationSettings(
                host="127.0.0.1",
                port=port,
                devices=args.devices,
                rate=args.rate,
                duration_s=None,
                report_interval_s=10.0,
            )
            log.info("demo: %d simulated trackers sending to port %d", args.devices, port)
            sim_task = asyncio.get_running_loop().create_task(run_simulation(settings))

        try:
            await serve(config, ready=started)
        finally:
            if sim_task is not None:
                sim_task.cancel()

    run_loop(main())
    return 0
