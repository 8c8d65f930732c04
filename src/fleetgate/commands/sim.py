"""``fleetgate sim <protocol>``: simulated devices that check every ack."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# Each module adds one ``sim <protocol>`` parser through ``register(subparsers)``.
SIM_MODULES = [
    "fleetgate.sim.teltonika_cli",
    "fleetgate.sim.tesla_cli",
    "fleetgate.sim.can_gateway_cli",
]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="run simulated devices against a server"
    )
    sims = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for module_name in SIM_MODULES:
        importlib.import_module(module_name).register(sims)
