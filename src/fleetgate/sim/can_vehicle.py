"""A simulated vehicle behind a CAN gateway: coherent signal values, no I/O, no clock.

The vehicle drives a plausible cycle: parked with the engine off, engine on and idling in
P, off in D (or briefly R), speeding up and slowing down towards changing targets, back
to idle, parked again. Everything follows from that state, so values agree with each
other: rpm comes from speed and a virtual gearbox (idle in P/N, 0 with the engine off),
engine load from acceleration, coolant warms while the engine runs, the odometer only
grows. Now and then a diagnostic trouble code appears (the error count and health follow)
and clears later; security counters tick up rarely.

:meth:`VehicleModel.advance` moves time forward (in steps of at most a second) and
returns the event signals that changed (gear, DTCs, error count), which a gateway
publishes at once with QoS 1. :meth:`VehicleModel.value` reads any signal. A seeded
``random.Random`` makes a run repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final

from fleetgate.protocols.mqtt import Signal

MAX_STEP_S: Final = 1.0
IDLE_RPM: Final = 750
# rpm per km/h in each virtual gear of the automatic gearbox (D); R uses the first.
GEAR_RATIOS: Final = (95.0, 60.0, 42.0, 32.0, 26.0, 21.0)
SHIFT_EVERY_KMH: Final = 25.0
ACCEL_KMH_PER_S: Final = 9.0
DECEL_KMH_PER_S: Final = 18.0
AMBIENT_C: Final = 18.0
DTC_CODES: Final = ("P0301", "P0420", "P0171", "P0128", "U0100", "C0035", "B1000")
DTC_PER_S: Final = 1 / 900  # about one new code per 15 minutes of engine time
DTC_CLEAR_PER_S: Final = 1 / 600
SECURITY_EVENT_PER_S: Final = 1 / 3600


@dataclass
class VehicleModel:
    """The state of one simulated vehicle."""

    rng: random.Random = field(default_factory=random.Random)
    engine_on: bool = False
    gear: str = "P"
    speed_kmh: float = 0.0
    target_kmh: float = 0.0
    acceleration: float = 0.0  # km/h per second, last step
    coolant_c: float = AMBIENT_C
    odometer_km: float = 0.0
    uptime_s: float = 0.0
    dtcs: list[str] = field(default_factory=list)
    error_count: int = 0
    auth_failures: int = 0
    timestamp_drift: int = 0
    policy_violations: int = 0
    message_rate: float = 0.0
    phase: str = "parked"
    phase_left_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.odometer_km:
            self.odometer_km = round(self.rng.uniform(5_000, 150_000), 1)
        self.phase_left_s = self.rng.uniform(2, 10)

    # -- time ----------------------------------------------------------------------------------
    def advance(self, seconds: float) -> set[str]:
        """Move ``seconds`` forward; the event signals (``group/name``) that changed."""
        changed: set[str] = set()
        left = seconds
        while left > 0:
            step = min(left, MAX_STEP_S)
            left -= step
            changed |= self._step(step)
        return changed

    def _step(self, dt: float) -> set[str]:
        changed: set[str] = set()
        before = (self.gear, tuple(self.dtcs), self.error_count)
        self.uptime_s += dt
        self.phase_left_s -= dt
        if self.phase_left_s <= 0:
            self._next_phase()
        self._drive(dt)
        self._warm(dt)
        self._diagnose(dt)
        self._security(dt)
        gear, dtcs, errors = before
        if self.gear != gear:
            changed.add("vehicle/gear_status")
        if tuple(self.dtcs) != dtcs:
            changed.add("diagnostics/dtc")
            changed.add("diagnostics/health")
        if self.error_count != errors:
            changed.add("diagnostics/error_count")
        return changed

    def _next_phase(self) -> None:
        rng = self.rng
        if self.phase == "parked":
            self.engine_on, self.gear, self.phase = True, "P", "idle"
            self.phase_left_s = rng.uniform(3, 15)
        elif self.phase == "idle":
            if rng.random() < 0.1:
                self.gear, self.target_kmh, self.phase = "R", rng.uniform(3, 8), "reversing"
                self.phase_left_s = rng.uniform(3, 8)
            else:
                self.gear, self.target_kmh, self.phase = "D", rng.uniform(30, 120), "driving"
                self.phase_left_s = rng.uniform(20, 60)
        elif self.phase in ("driving", "reversing"):
            if self.phase == "driving" and rng.random() < 0.7:
                self.target_kmh = rng.choice([0.0, rng.uniform(20, 130)])
                self.phase_left_s = rng.uniform(15, 60)
            else:
                self.target_kmh, self.phase = 0.0, "stopping"
                self.phase_left_s = 30
        elif self.phase == "stopping":
            self.phase_left_s = 1  # wait for standstill
            if self.speed_kmh == 0:
                if rng.random() < 0.5:
                    self.engine_on, self.gear, self.phase = False, "P", "parked"
                    self.phase_left_s = rng.uniform(10, 60)
                else:
                    self.gear = rng.choice(["N", "P"])
                    self.phase, self.phase_left_s = "idle", rng.uniform(3, 15)

    def _drive(self, dt: float) -> None:
        target = self.target_kmh if self.gear in ("D", "R") else 0.0
        previous = self.speed_kmh
        if self.speed_kmh < target:
            self.speed_kmh = min(target, self.speed_kmh + ACCEL_KMH_PER_S * dt)
        else:
            self.speed_kmh = max(target, self.speed_kmh - DECEL_KMH_PER_S * dt)
        self.acceleration = (self.speed_kmh - previous) / dt if dt else 0.0
        self.odometer_km += (previous + self.speed_kmh) / 2 * dt / 3600

    def _warm(self, dt: float) -> None:
        goal, rate = (90.0, 0.4) if self.engine_on else (AMBIENT_C, 0.02)
        self.coolant_c += (goal - self.coolant_c) * min(1.0, rate * dt / 10)

    def _diagnose(self, dt: float) -> None:
        rng = self.rng
        if self.engine_on and rng.random() < DTC_PER_S * dt:
            code = rng.choice(DTC_CODES)
            if code not in self.dtcs:
                self.dtcs.append(code)
                self.error_count += 1
        if self.dtcs and rng.random() < DTC_CLEAR_PER_S * dt:
            self.dtcs.pop(0)

    def _security(self, dt: float) -> None:
        rng = self.rng
        if rng.random() < SECURITY_EVENT_PER_S * dt:
            self.auth_failures += 1
        if rng.random() < SECURITY_EVENT_PER_S * dt:
            self.timestamp_drift += 1
        if rng.random() < SECURITY_EVENT_PER_S * dt:
            self.policy_violations += 1

    def inject_dtc(self, code: str) -> None:
        """Set a trouble code now (tests, the REST API)."""
        if code not in self.dtcs:
            self.dtcs.append(code)
            self.error_count += 1

    # -- values --------------------------------------------------------------------------------
    @property
    def rpm(self) -> int:
        if not self.engine_on:
            return 0
        if self.gear in ("P", "N") or self.speed_kmh == 0:
            return IDLE_RPM
        if self.gear == "R":
            return int(IDLE_RPM + self.speed_kmh * GEAR_RATIOS[0])
        gear = min(len(GEAR_RATIOS) - 1, int(self.speed_kmh // SHIFT_EVERY_KMH))
        band = self.speed_kmh - gear * SHIFT_EVERY_KMH
        return int(min(6500, 1100 + band * GEAR_RATIOS[gear] + gear * 150))

    @property
    def load(self) -> float:
        if not self.engine_on:
            return 0.0
        base = 12.0 + self.speed_kmh * 0.15
        return round(max(0.0, min(100.0, base + max(0.0, self.acceleration) * 6)), 1)

    @property
    def health(self) -> str:
        if len(self.dtcs) >= 3:
            return "critical"
        return "warning" if self.dtcs else "ok"

    def value(self, signal: Signal) -> Any:
        """The current value of ``signal`` (typed as the signal table says)."""
        values: dict[str, Any] = {
            "engine/rpm": self.rpm,
            "engine/coolant_temp": round(self.coolant_c, 1),
            "engine/load": self.load,
            "vehicle/speed": round(self.speed_kmh, 1),
            "vehicle/odometer": round(self.odometer_km, 2),
            "vehicle/gear_status": self.gear,
            "diagnostics/dtc": list(self.dtcs),
            "diagnostics/error_count": self.error_count,
            "diagnostics/health": self.health,
            "security/auth_failures": self.auth_failures,
            "security/timestamp_drift": self.timestamp_drift,
            "security/policy_violations": self.policy_violations,
            "gateway/connection_state": "connected",
            "gateway/uptime": int(self.uptime_s),
            "gateway/message_rate": round(self.message_rate, 2),
        }
        return values[signal.key]
