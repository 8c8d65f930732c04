"""``fleetgate demo``: serve on the embedded defaults with simulated devices of every kind.

Teltonika trackers over TCP, Tesla vehicles over mTLS (with client certificates from the
development CA the server made, when no ``tls`` is configured) and CAN gateways over MQTT
(through a private loopback broker when ``mqtt_ingest`` is not configured), so the API and
the dashboard fill at once. Ctrl-C stops the server and the simulators together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from fleetgate.app import Server, announce, run_loop, serve
from fleetgate.commands.serve import add_config_argument, load
from fleetgate.config import Config
from fleetgate.listeners.tesla.listener import TeslaListener
from fleetgate.pki import init_pki
from fleetgate.sim.can_gateway import CanGatewaySettings, CanGatewaySimulator
from fleetgate.sim.embedded_broker import EmbeddedBroker, EmbeddedBrokerUnavailableError
from fleetgate.sim.teltonika import SimulationSettings, run_simulation
from fleetgate.sim.tesla import TeslaSimSettings, credentials_from_dir
from fleetgate.sim.tesla import run_simulation as run_tesla_simulation

log = logging.getLogger("fleetgate")

DEMO_VINS = ("5YJ3E1EA7KF000101", "5YJ3E1EA7KF000102", "5YJYGDEE1MF000103")


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="serve on the embedded defaults and start simulated devices of every kind"
    )
    add_config_argument(demo)
    demo.add_argument("--devices", type=int, default=5, help="simulated Teltonika trackers")
    demo.add_argument("--rate", type=float, default=1.0, help="records per second per tracker")
    demo.add_argument(
        "--vehicles", type=int, default=2, help=f"simulated Tesla vehicles (max {len(DEMO_VINS)})"
    )
    demo.add_argument("--gateways", type=int, default=2, help="simulated CAN gateways")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    run_loop(_demo(load(args), args))
    return 0


async def _demo(config: Config, args: argparse.Namespace) -> None:
    broker: EmbeddedBroker | None = None
    if config.mqtt_ingest is None and args.gateways > 0:
        broker = EmbeddedBroker()
        try:
            await broker.start()
        except EmbeddedBrokerUnavailableError as exc:
            log.warning("demo: %s; no simulated CAN gateways", exc)
            broker = None
        else:
            log.info("demo: MQTT broker for the CAN gateways at %s", broker.url)
            ingest = broker.ingest_settings(client_id="fleetgate-demo")
            config = config.model_copy(update={"mqtt_ingest": ingest})
    tasks: list[asyncio.Task[Any]] = []

    def started(server: Server) -> None:
        announce(server)
        loop = asyncio.get_running_loop()
        for simulation in (
            _trackers(server, args),
            _vehicles(server, args),
            _gateways(server, config, args),
        ):
            if simulation is not None:
                tasks.append(loop.create_task(simulation))

    try:
        await serve(config, ready=started)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if broker is not None:
            await broker.stop()


def _port(server: Server, name: str) -> int | None:
    listener = server.listener(name)
    if listener is None:
        return None
    return int(str(listener.health()["address"]).rsplit(":", 1)[1])


async def _trackers(server: Server, args: argparse.Namespace) -> None:
    port = _port(server, "teltonika")
    if port is None or args.devices <= 0:
        log.info("demo: the teltonika listener is off; no simulated trackers")
        return
    log.info("demo: %d simulated trackers sending to port %d", args.devices, port)
    settings = SimulationSettings(
        host="127.0.0.1", port=port, devices=args.devices, rate=args.rate,
        duration_s=None, report_interval_s=60.0,
    )
    await run_simulation(settings)


async def _vehicles(server: Server, args: argparse.Namespace) -> None:
    listener = server.listener("tesla")
    count = min(args.vehicles, len(DEMO_VINS))
    if not isinstance(listener, TeslaListener) or count <= 0:
        return
    if listener.dev_pki_dir is None:
        log.info("demo: tls is configured (no development CA); no simulated vehicles")
        return
    pki = await asyncio.to_thread(
        init_pki, listener.dev_pki_dir, host="localhost", vins=DEMO_VINS[:count]
    )
    log.info("demo: %d simulated vehicles sending to port %d", count, listener.port)
    settings = TeslaSimSettings(
        url=f"wss://localhost:{listener.port}/",
        ca=pki.ca_cert,
        credentials=credentials_from_dir(pki.directory / "vehicles")[:count],
        vehicles=count,
        rate=0.5,
        duration_s=None,
        report_interval_s=60.0,
    )
    await run_tesla_simulation(settings)


async def _gateways(server: Server, config: Config, args: argparse.Namespace) -> None:
    ingest = config.mqtt_ingest
    if ingest is None or args.gateways <= 0 or server.listener("mqtt_ingest") is None:
        return
    log.info("demo: %d simulated CAN gateways publishing to %s", args.gateways, ingest.url)
    simulator = CanGatewaySimulator(
        CanGatewaySettings(
            broker=ingest.url, gateway_id="demo-gateway", gateways=args.gateways, interval_s=5.0
        )
    )
    await simulator.start()
    try:
        await simulator.run_schedule()
    finally:
        await simulator.stop()
