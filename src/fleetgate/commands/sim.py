"""``fleetgate sim <protocol>``: simulated devices that check every ack."""

from __future__ import annotations

import argparse
from typing import Any

from fleetgate.sim import can_gateway_cli, teltonika_cli, tesla_cli

# Each module adds one ``sim <protocol>`` parser through ``register(subparsers)``.
SIM_COMMANDS = (teltonika_cli, tesla_cli, can_gateway_cli)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="run simulated devices against a server"
    )
    sims = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for command in SIM_COMMANDS:
        command.register(sims)
