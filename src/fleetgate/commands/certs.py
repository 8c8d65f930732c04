"""``fleetgate certs init``: a development PKI for the Tesla listener and simulated vehicles;
``fleetgate certs gateway``: certificates for CAN gateways on a mutual-TLS MQTT broker."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fleetgate.pki import DEV_CA_NAME, GATEWAY_KEY_TYPES, init_gateway_pki, init_pki
from fleetgate.settings import ConfigError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs", help="development certificates for vehicles, gateways and their servers"
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
    gateway = actions.add_parser(
        "gateway",
        help="certificates and config files for CAN gateways on a mutual-TLS MQTT broker",
        description=(
            "Writes (or reuses) the development CA and a broker certificate for --host, one "
            "client certificate per --gateway-id (CN = the id) with the gateway's config.json, "
            "and a client certificate for fleetgate's subscriber. Keys are ECC P-256 unless "
            "--key-type says otherwise. Running again adds gateways and keeps existing ones."
        ),
    )
    gateway.add_argument("--out", required=True, help="directory to write into")
    gateway.add_argument("--gateway-id", action="append", required=True, help="gateway id (repeat)")
    gateway.add_argument("--key-type", choices=GATEWAY_KEY_TYPES, default="p256")
    gateway.add_argument("--host", default="localhost", help="broker host name")
    gateway.add_argument("--port", type=int, default=8883, help="broker TLS port")
    gateway.add_argument(
        "--interval", type=int, default=300, help="publish_interval_seconds in config.json"
    )
    gateway.add_argument("--bind", default="127.0.0.1", help="broker listen address")
    gateway.add_argument("--mosquitto-conf", help="also write a mosquitto.conf here")
    gateway.set_defaults(handler=run_gateway)


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


def run_gateway(args: argparse.Namespace) -> int:
    from fleetgate.protocols.mqtt import valid_gateway_id

    bad = [gateway_id for gateway_id in args.gateway_id if not valid_gateway_id(gateway_id)]
    if bad:
        print(f"not a gateway id (1-128 of A-Z a-z 0-9 : _ . -): {', '.join(bad)}")
        return 2
    endpoint = f"{args.host}:{args.port}"
    pki = init_gateway_pki(
        args.out,
        args.gateway_id,
        key_type=args.key_type,
        host=args.host,
        endpoint=endpoint,
        publish_interval_seconds=args.interval,
    )
    created = set(pki.created)
    print(f"gateway PKI in {pki.directory} ({args.key_type} keys):")
    rows = [("CA certificate", pki.ca_cert), ("broker certificate", pki.server_cert)]
    rows += [
        ("broker key", pki.server_key),
        ("fleetgate subscriber certificate", pki.subscriber_cert),
    ]
    rows += [("fleetgate subscriber key", pki.subscriber_key)]
    for gateway_id, (cert, key, config) in pki.gateways.items():
        rows += [(f"gateway {gateway_id} certificate", cert), (f"gateway {gateway_id} key", key)]
        rows += [(f"gateway {gateway_id} config", config)]
    for label, path in rows:
        state = "written" if path in created else "kept"
        print(f"  {label:<40} {path}  ({state})")
    listener = pki.mosquitto_listener(args.port, args.bind)
    if args.mosquitto_conf:
        Path(args.mosquitto_conf).write_text(listener + "\n")
        conf = args.mosquitto_conf
        print(f"\nmosquitto config written: mosquitto -c {conf}")
    else:
        print("\nmosquitto.conf (mutual-TLS listener; each gateway's username is its id):")
        print(listener)
    print("\nfleetgate config (subscriber):")
    print(json.dumps(pki.ingest_snippet(f"mqtts://{endpoint}"), indent=2))
    first = next(iter(pki.gateways.values()))
    print("\nsimulate the gateway:")
    print(f"  fleetgate sim can-gateway --config {first[2]}")
    return 0
