"""The JSON body of Tesla's ``fleet_telemetry_config`` request, built and checked offline.

Vehicles learn where to stream, which fields and how often from a configuration sent
through Tesla's Fleet API (signed by the vehicle-command proxy). The body is::

    {"vins": ["5YJ..."],
     "config": {"hostname": "telemetry.example.com", "port": 4443, "ca": "-----BEGIN ...",
                "fields": {"VehicleSpeed": {"interval_seconds": 10}},
                "alert_types": ["service"], "exp": 1767225600}}

``exp`` is an epoch-seconds expiry. Field names are checked against the ``Field`` enum of
the bundled ``vehicle_data.proto``, so a typo fails here rather than silently on the car.

The Fleet API's replies are read here too (no I/O: JSON in, facts and text out). Every reply
is ``{"response": ..., "error": ..., "error_description": ...}``:

* ``POST /api/1/vehicles/fleet_telemetry_config``: ``{"updated_vehicles": 1,
  "skipped_vehicles": {"missing_key": [VIN, ...], "unsupported_hardware": [...],
  "unsupported_firmware": [...], "max_configs": [...]}}``;
* ``GET /api/1/vehicles/{vin}/fleet_telemetry_config``: ``{"synced": bool, "config": {...}
  | null, "alert_types": [...], "limit_reached": bool, "key_paired": bool}``;
* ``GET /api/1/vehicles/{vin}/fleet_telemetry_errors``: ``{"fleet_telemetry_errors":
  [{"name": str, "error": str, "vin": str}, ...]}``.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

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


# -- the Fleet API's replies ----------------------------------------------------------------

# Why the Fleet API skips a vehicle (``skipped_vehicles`` keys), and what to do about it.
SKIP_REASONS: Final = {
    "missing_key": (
        "the application's virtual key is not paired with the vehicle "
        "(the owner adds it from https://tesla.com/_ak/<your domain>)"
    ),
    "unsupported_hardware": "pre-2021 Model S and X cannot stream fleet telemetry",
    "unsupported_firmware": (
        "the vehicle's firmware is too old (2024.26 or later through the vehicle-command proxy)"
    ),
    "max_configs": "the vehicle already holds as many fleet telemetry configurations as it takes",
}


class FleetApiReplyError(ValueError):
    """A Fleet API reply whose shape is not the documented one."""


def reply_response(body: Any) -> Any:
    """The ``response`` member of a Fleet API reply (a bare object is taken as is)."""
    if isinstance(body, dict) and "response" in body:
        return body["response"]
    return body


def reply_error(body: Any) -> str:
    """``error`` and ``error_description`` of an error reply, as one line ("" when none)."""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[key]).strip() for key in ("error", "error_description") if body.get(key)]
    return ": ".join(part for part in parts if part)


@dataclass(frozen=True, slots=True)
class ConfigureOutcome:
    """What ``POST fleet_telemetry_config`` did: vehicles updated, and each skipped VIN."""

    updated: int
    skipped: dict[str, str] = field(default_factory=dict)  # VIN -> reason key


def read_configure_reply(body: Any) -> ConfigureOutcome:
    """The outcome of a ``fleet_telemetry_config`` reply; raises :class:`FleetApiReplyError`."""
    response = reply_response(body)
    if not isinstance(response, dict) or not isinstance(response.get("updated_vehicles"), int):
        raise FleetApiReplyError(f"no updated_vehicles in the reply: {_short(body)}")
    skipped: dict[str, str] = {}
    groups = response.get("skipped_vehicles") or {}
    if not isinstance(groups, dict):
        raise FleetApiReplyError(f"skipped_vehicles is not an object: {_short(groups)}")
    for reason, vins in groups.items():
        for vin in vins or ():
            skipped[str(vin)] = str(reason)
    return ConfigureOutcome(response["updated_vehicles"], skipped)


def skip_reason_text(reason: str) -> str:
    """A skipped-vehicle reason key in words."""
    return SKIP_REASONS.get(reason, reason)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fields_text(fields: Any) -> str:
    if not isinstance(fields, dict) or not fields:
        return "none"
    items = []
    for name in sorted(fields):
        spec = fields[name] if isinstance(fields[name], dict) else {}
        text = f"{name} every {spec.get('interval_seconds', '?')} s"
        if spec.get("minimum_delta") is not None:
            text += f" (minimum delta {spec['minimum_delta']})"
        items.append(text)
    return ", ".join(items)


def _yes_no(value: Any) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def describe_status(vin: str, config_body: Any, errors_body: Any) -> list[str]:
    """Lines a person reads: the vehicle's telemetry configuration and its reported errors."""
    state = reply_response(config_body)
    if not isinstance(state, dict):
        raise FleetApiReplyError(f"fleet_telemetry_config reply is not an object: {_short(state)}")
    config = state.get("config")
    if not isinstance(config, dict) or not config:
        lines = [f"{vin}: no fleet telemetry configuration"]
    else:
        synced = (
            "synced (the vehicle uses it)"
            if state.get("synced")
            else "not synced yet (the vehicle takes it when it next connects to Tesla)"
        )
        lines = [
            f"{vin}: streams to {config.get('hostname', '?')}:{config.get('port', '?')}, {synced}",
            f"  fields: {_fields_text(config.get('fields'))}",
        ]
        alert_types = config.get("alert_types") or state.get("alert_types")
        if alert_types:
            lines.append(f"  alert types: {', '.join(map(str, alert_types))}")
        if isinstance(config.get("exp"), int):
            expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(config["exp"]))
            lines.append(f"  expires: {expiry}")
        if config.get("prefer_typed") is not None:
            lines.append(f"  typed values: {_yes_no(config['prefer_typed'])}")
    lines.append(f"  virtual key paired: {_yes_no(state.get('key_paired'))}")
    lines.append(f"  configuration limit reached: {_yes_no(state.get('limit_reached'))}")
    errors = reply_response(errors_body)
    entries = errors.get("fleet_telemetry_errors") if isinstance(errors, dict) else None
    if not isinstance(entries, list):
        raise FleetApiReplyError(f"no fleet_telemetry_errors in the reply: {_short(errors_body)}")
    if not entries:
        lines.append("  errors reported by the vehicle: none")
    else:
        lines.append(f"  errors reported by the vehicle ({len(entries)}):")
        for entry in entries:
            entry = entry if isinstance(entry, dict) else {"error": entry}
            name = entry.get("name") or "error"
            lines.append(f"    - {name}: {entry.get('error', '')}".rstrip())
    return lines
