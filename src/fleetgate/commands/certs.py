"""``fleetgate certs init``: a development PKI for the Tesla listener and simulated vehicles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fleetgate.pki import DEV_CA_NAME, init_pki
from fleetgate.settings import ConfigError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs", help="development certificates for the Tesla listener"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="make a development CA, a server certificate and vehicle client certificates",
        description=(
            f"Writes an EC development CA named {DEV_CA_NAME!r} (the name Tesla's identity "
            "rules accept), a server certificate for --host (plus localhost and 127.0.0.1) "
            "and one client certificate per --vin (CN = VIN). An existing CA in --out is "
            "reused, so running again adds vehicles. Not for real vehicles: they only trust "
            "servers whose CA was registered with Tesla."
        ),
    )
    init.add_argument("--out", required=True, help="directory to write into")
    init.add_argument("--host", default="localhost", help="server host name for the certificate")
    init.add_argument(
        "--vin", action="append", default=[], help="vehicle VIN for a client certificate (repeat)"
    )
    init.add_argument(
        "--config",
        metavar="FILE",
        help="also write the tls section into this JSON config file (created if missing; "
        "its other keys are kept)",
    )
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    pki = init_pki(args.out, host=args.host, vins=args.vin)
    created = set(pki.created)
    print(f"development PKI in {pki.directory}:")
    rows = [("CA certificate", pki.ca_cert), ("CA key", pki.ca_key)]
    rows += [("server certificate", pki.server_cert), ("server key", pki.server_key)]
    for vin, (cert, key) in pki.vehicles.items():
        rows += [(f"vehicle {vin} certificate", cert), (f"vehicle {vin} key", key)]
    for label, path in rows:
        state = "written" if path in created else "kept"
        print(f"  {label:<40} {path}  ({state})")
    print("\nconfig.json (tls section):")
    print(json.dumps(pki.config_snippet(), indent=2))
    if args.config:
        write_tls_section(Path(args.config), pki.config_snippet())
        print(f"\nwritten to {args.config}: serve with --config {args.config}")
    if pki.vehicles:
        vin = next(iter(pki.vehicles))
        cert, key = pki.vehicles[vin]
        print("\nsimulate vehicles:")
        print(
            f"  fleetgate sim tesla --url wss://{args.host}:4443/ --ca {pki.ca_cert} "
            f"--cert-dir {cert.parent} --vehicles {len(pki.vehicles)}"
        )
    return 0


def write_tls_section(path: Path, snippet: dict[str, Any]) -> None:
    """Put ``snippet`` (the ``tls`` section) into the JSON config at ``path``."""
    config: dict[str, Any] = {}
    if path.exists():
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        config = loaded
    config.update(snippet)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
