"""The CAN gateway's signal table: every leaf of the topic tree, its type, unit and rate.

A gateway publishes one MQTT message per signal under ``<group>/<signal>`` (see
:mod:`~fleetgate.protocols.mqtt.topics`). This table says what each signal's value must be
and turns the JSON value a gateway sent into the typed value a record carries:

* ``int`` signals (``rpm``, counters, ``uptime``): a JSON integer, an integral float
  (``3500.0``) or a numeral string; the result is an ``int``.
* ``float`` signals (speed, temperatures, load, rates): any finite JSON number or numeral
  string; the result is a ``float``.
* ``enum`` signals (``gear_status`` D/P/R/N, ``connection_state``, ``health``): one of
  the listed words, any letter case; the result is the canonical spelling.
* ``dtc``: one diagnostic trouble code (SAE J2012 form, ``P0301``), a comma-separated
  string of them or a JSON list; the result is a list of upper-case codes (``[]`` = none).

Values outside a signal's range are refused (:class:`SignalValueError`), never clamped:
an impossible value means a broken gateway or a broken decoder, and both should be seen.
The table also gives the rate and QoS the gateway side (the simulator) publishes each
signal at: QoS 0 for high-rate telemetry, QoS 1 for events that must arrive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

SignalKind = Literal["int", "float", "enum", "dtc"]

DTC_PATTERN: Final = re.compile(r"[PCBU][0-3][0-9A-F]{3}")
JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class SignalValueError(ValueError):
    """A value that does not fit its signal (wrong type, out of range, unknown word)."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One leaf of the topic tree."""

    group: str
    name: str
    kind: SignalKind
    unit: str | None
    qos: int
    # How often the gateway publishes it in real-time mode; None: on change (events).
    period_s: float | None
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``<group>/<name>``, the last two topic levels."""
        return f"{self.group}/{self.name}"

    def coerce(self, value: Any) -> Any:
        """The typed value for ``value`` (a decoded JSON value), or :class:`SignalValueError`."""
        if self.kind == "int":
            return self._coerce_int(value)
        if self.kind == "float":
            return self._coerce_float(value)
        if self.kind == "enum":
            return self._coerce_enum(value)
        return _coerce_dtcs(value)

    def _number(self, value: Any) -> float | int:
        if isinstance(value, bool) or value is None:
            raise SignalValueError(f"{self.key} expects a number, got {value!r}")
        if isinstance(value, int | float):
            number: float | int = value
        elif isinstance(value, str):
            # JSON's number grammar only: Python's int()/float() would also take "1_000",
            # "inf" or non-ASCII digits.
            text = value.strip()
            if not JSON_NUMBER.fullmatch(text):
                raise SignalValueError(f"{self.key} expects a number, got {_short(value)}")
            number = int(text) if text.lstrip("-").isdigit() else float(text)
        else:
            raise SignalValueError(f"{self.key} expects a number, got {_short(value)}")
        if isinstance(number, float) and not math.isfinite(number):
            raise SignalValueError(f"{self.key} expects a finite number, got {number!r}")
        if not self.low <= number <= self.high:
            raise SignalValueError(
                f"{self.key} value {number!r} is outside {_num(self.low)}..{_num(self.high)}"
            )
        return number

    def _coerce_int(self, value: Any) -> int:
        number = self._number(value)
        if isinstance(number, float):
            if not number.is_integer():
                raise SignalValueError(f"{self.key} expects an integer, got {number!r}")
            return int(number)
        return number

    def _coerce_float(self, value: Any) -> float:
        return float(self._number(value))

    def _coerce_enum(self, value: Any) -> str:
        if isinstance(value, str):
            word = value.strip()
            for choice in self.choices:
                if word.casefold() == choice.casefold():
                    return choice
        raise SignalValueError(
            f"{self.key} expects one of {'/'.join(self.choices)}, got {_short(value)}"
        )


def _coerce_dtcs(value: Any) -> list[str]:
    if isinstance(value, str):
        items: list[Any] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise SignalValueError(f"diagnostics/dtc expects a code or a list, got {_short(value)}")
    codes: list[str] = []
    for item in items:
        code = item.strip().upper() if isinstance(item, str) else None
        if code is None or not DTC_PATTERN.fullmatch(code):
            raise SignalValueError(f"diagnostics/dtc: {_short(item)} is not a trouble code")
        codes.append(code)
    return codes


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_COUNT_MAX: Final = 2**53 - 1  # counters: any integer JSON (and JavaScript) represents exactly

SIGNALS: Final[tuple[Signal, ...]] = (
    Signal("engine", "rpm", "int", "rpm", 0, 0.1, 0, 20_000),
    Signal("engine", "coolant_temp", "float", "°C", 0, 1.0, -60, 250),
    Signal("engine", "load", "float", "%", 0, 1.0, 0, 100),
    Signal("vehicle", "speed", "float", "km/h", 0, 0.2, 0, 500),
    Signal("vehicle", "odometer", "float", "km", 0, 10.0, 0, 10_000_000),
    Signal("vehicle", "gear_status", "enum", None, 1, None, choices=("P", "R", "N", "D")),
    Signal("diagnostics", "dtc", "dtc", None, 1, None),
    Signal("diagnostics", "error_count", "int", "count", 1, None, 0, _COUNT_MAX),
    Signal("diagnostics", "health", "enum", None, 1, 10.0, choices=("ok", "warning", "critical")),
    Signal("security", "auth_failures", "int", "count", 1, 10.0, 0, _COUNT_MAX),
    Signal("security", "timestamp_drift", "int", "count", 1, 10.0, 0, _COUNT_MAX),
    Signal("security", "policy_violations", "int", "count", 1, 10.0, 0, _COUNT_MAX),
    Signal(
        "gateway",
        "connection_state",
        "enum",
        None,
        1,
        None,
        choices=("connected", "disconnected", "reconnecting"),
    ),
    Signal("gateway", "uptime", "int", "s", 0, 10.0, 0, _COUNT_MAX),
    Signal("gateway", "message_rate", "float", "msg/s", 0, 1.0, 0, 1_000_000),
)

SIGNALS_BY_KEY: Final[Mapping[tuple[str, str], Signal]] = {
    (signal.group, signal.name): signal for signal in SIGNALS
}
GROUPS: Final[tuple[str, ...]] = tuple(dict.fromkeys(signal.group for signal in SIGNALS))


def signal_for(group: str, name: str) -> Signal | None:
    """The signal published under ``<group>/<name>``, or None."""
    return SIGNALS_BY_KEY.get((group, name))
