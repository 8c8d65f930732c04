"""A loopback stand-in for the owner's vehicle-command proxy / Tesla's Fleet API.

Tesla's endpoints are out of reach in tests, so this HTTPS server plays them: it checks the
shape of every request (method, path, bearer token, JSON body) and answers like Fleet API
(``{"response": ...}`` on success, ``{"response": null, "error": ...,
"error_description": ...}`` on failure). Requests it cannot match are answered 400 and kept
in ``problems`` so a test fails with the reason.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fleetgate.pki import DevPki, init_pki

TOKEN = "test-access-token-5f2c9a"  # what the stand-in accepts (never a real one)
KNOWN_VINS = ("5YJ3E1EA7KF000001", "5YJ3E1EA7KF000002")
UNPAIRED_VIN = "5YJ3E1EA7KF000009"  # answered as skipped: missing_key


@dataclass
class FleetApiStandIn:
    """State of one stand-in server: what it received, what it holds per VIN."""

    pki: DevPki
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"


def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _error(handler: BaseHTTPRequestHandler, status: int, error: str, description: str) -> None:
    _reply(handler, status, {"response": None, "error": error, "error_description": description})


def _check_config_body(body: Any) -> str | None:
    """Why ``body`` is not a fleet_telemetry_config request body (None when it is)."""
    if not isinstance(body, dict) or set(body) != {"vins", "config"}:
        return f"body keys {sorted(body) if isinstance(body, dict) else body!r}"
    vins, config = body["vins"], body["config"]
    if not (isinstance(vins, list) and vins and all(isinstance(v, str) for v in vins)):
        return f"vins {vins!r}"
    if not isinstance(config, dict):
        return f"config {config!r}"
    if not isinstance(config.get("hostname"), str) or not isinstance(config.get("port"), int):
        return "config hostname/port"
    if "-----BEGIN CERTIFICATE-----" not in str(config.get("ca", "")):
        return "config ca is not PEM"
    fields = config.get("fields")
    if not isinstance(fields, dict) or not fields:
        return "config fields"
    for name, spec in fields.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("interval_seconds"), int):
            return f"field {name}: {spec!r}"
    return None


def _handler(state: FleetApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self, body: Any) -> bool:
            state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": body,
                }
            )
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                _error(self, 401, "invalid bearer token", "")
                return False
            return True

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("latin-1")
            if not self._record(body):
                return
            if self.path != "/api/1/vehicles/fleet_telemetry_config":
                state.problems.append(f"POST {self.path}")
                _error(self, 404, "not_found", f"no route for POST {self.path}")
                return
            problem = _check_config_body(body)
            if problem is None and self.headers.get("Content-Type") != "application/json":
                problem = f"content type {self.headers.get('Content-Type')!r}"
            if problem is not None:
                state.problems.append(problem)
                _error(self, 400, "invalid_request", problem)
                return
            skipped = [vin for vin in body["vins"] if vin == UNPAIRED_VIN]
            for vin in body["vins"]:
                if vin not in skipped:
                    state.configs[vin] = body["config"]
            _reply(
                self,
                200,
                {
                    "response": {
                        "updated_vehicles": len(body["vins"]) - len(skipped),
                        "skipped_vehicles": {
                            "missing_key": skipped,
                            "unsupported_hardware": [],
                            "unsupported_firmware": [],
                            "max_configs": [],
                        },
                    }
                },
            )

        def do_GET(self) -> None:
            if not self._record(None):
                return
            parts = self.path.split("/")
            # /api/1/vehicles/{vin}/{endpoint}
            if len(parts) != 6 or parts[1:4] != ["api", "1", "vehicles"]:
                state.problems.append(f"GET {self.path}")
                _error(self, 404, "not_found", f"no route for GET {self.path}")
                return
            vin, endpoint = parts[4], parts[5]
            if vin not in KNOWN_VINS:
                _error(self, 404, "not_found", f"vehicle {vin} not found")
                return
            if endpoint == "fleet_telemetry_config":
                config = state.configs.get(vin)
                _reply(
                    self,
                    200,
                    {
                        "response": {
                            "synced": config is not None,
                            "config": config,
                            "limit_reached": False,
                            "key_paired": True,
                        }
                    },
                )
            elif endpoint == "fleet_telemetry_errors":
                _reply(
                    self, 200, {"response": {"fleet_telemetry_errors": state.errors.get(vin, [])}}
                )
            else:
                state.problems.append(f"GET {self.path}")
                _error(self, 404, "not_found", f"no route for GET {self.path}")

    return Handler


@contextmanager
def fleet_api_stand_in(directory: Path, *, tls: bool = True) -> Iterator[FleetApiStandIn]:
    """Serve the stand-in on 127.0.0.1 (HTTPS with a development CA unless ``tls`` is off)."""
    pki = init_pki(directory / "proxy-pki", host="localhost")
    state = FleetApiStandIn(pki)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
