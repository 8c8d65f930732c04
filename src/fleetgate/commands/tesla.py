"""``fleetgate tesla config|configure|status``: the owner's path from server to streaming car.

* ``config`` prints the body of Tesla's ``fleet_telemetry_config`` request (offline).
* ``configure`` sends that body through the owner's vehicle-command proxy, which signs it
  for the car: ``POST /api/1/vehicles/fleet_telemetry_config`` with ``{"vins": [...],
  "config": {...}}``.
* ``status`` reads a vehicle's current configuration and the errors it reported:
  ``GET /api/1/vehicles/{vin}/fleet_telemetry_config`` and ``.../fleet_telemetry_errors``.

``configure`` and ``status`` take the access token, API base URL and VIN from the same
environment variables as Tesla's Node telemetry server (``TESLA_ACCESS_TOKEN``,
``TESLA_API_BASE_URL``, ``TESLA_VIN``) or from flags; the token is never printed.

Exit codes: 0 done; 1 the API refused the request or could not be reached (one line on
stderr); 2 a usage problem (missing option, unreadable file, bad field list); 3
(``configure``) the API answered but skipped a vehicle (one line per VIN, with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fleetgate.protocols.tesla.fleet_config import (
    ALERT_TYPES,
    DELIVERY_POLICIES,
    FleetApiReplyError,
    FleetConfigError,
    build_fleet_config,
    describe_status,
    field_names,
    parse_fields,
    read_configure_reply,
    skip_reason_text,
)

EXIT_OK: Final = 0
EXIT_API: Final = 1
EXIT_USAGE: Final = 2
EXIT_SKIPPED: Final = 3

ENV_TOKEN: Final = "TESLA_ACCESS_TOKEN"
ENV_BASE_URL: Final = "TESLA_API_BASE_URL"
ENV_VIN: Final = "TESLA_VIN"

EXIT_CODES_HELP: Final = """\
exit codes:
  0  done
  1  the API refused the request or could not be reached (one line on stderr)
  2  usage: a missing option, an unreadable file, a bad field list
  3  (configure) the API skipped a vehicle (one line per VIN, with the reason)
