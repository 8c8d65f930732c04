"""The JSON body of Tesla's ``fleet_telemetry_config`` request, built and checked offline.

Vehicles learn where to stream, which fields and how often from a configuration sent
through Tesla's Fleet API (signed by the vehicle-command proxy). The body is::

    {"vins": ["5YJ..."],
     "config": {"hostname": "telemetry.example.com", "port": 4443, "ca": "-----BEGIN ...",
                "fields": {"VehicleSpeed": {"interval_seconds": 10}},
                "alert_types": ["service"], "exp": 1767225600}}

``exp`` is an epoch-seconds expiry. Field names are checked against the ``Field`` enum of
the bundled ``vehicle_data.proto``, so a typo fails here rather than silently on the car.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.protocols.tesla.proto import vehicle_data_pb2

ALERT_TYPES = ("service",)
DELIVERY_POLICIES = ("latest", "all")
_NOT_CONFIGURABLE = {"Unknown"}


class FleetConfigError(ValueError):
    """A field spec, alert type or option the vehicle would not accept."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One streamed field: name and interval (plus an optional minimum delta)."""

    name: str
    interval_seconds: int
    minimum_delta: float | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"interval_seconds": self.interval_seconds}
        if self.minimum_delta is not None:
            body["minimum_delta"] = self.minimum_delta
        return body


def field_names() -> list[str]:
    """Every configurable field name of the bundled protos, in enum order."""
    names = (value.name for value in vehicle_data_pb2.Field.DESCRIPTOR.values)
    return [name for name in names if name not in _NOT_CONFIGURABLE]


def _check_name(name: str, known: set[str]) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise FleetConfigError(f"unknown field {name!r}{hint}")


def parse_fields(text: str) -> list[FieldSpec]:
    """``"VehicleSpeed:10,Soc:60,Odometer:60:0.5"`` → field specs.

    Each item is ``Name:interval_seconds[:minimum_delta]``.
    """
    known = set(field_names())
    specs: list[FieldSpec] = []
    seen: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise FleetConfigError(f"field {item!r}: expected Name:interval_seconds")
        name = parts[0].strip()
        _check_name(name, known)
        if name in seen:
            raise FleetConfigError(f"field {name!r} given twice")
        seen.add(name)
        try:
            interval = int(parts[1])
        except ValueError:
            raise FleetConfigError(
                f"field {name!r}: interval {parts[1]!r} is not an integer"
            ) from None
        if interval < 1:
            raise FleetConfigError(f"field {name!r}: interval must be at least 1 second")
        delta: float | None = None
        if len(parts) == 3:
            try:
                delta = float(parts[2])
            except ValueError:
                raise FleetConfigError(
                    f"field {name!r}: minimum delta {parts[2]!r} is not a number"
                ) from None
        specs.append(FieldSpec(name, interval, delta))
    if not specs:
        raise FleetConfigError("no fields given")
    return specs


def build_fleet_config(
    *,
    hostname: str,
    port: int,
    ca_pem: str,
    fields: Sequence[FieldSpec],
    vins: Sequence[str] = (),
    alert_types: Sequence[str] = (),
    exp: int | None = None,
    prefer_typed: bool | None = None,
    delivery_policy: str | None = None,
) -> dict[str, Any]:
    """The request body for ``POST /api/1/vehicles/fleet_telemetry_config``."""
    if not hostname:
        raise FleetConfigError("hostname is empty")
    if not 0 < port < 65536:
        raise FleetConfigError(f"port {port} is out of range")
    if "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise FleetConfigError("ca is not a PEM certificate")
    for alert in alert_types:
        if alert not in ALERT_TYPES:
            raise FleetConfigError(f"unknown alert type {alert!r}; known: {', '.join(ALERT_TYPES)}")
    if delivery_policy is not None and delivery_policy not in DELIVERY_POLICIES:
        raise FleetConfigError(
            f"unknown delivery policy {delivery_policy!r}; known: {', '.join(DELIVERY_POLICIES)}"
        )
    config: dict[str, Any] = {
        "hostname": hostname,
        "port": port,
        "ca": ca_pem,
        "fields": {spec.name: spec.as_json() for spec in fields},
    }
    if alert_types:
        config["alert_types"] = list(alert_types)
    if exp is not None:
        config["exp"] = exp
    if prefer_typed is not None:
        config["prefer_typed"] = prefer_typed
    if delivery_policy is not None:
        config["delivery_policy"] = delivery_policy
    return {"vins": list(vins), "config": config}
