"""``fleetgate tesla config``: the body of Tesla's ``fleet_telemetry_config`` request."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fleetgate.protocols.tesla.fleet_config import (
    ALERT_TYPES,
    DELIVERY_POLICIES,
    FleetConfigError,
    build_fleet_config,
    field_names,
    parse_fields,
)

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("tesla", help="Tesla Fleet API helpers")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    config = actions.add_parser(
        "config",
        help="print the JSON body for Tesla's fleet_telemetry_config endpoint",
        description=(
            "Builds the body to send (through Tesla's vehicle-command proxy) to "
            "POST /api/1/vehicles/fleet_telemetry_config so vehicles stream to this server. "
            "Field names are checked against the bundled protos."
        ),
    )
    config.add_argument("--host", help="public host name vehicles connect to")
    config.add_argument("--port", type=int, default=443, help="public port (default 443)")
    config.add_argument("--ca", help="PEM file of the CA that issued the server certificate")
    config.add_argument(
        "--fields",
        help="Name:interval_seconds[:minimum_delta], comma separated (VehicleSpeed:10,Soc:60)",
    )
    config.add_argument(
        "--vin", action="append", default=[], help="vehicle VIN to configure (repeat)"
    )
    config.add_argument(
        "--alert-types", default="", help=f"comma separated ({', '.join(ALERT_TYPES)})"
    )
    config.add_argument("--exp", type=float, help="expire the configuration after DAYS days")
    config.add_argument("--prefer-typed", action="store_true", help="ask for typed values")
    config.add_argument("--delivery-policy", choices=DELIVERY_POLICIES)
    config.add_argument("--list-fields", action="store_true", help="print known field names")
    config.set_defaults(handler=run_config)


def run_config(args: argparse.Namespace) -> int:
    if args.list_fields:
        print("\n".join(field_names()))
        return 0
    missing = [name for name in ("host", "ca", "fields") if not getattr(args, name)]
    if missing:
        print(f"fleetgate tesla config: missing --{', --'.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ca_pem = Path(args.ca).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"fleetgate tesla config: cannot read --ca {args.ca}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    exp = None if args.exp is None else int(time.time() + args.exp * 86_400)
    alerts = [item.strip() for item in args.alert_types.split(",") if item.strip()]
    try:
        body = build_fleet_config(
            hostname=args.host,
            port=args.port,
            ca_pem=ca_pem,
            fields=parse_fields(args.fields),
            vins=args.vin,
            alert_types=alerts,
            exp=exp,
            prefer_typed=True if args.prefer_typed else None,
            delivery_policy=args.delivery_policy,
        )
    except FleetConfigError as exc:
        print(f"fleetgate tesla config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(body, indent=2))
    return 0