"""


class _UsageError(Exception):
    """A problem with the command line; printed as one line, exit 2."""


def _add_body_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="public host name vehicles connect to")
    parser.add_argument("--port", type=int, default=443, help="public port")
    parser.add_argument("--ca", help="PEM file of the CA that issued the server certificate")
    parser.add_argument(
        "--fields",
        help="Name:interval_seconds[:minimum_delta], comma separated (VehicleSpeed:10,Soc:60)",
    )
    parser.add_argument(
        "--alert-types",
        default="",
        help=f"comma separated ({', '.join(ALERT_TYPES)}; default: none)",
    )
    parser.add_argument(
        "--exp", type=float, help="expire the configuration after DAYS days (default: never)"
    )
    parser.add_argument(
        "--prefer-typed", action="store_true", help="ask for typed values (default: strings)"
    )
    parser.add_argument(
        "--delivery-policy",
        choices=DELIVERY_POLICIES,
        help="what the vehicle resends (default: the vehicle's own)",
    )


def _add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-base-url",
        help=(
            f"the vehicle-command proxy (or Fleet API for status), e.g. https://localhost:4443 "
            f"(default: ${ENV_BASE_URL})"
        ),
    )
    parser.add_argument(
        "--access-token",
        help=(
            f"OAuth access token (default: ${ENV_TOKEN}; prefer the variable: a flag shows "
            "in the process list and shell history)"
        ),
    )
    parser.add_argument(
        "--api-ca",
        help="PEM CA file to trust for the API's TLS certificate, e.g. the proxy's "
        "self-signed tls-cert.pem (default: the system's CAs)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a reply"
    )


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tesla",
        help="Tesla Fleet API helpers: configure vehicles to stream here",
        description=(
            "config prints the fleet_telemetry_config body (offline); configure sends it "
            "through the owner's vehicle-command proxy; status reads a vehicle's current "
            "configuration and the errors it reported."
        ),
    )
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
    _add_body_arguments(config)
    config.add_argument(
        "--vin", action="append", default=[], help="vehicle VIN to configure (repeat)"
    )
    config.add_argument("--list-fields", action="store_true", help="print known field names")
    config.set_defaults(handler=run_config)

    configure = actions.add_parser(
        "configure",
        help="send the fleet_telemetry_config body through the vehicle-command proxy",
        description=(
            "Sends POST /api/1/vehicles/fleet_telemetry_config with {vins, config} to the "
            "vehicle-command proxy, which signs the configuration for the vehicles."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_body_arguments(configure)
    configure.add_argument(
        "--vin", action="append", default=[], help=f"VIN to configure (repeat; default: ${ENV_VIN})"
    )
    _add_api_arguments(configure)
    configure.set_defaults(handler=run_configure)

    status = actions.add_parser(
        "status",
        help="show a vehicle's telemetry configuration and the errors it reported",
        description=(
            "Reads GET /api/1/vehicles/{vin}/fleet_telemetry_config and /fleet_telemetry_errors."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--vin", help=f"the vehicle's VIN (default: ${ENV_VIN})")
    _add_api_arguments(status)
    status.add_argument(
        "--json", action="store_true", help="print both replies as JSON instead of text"
    )
    status.set_defaults(handler=run_status)


# -- config ---------------------------------------------------------------------------------


def _body(args: argparse.Namespace, vins: list[str]) -> dict[str, Any]:
    missing = [name for name in ("host", "ca", "fields") if not getattr(args, name)]
    if missing:
        raise _UsageError(f"missing --{', --'.join(missing)}")
    try:
        ca_pem = Path(args.ca).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read --ca {args.ca}: {exc}") from None
    exp = None if args.exp is None else int(time.time() + args.exp * 86_400)
    alerts = [item.strip() for item in args.alert_types.split(",") if item.strip()]
    try:
        return build_fleet_config(
            hostname=args.host,
            port=args.port,
            ca_pem=ca_pem,
            fields=parse_fields(args.fields),
            vins=vins,
            alert_types=alerts,
            exp=exp,
            prefer_typed=True if args.prefer_typed else None,
            delivery_policy=args.delivery_policy,
        )
    except FleetConfigError as exc:
        raise _UsageError(str(exc)) from None


def run_config(args: argparse.Namespace) -> int:
    if args.list_fields:
        print("\n".join(field_names()))
        return EXIT_OK
    try:
        body = _body(args, args.vin)
    except _UsageError as exc:
        print(f"fleetgate tesla config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(body, indent=2))
    return EXIT_OK


# -- configure / status -----------------------------------------------------------------------


def _api(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from fleetgate.commands.fleet_api import FleetApi, FleetApiError

    base_url = (args.api_base_url or environ.get(ENV_BASE_URL, "")).strip()
    token = (args.access_token or environ.get(ENV_TOKEN, "")).strip()
    if not base_url:
        raise _UsageError(f"no API base URL: pass --api-base-url or set {ENV_BASE_URL}")
    if not token:
        raise _UsageError(f"no access token: set {ENV_TOKEN} (or pass --access-token)")
    if args.api_ca and not Path(args.api_ca).is_file():
        raise _UsageError(f"cannot read --api-ca {args.api_ca}: no such file")
    try:
        return FleetApi(base_url, token, args.api_ca, args.timeout)
    except FleetApiError as exc:
        raise _UsageError(str(exc)) from None


def _fail(command: str, message: str, code: int) -> int:
    print(f"fleetgate tesla {command}: {message}", file=sys.stderr)
    return code


def run_configure(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from fleetgate.commands.fleet_api import PATH_CONFIGURE, FleetApiError

    env = os.environ if environ is None else environ
    vins = args.vin or [vin for vin in [env.get(ENV_VIN, "").strip()] if vin]
    try:
        if not vins:
            raise _UsageError(f"no VIN: pass --vin (repeatable) or set {ENV_VIN}")
        body = _body(args, vins)
        api = _api(args, env)
    except _UsageError as exc:
        return _fail("configure", str(exc), EXIT_USAGE)
    try:
        reply = api.post(PATH_CONFIGURE, body, what="fleet_telemetry_config")
        outcome = read_configure_reply(reply)
    except (FleetApiError, FleetApiReplyError) as exc:
        return _fail("configure", str(exc), EXIT_API)
    target = f"{body['config']['hostname']}:{body['config']['port']}"
    configured = [vin for vin in vins if vin not in outcome.skipped]
    print(
        f"configured {outcome.updated} of {len(vins)} vehicle(s) to stream to {target}"
        + (f": {', '.join(configured)}" if configured and outcome.updated else "")
    )
    for vin, reason in outcome.skipped.items():
        _fail("configure", f"skipped {vin}: {skip_reason_text(reason)}", EXIT_SKIPPED)
    return EXIT_SKIPPED if outcome.skipped else EXIT_OK


def run_status(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from fleetgate.commands.fleet_api import FleetApiError, vehicle_path

    env = os.environ if environ is None else environ
    vin = (args.vin or env.get(ENV_VIN, "")).strip()
    try:
        if not vin:
            raise _UsageError(f"no VIN: pass --vin or set {ENV_VIN}")
        api = _api(args, env)
    except _UsageError as exc:
        return _fail("status", str(exc), EXIT_USAGE)
    try:
        config = api.get(vehicle_path(vin, "fleet_telemetry_config"), what="fleet_telemetry_config")
        errors = api.get(vehicle_path(vin, "fleet_telemetry_errors"), what="fleet_telemetry_errors")
        lines = describe_status(vin, config, errors)
    except (FleetApiError, FleetApiReplyError) as exc:
        return _fail("status", str(exc), EXIT_API)
    if args.json:
        print(
            json.dumps(
                {"vin": vin, "fleet_telemetry_config": config, "fleet_telemetry_errors": errors},
                indent=2,
            )
        )
    else:
        print("\n".join(lines))
    return EXIT_OK
