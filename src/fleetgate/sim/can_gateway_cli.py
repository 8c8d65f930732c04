"""``fleetgate sim can-gateway``: simulated CAN gateways publishing to an MQTT broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from fleetgate.protocols.mqtt import key_bytes
from fleetgate.sim.can_gateway import (
    CanGatewaySettings,
    CanGatewaySimulator,
    GatewayConfigError,
    settings_from_config_file,
)

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "can-gateway",
        help="simulated CAN-bus gateways publishing vehicle signals over MQTT",
        description=(
            "Publishes vehicles/<gateway-id>/<group>/<signal> with coherent values: a snapshot "
            "of the whole tree every interval, or each signal at its real rate (--realtime). "
            "Reads the gateway's config.json (--config) or flags; flags win. Queues while the "
            "broker is unreachable and flushes on reconnect. Serves the gateway's REST API "
            "(GET /health, POST /publish, GET /config) on --api-port."
        ),
    )
    parser.add_argument("--config", help="the gateway's config.json")
    parser.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--gateway-id", help="gateway id (thing name); default can-gateway")
    parser.add_argument("--client-id", help="MQTT client id; default the gateway id")
    parser.add_argument("--gateways", type=int, help="simulate N gateways <id>-001..<id>-N")
    parser.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key", help="key of --cert")
    parser.add_argument("--ca", help="CA that signed the broker's certificate")
    parser.add_argument(
        "--hmac-key",
        help="sign every message (HMAC-SHA256; text, or hex:<digits>); "
        "env FLEETGATE_SIM_HMAC_KEY keeps it out of the process list",
    )
    parser.add_argument("--interval", type=float, help="seconds between snapshots (default 300)")
    parser.add_argument("--realtime", action="store_true", help="each signal at its own rate")
    parser.add_argument("--bare", action="store_true", help="bare values instead of JSON objects")
    parser.add_argument("--queue-size", type=int, help="offline queue capacity (default 10000)")
    parser.add_argument("--topic-root", help="topic levels before the gateway id (vehicles)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--snapshots", type=int, help="stop after this many snapshots")
    parser.add_argument("--seed", type=int, help="random seed (repeatable values)")
    parser.add_argument("--api-host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=5000, help="REST API port (0: any)")
    parser.add_argument("--no-api", action="store_true", help="do not serve the REST API")
    parser.set_defaults(handler=run)


def build_settings(args: argparse.Namespace) -> CanGatewaySettings:
    import os

    secret = args.hmac_key or os.environ.get("FLEETGATE_SIM_HMAC_KEY")
    overrides: dict[str, Any] = {
        "broker": args.broker,
        "gateway_id": args.gateway_id,
        "client_id": args.client_id,
        "gateways": args.gateways,
        "cert": args.cert,
        "key": args.key,
        "ca": args.ca,
        "hmac_key": key_bytes(secret) if secret else None,
        "interval_s": args.interval,
        "realtime": args.realtime or None,
        "bare": args.bare or None,
        "queue_size": args.queue_size,
        "topic_root": args.topic_root,
        "duration_s": args.duration,
        "snapshots": args.snapshots,
        "seed": args.seed,
    }
    if args.config:
        return settings_from_config_file(args.config, **overrides)
    settings = CanGatewaySettings()
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    if settings.cert and "broker" not in {k for k, v in overrides.items() if v is not None}:
        settings.broker = "mqtts://127.0.0.1:8883"
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
        simulator = CanGatewaySimulator(settings)
    except (GatewayConfigError, ValueError) as exc:
        print(f"fleetgate sim can-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_main(simulator, args))


async def _main(simulator: CanGatewaySimulator, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, interrupted.set)
    api = None
    if not args.no_api:
        from fleetgate.sim.can_gateway_api import ApiServer

        api = ApiServer(simulator, args.api_host, args.api_port)
        try:
            await api.start()
        except (OSError, SystemExit) as exc:
            print(f"fleetgate sim can-gateway: REST API: {exc}", file=sys.stderr)
            return 1
        print(f"REST API on http://{args.api_host}:{api.port}", flush=True)
    settings = simulator.settings
    mode = "realtime" if settings.realtime else f"a snapshot every {settings.interval_s:g} s"
    print(f"{len(simulator.gateways)} gateway(s) -> {settings.address}, {mode}", flush=True)
    await simulator.start()
    schedule = asyncio.create_task(simulator.run_schedule())
    stop = asyncio.create_task(interrupted.wait())
    await asyncio.wait({schedule, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not schedule.done():
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
    await simulator.stop()
    if api is not None:
        await api.stop()
    totals = simulator.totals()
    print(
        "published qos0={published_qos0} qos1={published_qos1} "
        "dropped qos0={dropped_qos0} qos1={dropped_qos1} unsent={queued}".format(**totals),
        flush=True,
    )
    return 0 if totals["dropped_qos1"] == 0 and totals["queued"] == 0 else 1
